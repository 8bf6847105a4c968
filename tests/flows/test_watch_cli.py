"""Watching a run from another terminal: `factory sql`, `tables`, `runs` and `report` answer
while a writer process holds the default store (a DuckDB catalog file) and commits, and the
writer finishes as it would alone."""

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from storage import Lake

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROWS = 32
ANSWER_S = 5.0  # "within a few seconds"; the goal of 2 s is measured by benches/lake_watch.py

# A run as the lake sees it: a `runs` row, then batches of problems, one at a time, with a short
# pause (its teacher), announcing each, until stdin closes; then the finished `runs` row.
WRITER = textwrap.dedent(
    """
    import sys, threading, time
    from storage import Lake
    store = sys.argv[1]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    text = "z" * 3000
    with Lake.open(store) as lake:
        lake.commit("runs", [{"run_id": "watched", "status": "started"}], batch_key="run:started", run_id="watched")
        b = 0
        while not stop.is_set() or b < 3:
            key = f"b{b}"
            rows = [{"problem_id": f"{key}-{i}", "problem": text, "source": key} for i in range(32)]
            assert lake.commit("problems", rows, batch_key=key, run_id="watched").committed
            print(b + 1, flush=True)
            b += 1
            time.sleep(0.02)
        lake.commit("runs", [{"run_id": "watched", "status": "finished", "counts": '{"funnel": []}'}],
                    batch_key="run:finished", run_id="watched")
    print("done", b, flush=True)
    """
)


def test_commands_answer_while_a_writer_holds_the_default_store(cli, tmp_path):
    store = tmp_path / "store"  # the cli fixture's FACTORY_STORE
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(writer.stdout), daemon=True).start()

    def committed() -> int:
        return max((int(x) for x in lines if x.strip().isdigit()), default=0)

    try:
        deadline = time.monotonic() + 120
        while committed() < 3:
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read() if writer.poll() is not None else "slow"
            time.sleep(0.05)

        def timed(*args: str):
            before, t = committed(), time.perf_counter()
            r = cli(*args)
            took = time.perf_counter() - t
            assert r.exit_code == 0, (args, r.stderr)
            assert took < ANSWER_S, (args, took)
            return r, before

        r, before = timed("sql", "SELECT count(*) AS n, count(DISTINCT source) AS b FROM problems", "--format", "json")
        got = json.loads(r.stdout)[0]
        assert got["n"] == ROWS * got["b"] and got["b"] >= before  # whole batches, at least those committed before

        r, before = timed("tables")
        problems = next(line for line in r.stdout.splitlines() if "problems" in line)
        rows, batches = (int(x) for x in re.findall(r"\d+", problems.replace(",", "")))
        assert rows == batches * ROWS and batches >= before

        r, _ = timed("runs", "--format", "json")
        assert [x["run_id"] for x in json.loads(r.stdout)] == ["watched"]

        out = tmp_path / "report.html"
        r, _ = timed("report", "--output", str(out))
        assert out.exists() and "watched" in out.read_text()
        assert writer.poll() is None, "the writer stopped while the commands ran"
    finally:
        writer.stdin.close()
        writer.wait(timeout=120)
    assert writer.returncode == 0, writer.stderr.read()
    done = int(lines[-1].split()[1])
    assert lines[-1].startswith("done") and done > 3
    with Lake.open(str(store), read_only=True) as lake:
        ledger = lake.query("SELECT batch_key FROM batches WHERE table_name = 'problems'").column(0).to_pylist()
        assert sorted(ledger) == sorted(f"b{b}" for b in range(done))  # every batch once, none lost
        assert lake.query("SELECT count(*) FROM problems").column(0)[0].as_py() == done * ROWS
        assert lake.query("SELECT arg_max(status, created_at) FROM runs").column(0)[0].as_py() == "finished"
