"""Loss masks on real chat-formatted R1-style rows with the real SmolLM2 tokenizer, the template
lint, truncation, and rows streamed from a lake dataset."""

import copy

import pytest

from storage.errors import BadInput
from trainer.config import DataConfig
from trainer.data import IGNORE, lint_template, read_rows, tokenize_row, tokenize_rows

from .conftest import r1_rows, write_jsonl


def cfg(**kw):
    return DataConfig(jsonl="unused.jsonl", **kw)


def test_mask_covers_exactly_the_assistant_turn_through_end_of_turn(tokenizer):
    rows = r1_rows(4)
    examples, stats = tokenize_rows(rows, tokenizer, cfg(max_length=2048))
    assert stats.examples == 4 and stats.supervised_tokens == sum(e.n_supervised for e in examples)
    for row, ex in zip(rows, examples):
        supervised = [t for t in ex.labels if t != IGNORE]
        text = tokenizer.decode(supervised)
        want = f"<think>\n{row['reasoning']}\n</think>\n\n{row['answer']}<|im_end|>"
        assert text == want
        # Everything before the assistant turn (system, user, the "assistant\n" header) is masked.
        assert all(t == IGNORE for t in ex.labels[: ex.prompt_len])
        prompt = tokenizer.decode(ex.input_ids[: ex.prompt_len])
        assert prompt.endswith("<|im_start|>assistant\n") and row["messages"][1]["content"] in prompt
        # The end-of-turn token is the last supervised token and the last token of the example.
        assert ex.labels[-1] == tokenizer.eos_token_id == ex.input_ids[-1]
        assert ex.labels[ex.prompt_len :] == ex.input_ids[ex.prompt_len :]


def test_an_assistant_message_without_reasoning_fields_is_the_target(tokenizer):
    row = {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nhi"}]}
    ex = tokenize_row(row, tokenizer, cfg(), 0)
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE]) == "<think>\nA greeting.\n</think>\n\nhi<|im_end|>"


def test_empty_think_blocks_fail_loudly_or_are_skipped_when_asked(tokenizer):
    row = dict(r1_rows(1)[0], reasoning="  \n")
    with pytest.raises(BadInput, match=r"row 3 \(sample_id gsm8k-0\): empty <think> block"):
        tokenize_row(row, tokenizer, cfg(), 3)
    rendered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n\n</think>\n\n4"}]}
    with pytest.raises(BadInput, match="empty <think>"):
        tokenize_row(rendered, tokenizer, cfg(), 0)
    examples, stats = tokenize_rows([row] + r1_rows(2, start=5), tokenizer, cfg(empty_reasoning="skip"))
    assert stats.skipped_empty_reasoning == 1 and len(examples) == 2


def test_answer_only_trains_a_reply_without_reasoning_on_the_reply_alone(tokenizer):
    """A teacher that writes no reasoning (the CPU loop's SmolLM2): with answer_only its rows train
    on the reply as sampled, never on an empty think block; rows with reasoning keep theirs."""
    row = dict(r1_rows(1)[0], reasoning="", answer="2 plus 2 is 4, so the final answer is 4.")
    rendered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n\n</think>\n\n4"}]}
    examples, stats = tokenize_rows([row, rendered] + r1_rows(1, start=5), tokenizer, cfg(empty_reasoning="answer_only"))
    supervised = [tokenizer.decode([t for t in ex.labels if t != IGNORE]) for ex in examples]
    assert supervised[0] == "2 plus 2 is 4, so the final answer is 4.<|im_end|>"
    assert supervised[1] == "4<|im_end|>"
    assert "<think>" in supervised[2] and stats.answer_only == 2 and stats.skipped_empty_reasoning == 0


def test_lint_fails_on_a_template_that_drops_the_end_of_turn_token(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = tokenizer.chat_template.replace("message['content'] + '<|im_end|>'", "message['content']")
    assert broken.chat_template != tokenizer.chat_template
    with pytest.raises(BadInput, match="end-of-turn token '<\\|im_end\\|>' is not in the assistant turn"):
        lint_template(broken)
    lint_template(tokenizer)  # the real one passes


def test_lint_fails_on_a_template_that_is_not_prefix_stable(tokenizer):
    broken = copy.deepcopy(tokenizer)
    # A generation header that the rendered conversation does not start with.
    broken.chat_template = tokenizer.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\nSure! '")
    with pytest.raises(BadInput, match="not prefix-stable"):
        lint_template(broken)


def test_a_row_without_a_target_or_prompt_is_bad_input(tokenizer):
    with pytest.raises(BadInput, match="row 0: expected `reasoning`"):
        tokenize_row({"messages": [{"role": "user", "content": "q"}]}, tokenizer, cfg(), 0)
    with pytest.raises(BadInput, match="expected prompt messages"):
        tokenize_row({"messages": [], "reasoning": "r", "answer": "a"}, tokenizer, cfg(), 0)


def test_truncation_drop_and_right(tokenizer):
    rows = r1_rows(6)
    full, _ = tokenize_rows(rows, tokenizer, cfg(max_length=4096))
    limit = sorted(len(e) for e in full)[3]  # the two... three longest do not fit
    kept, stats = tokenize_rows(rows, tokenizer, cfg(max_length=limit))
    assert stats.dropped_too_long == sum(len(e) > limit for e in full) > 0
    assert all(len(e) <= limit for e in kept)
    cut, stats = tokenize_rows(rows, tokenizer, cfg(max_length=limit, truncation="right"))
    assert len(cut) == 6 and stats.truncated == sum(len(e) > limit for e in full)
    long = max(cut, key=lambda e: full[e.row].input_ids != e.input_ids)
    assert len(long) == limit and long.input_ids == full[long.row].input_ids[:limit]


def test_rows_stream_from_jsonl_and_from_a_lake_dataset(tmp_path, tokenizer):
    rows = r1_rows(5)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert [r["sample_id"] for r in read_rows(DataConfig(jsonl=str(path), limit=3))] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]

    import datetime as dt

    from storage import Lake

    store = tmp_path / "lake"
    now = dt.datetime.now(dt.UTC)
    samples = [dict(r, run_id="t", problem_id=f"p{i}", created_at=now) for i, r in enumerate(rows)]
    with Lake.open(str(store)) as lake:
        lake.commit("samples", samples, batch_key="trainer-test", run_id="t")
        lake.save_dataset("tiny-r1", "SELECT sample_id, messages, reasoning, answer FROM samples WHERE problem_id <> 'p4' ORDER BY sample_id")
    got = list(read_rows(DataConfig(dataset="tiny-r1", store=str(store))))
    assert [r["sample_id"] for r in got] == [f"gsm8k-{i}" for i in range(4)]
    examples, _ = tokenize_rows(got, tokenizer, DataConfig(dataset="tiny-r1", store=str(store)))
    want, _ = tokenize_rows(rows[:4], tokenizer, cfg())
    assert [e.input_ids for e in examples] == [e.input_ids for e in want]
    via_sql = list(read_rows(DataConfig(sql="SELECT messages, reasoning, answer FROM samples WHERE problem_id = 'p4'", store=str(store))))
    assert len(via_sql) == 1 and via_sql[0]["reasoning"] == rows[4]["reasoning"]


def test_data_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of dataset, sql, jsonl"):
        DataConfig()
    with pytest.raises(ValueError, match="exactly one of dataset, sql, jsonl"):
        DataConfig(dataset="a", sql="SELECT 1")
