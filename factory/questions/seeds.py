"""Seed sets: problems with reference answers from JSONL, Parquet, CSV files and local Hugging Face
`datasets` folders, as rows of the `problems` table.

    from factory.questions.seeds import read_seeds, FieldMap
    rows = list(read_seeds("gsm8k_train.jsonl", FieldMap(problem="question", answer="answer")))
    rows[0]["reference_answer"]        # "72": GSM8K's worked solution cut at `#### `

Files are read by `factory.ingest` (formats, dotted paths into nested objects, line numbers);
a HF folder is opened with `datasets.load_from_disk` (imported only then). The field mapping
names the column of each part of a problem: `problem`, `answer`, `tests`, `id`, `metadata`,
and for code `setup` and `entry_point`, and `difficulty`. Unmapped columns are kept in
`metadata` unless `metadata` lists the ones to keep.

Answers are normalised per source (`answer_format`):
- gsm8k: the text after the last `####` (thousands commas dropped); the worked solution goes to
  metadata.solution.
- boxed: the last `\\boxed{...}` of a solution (MATH); the solution goes to metadata.solution.
- plain: the value as given, stripped.
- auto: gsm8k when the value has a `####` line, else boxed when it has a `\\boxed{}`, else plain.

Tests (code seed sets): a list of assert lines (MBPP `test_list`) becomes
`{"style": "asserts", "asserts": [...], "setup": ...}`; a test source with a `check` function
(HumanEval `test`) becomes `{"style": "asserts", "test": ..., "entry_point": ...}`; an object
with a `style` is taken as it is (see factory/verifiers/code.py). `show_tests=N` appends the
first N asserts to the problem text ("Your code should pass these tests:", MBPP's own prompt),
since MBPP's text alone does not name the function to write. A seed with tests is domain
`code` checked by the code verifier, else `math` checked by the math verifier, unless the
source says otherwise.

Problem ids are the content hash of the normalised problem text (`records.problem_id`), so the
same problem from two seed sets is one problem; the seed set's own id goes to metadata.source_id.

Bad input raises `BadInput` naming the file and line (row, for Parquet and HF folders), the
field and what was expected: a mapped column missing from a row, an empty file, a line that is
not UTF-8, a row that does not parse, an empty problem. With `on_bad_row="skip"` rows that are
bad in themselves (empty problem, no `####` in a gsm8k answer) are logged and skipped instead;
a missing column, an unreadable file and an empty file always fail.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.errors import BadInput

from ..ingest import RowError, _lookup, input_format, iter_records, shape_row
from ..records import problem_id
from ..verifiers.math import extract_answer

log = logging.getLogger(__name__)

AnswerFormat = Literal["auto", "gsm8k", "boxed", "plain"]


class FieldMap(BaseModel):
    """Which input column (or dotted path) holds each part of a problem."""

    model_config = ConfigDict(extra="forbid")

    problem: str = Field("problem", min_length=1)
    answer: str | None = None
    tests: str | None = None
    id: str | None = None
    metadata: list[str] | None = None  # columns to keep in metadata (default: every unmapped column)
    difficulty: str | None = None
    setup: str | None = None  # code: setup code run before the tests (MBPP test_setup_code)
    entry_point: str | None = None  # code: the function the tests call (HumanEval)


# -- answer normalisation -------------------------------------------------------------------

_HASHES = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalise_answer(value: str | None, answer_format: AnswerFormat = "auto") -> tuple[str | None, str | None]:
    """(answer, solution): the final answer and, when the value was a worked solution, that
    solution. RowError when the value does not have the stated form."""
    if value is None:
        return None, None
    text = str(value).strip()
    if not text:
        return None, None
    fmt = answer_format
    if fmt == "auto":
        fmt = "gsm8k" if "####" in text else "boxed" if ("\\boxed" in text or "\\fbox" in text) else "plain"
    if fmt == "gsm8k":
        head, sep, tail = text.rpartition("####")
        if not sep or not tail.strip():
            raise RowError("answer", "expected a GSM8K answer ending in '#### <final answer>'")
        answer = _THOUSANDS.sub("", tail.strip().splitlines()[0].strip())
        return answer, head.strip() or None
    if fmt == "boxed":
        if "\\boxed" not in text and "\\fbox" not in text:
            raise RowError("answer", "expected a solution with a \\boxed{...} final answer")
        answer = extract_answer(text)
        if not answer:
            raise RowError("answer", "expected a complete \\boxed{...} (balanced braces) in the solution")
        return answer, text
    return text, None


# -- tests normalisation --------------------------------------------------------------------


def normalise_tests(value: Any, setup: str | None = None, entry_point: str | None = None) -> dict | None:
    """The code verifier's test object for a seed's tests column (see the module docstring)."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped[0] in "[{":
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                pass
    if isinstance(value, dict):
        if value.get("style") not in ("asserts", "stdio"):
            raise RowError("tests", "expected an object with style 'asserts' or 'stdio', a list of asserts, or a test source")
        return value
    if isinstance(value, list):
        if not value or not all(isinstance(x, str) for x in value):
            raise RowError("tests", "expected a non-empty list of assert lines")
        out: dict = {"style": "asserts", "asserts": list(value)}
        if setup:
            out["setup"] = setup
        if entry_point:
            out["entry_point"] = entry_point
        return out
    if isinstance(value, str):
        if not entry_point:
            raise RowError("tests", "a test source (a check function) needs the entry_point field mapped")
        return {"style": "asserts", "test": value, "entry_point": entry_point}
    raise RowError("tests", f"expected a list of asserts or a test source, got {type(value).__name__}")


# -- reading -------------------------------------------------------------------------------


def _first_bad_utf8_line(path: Path) -> tuple[int, int, int] | None:
    """(line, column, byte) of the first line that is not UTF-8."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return n, exc.start + 1, raw[exc.start]
    return None


def _file_records(path: Path) -> Iterator[tuple[int, dict]]:
    if path.is_file() and path.stat().st_size == 0:
        raise BadInput(f"{path}:1: the file is empty; expected seed problems, one row per problem")
    seen = 0
    try:
        for pos, record, error in iter_records(path):
            if record is None:
                raise BadInput(f"{path}:{pos}: {error}; expected one JSON object per line")
            seen += 1
            yield pos, record
    except BadInput as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError):
            where = _first_bad_utf8_line(path)
            if where:
                line, col, byte = where
                raise BadInput(f"{path}:{line}: byte 0x{byte:02x} at column {col} is not UTF-8; expected UTF-8 text") from exc
        raise
    if not seen:
        raise BadInput(f"{path}:1: no rows (the file holds no records); expected seed problems, one row per problem")


def _hf_records(path: Path, split: str | None, columns: list[str]) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise BadInput(f"{path}: reading a Hugging Face folder needs `datasets`; run: pip install datasets") from exc
    try:
        ds = datasets.load_from_disk(str(path))
    except IndexError as exc:  # datasets cannot concatenate zero shards: a dataset saved with no rows
        raise BadInput(f"{path} row 1: the dataset has no rows; expected seed problems") from exc
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise BadInput(f"{path}: not a folder written by datasets' save_to_disk ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if len(names) != 1 and "train" not in ds:
                raise BadInput(f"{path}: field 'split': the folder holds splits {names}; expected one of them named")
            split = "train" if "train" in ds else names[0]
        if split not in ds:
            raise BadInput(f"{path}: field 'split': no split {split!r}; expected one of {names}")
        ds = ds[split]
    elif split is not None:
        log.info("%s holds one dataset; split %r ignored", path, split)
    if len(ds) == 0:
        raise BadInput(f"{path} row 1: the dataset has no rows; expected seed problems")
    have = set(ds.column_names)
    for column in columns:
        if column not in have and column.split(".")[0] not in have:
            raise BadInput(f"{path} row 1: the mapped column {column!r} is not in the dataset; columns: {sorted(have)}")
    for n, record in enumerate(ds, 1):
        yield n, dict(record)


def read_seeds(
    path: str | Path,
    fields: FieldMap | None = None,
    *,
    source: str | None = None,
    answer_format: AnswerFormat = "auto",
    kind: Literal["jsonl", "parquet", "csv", "hf"] | None = None,
    limit: int | None = None,
    domain: str | None = None,
    verifier: str | None = None,
    split: str | None = None,
    on_bad_row: Literal["fail", "skip"] = "fail",
    show_tests: int = 0,
) -> Iterator[dict]:
    """`problems` rows from a seed set (see the module docstring); BadInput on bad input."""
    fields = fields or FieldMap()
    p = Path(path)
    kind = kind or ("hf" if p.is_dir() else None)
    if kind != "hf" and not p.exists():
        raise BadInput(f"{path}: no such file")
    if kind == "hf" and not p.is_dir():
        raise BadInput(f"{path}: no such folder; expected a folder written by datasets' save_to_disk")
    if kind not in (None, "hf"):
        fmt = input_format(p)
        if {"tsv": "csv"}.get(fmt, fmt) != kind:
            raise BadInput(f"{path}: field 'source' says {kind!r} but the file is {fmt}; expected a .{kind} file (optionally .gz)")
    source = source or (p.name if kind == "hf" else p.name.split(".")[0])
    mapped = [c for c in (fields.problem, fields.answer, fields.tests, fields.id, fields.difficulty, fields.setup, fields.entry_point) if c]
    mapped += list(fields.metadata or [])
    if kind == "hf":
        records, unit = _hf_records(p, split, mapped), "row"
    else:
        records, unit = _file_records(p), ("row" if p.suffix.lower() == ".parquet" else "line")
    mapping = {"problem": fields.problem}
    if fields.answer:
        mapping["reference_answer"] = fields.answer
    if fields.difficulty:
        mapping["difficulty"] = fields.difficulty
    made = skipped = 0
    for pos, record in records:
        if limit is not None and made >= limit:
            break
        where = f"{path}:{pos}" if unit == "line" else f"{path} row {pos}"
        try:
            row = _seed_row(record, fields, mapping, source, answer_format, domain, verifier, show_tests)
        except RowError as exc:
            missing = "is missing from this row" in str(exc)
            if on_bad_row == "skip" and not missing:
                skipped += 1
                log.warning("%s: field %r: %s (skipped)", where, exc.field, exc)
                continue
            hint = f"; columns: {sorted(record)}" if missing else ""
            raise BadInput(f"{where}: field {exc.field!r}: {exc}{hint}") from None
        made += 1
        yield row
    if skipped:
        log.warning("%s: %d bad row(s) skipped", path, skipped)


def _seed_row(record: dict, fields: FieldMap, mapping: dict, source: str, answer_format: AnswerFormat,
              domain: str | None, verifier: str | None, show_tests: int = 0) -> dict:
    row = shape_row("problems", record, mapping, {}, source)
    answer, solution = normalise_answer(row.get("reference_answer"), answer_format)
    row["reference_answer"] = answer
    extra: dict[str, Any] = json.loads(row["metadata"]) if row.get("metadata") else {}
    if fields.metadata is not None:
        kept = {}
        for column in fields.metadata:
            found, value = _lookup(record, column)
            if not found:
                raise RowError("metadata", f"the mapped column {column!r} is missing from this row")
            kept[column] = value
        extra = kept
    extra.pop("problem_id", None)

    def column(name: str | None, field: str) -> Any:
        if not name:
            return None
        found, value = _lookup(record, name)
        if not found:
            raise RowError(field, f"the mapped column {name!r} is missing from this row")
        extra.pop(name, None)
        return value

    tests_value = column(fields.tests, "tests")
    setup = column(fields.setup, "setup")
    entry_point = column(fields.entry_point, "entry_point")
    source_id = column(fields.id, "id")
    tests = normalise_tests(tests_value, setup or None, entry_point or None)
    row["tests"] = json.dumps(tests, ensure_ascii=False) if tests else None
    if show_tests and tests and tests.get("asserts"):
        # MBPP's own prompt: the text says what to write, an assert says what to call it.
        shown = "\n".join(tests["asserts"][:show_tests])
        row["problem"] = f"{row['problem'].rstrip()}\nYour code should pass these tests:\n{shown}"
        row["problem_id"] = problem_id(row["problem"])
    row["domain"] = domain or row.get("domain") or ("code" if tests else "math")
    meta = {**extra, "verifier": verifier or ("code" if tests else "math")}
    if source_id is not None:
        meta["source_id"] = source_id
    if solution:
        meta["solution"] = solution
    row["metadata"] = json.dumps(meta, ensure_ascii=False, default=str, sort_keys=True)
    row["contamination"] = []
    return row
