import datetime as dt

import pyarrow as pa
import pytest

from storage import BadInput, Lake, schemas


def test_every_table_round_trips_its_arrow_schema(tmp_path):
    with Lake.open(str(tmp_path / "lake")) as lake:
        for name, schema in schemas.ALL_TABLES.items():
            got = lake.query(f'SELECT * FROM "{name}" LIMIT 0').schema
            assert got.names == schema.names, name
            for field in schema:
                got_type = got.field(field.name).type
                assert schemas.duckdb_type(got_type) == schemas.duckdb_type(field.type), (name, field.name)
                if pa.types.is_timestamp(field.type):
                    assert got_type.tz == "UTC", (name, field.name)


def test_schema_version_is_recorded(tmp_path):
    with Lake.open(str(tmp_path / "lake")) as lake:
        row = lake.query("SELECT value FROM meta WHERE key = 'schema_version'").to_pylist()
    assert row == [{"value": str(schemas.SCHEMA_VERSION)}]


def test_conform_fills_defaults_and_nulls():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    t = schemas.conform("problems", pa.table({"problem_id": ["a"], "problem": ["1+1"]}), {"run_id": "r", "created_at": now})
    assert t.schema == schemas.PROBLEMS
    row = t.to_pylist()[0]
    assert row["run_id"] == "r" and row["created_at"] == now and row["reference_answer"] is None


def test_conform_names_the_missing_required_column():
    with pytest.raises(BadInput, match="required column 'problem'"):
        schemas.conform("problems", pa.table({"problem_id": ["a"]}), {"run_id": "r", "created_at": dt.datetime.now(dt.UTC)})


def test_conform_refuses_unknown_columns_and_bad_types():
    base = {"run_id": "r", "created_at": dt.datetime.now(dt.UTC)}
    with pytest.raises(BadInput, match=r"no column\(s\) \['problme'\]"):
        schemas.conform("problems", pa.table({"problem_id": ["a"], "problme": ["x"]}), base)
    with pytest.raises(BadInput, match="column 'difficulty'"):
        schemas.conform("problems", pa.table({"problem_id": ["a"], "problem": ["x"], "difficulty": ["hard"]}), base)


def test_conform_refuses_nulls_in_required_columns():
    base = {"run_id": "r", "created_at": dt.datetime.now(dt.UTC)}
    with pytest.raises(BadInput, match="null value"):
        schemas.conform("problems", pa.table({"problem_id": ["a", None], "problem": ["x", "y"]}), base)


def test_ddl_types_cover_nested_columns():
    assert schemas.duckdb_type(schemas.SAMPLES.field("messages").type) == 'STRUCT("role" VARCHAR, "content" VARCHAR)[]'
    assert schemas.duckdb_type(schemas.PROBLEMS.field("contamination").type) == "VARCHAR[]"


def test_an_older_lake_gains_new_tables_and_version(tmp_path):
    store = str(tmp_path / "lake")
    with Lake.open(store) as lake:
        lake.query("DROP TABLE minhash")
        lake.query("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Lake.open(store) as lake:
        assert lake.query("SELECT value FROM meta WHERE key = 'schema_version'").to_pylist() == [{"value": str(schemas.SCHEMA_VERSION)}]
        assert lake.query("SELECT count(*) AS n FROM minhash").to_pylist() == [{"n": 0}]
