"""The `factory` CLI: exit codes, messages that name the bad input, and output formats."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage import Lake
from tests.data import GSM8K_TEST as GSM8K


@pytest.fixture
def seed(tmp_path):
    f = tmp_path / "seed.jsonl"
    f.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": str(2 * i), "level": i % 3}) + "\n" for i in range(30)))
    return f


def test_ingest_then_query_in_every_format(cli, seed, tmp_path):
    r = cli("ingest", str(seed), "--table", "problems", "--map", "problem=question", "--map", "reference_answer=answer")
    assert r.exit_code == 0 and "ingested 30 row(s)" in r.stderr
    r = cli("ingest", str(seed), "--table", "problems", "--map", "problem=question", "--map", "reference_answer=answer")
    assert r.exit_code == 0 and "already ingested" in r.stderr

    q = "SELECT reference_answer AS a FROM problems ORDER BY a::INT LIMIT 3"
    assert cli("sql", q, "--format", "csv").stdout.splitlines() == ['"a"', '"0"', '"2"', '"4"']
    assert json.loads(cli("sql", q, "--format", "json").stdout) == [{"a": "0"}, {"a": "2"}, {"a": "4"}]
    assert [json.loads(line) for line in cli("sql", q, "--format", "jsonl").stdout.splitlines()] == [{"a": "0"}, {"a": "2"}, {"a": "4"}]
    table = cli("sql", q).stdout
    assert " a " in table and " 4 " in table
    out = tmp_path / "out.parquet"
    assert cli("sql", q, "--format", "parquet", "--output", str(out)).exit_code == 0
    assert pq.read_table(out).column("a").to_pylist() == ["0", "2", "4"]
    r = cli("sql", "SELECT * FROM problems", "--max-rows", "5")
    assert r.exit_code == 0 and "30 rows; showing 5" in r.stderr


def test_bad_rows_fail_the_ingest_with_line_and_field(cli, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "fine"}\n{"problem": "x", "difficulty": "hard"}\n{oops\n')
    r = cli("ingest", str(f), "--table", "problems")
    assert r.exit_code == 2
    assert "2 bad row(s), nothing ingested" in r.stderr
    assert f"{f}:2: field 'difficulty': expected a number, got 'hard'" in r.stderr
    assert f"{f}:3: invalid JSON" in r.stderr
    with Lake.open(str(tmp_path / "store")) as lake:
        assert lake.tables()[0]["rows"] == 0

    rejects = tmp_path / "rejects.jsonl"
    r = cli("ingest", str(f), "--table", "problems", "--skip-bad-rows", "--rejects", str(rejects))
    assert r.exit_code == 0 and "2 bad row(s) skipped" in r.stderr and "ingested 1 row(s)" in r.stderr
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(x["line"], x["field"]) for x in lines] == [(2, "difficulty"), (3, None)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["ingest", "missing.jsonl", "--table", "problems"], "missing.jsonl: no such file"),
        (["ingest", "{seed}", "--table", "verdicts"], "--table 'verdicts'"),
        (["ingest", "{seed}", "--table", "problems", "--map", "nofield=question"], "has no field(s) ['nofield']"),
        (["ingest", "{seed}", "--table", "problems", "--map", "problem"], "--map 'problem': expected FIELD=VALUE"),
        (["sql", "SELECT 1", "--format", "xml"], "--format 'xml'"),
        (["sql", "SELECT 1", "--format", "parquet"], "--format parquet needs --output"),
        (["sql", "DROP TABLE problems"], "only SELECT is allowed"),
        (["sql", "SELECT * FROM read_csv('/etc/passwd')"], "read_csv() is not allowed"),
        (["sql", "SELECT nope FROM problems"], "query failed: Binder Error"),
        (["export", "nothing", "--output", "x.jsonl"], "dataset 'nothing' does not exist"),
        (["export", "bad name", "--output", "x.jsonl"], "expected NAME or NAME@VERSION"),
        (["export", "x", "--format", "xml", "--output", "x.xml"], "--format 'xml'"),
        (["maintain", "--older-than", "soon"], "--older-than 'soon'"),
        (["maintain", "--compact", "--dry-run"], "--compact cannot be combined with --dry-run"),
        (["snapshot", "d", "SELECT * FROM nowhere"], "the SELECT fails"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_reason(cli, seed, args, message):
    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    r = cli(*[a.replace("{seed}", str(seed)) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert r.stdout == ""


def test_read_commands_refuse_a_missing_lake(cli):
    for args in (["sql", "SELECT 1"], ["tables"], ["export", "x", "--output", "x.jsonl"], ["maintain"]):
        r = cli(*args)
        assert r.exit_code == 2 and "no lake at" in r.stderr


def test_snapshot_export_and_time_travel(cli, seed, tmp_path):
    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    r = cli("snapshot", "seed", "SELECT problem_id, problem FROM problems ORDER BY problem", "--description", "first")
    assert r.exit_code == 0 and "dataset seed version 1: 30 row(s)" in r.stderr
    more = tmp_path / "more.jsonl"
    more.write_text('{"problem": "new one"}\n')
    cli("ingest", str(more), "--table", "problems")
    assert "version 2: 31 row(s)" in cli("snapshot", "seed", "SELECT problem_id, problem FROM problems ORDER BY problem").stderr

    v1 = tmp_path / "v1.jsonl"
    assert cli("export", "seed@1", "--output", str(v1)).exit_code == 0
    assert len(v1.read_text().splitlines()) == 30
    latest = tmp_path / "latest.parquet"
    r = cli("export", "seed", "--format", "parquet", "--output", str(latest))
    assert r.exit_code == 0 and "seed@2" in r.stderr and pq.read_table(latest).num_rows == 31
    assert "version 3" in cli("export", "seed@3", "--output", str(v1)).stderr  # named in the error
    assert len(v1.read_text().splitlines()) == 30  # the failed export left the old file alone

    r = cli("tables")
    assert r.exit_code == 0 and "problems" in r.stdout and "seed" in r.stdout


def test_maintain_reports_orphans(cli, seed, tmp_path):
    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    orphan = tmp_path / "store" / "data" / "main" / "problems" / "stray.parquet"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"PAR1")
    r = cli("maintain", "--older-than", "0s", "--dry-run")
    assert r.exit_code == 0 and str(orphan) in r.stdout and orphan.exists()
    r = cli("maintain", "--older-than", "0s")
    assert "deleted 1 orphaned file(s)" in r.stderr and not orphan.exists()


def test_maintain_compact_merges_files_and_keeps_exports(cli, tmp_path):
    for b in range(6):  # one commit, one small file each (more rows than the catalog inlines)
        f = tmp_path / f"part{b}.jsonl"
        f.write_text("".join(json.dumps({"problem": f"q{b}-{i}"}) + "\n" for i in range(20)))
        cli("ingest", str(f), "--table", "problems")
    cli("snapshot", "d", "SELECT problem FROM problems")
    for b in range(6, 9):
        f = tmp_path / f"part{b}.jsonl"
        f.write_text(json.dumps({"problem": f"q{b}"}) + "\n")
        cli("ingest", str(f), "--table", "problems")
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    cli("export", "d@1", "--output", str(before))

    r = cli("maintain", "--compact", "--older-than", "0s")

    assert r.exit_code == 0, r.output
    line = next(x for x in r.stderr.splitlines() if x.startswith("compacted: "))
    files_before, files_after = map(int, line.split(" data file")[0].removeprefix("compacted: ").split(" -> "))
    assert files_after < files_before and "kept 1 pinned by datasets" in line
    assert cli("export", "d@1", "--output", str(after)).exit_code == 0
    assert after.read_bytes() == before.read_bytes() and len(before.read_text().splitlines()) == 120


def test_the_installed_console_script_runs(tmp_path):
    exe = shutil.which("factory") or str(Path(sys.executable).parent / "factory")
    if not Path(exe).exists():
        pytest.skip("the factory console script is not installed in this environment")
    env = {"FACTORY_STORE": str(tmp_path / "store"), "PATH": str(Path(sys.executable).parent), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([exe, "ingest", str(GSM8K), "--table", "problems", "--map", "problem=question"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "sql", "SELECT count(*) AS n FROM problems", "--format", "csv"], env=env, capture_output=True, text=True)
    assert r.stdout.splitlines() == ['"n"', "1319"]
    r = subprocess.run([exe, "sql", "COPY problems TO '/tmp/x.csv'"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_verify_math_choice_and_regex_in_input_order(cli, tmp_path):
    rows = [
        {"id": "a", "completion": "<think>2+2</think>The answer is \\boxed{4}", "reference_answer": "4"},
        {"id": "b", "completion": "<think>hmm</think>A: 5", "reference_answer": 4},
        {"id": "c", "completion": "<think>no answer</think>", "reference_answer": "4"},
    ]
    out = tmp_path / "out.jsonl"
    r = cli("verify", write_rows(tmp_path / "m.jsonl", rows), "--verifier", "math", "--output", str(out))
    assert r.exit_code == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["id"], g["status"], g["score"]) for g in got] == [("a", "pass", 1.0), ("b", "fail", 0.0), ("c", "unverifiable", None)]
    assert set(got[0]) == {"id", "status", "score", "extracted_answer", "reason"}

    choice = [{"id": 1, "completion": "Answer: (B)", "reference_answer": "B"}]
    r = cli("verify", write_rows(tmp_path / "c.jsonl", choice), "--verifier", "choice")
    assert json.loads(r.stdout)["status"] == "pass"
    regex = [{"id": 1, "completion": "Answer: 12:30", "pattern": r"\d\d:\d\d"}]
    assert json.loads(cli("verify", write_rows(tmp_path / "r.jsonl", regex), "--verifier", "regex").stdout)["status"] == "pass"


def test_verify_bad_rows_exit_2_naming_the_line(cli, tmp_path):
    f = write_rows(tmp_path / "bad.jsonl", [{"id": 1, "completion": "x", "reference_answer": "1"}, {"id": 2, "completion": 3}])
    r = cli("verify", f, "--verifier", "math")
    assert r.exit_code == 2 and f"{f}:2: field 'completion': expected a string" in r.stderr and r.stdout == ""
    r = cli("verify", f, "--verifier", "sql")
    assert r.exit_code == 2 and "--verifier 'sql'" in r.stderr
    code = write_rows(tmp_path / "code.jsonl", [{"id": 1, "completion": "x", "tests": {"style": "unit"}}])
    r = cli("verify", code, "--verifier", "code")
    assert r.exit_code == 2 and "style 'asserts' or 'stdio'" in r.stderr


def test_decontaminate_flags_a_copied_benchmark_problem(cli, tmp_path):
    from factory.benchmarks import load

    copied = load("math500")[7]["problem"]
    rows = [{"problem": "Solve: " + copied}, {"problem": "A farmer has 17 goats and buys 3 more each week for 9 weeks. How many goats now?"}]
    out = tmp_path / "out.parquet"
    r = cli("decontaminate", write_rows(tmp_path / "p.jsonl", rows), "--benchmarks", "math500,gsm8k", "--output", str(out))
    assert r.exit_code == 0, r.stderr
    got = pq.read_table(out).to_pylist()
    assert [g["contaminated"] for g in got] == [True, False]
    assert got[0]["benchmark"] == "math500" and got[0]["problem"] == rows[0]["problem"]
    assert "math500: 1 of 2 row(s)" in r.stderr
    r = cli("decontaminate", write_rows(tmp_path / "p.jsonl", rows), "--benchmarks", "math5000", "--output", str(out))
    assert r.exit_code == 2 and "math5000" in r.stderr
    r = cli("decontaminate", write_rows(tmp_path / "q.jsonl", [{"text": "x"}]), "--output", str(out))
    assert r.exit_code == 2 and "q.jsonl:1: field 'problem': expected text" in r.stderr


def test_dedup_keeps_every_row_and_marks_clusters(cli, tmp_path):
    base = " ".join(f"step {i} adds the next number to the running total and checks the sum again" for i in range(6))
    rows = [
        {"id": 1, "text": base + " and the answer is twelve"},
        {"id": 2, "text": base + " and the answer is twelve"},  # exact copy
        {"id": 3, "text": base + " and then the answer is twelve"},  # near copy
        {"id": 4, "text": "A completely different text about geometry, circles and the area of a triangle with sides three four five"},
    ]
    out = tmp_path / "out.jsonl"
    r = cli("dedup", write_rows(tmp_path / "t.jsonl", rows), "--column", "text", "--output", str(out), "--threshold", "0.8")
    assert r.exit_code == 0, r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2, 3, 4]
    assert [g["kept"] for g in got] == [True, False, False, True]
    assert got[1]["cluster_id"] == got[0]["cluster_id"] == got[2]["cluster_id"] != got[3]["cluster_id"]
    assert got[1]["method"] == "exact" and got[2]["method"] == "minhash"
    assert "kept 2 of 4 row(s)" in r.stderr
    r = cli("dedup", write_rows(tmp_path / "t.jsonl", rows), "--column", "text", "--output", str(out), "--threshold", "1.5")
    assert r.exit_code == 2 and "--threshold 1.5" in r.stderr


# -- user SQL: one confinement for sql and snapshot -----------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM enable_profiling(format='json', save_location='{tmp}/profile.json')",
        "SELECT * FROM enable_logging(storage_path='{tmp}/logs')",
        "SELECT * FROM checkpoint('lake')",
        "SELECT * FROM force_checkpoint('lake')",
        "SELECT * FROM lake.merge_adjacent_files()",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM problems WHERE 0 < (SELECT count(*) FROM enable_logging(storage_path='{tmp}/logs'))",
        "SELECT setseed(0.5)",
    ],
)
def test_snapshot_refuses_side_effect_functions_and_writes_nothing(cli, seed, tmp_path, query):
    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    with Lake.open(str(tmp_path / "store")) as lake:
        before = lake.snapshot_id()
    files = sorted(p.name for p in tmp_path.iterdir())
    r = cli("snapshot", "d", query.format(tmp=tmp_path))
    assert r.exit_code == 2, r.output
    assert "is not allowed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    with Lake.open(str(tmp_path / "store")) as lake:
        assert lake.snapshot_id() == before
        assert lake.list_datasets().num_rows == 0


def test_snapshot_stops_at_its_time_limit(cli, seed, tmp_path):
    import time

    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    start = time.monotonic()
    r = cli("snapshot", "slow", "SELECT count(*) FROM range(100000000000)", "--timeout", "1")
    seconds = time.monotonic() - start
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == "error: dataset 'slow': query stopped at the time limit of 1 s"
    assert seconds < 1 + 10
    assert cli("snapshot", "slow", "SELECT 1", "--timeout", "0").exit_code == 2
    r = cli("snapshot", "fine", "SELECT * FROM problems", "--timeout", "30", "--memory-limit", "200MB")
    assert r.exit_code == 0 and "version 1: 30 row(s)" in r.stderr


_PEAK = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: sys.stderr.write(f'peak_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
    "from flows.cli import main\n"
    "sys.argv = ['factory', *sys.argv[1:]]\n"
    "main()\n"
)


def _factory_peak(store: Path, *args: str) -> tuple[int, str, float]:
    """Run `factory ARGS` in a fresh process; its exit code, stderr and peak RSS in MB."""
    import os

    env = {**os.environ, "FACTORY_STORE": str(store), "HF_HUB_OFFLINE": "1"}
    env.pop("FACTORY_CATALOG", None)
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=Path(__file__).resolve().parents[2], env=env,
        capture_output=True, text=True, timeout=300,
    )
    lines = r.stderr.strip().splitlines()
    peak = int(lines[-1].removeprefix("peak_kb=")) / 1024
    return r.returncode, "\n".join(lines[:-1]), peak


@pytest.mark.parametrize(
    "command,query",
    [
        # ~2 GB of result: past DuckDB's own accounting (it finished at 2.1 GB RSS before).
        (["sql", "--format", "csv", "--output", "{tmp}/out.csv"], "SELECT repeat('x', 1000) || range AS s FROM range(2000000)"),
        # ~2 GB of hash table, counted by snapshot (it ran on the unlimited writer before).
        (["snapshot", "big"], "SELECT DISTINCT repeat('x', 1000) || range AS s FROM range(2000000)"),
    ],
    ids=["sql", "snapshot"],
)
def test_the_memory_limit_holds(cli, seed, tmp_path, command, query):
    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    store = tmp_path / "store"
    code, _, base = _factory_peak(store, "sql", "SELECT 1")
    assert code == 0
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, stderr, peak = _factory_peak(store, *args, query, "--memory-limit", "100MB")
    assert code == 2, stderr
    assert "memory limit of 100MB" in stderr and len(stderr.splitlines()) == 1
    assert peak - base < 5 * 100, f"peak {peak:.0f} MB against {base:.0f} MB for SELECT 1"
    assert not (tmp_path / "out.csv").exists()


def test_csv_writes_list_and_struct_cells_as_json(cli, seed):
    import csv
    import io

    cli("ingest", str(seed), "--table", "problems", "--map", "problem=question")
    q = "SELECT [1, 2] AS l, {'a': 1, 'b': 'x, \"y\"'} AS s, [{'k': NULL}] AS ls, NULL::INT[] AS none, 3 AS n"
    r = cli("sql", q, "--format", "csv")
    assert r.exit_code == 0, r.output
    header, row = list(csv.reader(io.StringIO(r.stdout)))
    assert header == ["l", "s", "ls", "none", "n"]
    assert [json.loads(row[0]), json.loads(row[1]), json.loads(row[2])] == [[1, 2], {"a": 1, "b": 'x, "y"'}, [{"k": None}]]
    assert row[3:] == ["", "3"]
