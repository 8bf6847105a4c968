import datetime as dt
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import BadInput, Lake, LakeConfig, schemas


def problems(n: int, start: int = 0, tag: str = "b") -> list[dict]:
    return [{"problem_id": f"{tag}-{i}", "problem": f"What is {i}+{i}?", "reference_answer": str(2 * i)} for i in range(start, start + n)]


@pytest.fixture
def lake(tmp_path):
    with Lake.open(str(tmp_path / "store")) as lk:
        yield lk


def count(lake: Lake, table: str = "problems") -> int:
    return lake.query(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py()


def test_store_layout_is_catalog_plus_parquet(tmp_path):
    store = tmp_path / "store"
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        lake.commit("problems", problems(3), batch_key="k", run_id="r")
    assert (store / "catalog.ducklake").is_file()
    files = list((store / "data").rglob("*.parquet"))
    assert files and sum(pq.read_metadata(f).num_rows for f in files if "problems" in str(f)) == 3


def test_commit_twice_under_one_key_leaves_one_copy(lake):
    first = lake.commit("problems", problems(5), batch_key="seed:0", run_id="r1")
    again = lake.commit("problems", problems(5), batch_key="seed:0", run_id="r1")
    assert first.committed and first.rows == 5
    assert not again.committed and again.rows == 0
    assert count(lake) == 5
    assert lake.is_committed("seed:0") and not lake.is_committed("seed:1")


def test_commit_accepts_arrow_polars_and_dicts(lake):
    lake.commit("problems", pa.Table.from_pylist(problems(2, 0)), batch_key="a", run_id="r")
    lake.commit("problems", pl.DataFrame(problems(2, 2)), batch_key="b", run_id="r")
    lake.commit("problems", problems(2, 4), batch_key="c", run_id="r")
    assert count(lake) == 6
    rows = lake.query("SELECT DISTINCT run_id FROM problems").to_pylist()
    assert rows == [{"run_id": "r"}]


def test_dict_rows_keep_fields_that_only_later_rows_carry(lake):
    """Rows given as dicts may differ in keys (a verdict has a reason only when it fails): every
    row's fields are kept, the missing ones are null."""
    rows = [{"sample_id": "a", "check": "math", "status": "pass"},
            {"sample_id": "b", "check": "math", "status": "fail", "reason": "7 != 4", "score": 0.0}]
    lake.commit("verdicts", rows, batch_key="v", run_id="r")
    got = lake.query('SELECT sample_id, reason, score FROM verdicts ORDER BY sample_id').to_pylist()
    assert got == [{"sample_id": "a", "reason": None, "score": None}, {"sample_id": "b", "reason": "7 != 4", "score": 0.0}]


def test_commit_is_visible_to_a_new_lake_object(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as a:
        a.commit("problems", problems(4), batch_key="k", run_id="r")
    with Lake.open(store) as b:
        assert count(b) == 4
        assert not b.commit("problems", problems(4), batch_key="k", run_id="r").committed


def test_bad_batches_are_refused_before_anything_is_written(lake):
    with pytest.raises(BadInput, match="unknown table"):
        lake.commit("problemz", problems(1), batch_key="x", run_id="r")
    with pytest.raises(BadInput, match="required column 'problem'"):
        lake.commit("problems", [{"problem_id": "p"}], batch_key="x", run_id="r")
    with pytest.raises(BadInput, match="batch_key"):
        lake.commit("problems", problems(1), batch_key="", run_id="r")
    assert count(lake) == 0 and not lake.is_committed("x")


def test_nested_columns_round_trip(lake):
    row = {
        "sample_id": "s1", "problem_id": "p1",
        "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>one and one</think>2"}],
        "completion_tokens": 7, "latency_s": 0.5,
    }
    lake.commit("samples", [row], batch_key="s", run_id="r")
    got = lake.query("SELECT messages, messages[2].content AS c FROM samples").to_pylist()[0]
    assert got["messages"] == row["messages"] and got["c"].endswith("2")


def test_dataset_time_travel_reads_the_version_as_saved(lake):
    lake.commit("problems", problems(3, 0), batch_key="a", run_id="r")
    v1 = lake.save_dataset("math", "SELECT problem_id, problem FROM problems ORDER BY problem_id")
    lake.commit("problems", problems(4, 3), batch_key="b", run_id="r")
    v2 = lake.save_dataset("math", "SELECT problem_id, problem FROM problems ORDER BY problem_id")
    assert (v1.version, v1.row_count, v2.version, v2.row_count) == (1, 3, 2, 7)
    assert lake.read_dataset("math", 1).column("problem_id").to_pylist() == [f"b-{i}" for i in range(3)]
    assert lake.read_dataset("math").num_rows == 7  # newest
    assert lake.dataset("math").snapshot_id > v1.snapshot_id


def test_dataset_with_cte_join_and_aggregate_is_pinned(lake):
    lake.commit("problems", problems(2), batch_key="p", run_id="r")
    lake.commit("verdicts", [{"sample_id": "b-0", "check": "math", "status": "pass"}], batch_key="v", run_id="r")
    sql = (
        "WITH ok AS (SELECT sample_id FROM verdicts WHERE status = 'pass') "
        "SELECT p.problem_id, count(*) AS n FROM problems p JOIN ok ON ok.sample_id = p.problem_id GROUP BY 1"
    )
    lake.save_dataset("passed", sql)
    lake.commit("verdicts", [{"sample_id": "b-1", "check": "math", "status": "pass"}], batch_key="v2", run_id="r")
    assert lake.read_dataset("passed").to_pylist() == [{"problem_id": "b-0", "n": 1}]


def test_dataset_errors_name_the_problem(lake):
    with pytest.raises(BadInput, match="does not exist"):
        lake.read_dataset("nope")
    with pytest.raises(BadInput, match="only SELECT"):
        lake.save_dataset("x", "DELETE FROM problems")
    with pytest.raises(BadInput, match="dataset name"):
        lake.save_dataset("bad name!", "SELECT 1")
    with pytest.raises(BadInput, match="read_csv"):
        lake.save_dataset("x", "SELECT * FROM read_csv('/etc/passwd')")


def test_dataset_reader_streams_batches(lake):
    lake.commit("problems", problems(2500), batch_key="p", run_id="r")
    lake.save_dataset("all", "SELECT * FROM problems")
    batches = list(lake.dataset_reader("all", batch_size=1000))
    assert sum(b.num_rows for b in batches) == 2500 and len(batches) >= 2


def test_newer_schema_version_is_refused(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as lake:
        lake.query(f"UPDATE meta SET value = '{schemas.SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    with pytest.raises(BadInput, match="newer than this code"):
        Lake.open(store).connection()


def test_open_without_create_refuses_a_missing_lake(tmp_path):
    with pytest.raises(BadInput, match="no lake at"):
        Lake.open(str(tmp_path / "nothing"), create=False)


def test_maintain_deletes_only_unreferenced_files(tmp_path):
    store = tmp_path / "store"
    with Lake.open(str(store), data_inlining_row_limit=0) as lake:
        lake.commit("problems", problems(10), batch_key="k", run_id="r")
        live = set(Path(p) for p in lake.query("SELECT data_file FROM ducklake_list_files('lake', 'problems')").column(0).to_pylist())
        orphan = store / "data" / "main" / "problems" / "ducklake-orphan.parquet"
        pq.write_table(pa.table({"x": [1]}), orphan)
        old = dt.datetime.now().timestamp() - 7200
        os.utime(orphan, (old, old))
        assert lake.maintain(dry_run=True) == [str(orphan)] and orphan.exists()
        assert lake.maintain() == [str(orphan)]
        assert not orphan.exists() and all(p.exists() for p in live)
        assert count(lake) == 10


def test_config_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_STORE", str(tmp_path / "env-store"))
    assert LakeConfig.resolve().store_root == str(tmp_path / "env-store")
    assert LakeConfig.resolve(str(tmp_path / "flag")).store_root == str(tmp_path / "flag")
    monkeypatch.delenv("FACTORY_STORE")
    assert LakeConfig.resolve().store_root.endswith("factory-store")
    with pytest.raises(BadInput, match="needs a catalog"):
        _ = LakeConfig.resolve("s3://bucket/prefix").catalog_file
    with pytest.raises(BadInput, match="store"):
        LakeConfig.resolve("http://example/x")
    assert LakeConfig.resolve(str(tmp_path), "sqlite:" + str(tmp_path / "c.db")).catalog_target.startswith("sqlite:")


def test_descriptions_never_show_a_catalog_password():
    url = LakeConfig(store="/tmp/x", catalog="postgresql://u:s3cret@127.0.0.1:5/db").describe()
    kv = LakeConfig(store="/tmp/x", catalog="postgres:dbname=x password=s3cret host=h").describe()
    assert "s3cret" not in url + kv and "u:***@" in url and "password=***" in kv


@pytest.mark.parametrize("direct", [1, 10_000], ids=["pyarrow-file", "insert"])
def test_both_write_paths_give_the_same_rows(tmp_path, direct):
    store = tmp_path / "store"
    rows = [{"sample_id": f"s{i}", "problem_id": "p", "messages": [{"role": "user", "content": str(i)}],
             "completion_tokens": i, "latency_s": i / 10} for i in range(50)]
    with Lake.open(str(store), data_inlining_row_limit=0, direct_write_min_rows=direct) as lake:
        assert lake.commit("samples", rows, batch_key="k", run_id="r").committed
        assert not lake.commit("samples", rows, batch_key="k", run_id="r").committed
        v = lake.save_dataset("d", "SELECT sample_id, messages, completion_tokens FROM samples ORDER BY completion_tokens")
        lake.commit("samples", rows[:5], batch_key="k2", run_id="r")
        got = lake.read_dataset("d", v.version).to_pylist()
        assert [g["completion_tokens"] for g in got] == list(range(50))
        assert got[7]["messages"] == [{"role": "user", "content": "7"}]
        assert count(lake, "samples") == 55
    files = [f for f in (store / "data" / "main" / "samples").rglob("*.parquet")]
    assert files and {pq.ParquetFile(f).metadata.row_group(0).column(0).compression for f in files} == {"ZSTD"}


def test_existing_finds_values_already_in_a_column(lake):
    lake.commit("problems", problems(5), batch_key="k", run_id="r")
    assert lake.existing("problems", "problem_id", ["b-1", "b-3", "zz"]) == {"b-1", "b-3"}
    assert lake.existing("problems", "problem_id", []) == set()
    with pytest.raises(BadInput, match="no column"):
        lake.existing("problems", "nope", ["x"])


class _FailOn:
    """The lake's connection, failing any statement that writes to `table` (a crash mid-transaction)."""

    def __init__(self, con, table: str):
        self.con, self.table = con, table

    def execute(self, sql, params=None):
        import duckdb

        if self.table in sql or self.table in (params or []):
            if sql.startswith(("INSERT", "CALL")):
                raise duckdb.IOException(f"injected failure writing {self.table}")
        return self.con.execute(sql, params) if params is not None else self.con.execute(sql)

    def __getattr__(self, name):
        return getattr(self.con, name)


@pytest.mark.parametrize("direct", [1, 10_000], ids=["pyarrow-file", "insert"])
def test_rows_of_other_tables_commit_in_the_same_transaction(tmp_path, direct):
    samples = [{"sample_id": f"s{i}", "problem_id": "p"} for i in range(3)]
    topk = [{"sample_id": f"s{i}", "k": 2, "positions": 1, "top_ids": [[i, 9]], "top_logprobs": [[-0.1, -2.5]]} for i in range(3)]
    with Lake.open(str(tmp_path / "store"), data_inlining_row_limit=0, direct_write_min_rows=direct) as lake:
        real = lake.connection()
        lake._con = _FailOn(real, "teacher_topk")
        with pytest.raises(Exception, match="injected failure writing teacher_topk"):
            lake.commit("samples", samples, batch_key="k", run_id="r", also={"teacher_topk": topk})
        lake._con = real
        assert count(lake, "samples") == count(lake, "teacher_topk") == 0 and not lake.is_committed("k")  # neither landed
        first = lake.commit("samples", samples, batch_key="k", run_id="r", also={"teacher_topk": topk})
        again = lake.commit("samples", samples, batch_key="k", run_id="r", also={"teacher_topk": topk})
        assert first.committed and first.rows == 3 and not again.committed
        got = lake.query("SELECT sample_id, run_id, top_ids, top_logprobs FROM teacher_topk ORDER BY sample_id").to_pylist()
        assert [(g["sample_id"], g["run_id"], g["top_ids"]) for g in got] == [(f"s{i}", "r", [[i, 9]]) for i in range(3)]
        assert got[0]["top_logprobs"][0] == pytest.approx([-0.1, -2.5]) and count(lake, "samples") == 3
        with pytest.raises(BadInput, match="teacher_topk.*required column 'top_logprobs'"):
            lake.commit("samples", samples, batch_key="k2", run_id="r", also={"teacher_topk": [{"sample_id": "s0", "k": 1, "positions": 1}]})
        assert count(lake, "samples") == 3
