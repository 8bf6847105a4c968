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


# -- one confinement for every path that runs user SQL -------------------------------------

# Each of these ran on the writer connection through `factory snapshot` before: they wrote
# files outside the lake, changed it, or changed engine state.
SIDE_EFFECTS = {
    "enable_profiling": "SELECT * FROM enable_profiling(format='json', save_location='{tmp}/profile.json')",
    "enable_logging": "SELECT * FROM enable_logging(storage_path='{tmp}/logs')",
    "checkpoint": "SELECT * FROM checkpoint('lake')",
    "force_checkpoint": "SELECT * FROM force_checkpoint('lake')",
    "catalog merge": "SELECT * FROM lake.merge_adjacent_files()",
    "catalog expire": "SELECT * FROM lake.expire_snapshots(older_than => now())",
    "ducklake_merge_adjacent_files": "SELECT * FROM ducklake_merge_adjacent_files('lake')",
    "ducklake_flush_inlined_data": "SELECT * FROM ducklake_flush_inlined_data('lake')",
    "ducklake_set_option": "SELECT * FROM ducklake_set_option('lake', 'parquet_compression', 'gzip')",
    "truncate_duckdb_logs": "SELECT * FROM truncate_duckdb_logs()",
    "checkpoint as scalar": "SELECT checkpoint('lake')",
    "enable_profiling in a subquery": "SELECT count(*) FROM problems WHERE 1 IN (SELECT 1 FROM enable_profiling())",
    "setseed": "SELECT setseed(0.5)",
    "nextval": "SELECT nextval('s')",
    "write_log": "SELECT write_log('x', level := 'error')",
}


def _user_sql_path(lake, how: str, sql: str):
    if how == "sql":
        return lambda: lake.sql(sql)
    if how == "save_dataset":
        return lambda: lake.save_dataset("d", sql)
    # A dataset row written by older code that did not check: reading it is refused too.
    row = {"name": "d", "version": 1, "sql": sql, "snapshot_id": lake.snapshot_id(), "row_count": 0}
    lake.commit("datasets", [row], batch_key="old", run_id="r")
    return lambda: lake.read_dataset("d")


@pytest.mark.parametrize("how", ["sql", "save_dataset", "read_dataset"])
@pytest.mark.parametrize("sql", SIDE_EFFECTS.values(), ids=list(SIDE_EFFECTS))
def test_side_effect_functions_are_refused_on_every_path(lake, tmp_path, how, sql):
    run = _user_sql_path(lake, how, sql.format(tmp=tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    before = lake.snapshot_id()
    datasets = lake.query("SELECT count(*) AS n FROM datasets").to_pylist()
    with pytest.raises(BadInput, match="is not allowed") as info:
        run()
    assert "\n" not in str(info.value)
    lake.close()  # closing checkpoints the catalog: anything the query queued would land now
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no profile, no log folder
    assert lake.snapshot_id() == before
    assert lake.query("SELECT count(*) AS n FROM datasets").to_pylist() == datasets
    options = {r["option_name"]: r["value"] for r in lake.query("SELECT option_name, value FROM ducklake_options('lake')").to_pylist()}
    assert options.get("parquet_compression") == "zstd"


def _table_functions() -> list[str]:
    from storage.extensions import connect

    con = connect("ducklake")
    rows = con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type IN ('table', 'table_macro', 'pragma') ORDER BY 1"
    ).fetchall()
    con.close()
    return [r[0] for r in rows]


def test_every_table_and_pragma_function_outside_the_allow_list_is_refused(lake):
    # Deny by default: whatever this DuckDB (or a later one) ships is refused in FROM and as a
    # scalar call unless it is on the allow-list.
    import duckdb

    from storage.sql import TABLE_FUNCTIONS, check_confined, parse_select

    con = duckdb.connect()
    names = [n for n in _table_functions() if n.lower() not in TABLE_FUNCTIONS]
    assert {"enable_profiling", "enable_logging", "checkpoint", "force_checkpoint", "ducklake_merge_adjacent_files"} <= set(names)
    for name in names:
        quoted = f'"{name}"'  # some are keywords (show)
        for sql in (f"SELECT * FROM {quoted}()", f"SELECT {quoted}()", f"SELECT * FROM range(1) WHERE range IN (SELECT 1 FROM {quoted}())"):
            with pytest.raises(BadInput, match="is not allowed"):
                check_confined(parse_select(con, sql))
    # The allowed ones still work, on every path.
    assert lake.sql("SELECT sum(range) AS s FROM range(4)").to_pylist() == [{"s": 6}]
    assert lake.sql("SELECT unnest([1, 2]) AS u").column("u").to_pylist() == [1, 2]
    assert lake.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'problems'").to_pylist() == [{"n": 1}]
    assert lake.save_dataset("ok", "SELECT * FROM problems, range(2)").row_count == 40
    assert lake.read_dataset("ok").num_rows == 40


def test_the_result_is_capped_at_the_memory_limit(lake):
    # DuckDB's memory_limit does not cover the result handed to Python: it is streamed and
    # stopped past the limit (it reached 2 GB with a 100MB limit before).
    with pytest.raises(BadInput, match="result is larger than the memory limit of 20MB"):
        lake.sql("SELECT repeat('x', 1000) || range AS s FROM range(200000)", memory_limit="20MB")
    assert lake.sql("SELECT repeat('x', 1000) AS s FROM range(1000)", memory_limit="20MB").num_rows == 1000


def test_a_snapshot_stops_at_its_time_limit_and_blocks_no_writer(lake, tmp_path):
    """The SELECT is counted on the confined engine over a copy of the catalog: a writer in
    another process commits meanwhile (it waited on the writer connection before)."""
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    before = lake.query("SELECT count(*) AS n FROM datasets").to_pylist()
    outcome = {}

    def slow():
        start = time.monotonic()
        try:
            lake.save_dataset("slow", "SELECT count(*) AS n FROM range(100000000000)", timeout_s=10)
        except Exception as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(1.0)
    writer = (
        "import sys; from storage import Lake\n"
        "with Lake.open(sys.argv[1], lock_timeout_s=1) as lk:\n"
        "    print(lk.commit('problems', [{'problem_id': 'w', 'problem': 'w'}], batch_key='w', run_id='w').committed)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", writer, str(tmp_path / "store")],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
    )
    still_counting = worker.is_alive()
    worker.join(timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    assert still_counting, "the writer should commit while the slow SELECT is still being counted"
    assert isinstance(outcome.get("error"), BadInput) and "time limit of 10 s" in str(outcome["error"])
    assert outcome["seconds"] < 10 + 10
    assert lake.query("SELECT count(*) AS n FROM datasets").to_pylist() == before
    assert lake.sql("SELECT count(*) AS n FROM problems").to_pylist() == [{"n": 21}]
