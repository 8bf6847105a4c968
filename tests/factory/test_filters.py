import pytest

from factory.filters import FilterConfig, apply_filters, check_language, check_paragraphs, check_repetition, repeated_ngram_share
from factory.teachers.base import split_reasoning


def sample(completion: str, finish_reason: str = "stop") -> dict:
    reasoning, answer = split_reasoning(completion)
    return {"completion": completion, "reasoning": reasoning, "answer": answer, "finish_reason": finish_reason}


GOOD = "<think>First add the two numbers. Two plus two is four, so the total is four.\n\nCheck: four minus two is two.</think>The answer is \\boxed{4}."


def statuses(s, **kw):
    return {v.check.split(":")[1]: v.status for v in apply_filters(s, **kw)}


def test_a_clean_trace_is_kept_by_every_filter():
    got = statuses(sample(GOOD), domain="math")
    assert set(got.values()) == {"pass"}, got


@pytest.mark.parametrize(
    "completion,finish,name,reason",
    [
        ("The answer is 4.", "stop", "think_format", "no <think> block"),
        ("<think></think>4", "stop", "think_format", "empty"),
        ("<think>a</think><think>b</think>4", "stop", "think_format", "2 <think>"),
        ("<think>still thinking about it", "length", "truncation", "max_tokens"),
        ("<think>done thinking here</think>", "stop", "truncation", "no answer"),
        ("<think>Let me write ```python\nprint(4)\n``` to check.</think>4", "stop", "code_in_reasoning", "code block"),
        ("<think>First we add them. 然后我们计算总和是四，因为二加二等于四，所以答案是四。这个很简单。</think>4", "stop", "language", "mixed languages"),
    ],
)
def test_each_defect_is_dropped_with_its_reason(completion, finish, name, reason):
    v = {v.check: v for v in apply_filters(sample(completion, finish), domain="math")}[f"filter:{name}"]
    assert v.status == "fail" and reason in v.reason


def test_repetition_loop_is_caught():
    loop = "<think>" + "Wait, let me recompute the sum of the two numbers again. " * 40 + "</think>4"
    v = check_repetition(sample(loop), FilterConfig())
    assert v.status == "fail" and "loop" in v.reason
    assert repeated_ngram_share("a b c d e f g h i j k l", 4) == 0.0


def test_code_is_allowed_in_code_tasks_and_thresholds_come_from_config():
    code = sample("<think>```python\nx=1\n```</think>done")
    assert statuses(code, domain="code")["code_in_reasoning"] == "pass"
    long = sample("<think>" + "word " * 100 + "</think>4")
    assert check_paragraphs(long, FilterConfig(max_paragraph_words=50)).status == "fail"
    assert check_paragraphs(long, FilterConfig()).status == "pass"
    assert check_language(sample("<think>ok</think>4"), FilterConfig()).status == "unverifiable"
    with pytest.raises(ValueError, match="unknown filter"):
        apply_filters(sample(GOOD), FilterConfig(enabled=("nope",)))
