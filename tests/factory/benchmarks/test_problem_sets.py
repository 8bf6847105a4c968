"""factory/benchmarks/problem_sets.py: a problems file read row by row (bad rows named by line and
field), a family's held-out side against a `split: train` recipe source, the CLI's rules for
--recipe / --family / --problems, the prompt shown, the checkers each item names, and the
eval identity that keeps two files apart while a shipped benchmark keeps its old id."""

import json

import pytest

from factory.benchmarks import get
from factory.benchmarks.problem_sets import benchmark_set, family_set, file_set, problem_sets
from factory.evaluation import Checker, eval_id, make_config, teacher_config
from factory.questions.splits import split_of
from factory.recipe import DEFAULT_TEMPLATES, load_recipe
from factory.records import content_hash, problem_id
from factory.stages import collect_questions
from storage import BadInput

ROWS = [
    {"problem": "What is 2 + 3?", "answer": 5},
    {"problem": "What is 7 + 8?", "reference_answer": "15", "problem_id": "p2", "domain": "math"},
    {"problem": "Sort these words alphabetically: pear, apple. Give the answer as: Answer: <list>", "answer": "apple, pear",
     "verifier": "sorting"},
    {"problem": "Using the numbers 2, 3, 4, write an expression that equals 20.",
     "metadata": json.dumps({"verifier": "countdown", "numbers": [2, 3, 4], "target": 20})},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_problems_file_becomes_items_with_their_checkers(tmp_path):
    ps = file_set(write_jsonl(tmp_path / "held.jsonl", ROWS))
    a, b, s, c = ps.items
    assert (a["id"], a["answer"], a["verifier"], a["domain"]) == (problem_id("What is 2 + 3?"), "5", "math", "math")
    assert (b["id"], b["answer"]) == ("p2", "15")
    assert (s["verifier"], s["domain"], c["verifier"], c["domain"]) == ("sorting", "puzzle", "countdown", "puzzle")
    assert ps.domain == "mixed" and ps.name == f"held.jsonl@{ps.content[:8]}"
    checker = Checker(ps)
    assert [v.status for v in checker.check(a, ["The answer is 5.", "The answer is 6.", "I cannot tell."])] == ["pass", "fail", "unverifiable"]
    assert [v.status for v in checker.check(s, ["Answer: apple, pear", "Answer: pear, apple"])] == ["pass", "fail"]
    assert [v.status for v in checker.check(c, ["Answer: (2 + 3) * 4", "Answer: 2 * 3 * 4"])] == ["pass", "fail"]
    # Without a template each item gets the recipe default of its domain.
    assert ps.messages(a) == ({"role": "user", "content": DEFAULT_TEMPLATES["math"].format(problem="What is 2 + 3?")},)
    assert ps.messages(c)[0]["content"].endswith(DEFAULT_TEMPLATES["puzzle"].split("}", 1)[1])


def test_a_files_content_is_its_identity(tmp_path):
    one = file_set(write_jsonl(tmp_path / "a.jsonl", ROWS))
    (tmp_path / "b").mkdir()
    same = file_set(write_jsonl(tmp_path / "b" / "a.jsonl", [json.dumps(r, separators=(", ", ":  ")) for r in ROWS]))
    other = file_set(write_jsonl(tmp_path / "c.jsonl", [*ROWS[:1], {**ROWS[1], "reference_answer": "16"}, *ROWS[2:]]))
    assert same.content == one.content and same.name == one.name  # the parsed problems, not the bytes
    assert other.content != one.content and other.name.split("@")[1] != one.name.split("@")[1]
    cfg = make_config(model="m", benchmark="x", backend="openai", base_url="http://127.0.0.1:1/v1")
    tc, sampling = teacher_config(cfg), cfg.sampling()
    assert eval_id(tc, one, sampling) == eval_id(tc, same, sampling) != eval_id(tc, other, sampling)
    prompted = file_set(tmp_path / "a.jsonl", system="Be brief.", template="Q: {problem}")
    assert eval_id(tc, prompted, sampling) != eval_id(tc, one, sampling)
    assert prompted.prompt_format == "[system]\nBe brief.\n[user]\nQ: {problem}"
    assert prompted.messages(prompted.items[0]) == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: What is 2 + 3?"})


def test_a_shipped_benchmark_keeps_its_eval_id():
    """Evals stored before problem sets existed resume: the id is the old formula's."""
    cfg = make_config(model="m", benchmark="gsm8k", backend="openai", base_url="http://127.0.0.1:1/v1")
    tc, sampling = teacher_config(cfg), cfg.sampling()
    old = content_hash("eval", tc.model, tc.revision, tc.backend, "gsm8k", get("gsm8k").prompt_format, sampling.model_dump())
    assert eval_id(tc, benchmark_set("gsm8k"), sampling) == eval_id(tc, get("gsm8k"), sampling) == old
    assert eval_id(tc, benchmark_set("gsm8k", system="Be brief."), sampling) != old


def test_bad_rows_are_named_by_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        ROWS[0],
        {"problem": "What is 1 + 1?"},                                   # 2: no answer
        {"problem": "", "answer": 1},                                    # 3: empty problem
        {"problem": "What is 2 + 2?", "answer": "4", "reference_answer": "5"},   # 4: they differ
        {"problem": "Write f.", "verifier": "code"},                     # 5: code without tests
        {"problem": "What is 2 + 3?", "answer": 5},                      # 6: line 1 again
        {"problem": "What is 9 + 9?", "answer": 18, "verifier": "regexp"},   # 7
        {"problem": "What is 9 + 8?", "answer": [17]},                  # 8
    ])
    with pytest.raises(BadInput) as exc:
        file_set(path)
    msg = str(exc.value)
    assert msg.startswith("7 bad row(s), nothing evaluated")
    for expected in (f"{path}:2: field 'answer': missing", f"{path}:3: field 'problem'", f"{path}:4: field 'reference_answer': differs",
                     f"{path}:5: field 'tests': missing", f"{path}:6: field 'problem': the same problem as line 1",
                     f"{path}:7: field 'verifier': 'regexp'", f"{path}:8: field 'answer': expected a string or number"):
        assert expected in msg
    write_jsonl(path, [ROWS[0], "{not json", ROWS[1]])
    with pytest.raises(BadInput, match=r"bad.jsonl:2: invalid JSON"):
        file_set(path)


def test_a_file_split_keeps_one_side(tmp_path):
    rows = [{"problem": f"What is {a} + {b}?", "answer": a + b} for a in range(10, 40) for b in range(10, 20)]
    path = write_jsonl(tmp_path / "sums.jsonl", rows)
    test, train = file_set(path, split="test"), file_set(path, split="train")
    assert len(test.items) + len(train.items) == len(rows) and 0 < len(test.items) < len(train.items)
    assert all(split_of(it["problem"]) == "test" for it in test.items) and test.name.startswith("sums.jsonl:test@")


RECIPE = """name: held
questions:
  - {source: generator, generator: addition, count: 400, difficulty: 3, seed: 4, split: train}
  - {source: generator, generator: countdown, count: 100, difficulty: 2, split: train, test_share: 0.3}
prompt:
  system: "Answer with one sentence."
  template: "Question: {problem}"
"""


def test_a_recipes_held_out_side_never_holds_a_problem_the_recipe_makes(tmp_path):
    path = tmp_path / "held.yaml"
    path.write_text(RECIPE)
    trained = {r["problem_id"] for r in collect_questions(load_recipe(path).questions, base_dir=tmp_path)}
    assert len(trained) == 500
    add, cd = problem_sets(recipe=str(path), limit=150)
    assert (add.name, cd.name) == ("addition-d3-test", "countdown-d2-test-share0.3")
    assert len(add.items) == len(cd.items) == 150 and len({it["id"] for it in add.items}) == 150
    assert not {it["id"] for it in add.items + cd.items} & trained
    assert add.messages(add.items[0]) == ({"role": "system", "content": "Answer with one sentence."},
                                          {"role": "user", "content": "Question: " + add.items[0]["problem"]})
    # The same family named directly, with the same prompt: the same set, hence the same eval.
    (direct,) = problem_sets(family="addition", difficulty=3, limit=150, system="Answer with one sentence.", template="Question: {problem}")
    assert (direct.name, direct.content, direct.prompt_format, direct.items) == (add.name, add.content, add.prompt_format, add.items)
    # Any family drawn on its test side misses every train-side problem, whatever the seed made.
    for difficulty in (2, 4):
        held = family_set("arithmetic", count=300, difficulty=difficulty, split="test")
        made = collect_questions([{"source": "generator", "generator": "arithmetic", "count": 1000, "difficulty": difficulty,
                                   "seed": 9, "split": "train"}], base_dir=tmp_path)
        assert not {it["id"] for it in held.items} & {r["problem_id"] for r in made}


@pytest.mark.parametrize("options, expected", [
    ({}, "expected --benchmark NAME, --problems FILE.jsonl, --family NAME or --recipe"),
    ({"benchmark": "gsm8k", "family": "addition"}, "--benchmark and --family: expected one of them"),
    ({"benchmark": "gsm8k", "split": "test"}, "--split: only with --problems, --family or --recipe"),
    ({"family": "addition", "limit": 5, "split": "tset"}, "--split 'tset': expected one of all, train, test"),
    ({"family": "addition"}, "--family addition: expected --limit N"),
    ({"family": "addition", "limit": 5, "test_share": 1.5}, "--test-share 1.5: expected a share strictly between 0 and 1"),
    ({"benchmark": "gsm8k", "difficulty": 3}, "--difficulty: only with --family"),
    ({"family": "addition", "limit": 5, "template": "no placeholder"}, "--template 'no placeholder': expected a template containing {problem}"),
    ({"family": "addition", "limit": 5, "template": "{problem} {answer}"}, "--template '{problem} {answer}': template: only {problem}"),
    ({"family": "addition", "limit": 30, "difficulty": 1}, "--limit 30: generator addition at difficulty 1 gave only"),
])
def test_bad_options_name_the_option(options, expected):
    with pytest.raises(BadInput) as exc:
        problem_sets(**options)
    assert expected in str(exc.value)


def test_a_recipe_alone_needs_a_train_split_and_gives_its_prompt_to_other_problems(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace(", split: train, test_share: 0.3", "").replace(", split: train", ""))
    with pytest.raises(BadInput, match=r"questions\[0\] \(addition\) has no `split: train`"):
        problem_sets(recipe=str(path), limit=10)
    (train_side,) = problem_sets(recipe=str(tmp_path / "r.yaml"), family="linear", limit=5, split="train")
    assert train_side.system == "Answer with one sentence." and train_side.template == "Question: {problem}"
    (gsm,) = problem_sets(recipe=str(path), benchmark="gsm8k", system="Override.")
    assert gsm.system == "Override." and gsm.template == "Question: {problem}" and gsm.content is None
    with pytest.raises(BadInput, match="--test-share: with --recipe"):
        problem_sets(recipe=str(path), limit=10, test_share=0.2)
    path.write_text("name: seeds\nquestions:\n  - {source: jsonl, path: s.jsonl}\n")
    write_jsonl(tmp_path / "s.jsonl", ROWS[:2])
    with pytest.raises(BadInput, match="no generator source to hold out problems from"):
        problem_sets(recipe=str(path), limit=10)


def test_an_unpaired_surrogate_is_a_bad_row_not_a_traceback(tmp_path):
    """`"\\ud800"` is valid JSON but no UTF-8 text: it could not be hashed into a problem id."""
    path = tmp_path / "held.jsonl"
    path.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + '\n{"problem": "x \\ud800", "answer": "2"}\n')
    with pytest.raises(BadInput, match=r"held.jsonl:2: .*unpaired UTF-16 surrogate"):
        file_set(path)
