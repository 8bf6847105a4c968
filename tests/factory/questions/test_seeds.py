"""Seed sets: each loader on the real benchmark files the package ships, a HF folder built here,
the source configs, and the bad-input exits (BadInput naming file and line)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.questions import (
    GeneratorSource,
    SeedSource,
    TeacherWrittenSource,
    iter_problems,
    parse_source,
)
from factory.questions.seeds import FieldMap, normalise_answer, read_seeds
from factory.records import problem_id
from storage import BadInput
from tests.data import BENCHMARKS as DATA  # the benchmark copies the package ships


def load(spec: dict) -> list[dict]:
    return list(iter_problems(parse_source(spec), base_dir=DATA))


def raw(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_gsm8k_answers_are_cut_at_the_hashes():
    rows = load({"source": "jsonl", "path": "gsm8k_test.jsonl", "fields": {"problem": "question", "answer": "answer"}})
    src = raw("gsm8k_test.jsonl")
    assert len(rows) == len(src) == 1319
    for row, rec in zip(rows, src):
        # Independent: the last line of the worked answer is "#### <number>".
        assert row["reference_answer"] == rec["answer"].strip().splitlines()[-1].removeprefix("####").strip().replace(",", "")
        assert row["problem_id"] == problem_id(rec["question"])
        meta = json.loads(row["metadata"])
        assert meta["verifier"] == "math" and "####" not in meta["solution"] and row["domain"] == "math"
    assert rows[0]["reference_answer"] == "18" and rows[0]["source"] == "gsm8k_test"


def test_math500_boxed_solution_gives_the_published_answer():
    rows = load({"source": "jsonl", "path": "math500.jsonl", "answer_format": "boxed", "name": "math500",
                 "fields": {"problem": "problem", "answer": "solution", "id": "unique_id", "difficulty": "level"}})
    src = raw("math500.jsonl")
    assert len(rows) == 500
    # The `answer` column is MATH-500's own extraction: the boxed answer of every solution must equal it.
    assert [r["reference_answer"] for r in rows] == [rec["answer"] for rec in src]
    meta = json.loads(rows[0]["metadata"])
    assert meta["source_id"] == src[0]["unique_id"] and meta["solution"] == src[0]["solution"]
    assert [r["difficulty"] for r in rows] == [float(rec["level"]) for rec in src]


def test_aime_sets_with_different_field_names():
    a24 = load({"source": "jsonl", "path": "aime2024.jsonl", "fields": {"problem": "problem", "answer": "answer", "id": "id"}})
    a25 = load({"source": "jsonl", "path": "aime2025.jsonl", "fields": {"problem": "question", "answer": "answer"}, "limit": 7})
    assert len(a24) == 30 and len(a25) == 7
    assert [r["reference_answer"] for r in a24] == [str(rec["answer"]) for rec in raw("aime2024.jsonl")]
    assert all(0 <= int(r["reference_answer"]) <= 999 for r in a24 + a25)  # AIME answers are 000..999
    assert json.loads(a24[0]["metadata"])["source_id"] == 60


def test_mbpp_tests_become_code_checks():
    rows = load({"source": "jsonl", "path": "mbpp.jsonl",
                 "fields": {"problem": "text", "tests": "test_list", "setup": "test_setup_code", "id": "task_id"}})
    assert len(rows) == 974
    src = raw("mbpp.jsonl")
    for row, rec in zip(rows, src):
        tests = json.loads(row["tests"])
        assert tests["style"] == "asserts" and tests["asserts"] == rec["test_list"]
        assert row["domain"] == "code" and json.loads(row["metadata"])["verifier"] == "code"
    assert json.loads(rows[0]["metadata"])["code"] == src[0]["code"]  # unmapped columns kept
    shown = load({"source": "jsonl", "path": "mbpp.jsonl", "limit": 1, "show_tests": 1,
                  "fields": {"problem": "text", "tests": "test_list"}})[0]
    assert shown["problem"] == src[0]["text"] + "\nYour code should pass these tests:\n" + src[0]["test_list"][0]
    assert shown["problem_id"] == problem_id(shown["problem"]) != rows[0]["problem_id"]


def test_mbpp_reference_code_passes_through_check_sample():
    from factory.questions import check_sample
    from factory.verifiers.sandbox import SandboxConfig, SandboxUnavailable, probe

    try:
        probe(SandboxConfig())
    except SandboxUnavailable as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no sandbox here: {exc}")
    rows = load({"source": "jsonl", "path": "mbpp.jsonl", "limit": 2,
                 "fields": {"problem": "text", "tests": "test_list", "setup": "test_setup_code"}})
    code = json.loads(rows[0]["metadata"])["code"]
    assert check_sample(rows[0], {"completion": f"```python\n{code}\n```"}).status == "pass"
    assert check_sample(rows[0], {"completion": "```python\ndef min_cost(c, m, n):\n    return 0\n```"}).status == "fail"


def test_same_problem_from_two_sources_is_one_problem(tmp_path):
    src = raw("gsm8k_test.jsonl")[:5]
    # The same problems as CSV with other column names and extra whitespace.
    f = tmp_path / "copy.csv"
    pa_table = pa.table({"q": ["  " + r["question"].replace(" ", "  ") + "\n" for r in src], "final": [r["answer"] for r in src]})
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa_table, f)
    a = load({"source": "jsonl", "path": "gsm8k_test.jsonl", "limit": 5, "fields": {"problem": "question", "answer": "answer"}})
    b = list(iter_problems(parse_source({"source": "csv", "path": str(f), "fields": {"problem": "q", "answer": "final"}}), base_dir=tmp_path))
    assert [r["problem_id"] for r in a] == [r["problem_id"] for r in b]
    assert [r["reference_answer"] for r in a] == [r["reference_answer"] for r in b]
    assert {r["source"] for r in b} == {"copy"}


def test_parquet_with_nested_fields(tmp_path):
    f = tmp_path / "seeds.parquet"
    pq.write_table(pa.table({"item": [{"text": "What is 2+2?", "sol": "2+2=4 so \\boxed{4}"}, {"text": "What is 3*3?", "sol": "\\boxed{9}"}],
                             "tag": ["a", "b"]}), f)
    src = parse_source({"source": "parquet", "path": "seeds.parquet", "fields": {"problem": "item.text", "answer": "item.sol", "metadata": ["tag"]}})
    rows = list(iter_problems(src, base_dir=tmp_path))
    assert [r["reference_answer"] for r in rows] == ["4", "9"]
    assert json.loads(rows[1]["metadata"]) == {"tag": "b", "verifier": "math", "solution": "\\boxed{9}"}


def test_hf_folder_written_by_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "question": ["Tom has 3 apples and buys 4 more. How many?", "What is 10 - 7?", "What is 6 * 7?"],
        "answer": ["3 + 4 = 7\n#### 7", "#### 3", "#### 42"],
        "meta": [{"grade": 1}, {"grade": 2}, {"grade": 3}],
    })
    ds.save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "splits"))
    rows = load_hf(tmp_path, {"source": "hf", "path": "plain", "fields": {"problem": "question", "answer": "answer", "difficulty": "meta.grade"}})
    assert [r["reference_answer"] for r in rows] == ["7", "3", "42"]
    assert [r["difficulty"] for r in rows] == [1.0, 2.0, 3.0] and rows[0]["source"] == "plain"
    assert len(load_hf(tmp_path, {"source": "hf", "path": "splits", "fields": {"problem": "question", "answer": "answer"}})) == 3
    assert len(load_hf(tmp_path, {"source": "hf", "path": "splits", "split": "test", "fields": {"problem": "question"}})) == 1
    with pytest.raises(BadInput, match=r"splits: field 'split': no split 'dev'"):
        load_hf(tmp_path, {"source": "hf", "path": "splits", "split": "dev", "fields": {"problem": "question"}})
    with pytest.raises(BadInput, match=r"plain row 1: the mapped column 'questoin' is not in the dataset"):
        load_hf(tmp_path, {"source": "hf", "path": "plain", "fields": {"problem": "questoin"}})
    ds.select([]).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(BadInput, match=r"empty row 1: the dataset has no rows"):
        load_hf(tmp_path, {"source": "hf", "path": "empty", "fields": {"problem": "question"}})


def load_hf(base: Path, spec: dict) -> list[dict]:
    return list(iter_problems(parse_source(spec), base_dir=base))


# -- bad input: each names the file and the line ----------------------------------------------


def test_a_mapping_naming_a_missing_column(tmp_path):
    f = tmp_path / "seeds.jsonl"
    f.write_text('{"question": "What is 1+1?", "answer": "#### 2"}\n')
    with pytest.raises(BadInput) as err:
        list(read_seeds(f, FieldMap(problem="questoin", answer="answer")))
    msg = str(err.value)
    assert f"{f}:1" in msg and "'questoin'" in msg and "field 'problem'" in msg and "columns: ['answer', 'question']" in msg


def test_an_empty_file(tmp_path):
    for name in ("empty.jsonl", "empty.csv", "empty.parquet"):
        f = tmp_path / name
        f.write_bytes(b"")
        with pytest.raises(BadInput, match=rf"{name}:1: the file is empty"):
            list(read_seeds(f))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(BadInput, match=r"blank.jsonl:1: no rows"):
        list(read_seeds(blank))


def test_a_line_that_is_not_utf8(tmp_path):
    f = tmp_path / "latin1.jsonl"
    good = '{"problem": "What is 1+1?", "answer": "2"}\n'
    f.write_bytes((good * 3).encode() + '{"problem": "Caf\u00e9 bill: 3+4?", "answer": "7"}\n'.encode("latin-1") + good.encode())
    with pytest.raises(BadInput, match=r"latin1.jsonl:4: byte 0xe9 at column 17 is not UTF-8"):
        list(read_seeds(f, FieldMap(answer="answer")))
    c = tmp_path / "latin1.csv"
    c.write_bytes(b"problem,answer\nWhat is 1+1?,2\nCaf\xe9 3+4?,7\n")
    with pytest.raises(BadInput, match=r"latin1.csv:3: byte 0xe9"):
        list(read_seeds(c, FieldMap(answer="answer")))


def test_bad_rows_name_line_and_field(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"q": "What is 1+1?", "a": "#### 2"}\nnot json\n{"q": "", "a": "#### 3"}\n{"q": "x?", "a": "no hashes"}\n')
    with pytest.raises(BadInput, match=r"rows.jsonl:2: invalid JSON"):
        list(read_seeds(f, FieldMap(problem="q", answer="a")))
    f.write_text('{"q": "What is 1+1?", "a": "#### 2"}\n{"q": "", "a": "#### 3"}\n{"q": "x?", "a": "no hashes"}\n')
    with pytest.raises(BadInput, match=r"rows.jsonl:2: field 'problem': expected non-empty problem text"):
        list(read_seeds(f, FieldMap(problem="q", answer="a")))
    g = tmp_path / "answers.jsonl"
    g.write_text('{"q": "What is 1+1?", "a": "#### 2"}\n{"q": "x?", "a": "no hashes"}\n')
    with pytest.raises(BadInput, match=r"answers.jsonl:2: field 'answer': expected a GSM8K answer ending in '#### <final answer>'"):
        list(read_seeds(g, FieldMap(problem="q", answer="a"), answer_format="gsm8k"))
    # skip: the bad rows are logged and left out, a missing column still fails
    kept = list(read_seeds(f, FieldMap(problem="q", answer="a"), answer_format="gsm8k", on_bad_row="skip"))
    assert [r["reference_answer"] for r in kept] == ["2"]
    with pytest.raises(BadInput, match="'nope'"):
        list(read_seeds(f, FieldMap(problem="q", answer="nope"), on_bad_row="skip"))


def test_source_kind_must_match_the_file(tmp_path):
    f = tmp_path / "seeds.csv"
    f.write_text("problem\nWhat is 1+1?\n")
    with pytest.raises(BadInput, match=r"seeds.csv: field 'source' says 'jsonl' but the file is csv"):
        list(iter_problems({"source": "jsonl", "path": "seeds.csv"}, base_dir=tmp_path))
    assert len(list(iter_problems({"source": "csv", "path": "seeds.csv"}, base_dir=tmp_path))) == 1


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        list(read_seeds(tmp_path / "nope.jsonl"))
    with pytest.raises(BadInput, match="no such folder"):
        list(read_seeds(tmp_path / "nope", kind="hf"))


def test_answer_formats():
    assert normalise_answer("so 1,000 + 5\n#### 1,005") == ("1005", "so 1,000 + 5")
    assert normalise_answer(r"Thus $\boxed{\frac{1}{2}}$.", "auto")[0] == r"\frac{1}{2}"
    assert normalise_answer(r"a \boxed{x^{2}} then \boxed{\{1, 2\}}", "boxed")[0] == r"\{1, 2\}"
    assert normalise_answer(" 42 ", "plain") == ("42", None)
    assert normalise_answer("#### 7", "plain") == ("#### 7", None)


# -- source configs -------------------------------------------------------------------------


def test_source_configs_are_told_apart_by_source():
    assert isinstance(parse_source({"source": "csv", "path": "a.csv"}), SeedSource)
    gen = parse_source({"source": "generator", "generator": "linear", "count": 5, "difficulty": 4, "seed": 3})
    assert isinstance(gen, GeneratorSource) and gen.difficulty == 4
    tw = parse_source({"source": "teacher_written", "from": "gsm8k", "count": 20, "modes": ["harder", "combine"]})
    assert isinstance(tw, TeacherWrittenSource) and tw.from_ == "gsm8k" and tw.write_options()["modes"] == ["harder", "combine"]


@pytest.mark.parametrize("spec, message", [
    ({"source": "jsonl", "path": "a.jsonl", "fields": {"problem": "q", "anwser": "a"}}, r"questions\[0\]\.fields\.anwser: unknown key"),
    ({"source": "jsonl", "path": "a.jsonl", "limt": 3}, r"questions\[0\]\.limt: unknown key"),
    ({"source": "generator", "generator": "sudoku", "count": 3}, r"questions\[0\]\.generator: Input should be 'addition', 'arithmetic'"),
    ({"source": "generator", "generator": "linear", "count": 3, "difficulty": 9}, r"questions\[0\]\.difficulty: Input should be less than or equal to 5"),
    ({"source": "teacher_written", "count": 3}, r"questions\[0\]\.from: Field required"),
    ({"source": "webcrawl", "path": "x"}, r"questions\[0\]: source 'webcrawl': expected one of jsonl, parquet"),
    ({"path": "x"}, r"questions\[0\]\.source: missing"),
])
def test_bad_configs_name_the_key_path(spec, message):
    with pytest.raises(BadInput, match=message):
        parse_source(spec, "questions[0]")


def test_generator_source_through_iter_problems():
    rows = list(iter_problems({"source": "generator", "generator": "sorting", "count": 4, "seed": 1, "name": "sort-easy"}, base_dir=Path(".")))
    assert len(rows) == 4 and {r["source"] for r in rows} == {"sort-easy"}
    with pytest.raises(ValueError, match="write_questions"):
        iter_problems({"source": "teacher_written", "from": 0, "count": 2}, base_dir=Path("."))
