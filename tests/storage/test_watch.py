"""Watching a run: readers of a DuckDB catalog file answer while a writer in another process
holds it, see only whole committed batches, and never break the writer."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage import BadInput, Lake
from tests.storage.test_postgres import catalog as pg_catalog  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROWS = 32
GOAL_S = 2.0
WORST_S = 5.0

# Commits batches b0..b{N-1} of ROWS problems each, tagged with their key in `source`; with
# `hold`, commits one batch, says so, and then holds the lake idle until stdin closes, then
# commits one more.
WRITER = textwrap.dedent(
    """
    import sys
    from storage import Lake
    store, batches, rows, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    text = "y" * 3000
    def batch(key):
        return [{"problem_id": f"{key}-{i}", "problem": text, "source": key} for i in range(rows)]
    with Lake.open(store, lock_timeout_s=60) as lake:
        if mode == "hold":
            lake.commit("problems", batch("b0"), batch_key="b0", run_id="w")
            print("committed", flush=True)
            sys.stdin.read()
            lake.commit("problems", batch("b1"), batch_key="b1", run_id="w")
        else:
            for b in range(batches):
                key = f"b{b}"
                assert lake.commit("problems", batch(key), batch_key=key, run_id="w").committed
    print("done", flush=True)
    """
)

# Until the file argv[2] exists (then once more), opens the lake read-only (a fresh snapshot)
# and reads it three ways; prints one JSON line per round, with how long the first query (the
# copy of the catalog included) and the confined one took.
READER = textwrap.dedent(
    """
    import json, os, sys, time
    from storage import Lake
    store, stop = sys.argv[1], sys.argv[2]
    last = False
    while not last:
        last = os.path.exists(stop)
        t = time.perf_counter()
        with Lake.open(store, read_only=True, lock_timeout_s=60) as lake:
            rows = lake.query("SELECT count(*) FROM problems").column(0)[0].as_py()  # copies the catalog
            first = time.perf_counter() - t
            ledger = lake.query("SELECT count(*), coalesce(sum(row_count), 0)::BIGINT FROM batches WHERE table_name = 'problems'").to_pylist()[0]
            t = time.perf_counter()
            sizes = lake.sql("SELECT source, count(*) AS n FROM problems GROUP BY 1").to_pylist()  # its own engine
            confined = time.perf_counter() - t
        print(json.dumps({"s": [first, confined], "rows": rows, "batches": list(ledger.values()),
                          "sizes": sorted({r["n"] for r in sizes}), "groups": len(sizes)}), flush=True)
    """
)


def python(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_reader_process_sees_whole_batches_while_a_writer_commits(tmp_path):
    store, stop = str(tmp_path / "store"), tmp_path / "stop"
    with Lake.open(store) as lake:
        lake.connection()  # the catalog exists before the reader looks
    batches = 200
    writer = python(WRITER, store, str(batches), str(ROWS), "loop")
    reader = python(READER, store, str(stop))
    out, errs = writer.communicate(timeout=600)
    stop.touch()
    assert writer.returncode == 0 and out.strip() == "done", errs
    lines, rerrs = reader.communicate(timeout=120)
    assert reader.returncode == 0, rerrs
    reads = [json.loads(line) for line in lines.splitlines()]

    assert len(reads) >= 5, "too few reads to say anything: the reader was starved"
    during = [r for r in reads[:-1] if 0 < r["rows"] < batches * ROWS]
    assert during, "no read landed while the writer was committing"
    counts = [r["rows"] for r in reads]
    assert counts == sorted(counts), "a later read saw fewer rows"
    for r in reads:
        assert r["rows"] % ROWS == 0
        assert r["batches"] == [r["rows"] // ROWS, r["rows"]]  # the ledger agrees with the rows
        assert r["sizes"] in ([], [ROWS]) and r["groups"] == r["rows"] // ROWS  # only whole batches
    assert reads[-1]["rows"] == batches * ROWS
    took = sorted(s for r in reads for s in r["s"])
    # The goal (issue 18) is p90 under 2 s; on a loaded 2-core machine one attach can take a
    # second, so the worst read gets more room, still far below the 60 s a reader used to wait.
    assert took[int(0.9 * len(took))] < GOAL_S and took[-1] < WORST_S, f"read latencies (s): {took}"
    with Lake.open(store) as lake:
        ledger = lake.query("SELECT batch_key, row_count FROM batches WHERE table_name = 'problems'").to_pylist()
        assert sorted(r["batch_key"] for r in ledger) == sorted(f"b{b}" for b in range(batches))  # each once
        assert lake.query("SELECT count(*) FROM problems").column(0)[0].as_py() == batches * ROWS


def test_an_idle_writer_lets_a_reader_in_and_commits_again_after(tmp_path):
    """The run holds the file while it waits on its teacher: the reader does not wait for it."""
    store = str(tmp_path / "store")
    writer = python(WRITER, store, "0", str(ROWS), "hold", stdin=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "committed"
        for _ in range(2):  # twice: the writer attached again in between
            t = time.perf_counter()
            # Before: the read-write attach waited lock_timeout_s, then LakeBusy.
            with Lake.open(store, read_only=True, lock_timeout_s=10) as lake:
                assert lake.query("SELECT count(*) FROM problems").column(0)[0].as_py() == ROWS
                assert [r["table"] for r in lake.tables()][:1] == ["problems"]
            assert time.perf_counter() - t < WORST_S
            t = time.perf_counter()
            with Lake.open(store, lock_timeout_s=10) as lake:
                assert lake.sql("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == ROWS
            assert time.perf_counter() - t < WORST_S
    finally:
        out, errs = writer.communicate(timeout=60)
    assert writer.returncode == 0 and out.strip() == "done", errs
    with Lake.open(store) as lake:
        assert lake.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 2 * ROWS


def test_a_reader_keeps_one_snapshot_and_cannot_write(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as writer:
        writer.commit("problems", [{"problem_id": "a", "problem": "x"}], batch_key="a", run_id="r")
        reader = Lake.open(store, read_only=True)
        assert reader.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 1
        writer.commit("problems", [{"problem_id": "b", "problem": "x"}], batch_key="b", run_id="r")
    with reader:
        # every query of one reader (the report's many) reads the snapshot of its first
        assert reader.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 1
        assert reader.sql("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 1
        writes = {"commit": lambda: reader.commit("problems", [{"problem_id": "c", "problem": "x"}], batch_key="c", run_id="r"),
                  "save_dataset": lambda: reader.save_dataset("d", "SELECT * FROM problems", run_id="r"),
                  "compact": reader.compact, "compact_if": lambda: reader.compact_if(1), "maintain": reader.maintain}
        for what, write in writes.items():
            with pytest.raises(BadInput, match=f"^{what}: this lake was opened read-only"):
                write()
    with Lake.open(store, read_only=True) as again:
        assert again.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 2
        assert again.list_datasets().num_rows == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_reader_of_a_sqlite_or_postgres_catalog_reads_next_to_the_writer(kind, tmp_path, request):
    store = str(tmp_path / "store")
    catalog = "sqlite:" + str(tmp_path / "c.sqlite") if kind == "sqlite" else request.getfixturevalue("pg_catalog")
    with Lake.open(store, catalog) as writer:
        writer.commit("problems", [{"problem_id": "a", "problem": "x"}], batch_key="a", run_id="r")
        with Lake.open(store, catalog, read_only=True) as reader:
            assert reader.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 1
            assert reader._copy is None  # the catalog itself, attached read-only
        writer.commit("problems", [{"problem_id": "b", "problem": "x"}], batch_key="b", run_id="r")


def test_a_reader_migrates_an_older_lake_first_and_refuses_a_newer_one(tmp_path):
    from storage import schemas

    store = str(tmp_path / "store")
    with Lake.open(store) as lake:
        lake.commit("problems", [{"problem_id": "a", "problem": "x"}], batch_key="a", run_id="r")
        con = lake.connection()
        con.execute("DROP TABLE evals")  # as a lake made before `evals` existed
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(schemas.SCHEMA_VERSION - 1)])
    with Lake.open(store, read_only=True) as reader:
        assert reader.query("SELECT count(*) FROM evals").column(0)[0].as_py() == 0
        assert reader.query("SELECT count(*) FROM problems").column(0)[0].as_py() == 1
        assert reader._copy is not None  # it reads a copy, taken after the migration
    with Lake.open(store) as lake:
        lake.connection().execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(schemas.SCHEMA_VERSION + 1)])
    with Lake.open(store, read_only=True) as reader, pytest.raises(BadInput, match="newer than this code"):
        reader.query("SELECT 1")


# Tries to write the lake from another process: prints "busy" when the catalog is held, else commits.
INTRUDER = textwrap.dedent(
    """
    import sys
    from storage import Lake, LakeBusy
    try:
        with Lake.open(sys.argv[1], lock_timeout_s=1) as lake:
            lake.commit("problems", [{"problem_id": "intruder", "problem": "x"}], batch_key="intruder", run_id="i")
        print("committed", flush=True)
    except LakeBusy:
        print("busy", flush=True)
    """
)


@pytest.mark.parametrize("thread", [False, True])
def test_a_reader_in_the_writers_process_leaves_the_writers_lock_alone(tmp_path, thread):
    """fcntl locks belong to the process, and closing any descriptor of a file drops them all
    (POSIX): a reader Lake that copied the catalog while a writer Lake of the same process held
    it used to drop DuckDB's lock, and another process could then attach a second writer."""
    import threading

    store = str(tmp_path / "store")
    with Lake.open(store) as writer:
        writer.commit("problems", [{"problem_id": "a", "problem": "x"}], batch_key="a", run_id="r")
        seen = []

        def read():
            with Lake.open(store, read_only=True, lock_timeout_s=10) as reader:
                seen.append(reader.query("SELECT count(*) FROM problems").column(0)[0].as_py())
                seen.append(reader.sql("SELECT count(*) AS n FROM problems").column("n")[0].as_py())

        if thread:
            t = threading.Thread(target=read)
            t.start()
            t.join(30)
        else:
            read()
        assert seen == [1, 1]
        writer.commit("problems", [{"problem_id": "b", "problem": "x"}], batch_key="b", run_id="r")
        out = subprocess.run([sys.executable, "-c", INTRUDER, store], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "busy", out.stdout + out.stderr
        writer.commit("problems", [{"problem_id": "c", "problem": "x"}], batch_key="c", run_id="r")
    with Lake.open(store, read_only=True) as after:
        assert sorted(after.query("SELECT problem_id FROM problems").column(0).to_pylist()) == ["a", "b", "c"]
