"""Read-only, confined SQL over the lake, and pinning a SELECT to a lake snapshot.

Every path that runs a user's SQL (`Lake.sql` for `factory sql`, `Lake.save_dataset` for
`factory snapshot` and recipes, `Lake.dataset_reader` for export, report and training) goes
through the same gates, and never through the lake's writer connection:
1. the parser: exactly one statement, and it is a SELECT (no COPY/EXPORT/ATTACH/INSTALL/LOAD/
   SET/PRAGMA/CALL/CHECKPOINT, no writes);
2. the syntax tree, allow-list first:
   - a table function (`FROM f(...)`) must be one of `TABLE_FUNCTIONS` (range, unnest, the
     read-only DuckLake and catalog views, ...). Every other one is refused, whatever it does:
     `enable_profiling`, `enable_logging`, `checkpoint`, `force_checkpoint`, `read_*`, `glob`,
     `query`, `ducklake_merge_adjacent_files`, the `lake.merge_adjacent_files()` catalog forms,
     and any table function a later DuckDB adds;
   - a scalar function is refused when it has a side effect or reaches outside the lake:
     `SIDE_EFFECT_FUNCTIONS` (nextval, setseed, write_log, getenv, ...), names that read files
     or other databases (`read_*`, `parquet_*`, `postgres_*`, ...), the name of any table or
     pragma function not allowed above, and any name qualified by a catalog other than DuckDB's
     own (`system`, `main`, `pg_catalog`). The list was made by reading DuckDB 1.5's
     `duckdb_functions()` for names that write, set, load, log, sleep past the engine or read
     files; tests/storage/test_sql.py checks every table and pragma function of the installed
     DuckDB is refused in both positions, so a new one cannot slip through unnoticed;
   - a table must be the lake's (no file paths, no catalog database);
3. the engine: a separate, read-only attach of the lake (a DuckDB catalog file is copied first,
   so a long query holds no lock a writer waits on); external access is off except the lake's
   data and catalog files; no temporary directory, so nothing spills to disk; a memory limit;
   the configuration is locked; a timer interrupts the query at the time limit.
A refused query raises `BadInput` with a one-line reason; nothing is changed or written.

The memory limit covers DuckDB's buffer manager (hash tables, sorts, aggregates: past it the
query fails with "memory limit") and the result: it is streamed in batches and stopped once
it holds more bytes than the limit, so a huge SELECT cannot fill the Python process. What is
not covered: allocations DuckDB makes outside its buffer manager (some string and list
builders, the parser), and whatever the caller does with the result (the CLI's table view).
So the peak can reach about twice the limit plus the process's own size.

`pin_to_snapshot` rewrites every lake table in a SELECT to `AT (VERSION => n)`: that is how a
dataset version is read later exactly as it was.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from .errors import BadInput
from .extensions import connect as _connect_engine

# Table functions users may call: pure generators, the read-only DuckLake functions, and the
# read-only catalog views. Everything else in FROM is refused (deny by default).
TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "ducklake_snapshots",
        "ducklake_table_info",
        "ducklake_table_changes",
        "ducklake_table_insertions",
        "ducklake_table_deletions",
        "ducklake_current_snapshot",
        "ducklake_last_committed_snapshot",
        "ducklake_list_files",
        "ducklake_options",
        "ducklake_settings",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_table_info",
    }
)
# Scalar functions with a side effect (sequence state, the random seed, the log, which may be
# a file) or that read the environment.
SIDE_EFFECT_FUNCTIONS = frozenset(
    {"nextval", "currval", "setseed", "write_log", "getenv", "json_execute_serialized_sql", "query", "query_table"}
)
# Name families that read files, the network or other databases, in any position.
_DENY_PREFIXES = ("read_", "parquet_", "sniff_", "postgres_", "sqlite_", "pg_", "iceberg_", "delta_", "enable_", "disable_")
_LAKE_CATALOGS = {"", "lake"}
_OK_CATALOGS = _LAKE_CATALOGS | {"system", "temp", "memory"}
_OK_SCHEMAS = _OK_CATALOGS | {"main", "information_schema", "pg_catalog"}
_BUILTIN_QUALIFIERS = {"", "system", "main", "pg_catalog"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|bytes|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def parse_select(con: duckdb.DuckDBPyConnection, sql: str) -> dict:
    """The syntax tree of a single SELECT, or BadInput saying why it is not one."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise BadInput(f"SQL syntax error: {_one_line(exc)}") from exc
    if len(statements) != 1:
        raise BadInput(f"exactly one SQL statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise BadInput(f"only SELECT is allowed (read-only SQL), got {kind.name}")
    ast = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if ast.get("error"):
        # PRAGMA and friends parse as SELECT but are not plain SELECTs.
        first = sql.strip().split(None, 1)[0].upper() if sql.strip() else "?"
        raise BadInput(f"only SELECT is allowed (read-only SQL), got {first}")
    return ast


@functools.cache
def _table_function_names() -> frozenset[str]:
    """Every table, table-macro and pragma function of this DuckDB and the DuckLake extension."""
    con = _connect_engine("ducklake")
    try:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro', 'pragma')"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0] for r in rows)


def _refuse(name: str, why: str) -> BadInput:
    return BadInput(f"function {name}() is not allowed: {why}; SQL here only reads the lake's tables")


def check_confined(ast: dict) -> None:
    """Refuse functions with side effects and tables or functions that reach outside the lake."""
    table_functions = {id(n["function"]) for n in _walk(ast) if n.get("type") == "TABLE_FUNCTION" and n.get("function")}
    for node in _walk(ast):
        if node.get("class") == "FUNCTION" or node.get("type") == "FUNCTION":
            name = node.get("function_name") or ""
            low = name.lower()
            qualifiers = {(node.get("catalog") or "").lower(), (node.get("schema") or "").lower()}
            shown = ".".join(p for p in (node.get("catalog"), node.get("schema"), name) if p)
            if id(node) in table_functions:
                if not qualifiers <= _BUILTIN_QUALIFIERS or low not in TABLE_FUNCTIONS:
                    raise _refuse(shown, "table functions are limited to range, unnest, json_each and the read-only ducklake_*/duckdb_* views")
            elif not qualifiers <= _BUILTIN_QUALIFIERS:
                raise _refuse(shown, "only DuckDB's own functions may be called")
            elif low in SIDE_EFFECT_FUNCTIONS or low.startswith(_DENY_PREFIXES) or low == "glob" or low.startswith("ducklake_"):
                raise _refuse(shown, "it has side effects or reads outside the lake")
            elif low in _table_function_names() and low not in TABLE_FUNCTIONS:
                raise _refuse(shown, "it is a table or pragma function with effects outside the query")
        if node.get("type") == "BASE_TABLE":
            table = node.get("table_name", "")
            catalog = node.get("catalog_name", "")
            if "/" in table or "." in table or ":" in table:
                raise BadInput(
                    f"reading the file {table!r} is not allowed: SQL here reads only the lake's tables"
                )
            schema = node.get("schema_name", "")
            # `a.b` may name a catalog or a schema: both must be the lake's (or system views).
            if catalog.lower() not in _OK_CATALOGS or (not catalog and schema.lower() not in _OK_SCHEMAS):
                catalog = catalog or schema
                raise BadInput(
                    f"database {catalog!r} is not allowed: SQL here reads only the lake's tables"
                )


def pin_to_snapshot(
    con: duckdb.DuckDBPyConnection, sql: str, snapshot_id: int, lake_tables: set[str]
) -> str:
    """The same SELECT with every lake table read `AT (VERSION => snapshot_id)`."""
    ast = parse_select(con, sql)
    ctes = {
        entry.get("key")
        for node in _walk(ast)
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    for node in _walk(ast):
        if node.get("type") != "BASE_TABLE" or node.get("at_clause"):
            continue
        name = node.get("table_name", "")
        if (
            name in ctes
            or name not in lake_tables
            or node.get("catalog_name", "") not in _LAKE_CATALOGS
            or node.get("schema_name", "") not in ("", "main")
        ):
            continue
        node["at_clause"] = {
            "unit": "VERSION",
            "expr": {
                "class": "CONSTANT",
                "type": "VALUE_CONSTANT",
                "alias": "",
                "query_location": 18446744073709551615,
                "value": {"type": {"id": "BIGINT", "type_info": None}, "is_null": False, "value": int(snapshot_id)},
            },
        }
    return con.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(ast)]).fetchone()[0]


def memory_bytes(memory_limit: str) -> int:
    """'2GB' -> 2_000_000_000 (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024, as in DuckDB)."""
    m = _SIZE.match(memory_limit or "")
    if not m or float(m[1]) <= 0:
        raise BadInput(f"memory limit {memory_limit!r}: expected a size such as '2GB' or '512MiB'")
    return int(float(m[1]) * _UNITS[(m[2] or "b").lower()])


def confine(con: duckdb.DuckDBPyConnection, allowed_dirs: list[str], allowed_files: list[str], memory_limit: str) -> None:
    """Lock an engine down to the lake: call after the lake is attached READ_ONLY."""
    memory_bytes(memory_limit)
    # No spilling: a query past the memory limit fails instead of writing temporary files.
    con.execute("SET temp_directory = ''")
    con.execute("SET allowed_directories = ?", [allowed_dirs])
    con.execute("SET allowed_paths = ?", [allowed_files])
    con.execute("SET enable_external_access = false")
    try:
        con.execute("SET memory_limit = ?", [memory_limit])
    except duckdb.Error as exc:
        raise BadInput(f"memory limit {memory_limit!r}: expected a size such as '2GB' ({_one_line(exc)})") from exc
    con.execute("SET lock_configuration = true")


def run_with_limit(
    con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float | None, memory_limit: str, batch_rows: int = 10_000
) -> pa.Table:
    """Run a checked SELECT on a confined engine; interrupt it at the time limit, and stop once
    the result holds more bytes than the memory limit. Returns an Arrow table."""
    return pa.Table.from_batches(*_limited(stream(con, sql, timeout_s, memory_limit, batch_rows), memory_limit))


def _limited(reader: pa.RecordBatchReader, memory_limit: str) -> tuple[list[pa.RecordBatch], pa.Schema]:
    cap = memory_bytes(memory_limit)
    batches, size, rows = [], 0, 0
    for batch in reader:
        size += batch.nbytes
        rows += batch.num_rows
        if size > cap:
            raise BadInput(
                f"the result is larger than the memory limit of {memory_limit} (over {rows} rows read): "
                "add a LIMIT, select fewer columns, or raise --memory-limit"
            )
        batches.append(batch)
    return batches, reader.schema


def stream(
    con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float | None, memory_limit: str, batch_rows: int = 10_000
) -> pa.RecordBatchReader:
    """Run a checked SELECT on a confined engine as a stream of Arrow batches; errors (the time
    limit, the memory limit, a failing query) raise BadInput with a one-line reason, at the
    start or while reading."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s is not None else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        reader = con.execute(sql).to_arrow_reader(batch_rows)
    except BaseException as exc:
        if timer:
            timer.cancel()
        raise _reason(exc, timeout_s, memory_limit) from exc

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in reader:
                # The interrupt only reaches a running query; between batches the clock decides.
                if deadline is not None and time.monotonic() > deadline:
                    raise duckdb.InterruptException("INTERRUPT Error: past the time limit")
                yield batch
        except BadInput:
            raise
        except BaseException as exc:
            raise _reason(exc, timeout_s, memory_limit) from exc
        finally:
            if timer:
                timer.cancel()

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def _reason(exc: BaseException, timeout_s: float | None, memory_limit: str) -> BaseException:
    """The one-line BadInput for an engine error; DuckDB errors met while streaming arrive as
    OSError with the engine's text, so the text decides."""
    text = str(exc)
    if isinstance(exc, duckdb.InterruptException) or text.startswith("INTERRUPT Error"):
        limit = "" if timeout_s is None else f" at the time limit of {timeout_s:g} s"
        return BadInput(f"query stopped{limit}")
    if isinstance(exc, duckdb.OutOfMemoryException) or text.startswith("Out of Memory Error"):
        return BadInput(f"query needs more than the memory limit of {memory_limit}")
    if isinstance(exc, (duckdb.Error, OSError, pa.ArrowException)):
        return BadInput(f"query failed: {_one_line(exc)}")
    return exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
