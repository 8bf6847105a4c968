"""The lake with a PostgreSQL catalog (a throwaway server on 127.0.0.1): several writer
processes at once, exactly-once commits across processes.

    python -m pytest tests/storage/test_postgres.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import storage
from storage import Lake

pytestmark = pytest.mark.integration

# The project root, so writer processes import this same `storage` package.
ROOT = Path(storage.__file__).resolve().parent.parent

# A writer process: open the lake, then commit its batches, meeting the other writers at a
# barrier before opening and before each commit so that each step overlaps another writer's
# (without it one writer soon runs ahead and the race under test rarely happens). Prints how
# many batches it wrote.
WRITER = """
import glob, json, os, sys, time
from storage import Lake
dsn, store, tag, keys, rendezvous, writers = sys.argv[1:7]
def meet(step):
    open(os.path.join(rendezvous, f"{step}.{tag}"), "w").close()
    deadline = time.monotonic() + 60
    while len(glob.glob(os.path.join(rendezvous, f"{step}.*"))) < int(writers):
        if time.monotonic() > deadline:
            sys.exit(f"{tag}: the other writers never reached step {step}")
        time.sleep(0.001)
meet("open")
with Lake.open(store, catalog=dsn) as lake:
    lake.connection()  # attach before the commits' race (this creates a fresh catalog)
    written = 0
    for step, key in enumerate(keys.split(",")):
        meet(step)
        rows = [{"problem_id": f"{key}:{i}", "run_id": tag, "problem": f"{key} by {tag}"} for i in range(3)]
        written += lake.commit("problems", rows, batch_key=key).committed
print(json.dumps({"committed": written}))
"""


@pytest.fixture
def catalog(postgres_dsn):
    """A fresh database per test: a DuckLake catalog remembers its data path."""
    import psycopg

    name = f"lake_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return postgres_dsn.rsplit("/", 1)[0] + "/" + name


def _create(store: Path, catalog: str) -> None:
    """Create the lake before the writers race (Lake.open attaches lazily)."""
    with Lake.open(str(store), catalog=catalog) as lake:
        lake.connection()


def _writers(catalog: str, store: Path, key_lists: list[list[str]], tmp: Path) -> list[dict]:
    """Run one writer process per key list, all committing at once; return their reports."""
    rendezvous = tmp / f"rendezvous-{uuid.uuid4().hex[:8]}"
    rendezvous.mkdir()
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, catalog, str(store), f"writer{n}", ",".join(keys),
             str(rendezvous), str(len(key_lists))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n, keys in enumerate(key_lists)
    ]
    try:
        # A writer that fails leaves the others waiting at the barrier: stop them at once.
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outs = [p.communicate() for p in procs]
    failed = [
        f"writer{n} exited {p.returncode}:\n{err}" for n, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode
    ]
    assert not failed, "\n".join(failed)
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_commit_and_query(catalog, tmp_path):
    with Lake.open(str(tmp_path / "store"), catalog=catalog) as lake:
        assert lake.config.catalog_kind == "postgres"
        first = lake.commit("problems", [{"problem_id": "p1", "run_id": "r1", "problem": "1+1?"}], batch_key="k1")
        again = lake.commit("problems", [{"problem_id": "p1", "run_id": "r1", "problem": "1+1?"}], batch_key="k1")
        assert (first.committed, again.committed) == (True, False)
        assert lake.query("SELECT problem FROM problems").column("problem").to_pylist() == ["1+1?"]
        assert lake.is_committed("k1") and not lake.is_committed("k2")
        assert lake.sql("SELECT count(*) AS n FROM problems").column("n").to_pylist() == [1]


def test_two_processes_distinct_batches_all_land(catalog, tmp_path):
    store = tmp_path / "store"
    _create(store, catalog)
    reports = _writers(catalog, store, [[f"w{n}:{i}" for i in range(20)] for n in range(2)], tmp_path)

    assert [r["committed"] for r in reports] == [20, 20]
    with Lake.open(str(store), catalog=catalog) as lake:
        assert lake.query("SELECT count(*) AS n FROM batches").column("n").to_pylist() == [40]
        assert lake.query("SELECT count(*) AS n FROM problems").column("n").to_pylist() == [120]
        assert lake.query("SELECT count(DISTINCT problem_id) AS n FROM problems").column("n").to_pylist() == [120]


def test_two_processes_same_batches_land_once(catalog, tmp_path):
    store = tmp_path / "store"
    _create(store, catalog)
    keys = [f"same:{i}" for i in range(10)]
    reports = _writers(catalog, store, [keys, keys], tmp_path)

    assert sum(r["committed"] for r in reports) == 10
    with Lake.open(str(store), catalog=catalog) as lake:
        ledger = lake.query("SELECT batch_key, count(*) AS n FROM batches GROUP BY 1 ORDER BY 1").to_pylist()
        assert ledger == [{"batch_key": k, "n": 1} for k in sorted(keys)]
        # Each key's rows come whole from one writer: no second copy, no mix of the two.
        per_key = lake.query(
            "SELECT split_part(problem_id, ':', 1) || ':' || split_part(problem_id, ':', 2) AS k, "
            "count(*) AS n, count(DISTINCT run_id) AS writers FROM problems GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        assert per_key == [{"k": k, "n": 3, "writers": 1} for k in sorted(keys)]


def test_second_lake_object_sees_commits(catalog, tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store, catalog=catalog) as a, Lake.open(store, catalog=catalog) as b:
        a.commit("problems", [{"problem_id": "p1", "run_id": "r1", "problem": "x"}], batch_key="a1")
        assert b.query("SELECT problem_id FROM problems").column("problem_id").to_pylist() == ["p1"]
        again = b.commit("problems", [{"problem_id": "p1", "run_id": "r1", "problem": "x"}], batch_key="a1")
        assert again.committed is False
        b.commit("problems", [{"problem_id": "p2", "run_id": "r1", "problem": "y"}], batch_key="b1")
        assert sorted(a.query("SELECT problem_id FROM problems").column("problem_id").to_pylist()) == ["p1", "p2"]


def test_processes_opening_a_fresh_catalog_together(catalog, tmp_path):
    # Racing to create the catalog's own tables must not fail any of them (Lake._attach retries).
    reports = _writers(catalog, tmp_path / "store", [["a"], ["b"], ["c"]], tmp_path)
    assert [r["committed"] for r in reports] == [1, 1, 1]
