"""Read seed sets and existing trace datasets (JSONL, Parquet, CSV) into rows of a lake table.

    table, rejects = read_table("gsm8k.jsonl", "problems", mapping={"problem": "question"})
    known = lake.existing("problems", "problem_id", table.column("problem_id").to_pylist())
    table, repeats, already = drop_duplicates(table, "problems", known)
    lake.commit("problems", table, batch_key=ingest_key(...))

`mapping` says which input column fills which table field (`field=column`); input columns
named like a field fill it directly; other columns are kept in `metadata` (JSON) so nothing
of a seed set is lost. `constants` set a field for every row (`--set model=deepseek-r1`).
Each bad row becomes a `Reject` with its line (JSONL, CSV) or row number (Parquet), the field
and what was expected; the caller decides whether one reject fails the whole ingest.
A table holds one row per id (`problem_id`, `sample_id`): `drop_duplicates` keeps the first
row of each id and drops the ids the table already holds.

Limits: the whole input is held in memory as Arrow (fine for seed sets up to a few million
rows); a streaming multi-batch ingest would need a batch key per chunk. Two ingests of
overlapping files running at the same moment may both add an id (each checks the table before
it commits).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import schemas
from storage.errors import BadInput
from storage.files import atomic_output

from .records import content_hash, problem_id

INGEST_TABLES = ("problems", "samples")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Reject:
    line: int  # 1-based line (JSONL, CSV) or row (Parquet) of the input
    field: str | None
    error: str
    record: dict | None

    def describe(self, path: str, unit: str) -> str:
        where = f"{path}:{self.line}" if unit == "line" else f"{path} row {self.line}"
        return f"{where}: " + (f"field {self.field!r}: " if self.field else "") + self.error


class RowError(ValueError):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


def input_format(path: str | Path) -> str:
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise BadInput(f"{path}: unknown input format; expected .jsonl, .json (JSON lines), .parquet, .csv or .tsv (optionally .gz)")
    return fmt


def position_unit(path: str | Path) -> str:
    return "row" if input_format(path) == "parquet" else "line"


def parse_assignments(items: list[str], what: str) -> dict[str, str]:
    """`["field=column", ...]` -> dict; BadInput naming the bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadInput(f"{what} {item!r}: expected FIELD=VALUE")
        out[key.strip()] = value.strip()
    return out


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
UNPAIRED_SURROGATE = "a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)"


def has_unpaired_surrogate(line: str, record: Any) -> bool:
    """Whether the JSON text `line`, parsed as `record`, holds a lone half of a surrogate pair
    (`"\\ud800"` is valid JSON): such a string cannot be hashed, written to Parquet or printed
    as UTF-8, so a reader refuses the row instead of failing later with a traceback."""
    if not _SURROGATE_ESCAPE.search(line):
        return False
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_records(path: str | Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(position, record, error) for every row of the input; a row that does not parse has
    record None and the reason."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such file")
    fmt = input_format(p)
    try:
        if fmt == "jsonl":
            with _open_text(p) as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield n, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
                        continue
                    except RecursionError:
                        yield n, None, "invalid JSON (nested too deeply)"
                        continue
                    except ValueError as exc:  # an integer of more than 4300 digits (Python's limit)
                        yield n, None, f"invalid JSON ({str(exc).split(':')[0]})"
                        continue
                    if not isinstance(rec, dict):
                        yield n, None, f"expected a JSON object, got {type(rec).__name__}"
                        continue
                    if has_unpaired_surrogate(line, rec):
                        yield n, None, UNPAIRED_SURROGATE
                        continue
                    yield n, rec, None
        elif fmt in ("csv", "tsv"):
            with _open_text(p) as fh:
                reader = csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ",")
                for rec in reader:
                    # An empty cell is a missing value, not an empty string.
                    yield reader.line_num, {k: (v if v != "" else None) for k, v in rec.items() if k is not None}, None
        else:
            n = 0
            for batch in pq.ParquetFile(p).iter_batches(batch_size=8192):
                for rec in batch.to_pylist():
                    n += 1
                    yield n, rec, None
    except (UnicodeDecodeError, csv.Error, pa.ArrowInvalid, OSError, EOFError) as exc:
        raise BadInput(f"{path}: cannot read as {fmt}: {exc}") from exc


# -- field coercion: each raises RowError(field, what was expected) ------------------------


def _text(field: str, v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise RowError(field, f"expected text, got a boolean {v!r}")
    if isinstance(v, (str, int)):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return repr(int(v)) if v.is_integer() else repr(v)
    raise RowError(field, f"expected text, got {type(v).__name__}")


def _json_text(field: str, v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    try:
        return json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as exc:
        raise RowError(field, f"expected JSON-serialisable data ({exc})") from exc


def _number(field: str, v: Any, bits: int | None) -> float | int | None:
    """A float, or with `bits` an integer that fits a signed integer of that many bits."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise RowError(field, f"expected a number, got a boolean {v!r}")
    if isinstance(v, int) and bits is not None:
        n = v  # not through float: that would round integers above 2**53
    else:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise RowError(field, f"expected a number, got {_short(v)}") from None
        except OverflowError:  # an int beyond a float's range
            raise RowError(field, f"expected a finite number, got {_short(v)}") from None
        if math.isnan(x):
            return None
        if math.isinf(x):
            raise RowError(field, f"expected a finite number, got {_short(v)}")
        if bits is None:
            return x
        if not x.is_integer():
            raise RowError(field, f"expected an integer, got {_short(v)}")
        n = int(x)
    if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
        raise RowError(field, f"expected an integer that fits {bits} bits, got {_short(v)}")
    return n


def _short(v: Any, limit: int = 40) -> str:
    """repr(v), cut: a bad value may be 4,000 digits long."""
    text = repr(v) if not isinstance(v, int) or v.bit_length() < 128 else f"an integer of {len(str(abs(v)))} digits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _string_list(field: str, v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RowError(field, "expected a list of strings")
    return v


def _messages(field: str, v: Any) -> list[dict] | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise RowError(field, "expected a list of {role, content} objects (or its JSON)") from None
    if not isinstance(v, list):
        raise RowError(field, "expected a list of {role, content} objects")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(field, f"message {i}: expected an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _coercer(t: pa.DataType, name: str) -> Callable[[str, Any], Any]:
    if name in ("metadata", "sampling", "tests", "counts"):
        return _json_text
    if pa.types.is_string(t):
        return _text
    if pa.types.is_integer(t):
        return lambda f, v: _number(f, v, bits=t.bit_width)
    if pa.types.is_floating(t):
        return lambda f, v: _number(f, v, bits=None)
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        return _messages
    if pa.types.is_list(t):
        return _string_list
    raise TypeError(f"no coercion for {name}: {t}")  # pragma: no cover - schema guard


_SKIP = {"run_id", "created_at"}  # filled by the lake at commit
# Mapping keys that are no table field: a sample's problem text, from which its id is derived.
_PSEUDO = {"samples": {"problem"}, "problems": set()}


def _lookup(record: dict, column: str) -> tuple[bool, Any]:
    """A column, or a dotted path into nested objects (`a.b` -> record["a"]["b"])."""
    if column in record:
        return True, record[column]
    node: Any = record
    for part in column.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _fields(table: str) -> list[pa.Field]:
    return [f for f in schemas.TABLES[table] if f.name not in _SKIP]


def shape_row(table: str, record: dict, mapping: dict[str, str], constants: dict[str, str], source: str) -> dict:
    """One input record -> one row of `table` (all fields present), or RowError."""
    fields = _fields(table)
    names = {f.name for f in fields}
    used: set[str] = set()
    values: dict[str, Any] = {}
    for f in fields:
        if f.name in constants:
            raw = constants[f.name]
        elif f.name in mapping:
            column = mapping[f.name]
            found, raw = _lookup(record, column)
            if not found:
                raise RowError(f.name, f"the mapped column {column!r} is missing from this row")
            if column in record:
                used.add(column)
        elif f.name in record:
            raw = record[f.name]
            used.add(f.name)
        else:
            raw = None
        values[f.name] = _coercer(f.type, f.name)(f.name, raw)
    used.update(mapping[k] for k in _PSEUDO[table] if mapping.get(k) in record)
    # Keep what the table has no field for, so a seed set's extra columns are not lost.
    extra = {k: v for k, v in record.items() if k not in used and k not in names}
    if extra:
        meta = json.loads(values["metadata"]) if values.get("metadata") else {}
        if not isinstance(meta, dict):
            raise RowError("metadata", "expected a JSON object")
        values["metadata"] = _json_text("metadata", {**extra, **meta})
    return _finish_problem(values, source) if table == "problems" else _finish_sample(values, record, mapping)


def _finish_problem(v: dict, source: str) -> dict:
    if not v.get("problem") or not v["problem"].strip():
        raise RowError("problem", "expected non-empty problem text")
    v["problem_id"] = v.get("problem_id") or problem_id(v["problem"])
    v["source"] = v.get("source") or source
    return v


def _finish_sample(v: dict, record: dict, mapping: dict[str, str]) -> dict:
    if not v.get("problem_id"):
        _, text = _lookup(record, mapping.get("problem", "problem"))
        if not isinstance(text, str) or not text.strip():
            raise RowError("problem_id", "expected a problem_id, or a 'problem' column to derive it from")
        v["problem_id"] = problem_id(text)
        v["prompt"] = v.get("prompt") or text
    if not any(v.get(k) for k in ("completion", "reasoning", "answer", "messages")):
        raise RowError("completion", "expected at least one of completion, reasoning, answer or messages")
    if not v.get("sample_id"):
        v["sample_id"] = content_hash(
            "sample", v["problem_id"], v.get("model"), v.get("sample_index"),
            v.get("messages"), v.get("completion"), v.get("reasoning"), v.get("answer"),
        )
    return v


def read_table(
    path: str | Path,
    table: str,
    mapping: dict[str, str] | None = None,
    constants: dict[str, str] | None = None,
    source: str | None = None,
) -> tuple[pa.Table, list[Reject]]:
    """All good rows of the input as an Arrow table for `table`, and the rejects."""
    if table not in INGEST_TABLES:
        raise BadInput(f"--table {table!r}: expected one of {list(INGEST_TABLES)}")
    mapping = mapping or {}
    constants = constants or {}
    field_names = {f.name for f in _fields(table)}
    for what, given in (("--map", mapping), ("--set", constants)):
        unknown = sorted(set(given) - field_names - (_PSEUDO[table] if what == "--map" else set()))
        if unknown:
            raise BadInput(f"{what}: table {table!r} has no field(s) {unknown}; fields: {sorted(field_names)}")
    source = source or Path(path).name.split(".")[0]
    rows: list[dict] = []
    rejects: list[Reject] = []
    for pos, record, error in iter_records(path):
        if record is None:
            rejects.append(Reject(pos, None, error or "unreadable", None))
            continue
        try:
            rows.append(shape_row(table, record, mapping, constants, source))
        except RowError as exc:
            rejects.append(Reject(pos, exc.field, str(exc), record))
        except RecursionError:  # a JSON text inside a field (messages, tests), nested too deeply
            rejects.append(Reject(pos, None, "a value is nested too deeply", None))
    schema = pa.schema(_fields(table))
    return pa.Table.from_pylist(rows, schema=schema), rejects


def ingest_key(path: str | Path, table: str, mapping: dict[str, str], constants: dict[str, str], source: str | None) -> str:
    """The batch key of an ingest: the same file with the same options is ingested once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "ingest:" + table + ":" + content_hash(digest.hexdigest(), table, mapping, constants, source)


def write_rejects(rejects: list[Reject], out: str | Path) -> None:
    """The rejects as JSON lines (line, field, error, record), written atomically (BadInput
    when `out` cannot be written: see storage.files)."""
    with atomic_output(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps({"line": r.line, "field": r.field, "error": r.error, "record": r.record}, default=str) + "\n")


ID_COLUMN = {"problems": "problem_id", "samples": "sample_id"}


def drop_duplicates(data: pa.Table, table: str, known: set[str] | frozenset[str] = frozenset()) -> tuple[pa.Table, int, int]:
    """The rows of `data` with an id (`ID_COLUMN[table]`) seen for the first time: the first row
    of each id, and none whose id is in `known` (the ids the table already holds). Returns the
    rows kept, how many repeated an id within `data`, and how many had a `known` id."""
    seen: set[str] = set()
    keep: list[int] = []
    repeats = already = 0
    for i, v in enumerate(data.column(ID_COLUMN[table]).to_pylist()):
        if v in known:
            already += 1
        elif v in seen:
            repeats += 1
        else:
            seen.add(v)
            keep.append(i)
    kept = data if len(keep) == data.num_rows else data.take(pa.array(keep, pa.int64()))
    return kept, repeats, already
