"""Commits across processes: SIGKILL mid-commit, concurrent writers, a held catalog."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage import Lake

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Commits batches of ROWS rows tagged with their batch key (in `source`), announcing each.
WRITER = textwrap.dedent(
    """
    import sys
    from storage import Lake
    store, catalog, prefix, first, last, rows, reopen, direct = sys.argv[1:9]
    first, last, rows, reopen = int(first), int(last), int(rows), reopen == "1"
    text = "x" * 500
    lake = None
    for b in range(first, last):
        if lake is None:
            lake = Lake.open(store, catalog or None, data_inlining_row_limit=0, lock_timeout_s=60,
                             direct_write_min_rows=int(direct))
        key = f"{prefix}{b}"
        batch = [{"problem_id": f"{key}-{i}", "problem": text, "source": key} for i in range(rows)]
        lake.commit("problems", batch, batch_key=key, run_id="w")
        print(key, flush=True)
        if reopen:
            lake.close()
            lake = None
    """
)


def start_writer(store, catalog, prefix, first, last, rows, reopen=False, direct=4096):
    """`direct`: batches of at least this many rows are written by pyarrow, smaller ones INSERTed."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, store, catalog or "", prefix, str(first), str(last), str(rows),
         "1" if reopen else "0", str(direct)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def check_whole_batches(lake: Lake) -> dict[str, int]:
    """Every batch in the ledger is whole and every row belongs to a ledger batch."""
    ledger = {r["batch_key"]: r["row_count"] for r in lake.query("SELECT batch_key, row_count FROM batches WHERE table_name = 'problems'").to_pylist()}
    seen = {r["source"]: r["n"] for r in lake.query("SELECT source, count(*) AS n FROM problems GROUP BY 1").to_pylist()}
    assert seen == ledger
    return ledger


def referenced_files(lake: Lake) -> set[str]:
    out = set()
    for table in ("problems", "batches", "meta"):
        out |= {os.path.realpath(p) for p in lake.query(f"SELECT data_file FROM ducklake_list_files('lake', '{table}')").column(0).to_pylist()}
    return out


def files_on_disk(store: str) -> set[str]:
    return {os.path.realpath(p) for p in (Path(store) / "data" / "main").rglob("*.parquet")}


def test_sigkill_mid_commit_leaves_whole_batches_and_maintain_cleans_orphans(tmp_path):
    store = str(tmp_path / "store")
    delays = [0.9, 1.3, 1.7, 2.1, 2.6, 1.1, 1.5, 1.9]
    for trial, delay in enumerate(delays):
        # Odd trials write their batches through pyarrow + ducklake_add_data_files.
        proc = start_writer(store, None, f"t{trial}-", 0, 1000, 4000, direct=1000 if trial % 2 else 100_000)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Lake.open(store, data_inlining_row_limit=0) as lake:
        ledger = check_whole_batches(lake)
        assert ledger, "no batch landed before the kills: raise the delays"
        referenced = referenced_files(lake)
        on_disk = files_on_disk(store)
        orphans = on_disk - referenced
        import datetime as dt

        deleted = {os.path.realpath(p) for p in lake.maintain(older_than=dt.timedelta(0))}
        assert deleted == orphans
        assert files_on_disk(store) == referenced
        check_whole_batches(lake)  # nothing referenced was touched
        # a killed writer's key can be committed again: its batch never landed
        landed_rows = lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py()
        assert landed_rows == 4000 * len(ledger)


def test_two_writers_on_a_duckdb_file_catalog_both_land(tmp_path):
    store = str(tmp_path / "store")
    a = start_writer(store, None, "a", 0, 8, 200, reopen=True)
    b = start_writer(store, None, "b", 0, 8, 200, reopen=True)
    for p in (a, b):
        out, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs
    with Lake.open(store) as lake:
        assert len(check_whole_batches(lake)) == 16


def test_two_writers_on_a_sqlite_catalog_both_land_and_one_key_lands_once(tmp_path):
    store = str(tmp_path / "store")
    catalog = "sqlite:" + str(tmp_path / "catalog.sqlite")
    procs = [
        start_writer(store, catalog, "a", 0, 10, 100),
        start_writer(store, catalog, "b", 0, 10, 100),
        start_writer(store, catalog, "same", 0, 10, 100),  # these two race on the same keys
        start_writer(store, catalog, "same", 0, 10, 100),
    ]
    for p in procs:
        out, errs = p.communicate(timeout=180)
        assert p.returncode == 0, errs
    with Lake.open(store, catalog) as lake:
        ledger = check_whole_batches(lake)
        assert len(ledger) == 30
        assert all(n == 100 for n in ledger.values())


def test_a_held_duckdb_catalog_gives_a_clear_retryable_error(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as holder:
        holder.commit("problems", [{"problem_id": "p", "problem": "x"}], batch_key="k", run_id="r")
        code = f"from storage import Lake\nLake.open({store!r}, lock_timeout_s=0.5).connection()"
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "LakeBusy" in proc.stderr and "held by another process" in proc.stderr


# Commits batches `first..last` of 3 rows, then compacts with older_than=0; `kill_at` (an
# ordinal of Lake._retry, the transactions of compact: 1 the merge, 2 the expiry) SIGKILLs the
# process right after that step, "timed" leaves it to the parent's clock.
COMPACTOR = textwrap.dedent(
    """
    import datetime as dt, os, signal, sys
    from storage import Lake
    store, first, last, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    lake = Lake.open(store, data_inlining_row_limit=0)
    for b in range(first, last):
        lake.commit("problems", [{"problem_id": f"c{b}-{i}", "problem": "y" * 200, "source": f"c{b}"} for i in range(3)],
                    batch_key=f"c{b}", run_id="c")
    if kill_at != "timed":
        real, calls = Lake._retry, [0]
        def retry(self, fn, what):
            out = real(self, fn, what)
            calls[0] += 1
            if calls[0] == int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        Lake._retry = retry
    print("compacting", flush=True)
    lake.compact(older_than=dt.timedelta(0))
    print("compacted", flush=True)
    """
)


def test_sigkill_during_compaction_keeps_datasets_ledger_and_time_travel(tmp_path):
    import datetime as dt

    store = str(tmp_path / "store")
    with Lake.open(store, data_inlining_row_limit=0) as lake:
        for b in range(30):
            lake.commit("problems", [{"problem_id": f"p{b}-{i}", "problem": "x" * 200, "source": f"p{b}"} for i in range(3)],
                        batch_key=f"p{b}", run_id="w")
            if b in (10, 20):
                lake.save_dataset("ds", "SELECT * FROM problems")  # no ORDER BY: file order shows
        pinned = {v: lake.dataset("ds", v).snapshot_id for v in (1, 2)}
        want = {v: lake.read_dataset("ds", v) for v in (1, 2)}
        want_at = {v: lake.query(f"SELECT * FROM problems AT (VERSION => {s})") for v, s in pinned.items()}

    def same(lake: Lake) -> None:
        for v in (1, 2):
            assert lake.read_dataset("ds", v) == want[v]
            assert lake.query(f"SELECT * FROM problems AT (VERSION => {pinned[v]})") == want_at[v]
        check_whole_batches(lake)

    landed = 0
    trials = ["1", "2", "timed", "timed", "timed"]  # after the merge, after the expiry, somewhere inside
    for trial, kill_at in enumerate(trials):
        proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, store, str(100 + 20 * trial), str(120 + 20 * trial), kill_at],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "compacting"
        if kill_at == "timed":
            time.sleep(0.05 + 0.15 * (trial - 2))
            proc.send_signal(signal.SIGKILL)
        rest, errs = proc.communicate(timeout=120)
        if proc.returncode == -9:
            landed += "compacted" not in rest
        else:
            assert proc.returncode == 0, errs
        with Lake.open(store, data_inlining_row_limit=0) as lake:
            same(lake)  # whatever step the kill cut, every version and batch reads as before
    assert landed >= 2, "no kill landed inside compact()"

    with Lake.open(store, data_inlining_row_limit=0) as lake:
        lake.maintain(older_than=dt.timedelta(0))  # the killed merges' files
        done = lake.compact(older_than=dt.timedelta(0))  # finishes what the killed ones left
        same(lake)
        assert done.files_after <= 4
        keep = referenced_files(lake)
        for table in ("problems", "batches", "meta", "datasets"):
            for s in pinned.values():
                keep |= {os.path.realpath(p) for p in lake.query(
                    f"SELECT data_file FROM ducklake_list_files('lake', '{table}', snapshot_version => {s})").column(0).to_pylist()}
        keep |= {os.path.realpath(p) for p in lake.query("SELECT data_file FROM ducklake_list_files('lake', 'datasets')").column(0).to_pylist()}
        assert files_on_disk(store) == keep  # no orphan left, nothing read was deleted
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 3 * (30 + sum(
            1 for _ in lake.query("SELECT 1 FROM batches WHERE run_id = 'c'").to_pylist()))
