"""A store moved with `mv` or copied with `cp -r` (or an S3 prefix copied with its catalog) keeps
working, and a copy is independent of its original.

    python -m pytest tests/storage/test_move.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import duckdb
import pytest

from storage import BadInput, Lake
from storage.artifacts import ArtifactStore
from storage.config import LakeConfig
from storage.extensions import connect

QUERIES = (
    "SELECT problem_id, reference_answer FROM problems ORDER BY problem_id",
    "SELECT reference_answer, count(*) AS n FROM problems GROUP BY 1 ORDER BY 1",
)


def _rows(tag: str, n: int) -> list[dict]:
    return [{"problem_id": f"{tag}-{i:04d}", "problem": f"What is {i}+{i}?", "reference_answer": str(i % 7)} for i in range(n)]


def _build(store: Path) -> dict:
    """A store written through both commit paths plus a saved dataset version; what it answers."""
    # No inlining: the small batches are INSERTed as Parquet files, the big one is written by
    # pyarrow and added with ducklake_add_data_files.
    with Lake.open(str(store), data_inlining_row_limit=0, direct_write_min_rows=100) as lake:
        lake.commit("problems", _rows("s", 3), batch_key="small-1", run_id="r")
        lake.commit("problems", _rows("b", 300), batch_key="big", run_id="r")
        version = lake.save_dataset("probs", "SELECT problem_id, problem FROM problems ORDER BY problem_id")
        lake.commit("problems", _rows("t", 4), batch_key="small-2", run_id="r")
        files = lake.query(
            "SELECT f.path, f.path_is_relative FROM __ducklake_metadata_lake.ducklake_data_file f "
            "JOIN __ducklake_metadata_lake.ducklake_table t USING (table_id) WHERE t.table_name = 'problems'"
        ).to_pylist()
        return {
            "files": files,
            "answers": [lake.query(q).to_pylist() for q in QUERIES],
            "dataset": lake.read_dataset("probs", version.version).to_pylist(),
            "version": version.version,
        }


def _answers(lake: Lake) -> list:
    return [lake.query(q).to_pylist() for q in QUERIES]


def _count(lake: Lake) -> int:
    return lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py()


@pytest.mark.parametrize("command", ["mv", "cp -r"])
def test_a_moved_or_copied_store_answers_the_same(tmp_path, command):
    before = _build(tmp_path / "a")
    # Both write paths left files, recorded relative to the data path by DuckLake itself.
    assert len(before["files"]) == 3 and all(f["path_is_relative"] for f in before["files"])
    subprocess.run([*command.split(), str(tmp_path / "a"), str(tmp_path / "b")], check=True)

    with Lake.open(str(tmp_path / "b"), create=False) as lake:
        # The confined read-only engine first, before any writer has seen the new place.
        assert lake.sql(QUERIES[0]).to_pylist() == before["answers"][0]
        assert lake.read_dataset("probs", before["version"]).to_pylist() == before["dataset"]
        assert _answers(lake) == before["answers"]
        assert lake.sql(QUERIES[1]).to_pylist() == before["answers"][1]
        live = lake.query("SELECT data_file FROM ducklake_list_files('lake', 'problems')").column(0).to_pylist()
        assert len(live) == 3 and all(Path(p).is_relative_to(tmp_path / "b" / "data") for p in live)


def test_a_copy_and_its_original_are_independent(tmp_path):
    before = _build(tmp_path / "a")
    subprocess.run(["cp", "-r", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    original_files = set((tmp_path / "a" / "data").rglob("*.parquet"))

    with Lake.open(str(tmp_path / "b"), data_inlining_row_limit=0, direct_write_min_rows=100) as copy:
        copy.commit("problems", _rows("copy", 200), batch_key="copy-big", run_id="r")
        copy.commit("problems", _rows("copy-small", 2), batch_key="copy-small", run_id="r")
        copy.save_dataset("probs", "SELECT problem_id, problem FROM problems ORDER BY problem_id")
    assert set((tmp_path / "a" / "data").rglob("*.parquet")) == original_files
    with Lake.open(str(tmp_path / "a"), data_inlining_row_limit=0) as original:
        assert _answers(original) == before["answers"]
        assert not original.is_committed("copy-big")
        assert original.query("SELECT max(version) AS v FROM datasets").column("v")[0].as_py() == before["version"]
        original.commit("problems", _rows("orig", 5), batch_key="orig", run_id="r")
        assert _count(original) == 307 + 5
    with Lake.open(str(tmp_path / "b")) as copy:
        assert _count(copy) == 307 + 202
        assert not copy.is_committed("orig")
        assert copy.read_dataset("probs", before["version"]).to_pylist() == before["dataset"]
        assert copy.read_dataset("probs").num_rows == 307 + 202


def test_a_catalog_without_its_data_is_refused(tmp_path):
    _build(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "catalog.ducklake", tmp_path / "b" / "catalog.ducklake")

    with pytest.raises(BadInput, match=f"records the data path {tmp_path / 'a' / 'data'}/.*is not in the store") as err:
        with Lake.open(str(tmp_path / "b")) as lake:
            lake.query("SELECT 1")
    assert str(tmp_path / "b") in str(err.value)
    # Nothing was rewritten: the catalog still points at the original's data.
    with Lake.open(str(tmp_path / "a")) as lake:
        assert _count(lake) == 307


def _make_paths_absolute(catalog: Path, data_path: str) -> None:
    """What a catalog written by another DuckLake (or with files added from elsewhere) holds:
    data file paths recorded absolute, under the old data path."""
    con = connect()
    con.execute(f"ATTACH '{catalog}' AS c")
    con.execute(
        "UPDATE c.ducklake_data_file f SET path = ? || s.path || t.path || f.path, path_is_relative = false "
        "FROM c.ducklake_table t, c.ducklake_schema s "
        "WHERE t.table_id = f.table_id AND s.schema_id = t.schema_id AND t.end_snapshot IS NULL AND s.end_snapshot IS NULL",
        [data_path],
    )
    assert con.execute("SELECT count(*) FROM c.ducklake_data_file WHERE path_is_relative").fetchone()[0] == 0
    con.close()


def test_absolute_paths_under_the_old_data_path_are_rewritten(tmp_path):
    before = _build(tmp_path / "a")
    _make_paths_absolute(tmp_path / "a" / "catalog.ducklake", f"{tmp_path / 'a'}/data/")
    subprocess.run(["mv", str(tmp_path / "a"), str(tmp_path / "b")], check=True)

    with Lake.open(str(tmp_path / "b")) as lake:
        # A reader cannot rewrite the catalog and will not read files at the old place.
        with pytest.raises(BadInput, match="absolute under that old path"):
            lake.sql(QUERIES[0])
        assert _answers(lake) == before["answers"]  # the writer rewrote them
        assert lake.sql(QUERIES[0]).to_pylist() == before["answers"][0]
        assert lake.read_dataset("probs", before["version"]).to_pylist() == before["dataset"]
        paths = lake.query("SELECT path FROM __ducklake_metadata_lake.ducklake_data_file").column(0).to_pylist()
        assert paths and all(p.startswith(f"{tmp_path / 'b'}/data/") for p in paths)


def test_the_catalog_file_itself_is_plain_duckdb_after_a_move(tmp_path):
    """After the first open the moved catalog records its new data path, so DuckLake alone
    (no OVERRIDE_DATA_PATH) opens it too."""
    before = _build(tmp_path / "a")
    subprocess.run(["mv", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    with Lake.open(str(tmp_path / "b")) as lake:
        lake.query("SELECT 1")
    con = connect("ducklake")
    con.execute(f"ATTACH 'ducklake:{tmp_path / 'b' / 'catalog.ducklake'}' AS l (DATA_PATH '{tmp_path / 'b'}/data/')")
    con.execute("USE l")
    assert con.execute(QUERIES[0]).fetchall() == [tuple(r.values()) for r in before["answers"][0]]
    con.close()
    con = connect("ducklake")
    with pytest.raises(duckdb.Error, match="does not match existing data path"):
        con.execute(f"ATTACH 'ducklake:{tmp_path / 'b' / 'catalog.ducklake'}' AS l (DATA_PATH '{tmp_path / 'a'}/data/')")
    con.close()


@pytest.mark.integration
def test_a_copied_s3_prefix_with_a_copied_catalog_is_its_own_lake(s3_server, tmp_path):
    bucket, old, new = "factory-lake-tests", f"m{uuid.uuid4().hex[:10]}", f"m{uuid.uuid4().hex[:10]}"
    settings = s3_server.settings()
    ArtifactStore(LakeConfig(store=f"s3://{bucket}/{old}", s3=settings)).ensure_bucket()
    opts = {"s3": settings, "data_inlining_row_limit": 0, "direct_write_min_rows": 100}
    with Lake.open(f"s3://{bucket}/{old}", catalog=str(tmp_path / "old.ducklake"), **opts) as lake:
        lake.commit("problems", _rows("s", 3), batch_key="small", run_id="r")
        lake.commit("problems", _rows("b", 300), batch_key="big", run_id="r")
        v = lake.save_dataset("probs", "SELECT problem_id FROM problems ORDER BY problem_id")
        answers, dataset = _answers(lake), lake.read_dataset("probs", v.version).to_pylist()
    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=old + "/")
            for o in page.get("Contents", [])]
    for key in keys:
        client.copy_object(Bucket=bucket, Key=new + key[len(old):], CopySource={"Bucket": bucket, "Key": key})
    shutil.copy(tmp_path / "old.ducklake", tmp_path / "new.ducklake")

    with Lake.open(f"s3://{bucket}/{new}", catalog=str(tmp_path / "new.ducklake"), **opts) as lake:
        assert lake.sql(QUERIES[0]).to_pylist() == answers[0]
        assert _answers(lake) == answers
        assert lake.read_dataset("probs", v.version).to_pylist() == dataset
        lake.commit("problems", _rows("copy", 200), batch_key="copy", run_id="r")
        assert _count(lake) == 503
    with Lake.open(f"s3://{bucket}/{old}", catalog=str(tmp_path / "old.ducklake"), **opts) as lake:
        assert _count(lake) == 303 and not lake.is_committed("copy")
    # The old catalog pointed at a prefix without its files: refused, naming both.
    shutil.copy(tmp_path / "old.ducklake", tmp_path / "wrong.ducklake")
    with pytest.raises(BadInput, match=f"s3://{bucket}/{old}/data/.*is not in the store"):
        with Lake.open(f"s3://{bucket}/m-empty-{old}", catalog=str(tmp_path / "wrong.ducklake"), **opts) as lake:
            lake.query("SELECT 1")
