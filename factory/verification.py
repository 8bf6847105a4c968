"""Read the rows `factory verify` checks, and run the chosen verifier over them in order.

    rows = read_verify_rows("completions.jsonl", "math")   # BadInput naming the line
    results = run_verifier(rows, "math")                    # one dict per row, input order

Rows: `{"id", "completion", "reference_answer"}` for math, choice and exact; `{"id",
"completion", "pattern"}` (or `reference_answer`) for regex; `{"id", "completion", "tests":
{"style": "asserts"|"stdio", ...}}` for code (see factory/verifiers/code.py).

What a bad row costs: a line that is not UTF-8, not JSON (nesting too deep included), not an
object, or lacks a field the verifier needs is named as `INPUT:LINE: why` in one BadInput for
the whole file (exit 2 in the CLI), and nothing is verified. A well-formed row whose content
cannot be checked (a `tests.timeout_s` that is not a positive number of seconds up to
MAX_TESTS_TIMEOUT_S) gets an `unverifiable` verdict naming the field; the other rows go on.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.errors import BadInput, bad_rows

from .ingest import UNPAIRED_SURROGATE, has_unpaired_surrogate
from .verifiers.base import Verdict
from .verifiers.registry import Check, Options, require_verifier, verify


def read_verify_rows(path: str | Path, verifier: str) -> list[dict]:
    """The rows of a JSON-lines file; BadInput naming each line that is not UTF-8, not JSON, not
    an object, or lacks a field the verifier needs (nothing is verified then)."""
    require_verifier(verifier, "--verifier")
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such file")
    rows, problems = [], []
    with open(p, "rb") as fh:  # bytes: a bad byte is one line's problem, not a crash of the read
        for n, raw in enumerate(fh, 1):
            row, why = _parse_line(raw)
            if why is None and row is not None:
                why = _row_problem(row, verifier)
            if why:
                problems.append(f"{path}:{n}: {why}")
            elif row is not None:
                rows.append(row)
    if problems:
        raise bad_rows(problems, "nothing verified")
    return rows


def _parse_line(raw: bytes) -> tuple[object | None, str | None]:
    """(row, None), (None, None) for a blank line, or (None, why)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    if not line.strip():
        return None, None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})"
    except RecursionError:
        return None, "invalid JSON (nested deeper than the JSON reader allows)"
    except ValueError as exc:  # e.g. an integer of over 4300 digits
        return None, f"invalid JSON ({str(exc).split(';')[0]})"
    if has_unpaired_surrogate(line, row):
        return None, UNPAIRED_SURROGATE
    return row, None


def _row_problem(row: object, verifier: str) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "id" not in row:
        return "field 'id' is missing"
    if not isinstance(row.get("completion"), str):
        return "field 'completion': expected a string"
    need = require_verifier(verifier, "--verifier").needs
    if need == "pattern" and "pattern" not in row and "reference_answer" in row:
        need = "reference_answer"
    if row.get(need) is None:
        return f"field {need!r} is missing (needed by --verifier {verifier})"
    if need == "tests":
        tests = row["tests"]
        if not isinstance(tests, dict) or tests.get("style") not in ("asserts", "stdio"):
            return "field 'tests': expected an object with style 'asserts' or 'stdio'"
    elif not isinstance(row[need], (str, int, float)):
        return f"field {need!r}: expected a string or number"
    return None


# A row's own `tests.timeout_s` applies to each program run; past this it is a typo or a way to
# hold the command for hours.
MAX_TESTS_TIMEOUT_S = 600.0


def row_unverifiable(row: dict, verifier: str) -> str | None:
    """Why a well-formed row cannot be checked (it then gets `unverifiable`, the others go on)."""
    if verifier == "code":
        t = row["tests"].get("timeout_s")
        ok = isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= MAX_TESTS_TIMEOUT_S
        if t is not None and not ok:  # NaN fails `0 < t`
            return f"tests.timeout_s {t!r}: expected a positive number of seconds, at most {MAX_TESTS_TIMEOUT_S:g}"
    return None


def run_verifier(rows: list[dict], verifier: str, *, timeout_s: float | None = None) -> list[dict]:
    """Verdicts for the rows, as output rows in input order."""
    verdicts: list[Verdict | None] = [None] * len(rows)
    todo = []
    for i, r in enumerate(rows):
        why = row_unverifiable(r, verifier)
        if why:
            verdicts[i] = Verdict.unverifiable(verifier, why)
        else:
            todo.append(i)
    checks = [_check(rows[i], verifier) for i in todo]
    for i, v in zip(todo, verify(verifier, checks, Options(timeout_s=timeout_s))):
        verdicts[i] = v
    return [output_row(r["id"], v) for r, v in zip(rows, verdicts)]  # type: ignore[arg-type]


def _check(row: dict, verifier: str) -> Check:
    """The registry's Check for a row read by `read_verify_rows` (regex: `pattern`, else `reference_answer`)."""
    need = require_verifier(verifier, "--verifier").needs
    if need == "tests":
        return Check(row["completion"], tests=row["tests"])
    return Check(row["completion"], reference=row.get(need, row.get("reference_answer")))


def output_row(row_id: object, v: Verdict) -> dict:
    out = {"id": row_id, "status": v.status, "score": v.score, "extracted_answer": v.extracted_answer, "reason": v.reason}
    if v.detail:
        out["detail"] = v.detail
    return out
