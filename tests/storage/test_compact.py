"""`Lake.compact()`: many small commits become few files, and nothing a dataset version or the
exactly-once ledger reads changes."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from storage import BadInput, Lake

ROWS = 3


def batch(b: int) -> list[dict]:
    return [{"problem_id": f"p{b}-{i}", "problem": f"question {b}/{i} " * 20, "source": f"s{b % 4}"} for i in range(ROWS)]


def parquet_files(store: Path) -> int:
    return sum(1 for _ in (store / "data").rglob("*.parquet"))


def ledger(lake: Lake) -> pa.Table:
    return lake.query("SELECT * FROM batches ORDER BY batch_key")


def at(lake: Lake, snapshot: int) -> pa.Table:
    return lake.query(f"SELECT * FROM problems AT (VERSION => {snapshot}) ORDER BY problem_id")


def observe(lake: Lake, first: int, second: int) -> dict:
    """What compaction must leave alone: both dataset versions, time travel to the snapshots
    they pin, the ledger and `existing()`."""
    return {
        "v1": lake.read_dataset("all", 1),
        "v2": lake.read_dataset("some", 1),
        "at_v1": at(lake, first),
        "at_v2": at(lake, second),
        "ledger": ledger(lake),
        "existing": lake.existing("problems", "problem_id", [f"p{b}-0" for b in range(0, 400, 7)]),
    }


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def test_compaction_merges_small_files_and_keeps_datasets_and_ledger(store):
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        for b in range(100):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
        v1 = lake.save_dataset("all", "SELECT * FROM problems")  # no ORDER BY: file order shows
        for b in range(100, 200):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
        v2 = lake.save_dataset("some", "SELECT source, count(*) AS n, min(problem_id) AS first FROM problems WHERE source <> 's0' GROUP BY 1 ORDER BY 1")
        before = observe(lake, v1.snapshot_id, v2.snapshot_id)
        files_before, last = parquet_files(store), lake.snapshot_id()
        assert files_before > 400  # a file per batch and per ledger row

        done = lake.compact(older_than=dt.timedelta(0))

        assert done.files_before > 400 and done.files_after <= 4  # problems, batches, datasets, meta
        assert parquet_files(store) <= 4
        assert done.files_deleted >= files_before - 4
        assert done.snapshots_pinned == 2 and done.snapshots_expired == last + 1 - 2  # all since snapshot 0 but the two pinned
        after = observe(lake, v1.snapshot_id, v2.snapshot_id)
        for name, table in before.items():
            assert after[name] == table, name  # Arrow equality: same rows, same order, same types
        assert before["v1"].num_rows == 100 * ROWS and before["at_v2"].num_rows == 200 * ROWS

        # An expired snapshot is gone for time travel; a pinned one stays.
        with pytest.raises(Exception, match="(?i)snapshot|version"):
            at(lake, v1.snapshot_id - 1)

        assert lake.commit("problems", batch(5), batch_key="k5", run_id="r").committed is False
        assert lake.commit("problems", batch(500), batch_key="k500", run_id="r").committed is True
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 201 * ROWS
        assert lake.read_dataset("all", 1) == before["v1"]

    with Lake.open(str(store), create=False) as lake:  # what was written survives a reopen
        assert lake.read_dataset("some", 1) == before["v2"] and ledger(lake).num_rows == 203


def test_compaction_keeps_young_snapshots_and_the_files_merged_away(store):
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        for b in range(20):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
        middle = lake.snapshot_id()
        mid_rows = at(lake, middle)
        for b in range(20, 40):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
        files_before = parquet_files(store)

        done = lake.compact(older_than=dt.timedelta(hours=1))

        assert (done.snapshots_expired, done.files_deleted) == (0, 0)
        assert done.files_after <= 3 < done.files_before  # problems, batches, meta
        assert parquet_files(store) > files_before  # merged files added; the old ones wait for a reader-safe age
        assert at(lake, middle) == mid_rows  # an unpinned but young snapshot still time-travels


def test_compaction_of_a_missing_lake_is_bad_input(store):
    with pytest.raises(BadInput, match="no lake at"):
        Lake.open(str(store), create=False).compact()


def test_compact_if_keeps_the_file_count_bounded_over_many_commits(store):
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        counts, done = [], []
        for b in range(80):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
            if b == 30:
                lake.save_dataset("mid", "SELECT * FROM problems")
                pinned = lake.read_dataset("mid", 1)
            d = lake.compact_if(10, older_than=dt.timedelta(0))
            if d is not None:
                done.append(d)
            counts.append(lake.data_files())
        floor = min(d.files_after for d in done)
        assert floor <= 4  # problems, batches, datasets, meta
        # Never more than what the last compaction left plus the threshold (a commit adds 2).
        assert max(counts) <= 4 + 10 + 2 and len(done) >= 80 * 2 // (4 + 10 + 2)  # without: 2 files per commit, 160
        assert sum(d.snapshots_expired for d in done) > 60 and done[-1].snapshots_pinned == 1
        assert lake.read_dataset("mid", 1) == pinned
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 80 * ROWS


def test_compact_if_does_nothing_below_the_threshold_and_does_not_repeat_on_unmergeable_files(store):
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        for b in range(10):
            lake.commit("problems", batch(b), batch_key=f"k{b}", run_id="r")
        files = lake.data_files()
        assert lake.compact_if(files) is None and lake.compact_if(0) is None  # at the threshold; 0: never
        assert lake.data_files() == files
        first = lake.compact_if(1, older_than=dt.timedelta(0))  # below the floor of one file per table
        assert first is not None and 1 < first.files_after < files
        assert lake.compact_if(1, older_than=dt.timedelta(0)) is None  # what it left does not trip it again
        lake.commit("problems", batch(99), batch_key="k99", run_id="r")  # +2 files: past what it left + 1
        assert lake.compact_if(1, older_than=dt.timedelta(0)) is not None
