"""Code verifier: the sandbox only computes; a separate judge process that never ran candidate code decides.

    from factory.verifiers.code import verify_code, verify_code_batch
    v = verify_code(completion, {"style": "asserts", "entry_point": "add",
                                 "asserts": ["assert add(1, 2) == 3"]})
    v.status, v.detail        # "pass", None | "fail", "wrong_answer"|"timeout"|"oom"|"crash"
    verdicts = verify_code_batch([(completion, tests), ...], workers=4)

The code is the last fenced python block of the answer (after `</think>` when present), else the
whole answer. Test styles:
- {"style": "asserts", "entry_point"?, "asserts": [...], "setup"?, "prompt"?} (MBPP: setup, then
  the code, then each assert) or {"style": "asserts", "entry_point", "test": "<def check...>",
  "prompt"?} (HumanEval: the test source, then `check(entry_point)` unless it calls it itself).
  `prompt` is put before the code when the code does not define the entry point itself (a
  HumanEval completion that is only a function body).
- {"style": "stdio", "cases": [{"stdin", "stdout"}, ...]}: each case is a fresh run; stdout is
  compared with the expected one line by line, trailing whitespace and trailing blank lines
  ignored, here, outside the sandbox.
- `timeout_s` (optional, either style): seconds per run, a positive number up to 600.

How an asserts verdict is decided (nothing the candidate does can forge it). Two sandboxes per
worker: a candidate box, where model-written code runs, and a judge box, where only the test
code runs. The expected values never enter the candidate box, and no candidate code ever runs
in the judge's process.
1. The judge runs the test (prompt, setup, asserts or `check`) with a recording stand-in in
   place of each candidate function (the entry point, and any name the tests use that the test
   code does not define). A call whose result is not known yet is recorded, and the stand-in
   answers a placeholder that lets the test go on, so one pass collects every call whose
   arguments do not depend on another result.
2. The candidate box runs the candidate's code and makes exactly those calls, and returns the
   results as plain data: JSON with tags for exact builtin types (int, float, str, bool, None,
   bytes, list, tuple, dict, set, frozenset, complex, range, Fraction, Decimal, Counter,
   OrderedDict, deque; iterators and generators are drained into a list). A value of any other
   type (a subclass, a proxy, a wrapper with a forged `__eq__`) is "not plain data": a fail.
   Exceptions come back as their builtin type name; arguments the call mutated come back too.
3. The judge runs the test again with the recorded results, rebuilt from the data in its own
   process. When every call was known, the test's own asserts decide: pass, or fail with the
   assert that failed. Calls whose arguments came from an earlier result (f(f(2))) are found in
   this pass and go back to step 2 (at most MAX_ROUNDS rounds).
Whatever the candidate process does to itself (patched builtins, frames, gc, ctypes, signals,
threads, forged output on any descriptor) it can only change the data it returns: a pass needs
the right values. The judge is trusted only as far as the test code is: it runs in a sandbox
of its own.

Limits of the design (documented, not covered): module-level state of the candidate does not
carry from one round to the next (calls of one round run in one process, in test order);
arguments that are not plain data (a callable passed to the candidate) make the row
`unverifiable`; a mutated argument is copied back at the top level only (lists, dicts, sets,
bytearrays); HumanEval/MBPP asserts themselves are weak (few cases, float tolerances).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .base import Verdict
from .programs import source
from .sandbox import Sandbox, SandboxConfig, SandboxResult, SandboxUnavailable

log = logging.getLogger(__name__)

CHECK = "code"
CHECK_VERSION = "2"  # 2: the judge decides from returned data (1: an in-process harness)

_LANG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each ``` block, an unclosed last one included. One left-to-right
    scan with str.find: linear in the text (a regex with two adjacent quantifiers over the
    info string was quadratic on a long fence line without a newline)."""
    blocks, pos = [], 0
    while True:
        i = text.find("```", pos)
        if i < 0:
            return blocks
        nl = text.find("\n", i + 3)
        if nl < 0:
            return blocks
        info = text[i + 3:nl].lstrip(" \t")
        n = 0
        while n < len(info) and info[n] in _LANG_CHARS:
            n += 1
        end = text.find("```", nl + 1)
        blocks.append((info[:n].lower(), text[nl + 1:end if end >= 0 else len(text)]))
        if end < 0:
            return blocks
        pos = end + 3


def extract_code(completion: str) -> str:
    """The last fenced python block of the answer (after `</think>`), else the whole answer."""
    text = completion.rsplit("</think>", 1)[-1] if "</think>" in completion else completion
    blocks = _fenced_blocks(text)
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "py3")]
    if py:
        return py[-1]
    plain = [b for lang, b in blocks if lang == ""]
    if plain:
        return plain[-1]
    return text


# The programs the two boxes run (programs/: codec.py, runner.py, judge.py), sent as text. The
# runner computes the calls in the candidate box; the judge decides in a box of its own. Both
# carry the plain-data codec in front of them.
_RUNNER = source("codec.py", "runner.py")
_JUDGE = source("codec.py", "judge.py")

MAX_ROUNDS = 32  # judge passes beyond the first: each resolves one level of f(f(x)) nesting
RESULT_LIMIT = 8 << 20  # bytes of results a candidate run may return
MAX_TIMEOUT_S = 600.0


def _candidate_code(code: str, tests: dict) -> str:
    ep = tests.get("entry_point")
    prompt = tests.get("prompt")
    if prompt and ep and not re.search(rf"^\s*def\s+{re.escape(ep)}\s*\(", code, re.M):
        names = _candidate_names(code)
        if ep not in names["defs"] and ep not in names["classes"]:  # only a body: complete it
            return prompt + code
    return code


_DEFS = re.compile(r"^(?:async[ \t]+)?def[ \t]+(\w+)|^(\w+)[ \t]*(?::[^=\n]*)?=(?!=)|^class[ \t]+(\w+)", re.M)


def _candidate_names(code: str) -> dict:
    """Top-level names the answer defines (functions and assignments) and its classes, read
    with one linear regex: the judge needs them to tell the answer's names from modules."""
    defs, classes = set(), set()
    for m in _DEFS.finditer(code):
        if m.group(3):
            classes.add(m.group(3))
        else:
            defs.add(m.group(1) or m.group(2))
    return {"defs": sorted(defs)[:1000], "classes": sorted(classes)[:1000]}


def _judge_payload(tests: dict) -> dict:
    payload = {
        "prompt": tests.get("prompt") or "",
        "setup": tests.get("setup") or "",
        "entry_point": tests.get("entry_point"),
        "asserts": list(tests.get("asserts") or []),
        "test": tests.get("test"),
    }
    if payload["test"] is not None:
        payload["test_calls_check"] = bool(re.search(r"^check\s*\(", payload["test"], re.M))
    return payload


def _runner_input(code: str, setup: str, calls: list[dict]) -> str:
    return json.dumps({"code": code, "setup": setup,
                       "calls": [{"name": c["name"], "args": c["args"], "kwargs": c["kwargs"]} for c in calls]})


def _channel_doc(r: SandboxResult) -> dict | None:
    """The one JSON object a run wrote on its result channel, or None."""
    try:  # the first document: anything written after it (by a forked child, say) is ignored
        doc, _ = json.JSONDecoder().raw_decode(r.channel.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _bad_tests(tests) -> str | None:
    if not isinstance(tests, dict):
        return "tests: expected an object with a 'style'"
    t = tests.get("timeout_s")
    if t is not None and (type(t) not in (int, float) or not 0 < t <= MAX_TIMEOUT_S):
        return f"tests.timeout_s {t!r}: expected a number of seconds in (0, {MAX_TIMEOUT_S:g}]"
    for key in ("setup", "prompt", "test", "entry_point"):
        if tests.get(key) is not None and not isinstance(tests[key], str):
            return f"tests.{key}: expected a string"
    style = tests.get("style")
    if style == "asserts":
        if tests.get("test") is not None:
            if not tests.get("entry_point"):
                return "tests.test (a HumanEval check) needs tests.entry_point"
            return None
        a = tests.get("asserts")
        if not isinstance(a, list) or not a or not all(isinstance(x, str) for x in a):
            return "tests.asserts: expected a non-empty list of strings (or tests.test)"
        return None
    if style == "stdio":
        cases = tests.get("cases")
        if not isinstance(cases, list) or not cases or not all(
            isinstance(c, dict) and isinstance(c.get("stdout"), str)
            and isinstance(c.get("stdin") if c.get("stdin") is not None else "", str) for c in cases
        ):
            return "tests.cases: expected a non-empty list of {stdin, stdout} strings"
        return None
    return f"tests.style {style!r}: expected 'asserts' or 'stdio'"


def _normalise(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().splitlines()]


def _failure(r: SandboxResult) -> tuple[str, str]:
    """(detail, reason) of a run that did not pass."""
    if r.oom:  # before timeout: a run whose processes were OOM-killed may then hang
        return "oom", "memory limit hit"
    if r.timed_out:
        return "timeout", f"wall/CPU time limit hit after {r.elapsed:.2f}s"
    if r.output_truncated:
        return "crash", "output limit exceeded"
    if r.signal:
        return "crash", f"killed by signal {r.signal}"
    return "", ""


def _run_asserts(box: Sandbox, judge: Sandbox, code: str, tests: dict, t0: float) -> Verdict:
    """Record the calls in the judge, compute them in the candidate box, let the judge decide."""
    timeout = tests.get("timeout_s") or box.config.timeout_s
    payload = _judge_payload(tests)
    candidate = _candidate_code(code, tests)
    payload["candidate_names"] = _candidate_names(candidate)
    table: dict[str, dict] = {}

    def el() -> float:
        return time.monotonic() - t0

    for _round in range(MAX_ROUNDS + 1):
        req = json.dumps({"payload": payload, "table": table, "budget_s": max(0.5, timeout * 0.8)})
        jr = judge.run(_JUDGE, req, timeout_s=timeout, channel_limit=RESULT_LIMIT, trusted_program=True)
        if jr.sandbox_error:
            return Verdict.errored(CHECK, f"judge: {jr.sandbox_error}", code, detail="sandbox_error", elapsed_s=el())
        doc = _channel_doc(jr)
        if doc is None:
            detail, reason = _failure(jr)
            if detail:  # the test code itself ran out of time or memory with these results
                return Verdict.failed(CHECK, code, f"tests: {reason}", detail=detail, elapsed_s=el())
            tail = (jr.stderr.strip().splitlines() or [""])[-1][:200]
            return Verdict.errored(CHECK, f"the judge gave no verdict (exit {jr.exit_code}): {tail}", code,
                                   detail="judge_error", elapsed_s=el())
        if "verdict" in doc:
            kind, reason = doc["verdict"], str(doc.get("reason") or "")[:300]
            if kind == "pass":
                return Verdict.passed(CHECK, code, reason or "all tests passed", elapsed_s=el())
            if kind == "unverifiable":
                return Verdict.unverifiable(CHECK, reason)
            return Verdict.failed(CHECK, code, reason, detail=str(doc.get("detail") or "wrong_answer"), elapsed_s=el())
        need = doc.get("need")
        if not isinstance(need, list) or not need:
            return Verdict.errored(CHECK, "the judge answered neither a verdict nor calls", code,
                                   detail="judge_error", elapsed_s=el())
        r = box.run(_RUNNER, _runner_input(candidate, payload["setup"], need), timeout_s=timeout,
                    channel_limit=RESULT_LIMIT, trusted_program=True)
        if r.sandbox_error:
            return Verdict.errored(CHECK, r.sandbox_error, code, detail="sandbox_error", elapsed_s=el())
        detail, reason = _failure(r)
        if detail:
            return Verdict.failed(CHECK, code, reason, detail=detail, elapsed_s=el())
        out = _channel_doc(r)
        if out is not None and isinstance(out.get("load"), str):
            why = out["load"][:200]
            return Verdict.failed(CHECK, code, f"the code did not load: {why}",
                                  detail="oom" if why.startswith("MemoryError") else "crash", elapsed_s=el())
        results = out.get("results") if out else None
        if not isinstance(results, list) or len(results) != len(need) or not all(isinstance(x, dict) for x in results):
            why = "returned no results" if r.output_truncated or not r.channel else "returned malformed results"
            return Verdict.failed(CHECK, code, f"the program exited before the tests finished ({why})",
                                  detail="wrong_answer", elapsed_s=el())
        for call, res in zip(need, results):
            if isinstance(call, dict) and isinstance(call.get("key"), str):
                table[call["key"]] = res
    return Verdict.failed(CHECK, code, f"the tests needed more than {MAX_ROUNDS} rounds of dependent calls",
                          detail="crash", elapsed_s=el())


def _run(box: Sandbox, completion: str, tests: dict, judge: Sandbox | None = None) -> Verdict:
    t0 = time.monotonic()
    bad = _bad_tests(tests)
    if bad:
        return Verdict.unverifiable(CHECK, bad)
    code = extract_code(completion)
    if not code.strip():
        return Verdict.failed(CHECK, code, "no code in the answer", detail="wrong_answer")
    timeout = tests.get("timeout_s")
    if tests["style"] == "asserts":
        from .sandbox import _cached_box

        return _run_asserts(box, judge or _cached_box(box.config, role="judge"), code, tests, t0)
    for i, case in enumerate(tests["cases"]):
        r = box.run(code, case.get("stdin") or "", timeout_s=timeout)
        el = time.monotonic() - t0
        if r.sandbox_error:
            return Verdict.errored(CHECK, r.sandbox_error, code, detail="sandbox_error", elapsed_s=el)
        detail, reason = _failure(r)
        if not detail and r.exit_code != 0:
            tail = r.stderr.strip().splitlines()[-1:] or [""]
            detail, reason = "crash", f"exit code {r.exit_code}: {tail[0][:200]}"
            if tail[0].startswith("MemoryError"):
                detail = "oom"
        if not detail and _normalise(r.stdout) != _normalise(case["stdout"]):
            detail, reason = "wrong_answer", f"case {i}: output differs"
        if detail:
            return Verdict.failed(CHECK, code, f"case {i}: {reason}" if not reason.startswith("case")
                                  else reason, detail=detail, elapsed_s=el)
    return Verdict.passed(CHECK, code, f"{len(tests['cases'])} cases passed",
                          elapsed_s=time.monotonic() - t0)


def verify_code(completion: str, tests: dict, *, config: SandboxConfig | None = None,
                sandbox: Sandbox | None = None, judge: Sandbox | None = None) -> Verdict:
    """Verify one completion. Pass `sandbox` (and `judge`) to reuse started ones (much faster per
    call); without `judge`, this thread's cached judge box for the same config is used."""
    bad = _bad_tests(tests)
    if bad:  # the gold side is broken: nothing to run
        return Verdict.unverifiable(CHECK, bad)
    try:
        if sandbox is not None:
            return _run(sandbox, completion, tests, judge)
        from .sandbox import _cached_box

        return _run(_cached_box(config or SandboxConfig()), completion, tests, judge)
    except SandboxUnavailable as e:
        return Verdict.errored(CHECK, str(e), detail="sandbox_error")
    except Exception as e:  # one broken row never takes the batch down with it
        log.exception("code verifier failed on one row")
        return Verdict.errored(CHECK, f"verifier error: {type(e).__name__}: {str(e)[:200]}", detail="verifier_error")


def verify_code_batch(items: Iterable[tuple[str, dict] | dict], config: SandboxConfig | None = None,
                      workers: int = 2) -> list[Verdict]:
    """Verify many (completion, tests) pairs (or {"completion", "tests"} dicts), in input order,
    with `workers` sandboxes running side by side (one long-lived sandbox per worker)."""
    config = config or SandboxConfig()
    pairs: Sequence = [(i["completion"], i["tests"]) if isinstance(i, dict) else i for i in items]
    if not pairs:
        return []
    workers = max(1, min(workers, len(pairs)))
    try:  # per worker: a candidate box and a judge box (see the module docstring)
        boxes = [(Sandbox(config), Sandbox(config)) for _ in range(workers)]
    except SandboxUnavailable as e:
        return [Verdict.errored(CHECK, str(e), detail="sandbox_error") for _ in pairs]
    free: queue.Queue[tuple[Sandbox, Sandbox]] = queue.Queue()
    for b in boxes:
        free.put(b)

    def one(pair) -> Verdict:
        box, judge = free.get()
        try:
            return verify_code(pair[0], pair[1], sandbox=box, judge=judge)
        finally:
            free.put((box, judge))

    try:
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(one, pairs))
    finally:
        for pair in boxes:
            for b in pair:
                b.close()


__all__ = ["CHECK", "extract_code", "verify_code", "verify_code_batch"]
