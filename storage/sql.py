"""Read-only, confined SQL over the lake, and pinning a SELECT to a lake snapshot.

User SQL passes three gates before it sees data:
1. the parser: exactly one statement, and it is a SELECT (no COPY/EXPORT/ATTACH/INSTALL/LOAD/
   SET/PRAGMA/CALL, no writes);
2. the syntax tree: no function that reads files or the network, reaches the catalog
   database directly, or runs other SQL (`read_*`, `glob`, `postgres_*`, `query`, ...), and no
   table outside the lake (file paths, the catalog's own database);
3. the engine: the lake is attached READ_ONLY, external access is off except the lake's own
   data and catalog, a memory limit is set, the configuration is locked, and a timer
   interrupts the query at the time limit.
A refused query raises `BadInput` with a one-line reason; nothing is changed.

`pin_to_snapshot` rewrites every lake table in a SELECT to `AT (VERSION => n)`: that is how a
dataset version is read later exactly as it was.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

import duckdb

from .errors import BadInput

# Read-only DuckLake functions users may call; every other ducklake_* function is maintenance.
_DUCKLAKE_READ = {
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
}
_DENY_PREFIXES = ("read_", "parquet_", "sniff_", "postgres_", "sqlite_", "pg_", "iceberg_", "delta_")
_DENY_NAMES = {
    "glob",
    "query",
    "query_table",
    "getenv",
    "duckdb_secrets",
    "which_secret",
    "load_aws_credentials",
    "copy",
    "ducklake_scan",
    "json_execute_serialized_sql",
    "sqlite_attach",
}
_LAKE_CATALOGS = {"", "lake"}
_OK_CATALOGS = _LAKE_CATALOGS | {"system", "temp", "memory"}
_OK_SCHEMAS = _OK_CATALOGS | {"main", "information_schema", "pg_catalog"}


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


def check_confined(ast: dict) -> None:
    """Refuse functions and tables that reach outside the lake."""
    for node in _walk(ast):
        name = None
        if node.get("class") == "FUNCTION" or node.get("type") == "FUNCTION":
            name = node.get("function_name")
        elif node.get("type") == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = fn.get("function_name")
        if name:
            low = name.lower()
            if (
                low in _DENY_NAMES
                or low.startswith(_DENY_PREFIXES)
                or (low.startswith("ducklake_") and low not in _DUCKLAKE_READ)
            ):
                raise BadInput(
                    f"function {name}() is not allowed: SQL here reads only the lake's tables"
                )
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


def confine(con: duckdb.DuckDBPyConnection, allowed_dirs: list[str], allowed_files: list[str], memory_limit: str) -> None:
    """Lock an engine down to the lake: call after the lake is attached READ_ONLY."""
    con.execute("SET allowed_directories = ?", [allowed_dirs])
    con.execute("SET allowed_paths = ?", [allowed_files])
    con.execute("SET enable_external_access = false")
    try:
        con.execute("SET memory_limit = ?", [memory_limit])
    except duckdb.Error as exc:
        raise BadInput(f"memory limit {memory_limit!r}: expected a size such as '2GB' ({_one_line(exc)})") from exc
    con.execute("SET lock_configuration = true")


def run_with_limit(con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float, memory_limit: str):
    """Run a checked SELECT; interrupt it at the time limit. Returns an Arrow table."""
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        return con.execute(sql).to_arrow_table()
    except duckdb.InterruptException as exc:
        raise BadInput(f"query stopped at the time limit of {timeout_s:g} s") from exc
    except duckdb.OutOfMemoryException as exc:
        raise BadInput(f"query needs more than the memory limit of {memory_limit}") from exc
    except duckdb.Error as exc:
        raise BadInput(f"query failed: {_one_line(exc)}") from exc
    finally:
        timer.cancel()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
