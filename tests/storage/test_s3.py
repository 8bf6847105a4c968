"""The lake on a real S3 server (SeaweedFS on 127.0.0.1): Parquet files on S3, a local catalog.

    python -m pytest tests/storage/test_s3.py -q

`data_inlining_row_limit=0` makes every commit write a Parquet file, so these tests exercise
httpfs reads and writes rather than rows kept inside the catalog.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import storage.lake
from storage import BadInput, Lake
from storage.artifacts import ArtifactStore
from storage.config import LakeConfig

pytestmark = pytest.mark.integration

BUCKET = "factory-lake-tests"


def _rows(batch: str, n: int = 5) -> list[dict]:
    return [{"problem_id": f"{batch}:{i}", "run_id": "r1", "problem": f"question {batch} {i}"} for i in range(n)]


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"secret": ["not for lake users"]}), buf)
    return buf.getvalue()


@pytest.fixture
def prefix() -> str:
    """A fresh prefix per test: one bucket, no test sees another's files."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def lake(s3_server, tmp_path, prefix):
    store = f"s3://{BUCKET}/{prefix}"
    ArtifactStore(LakeConfig(store=store, s3=s3_server.settings())).ensure_bucket()
    with Lake.open(
        store,
        catalog=str(tmp_path / "catalog.ducklake"),
        s3=s3_server.settings(),
        data_inlining_row_limit=0,
    ) as lake:
        yield lake


def _keys(s3_server, prefix: str) -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_commit_writes_parquet_to_s3_once(lake, s3_server, prefix):
    first = lake.commit("problems", _rows("b1"), batch_key="b1")
    again = lake.commit("problems", _rows("b1"), batch_key="b1")

    assert (first.committed, first.rows) == (True, 5)
    assert (again.committed, again.rows) == (False, 0)
    assert lake.query("SELECT count(*) AS n FROM problems").column("n").to_pylist() == [5]
    problem_files = [k for k in _keys(s3_server, prefix) if k.startswith(f"{prefix}/data/main/problems/")]
    assert len(problem_files) == 1 and problem_files[0].endswith(".parquet")
    # The lake's files are the objects on the server, not a local cache.
    listed = lake.query("SELECT data_file FROM ducklake_list_files('lake', 'problems')").column(0).to_pylist()
    assert listed == [f"s3://{BUCKET}/{problem_files[0]}"]


def test_dataset_reads_its_snapshot_on_s3(lake):
    lake.commit("problems", _rows("b1"), batch_key="b1")
    v1 = lake.save_dataset("probs", "SELECT problem_id FROM problems")
    lake.commit("problems", _rows("b2"), batch_key="b2")
    v2 = lake.save_dataset("probs", "SELECT problem_id FROM problems")

    assert (v1.version, v1.row_count, v2.version, v2.row_count) == (1, 5, 2, 10)
    old = lake.read_dataset("probs", version=1).column("problem_id").to_pylist()
    assert sorted(old) == sorted(r["problem_id"] for r in _rows("b1"))
    assert lake.read_dataset("probs").num_rows == 10


def test_confined_sql_reads_s3_and_refuses_other_paths(lake, s3_server):
    lake.commit("problems", _rows("b1"), batch_key="b1")
    s3_server.client().put_object(Bucket=BUCKET, Key="other/x.parquet", Body=_parquet_bytes())

    assert lake.sql("SELECT count(*) AS n FROM problems").column("n").to_pylist() == [5]
    for query in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('s3://{BUCKET}/other/x.parquet')",
        f"SELECT * FROM 's3://{BUCKET}/other/x.parquet'",
    ):
        with pytest.raises(BadInput, match="not allowed"):
            lake.sql(query)


def test_engine_confines_s3_reads_without_the_syntax_check(lake, s3_server, prefix, monkeypatch):
    """Gate 3 alone (allowed_directories + enable_external_access=false) on s3:// paths: the
    lake's own files stay readable, anything outside its data path is refused by DuckDB."""
    lake.commit("problems", _rows("b1"), batch_key="b1")
    own = lake.query("SELECT data_file FROM ducklake_list_files('lake', 'problems')").column(0)[0].as_py()
    client = s3_server.client()
    for key in ("other/x.parquet", f"{prefix}/artifacts/x.parquet", f"{prefix}/data-evil/x.parquet"):
        client.put_object(Bucket=BUCKET, Key=key, Body=_parquet_bytes())
    monkeypatch.setattr(storage.lake, "check_confined", lambda ast: None)

    assert lake.sql(f"SELECT count(*) AS n FROM read_parquet('{own}')").column("n").to_pylist() == [5]
    for query in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('s3://{BUCKET}/other/x.parquet')",
        f"SELECT * FROM 's3://{BUCKET}/other/x.parquet'",
        f"SELECT * FROM read_parquet('s3://{BUCKET}/{prefix}/artifacts/x.parquet')",
        # Shares the data path's letters, not its folder.
        f"SELECT * FROM read_parquet('s3://{BUCKET}/{prefix}/data-evil/x.parquet')",
    ):
        with pytest.raises(BadInput, match="Permission Error"):
            lake.sql(query)
    with pytest.raises(BadInput, match="Permission Error"):
        lake.sql(f"SELECT * FROM glob('s3://{BUCKET}/*')")


def test_maintain_deletes_orphaned_parquet_on_s3(lake, s3_server, prefix):
    lake.commit("problems", _rows("b1"), batch_key="b1")
    client = s3_server.client()
    # What a writer killed between writing its Parquet file and committing leaves behind.
    orphan = f"{prefix}/data/main/problems/ducklake-orphan-{uuid.uuid4()}.parquet"
    client.put_object(Bucket=BUCKET, Key=orphan, Body=_parquet_bytes())
    kept = set(_keys(s3_server, prefix)) - {orphan}

    planned = lake.maintain(older_than=dt.timedelta(0), dry_run=True)
    assert planned == [f"s3://{BUCKET}/{orphan}"]
    assert orphan in _keys(s3_server, prefix)

    deleted = lake.maintain(older_than=dt.timedelta(0))
    assert deleted == [f"s3://{BUCKET}/{orphan}"]
    assert set(_keys(s3_server, prefix)) == kept
    assert lake.query("SELECT count(*) AS n FROM problems").column("n").to_pylist() == [5]


def test_big_batches_written_by_pyarrow_land_on_s3(s3_server, tmp_path, prefix):
    store = f"s3://{BUCKET}/{prefix}"
    ArtifactStore(LakeConfig(store=store, s3=s3_server.settings())).ensure_bucket()
    with Lake.open(store, catalog=str(tmp_path / "c.ducklake"), s3=s3_server.settings(), direct_write_min_rows=10) as lake:
        assert lake.commit("problems", _rows("big", 40), batch_key="big").committed
        assert not lake.commit("problems", _rows("big", 40), batch_key="big").committed
        assert lake.query("SELECT count(*) AS n FROM problems").to_pylist() == [{"n": 40}]
        assert lake.sql("SELECT count(*) AS n FROM problems WHERE problem LIKE '%big 3%'").to_pylist() == [{"n": 11}]
    keys = [k for k in _keys(s3_server, prefix) if k.startswith(f"{prefix}/data/main/problems/")]
    assert len(keys) == 1 and keys[0].endswith(".parquet")
