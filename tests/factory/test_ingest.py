import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.ingest import Reject, drop_duplicates, ingest_key, iter_records, parse_assignments, read_table, write_rejects
from factory.records import problem_id
from storage import BadInput
from tests.data import GSM8K_TEST as GSM8K
from tests.data import HUMANEVAL, LABELLED


def test_gsm8k_seed_set_maps_to_problems():
    table, rejects = read_table(GSM8K, "problems", {"problem": "question", "reference_answer": "answer"})
    assert rejects == [] and table.num_rows == 1319
    first = table.slice(0, 1).to_pylist()[0]
    assert first["source"] == "gsm8k_test"
    assert first["problem_id"] == problem_id(first["problem"])
    assert first["reference_answer"].endswith("#### 18")


def test_gzipped_humaneval_keeps_unmapped_columns_in_metadata():
    table, rejects = read_table(HUMANEVAL, "problems", {"problem": "prompt", "tests": "test"}, {"domain": "code"})
    assert rejects == [] and table.num_rows == 164
    row = table.slice(0, 1).to_pylist()[0]
    meta = json.loads(row["metadata"])
    assert row["domain"] == "code" and meta["entry_point"] == "has_close_elements" and "canonical_solution" in meta
    assert "def check" in row["tests"]


def test_trace_dataset_with_dotted_paths_maps_to_samples():
    table, rejects = read_table(
        LABELLED, "samples", {"problem": "question", "completion": "175b_verification.solution"}, {"model": "gpt3-175b"}
    )
    assert rejects == [] and table.num_rows == 1319
    row = table.slice(0, 1).to_pylist()[0]
    assert row["model"] == "gpt3-175b" and row["completion"].startswith("Janet eats")
    assert row["prompt"].startswith("Janet") and row["problem_id"] == problem_id(row["prompt"])
    assert json.loads(row["metadata"])["175b_verification"]["is_correct"] is True
    assert "question" not in json.loads(row["metadata"])  # it went to the prompt
    assert len(set(table.column("sample_id").to_pylist())) == 1319


def test_bad_rows_are_reported_with_line_and_field(tmp_path):
    f = tmp_path / "seed.jsonl"
    f.write_text(
        '{"problem": "ok 1", "difficulty": 3}\n'
        "not json\n"
        '{"problem": ""}\n'
        "\n"
        '{"problem": "ok 2", "difficulty": "hard"}\n'
        "[1, 2]\n"
    )
    table, rejects = read_table(f, "problems")
    assert table.num_rows == 1
    got = [(r.line, r.field) for r in rejects]
    assert got == [(2, None), (3, "problem"), (5, "difficulty"), (6, None)]
    assert "invalid JSON" in rejects[0].error and "expected a number" in rejects[2].error
    assert rejects[2].describe(str(f), "line").startswith(f"{f}:5: field 'difficulty': ")


def test_csv_lines_and_empty_cells(tmp_path):
    f = tmp_path / "seed.csv"
    f.write_text('problem,answer,difficulty\n"two\nlines",4,1\nplain,,x\n')
    table, rejects = read_table(f, "problems", {"reference_answer": "answer"})
    assert table.num_rows == 1 and table.column("reference_answer").to_pylist() == ["4"]
    assert [(r.line, r.field) for r in rejects] == [(4, "difficulty")]  # physical line of the row


def test_parquet_rows_are_numbered(tmp_path):
    f = tmp_path / "seed.parquet"
    pq.write_table(pa.table({"problem": ["a", None, "c"], "reference_answer": [1.0, 2.0, 2.5]}), f)
    table, rejects = read_table(f, "problems")
    assert table.column("reference_answer").to_pylist() == ["1", "2.5"]
    assert [(r.line, r.field) for r in rejects] == [(2, "problem")]


def test_samples_need_a_problem_and_some_output(tmp_path):
    f = tmp_path / "traces.jsonl"
    rows = [
        {"problem_id": "p1", "completion": "x", "messages": [{"role": "user", "content": "hi"}]},
        {"completion": "x"},
        {"problem_id": "p2"},
        {"problem_id": "p3", "messages": [{"role": "user"}]},
        {"problem_id": "p4", "answer": "1", "prompt_tokens": 3.5},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table, rejects = read_table(f, "samples")
    assert table.num_rows == 1
    assert [(r.line, r.field) for r in rejects] == [(2, "problem_id"), (3, "completion"), (4, "messages"), (5, "prompt_tokens")]


def test_options_are_checked_against_the_table(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"q": "a"}\n')
    with pytest.raises(BadInput, match=r"--map: table 'problems' has no field\(s\) \['problme'\]"):
        read_table(f, "problems", {"problme": "q"})
    with pytest.raises(BadInput, match="--table 'verdicts'"):
        read_table(f, "verdicts")
    with pytest.raises(BadInput, match="expected FIELD=VALUE"):
        parse_assignments(["problem"], "--map")
    _, rejects = read_table(f, "problems", {"problem": "question"})
    assert "mapped column 'question' is missing" in rejects[0].error


def test_unreadable_inputs_name_the_file(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        list(iter_records(tmp_path / "missing.jsonl"))
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    with pytest.raises(BadInput, match="unknown input format"):
        list(iter_records(bad))
    broken = tmp_path / "x.jsonl.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(BadInput, match="x.jsonl.gz: cannot read"):
        list(iter_records(broken))
    fake = tmp_path / "x.parquet"
    fake.write_text("not parquet")
    with pytest.raises(BadInput, match="x.parquet: cannot read as parquet"):
        list(iter_records(fake))


def test_ingest_key_depends_on_content_and_options(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"problem": "a"}\n')
    k1 = ingest_key(f, "problems", {}, {}, None)
    assert k1 == ingest_key(f, "problems", {}, {}, None)
    assert k1 != ingest_key(f, "problems", {"problem": "problem"}, {}, None)
    f.write_text('{"problem": "b"}\n')
    assert k1 != ingest_key(f, "problems", {}, {}, None)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write('{"problem": "a"}\n')
    table, _ = read_table(tmp_path / "b.jsonl.gz", "problems")
    assert table.column("source").to_pylist() == ["b"]


def test_drop_duplicates_keeps_the_first_row_of_each_new_id(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"problem": p, "level": i}) + "\n" for i, p in enumerate(["a", "b", "a", "c", "a"])))
    table, _ = read_table(f, "problems")
    kept, repeats, already = drop_duplicates(table, "problems", known={problem_id("c")})
    assert (repeats, already) == (2, 1)
    assert [json.loads(m)["level"] for m in kept.column("metadata").to_pylist()] == [0, 1]  # the first "a", then "b"
    same, repeats, already = drop_duplicates(kept, "problems")
    assert same.num_rows == 2 and repeats == already == 0


@pytest.mark.parametrize(
    "value,table,field,expected",
    [
        ("9" * 400, "problems", "difficulty", "expected a finite number"),
        ("1e400", "problems", "difficulty", "expected a finite number"),
        (str(2**63), "samples", "prompt_tokens", "expected an integer that fits 64 bits"),
        (str(2**31), "samples", "sample_index", "expected an integer that fits 32 bits"),
    ],
)
def test_numbers_beyond_the_column_are_rejects_not_crashes(tmp_path, value, table, field, expected):
    f = tmp_path / "n.jsonl"
    f.write_text(f'{{"problem": "1+1?", "completion": "2", "{field}": {value}}}\n')
    rows, rejects = read_table(f, table)
    assert rows.num_rows == 0 and [(r.line, r.field) for r in rejects] == [(1, field)]
    assert expected in rejects[0].error


def test_big_int64_values_are_kept_exactly(tmp_path):
    f = tmp_path / "n.jsonl"
    f.write_text(json.dumps({"problem": "1+1?", "completion": "2", "prompt_tokens": 2**62 + 1}) + "\n")
    rows, rejects = read_table(f, "samples")
    assert rejects == [] and rows.column("prompt_tokens").to_pylist() == [2**62 + 1]  # not rounded through a float


def test_unparseable_json_lines_are_rejects_with_their_line(tmp_path):
    f = tmp_path / "j.jsonl"
    f.write_text('{"problem": "ok"}\n{"problem": ' + "[" * 50_000 + "]" * 50_000 + '}\n{"problem": ' + "7" * 5000 + "}\n")
    assert [(pos, err) for pos, rec, err in iter_records(f) if rec is None] == [
        (2, "invalid JSON (nested too deeply)"),
        (3, "invalid JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
    ]


def test_write_rejects_refuses_a_symlink(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("keep\n")
    (tmp_path / "r.jsonl").symlink_to(target)
    with pytest.raises(BadInput, match="is a symbolic link"):
        write_rejects([Reject(1, None, "bad", None)], tmp_path / "r.jsonl")
    assert target.read_text() == "keep\n"
