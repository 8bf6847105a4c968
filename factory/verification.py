"""Read the rows `factory verify` checks, and run the chosen verifier over them in order.

    rows = read_verify_rows("completions.jsonl", "math")   # BadInput naming the line
    results = run_verifier(rows, "math")                    # one dict per row, input order

Rows: `{"id", "completion", "reference_answer"}` for math, choice and exact; `{"id",
"completion", "pattern"}` (or `reference_answer`) for regex; `{"id", "completion", "tests":
{"style": "asserts"|"stdio", ...}}` for code (see factory/verifiers/code.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.errors import BadInput, bad_rows

from .verifiers.base import Verdict

VERIFIERS = ("math", "code", "choice", "exact", "regex")
_NEEDS = {"math": "reference_answer", "choice": "reference_answer", "exact": "reference_answer", "regex": "pattern", "code": "tests"}


def read_verify_rows(path: str | Path, verifier: str) -> list[dict]:
    if verifier not in VERIFIERS:
        raise BadInput(f"--verifier {verifier!r}: expected one of {', '.join(VERIFIERS)}")
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such file")
    rows, problems = [], []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{n}: invalid JSON ({exc.msg})")
                continue
            why = _row_problem(row, verifier)
            if why:
                problems.append(f"{path}:{n}: {why}")
                continue
            rows.append(row)
    if problems:
        raise bad_rows(problems, "nothing verified")
    return rows


def _row_problem(row: object, verifier: str) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "id" not in row:
        return "field 'id' is missing"
    if not isinstance(row.get("completion"), str):
        return "field 'completion': expected a string"
    need = _NEEDS[verifier]
    if verifier == "regex" and "pattern" not in row and "reference_answer" in row:
        need = "reference_answer"
    if row.get(need) is None:
        return f"field {need!r} is missing (needed by --verifier {verifier})"
    if verifier == "code":
        tests = row["tests"]
        if not isinstance(tests, dict) or tests.get("style") not in ("asserts", "stdio"):
            return "field 'tests': expected an object with style 'asserts' or 'stdio'"
    elif not isinstance(row[need], (str, int, float)):
        return f"field {need!r}: expected a string or number"
    return None


def run_verifier(rows: list[dict], verifier: str, *, timeout_s: float | None = None) -> list[dict]:
    """Verdicts for the rows, as output rows in input order."""
    if verifier == "math":
        from .verifiers.math import verify_math_batch

        kw = {"timeout_s": timeout_s} if timeout_s else {}
        verdicts = verify_math_batch([(r["completion"], r["reference_answer"]) for r in rows], **kw)
    elif verifier == "code":
        from .verifiers.code import verify_code_batch
        from .verifiers.sandbox import SandboxConfig

        config = SandboxConfig(timeout_s=timeout_s) if timeout_s else None
        verdicts = verify_code_batch([(r["completion"], r["tests"]) for r in rows], config)
    else:
        from .verifiers import answers

        if verifier == "regex":
            verdicts = [answers.verify_regex(r["completion"], str(r.get("pattern", r.get("reference_answer")))) for r in rows]
        else:
            fn = answers.verify_choice if verifier == "choice" else answers.verify_exact
            verdicts = [fn(r["completion"], str(r["reference_answer"])) for r in rows]
    return [output_row(r["id"], v) for r, v in zip(rows, verdicts)]


def output_row(row_id: object, v: Verdict) -> dict:
    out = {"id": row_id, "status": v.status, "score": v.score, "extracted_answer": v.extracted_answer, "reason": v.reason}
    if v.detail:
        out["detail"] = v.detail
    return out
