"""Read-only confined SQL: every refused form, and that a refusal changes nothing."""

import pytest

from storage import BadInput, Lake


@pytest.fixture
def lake(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store, data_inlining_row_limit=0) as lk:
        lk.commit("problems", [{"problem_id": f"p{i}", "problem": f"q{i}"} for i in range(20)], batch_key="k", run_id="r")
        (tmp_path / "outside.csv").write_text("a,b\n1,2\n")
        yield lk


def test_select_works_and_sees_the_lake(lake):
    assert lake.sql("SELECT count(*) AS n FROM problems").to_pylist() == [{"n": 20}]
    assert lake.sql("SELECT count(*) AS n FROM lake.main.problems WHERE problem LIKE 'q1%'").to_pylist() == [{"n": 11}]
    # read-only DuckLake functions are allowed
    assert lake.sql("SELECT count(*) AS n FROM ducklake_snapshots('lake')").column("n")[0].as_py() >= 1


REFUSED = {
    "INSERT INTO problems (problem_id, problem) VALUES ('x', 'y')": "only SELECT",
    "UPDATE problems SET problem = 'x'": "only SELECT",
    "DELETE FROM problems": "only SELECT",
    "CREATE TABLE t AS SELECT 1": "only SELECT",
    "DROP TABLE problems": "only SELECT",
    "ALTER TABLE problems ADD COLUMN x INT": "only SELECT",
    "COPY problems TO '/tmp/out.csv'": "only SELECT",
    "EXPORT DATABASE '/tmp/export'": "only SELECT",
    "ATTACH '/tmp/other.db' AS other": "only SELECT",
    "DETACH lake": "only SELECT",
    "INSTALL httpfs": "only SELECT",
    "LOAD httpfs": "only SELECT",
    "SET memory_limit = '100GB'": "only SELECT",
    "RESET memory_limit": "only SELECT",
    "PRAGMA database_list": "only SELECT",
    "CALL ducklake_expire_snapshots('lake', older_than => now())": "only SELECT",
    "CHECKPOINT": "only SELECT",
    "SELECT 1; SELECT 2": "exactly one",
    "SELECT 1; DROP TABLE problems": "exactly one",
    "SELEC 1": "syntax error",
    "SELECT * FROM read_csv('/etc/passwd')": "read_csv",
    "SELECT * FROM read_text('/etc/hostname')": "read_text",
    "SELECT * FROM read_parquet('/tmp/x.parquet')": "read_parquet",
    "SELECT * FROM read_json_auto('http://127.0.0.1:1/x.json')": "read_json_auto",
    "SELECT * FROM glob('/etc/*')": "glob",
    "SELECT * FROM '/etc/passwd.csv'": "file",
    "SELECT * FROM 's3://bucket/key.parquet'": "file",
    "SELECT getenv('HOME')": "getenv",
    "SELECT * FROM duckdb_secrets()": "duckdb_secrets",
    "SELECT * FROM query('SELECT 1')": "query",
    "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())": "ducklake_expire_snapshots",
    "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)": "ducklake_cleanup_old_files",
    "SELECT * FROM __ducklake_metadata_lake.ducklake_snapshot": "database",
    "SELECT * FROM postgres_query('x', 'DROP TABLE y')": "postgres_query",
    "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x": "read_csv",
    "SELECT (SELECT count(*) FROM read_blob('/etc/passwd'))": "read_blob",
}


@pytest.mark.parametrize("sql,reason", REFUSED.items(), ids=list(REFUSED))
def test_refused_forms_say_why_and_change_nothing(lake, sql, reason):
    before = lake.snapshot_id()
    with pytest.raises(BadInput, match=reason) as info:
        lake.sql(sql)
    assert "\n" not in str(info.value)  # one line
    assert lake.snapshot_id() == before
    assert lake.query("SELECT count(*) AS n FROM problems").to_pylist() == [{"n": 20}]


def test_engine_blocks_files_even_past_the_syntax_check(lake, tmp_path):
    # A function the denylist does not name still cannot reach outside the lake's files.
    with pytest.raises(BadInput, match="(disabled|Permission|not allowed)"):
        lake.sql(f"SELECT * FROM parquet_metadata('{tmp_path}/outside.csv')")
    with pytest.raises(BadInput, match="(disabled|Permission|not allowed)"):
        lake.sql(f"SELECT * FROM sniff_csv('{tmp_path}/outside.csv')")


def test_the_engine_is_read_only_and_locked(lake):
    # Call the engine-level guard directly: the attach is READ_ONLY and settings are locked.
    from storage.sql import run_with_limit

    lake.close()  # one process may attach a DuckDB catalog file once at a time
    con = lake._attach(read_only=True)
    try:
        with pytest.raises(BadInput, match="read-only"):
            run_with_limit(con, "INSERT INTO problems (problem_id, problem, run_id, created_at) VALUES ('x','y','r', now())", 5, "1GB")
    finally:
        con.close()


def test_time_limit_interrupts_a_long_query(lake):
    with pytest.raises(BadInput, match="time limit of 0.5 s"):
        lake.sql("SELECT count(*) FROM range(100000000000) a", timeout_s=0.5)


def test_memory_limit_stops_a_greedy_query(lake):
    with pytest.raises(BadInput, match="memory limit of 64MB"):
        lake.sql("SELECT list(range || 'padding-padding-padding') FROM range(30000000)", memory_limit="64MB", timeout_s=60)


def test_bad_memory_limit_is_bad_input(lake):
    with pytest.raises(BadInput, match="memory limit"):
        lake.sql("SELECT 1", memory_limit="lots")


def test_lake_stays_usable_after_a_confined_query(lake):
    lake.sql("SELECT 1")
    lake.commit("problems", [{"problem_id": "new", "problem": "x"}], batch_key="k2", run_id="r")
    assert lake.sql("SELECT count(*) AS n FROM problems").to_pylist() == [{"n": 21}]
