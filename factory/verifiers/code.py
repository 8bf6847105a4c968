"""Code verifier: run a completion's program against tests in the sandbox; the verdict is decided outside.

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
  ignored. The comparison happens here, outside the sandbox.

How the verdict is kept honest (asserts style). The harness, trusted code that runs in the same
process as the untrusted code, reads a random nonce from a pipe (fd 4) before any untrusted code
runs and writes it to the result channel (fd 3) only after the last assert passed; only then,
and with exit status 0, is it a pass. A "PASSED" line on stdout means nothing, `os._exit(0)`
before the asserts leaves no nonce, and `sys.exit` / exceptions are caught by the harness. The
asserts run in a namespace whose builtins are a pristine copy (so patched `abs`/`len`/... do not
count), the entry point (MBPP: every function the code defines) is wrapped so that a value whose
class defines comparison/arithmetic/truth dunders in Python code not imported by the harness
(e.g. an object whose `__eq__` is always true) fails as wrong_answer, and trace hooks that could
skip lines are removed after each call.

Residual risk (documented, not covered): the harness and the untrusted code share one process,
so code written deliberately against this harness can still find the nonce by introspection
(`sys._getframe`, `gc.get_objects`, ctypes on its own memory) or patch a stdlib module the test
uses (`math.isclose`); HumanEval/MBPP asserts themselves are weak (few cases, float tolerances).
The sandbox contains all of that; it only lets such code mark ITSELF as passing. A stronger
setup would run the asserts in a second process comparing serialised results (JSON/repr), at
the cost of losing HumanEval's `check(candidate)` form.
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

from .base import Verdict
from .sandbox import Sandbox, SandboxConfig, SandboxResult, SandboxUnavailable

CHECK = "code"
CHECK_VERSION = "1"

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(completion: str) -> str:
    """The last fenced python block of the answer (after `</think>`), else the whole answer."""
    text = completion.rsplit("</think>", 1)[-1] if "</think>" in completion else completion
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "py3")]
    if py:
        return py[-1]
    plain = [b for lang, b in blocks if lang == ""]
    if plain:
        return plain[-1]
    return text


# The trusted harness. It runs inside the sandbox as __main__; PAYLOAD is a JSON literal.
_HARNESS = r'''
def _rf_harness(payload):
    import os, sys, builtins, types, json
    _write, _exit, _type, _isinstance, _settrace = os.write, os._exit, type, isinstance, sys.settrace
    _setprofile, _getattr = sys.setprofile, getattr
    nonce = os.read(4, 256)
    os.close(4)
    pristine = dict(builtins.__dict__)
    def report(line):
        try:
            _write(3, (line + "\n").encode("utf-8", "replace"))
        except BaseException:
            pass
    def flush():
        try:
            sys.stdout.flush(); sys.stderr.flush()
        except BaseException:
            pass
    SCALAR = {int, float, complex, str, bytes, bool, type(None), bytearray, range}
    DUNDERS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__",
               "__hash__", "__abs__", "__neg__", "__pos__", "__add__", "__radd__", "__sub__",
               "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__floordiv__",
               "__mod__", "__pow__", "__round__", "__float__", "__int__", "__index__",
               "__contains__", "__iter__", "__getitem__", "__str__", "__format__", "__repr__",
               "__instancecheck__", "__subclasscheck__", "__getattr__", "__getattribute__",
               "__class__")
    HEAP = 1 << 9
    trusted = _getattr(sys, "_rf_trusted", None)  # set by the zygote before any untrusted code
    if trusted is None:
        trusted = set()
        for mod in list(sys.modules.values()):
            for v in list(_getattr(mod, "__dict__", {}).values()):
                if _isinstance(v, type):
                    trusted.add(v)
    _mro = type.__dict__["__mro__"].__get__
    _flags = type.__dict__["__flags__"].__get__
    _cdict = type.__dict__["__dict__"].__get__
    class Untrusted(Exception):
        pass
    def plain(x, budget):
        budget[0] -= 1
        if budget[0] < 0:
            return
        t = _type(x)
        if t in SCALAR:
            return
        for cls in _mro(t):
            if cls in trusted or not (_flags(cls) & HEAP):
                continue
            d = _cdict(cls)
            for name in DUNDERS:
                if name in d:
                    raise Untrusted(f"{t.__qualname__} defines {name}")
        if _isinstance(x, dict):
            for k, v in dict.items(x):
                plain(k, budget); plain(v, budget)
        elif _isinstance(x, (list, tuple, set, frozenset)) or t.__name__ == "deque":
            for v in x:
                plain(v, budget)
    def guard(fn):
        def guarded(*a, **k):
            r = fn(*a, **k)
            _settrace(None); _setprofile(None)
            plain(r, [100000])
            return r
        guarded.__name__ = getattr(fn, "__name__", "candidate")
        guarded.__wrapped__ = fn
        return guarded
    user = {"__name__": "__main__", "__builtins__": builtins}
    stage = "setup"
    try:
        if payload.get("setup"):
            exec(compile(payload["setup"], "<setup>", "exec"), user)
        stage = "solution"
        exec(compile(payload["code"], "<solution>", "exec"), user)
        _settrace(None); _setprofile(None)
        stage = "tests"
        ns = {k: v for k, v in user.items() if k not in pristine}
        ns["__builtins__"] = pristine
        ns["__name__"] = "__rf_tests__"
        ep = payload.get("entry_point")
        if ep:
            if ep not in user:
                report("missing " + ep)
                flush(); _exit(1)
            ns[ep] = guard(user[ep])
        else:
            for k, v in user.items():
                if _type(v) is types.FunctionType and v.__globals__ is user:
                    ns[k] = guard(v)
        if payload.get("test") is not None:
            exec(compile(payload["test"], "<test>", "exec"), ns)
            if not payload.get("test_calls_check"):
                ns["check"](ns[ep])
        for i, src in enumerate(payload.get("asserts") or ()):
            stage = f"assert {i}"
            exec(compile(src, f"<assert {i}>", "exec"), ns)
            _settrace(None); _setprofile(None)
    except AssertionError:
        report("assert " + stage)
        flush(); _exit(1)
    except Untrusted as e:
        report("untrusted " + str(e)[:200])
        flush(); _exit(1)
    except SystemExit:
        report("exit " + stage)
        flush(); _exit(1)
    except BaseException as e:
        try:
            name = _type(e).__name__
        except BaseException:
            name = "?"
        report("error " + stage + " " + name)
        try:
            import traceback
            traceback.print_exception(_type(e), e, e.__traceback__)
        except BaseException:
            pass
        flush(); _exit(1)
    flush()
    _write(3, b"ok " + nonce + b"\n")
    _exit(0)
_rf_harness(__import__("json").loads(PAYLOAD))
'''


def _program(code: str, tests: dict) -> str:
    style_asserts = tests.get("asserts")
    payload = {
        "code": code,
        "setup": tests.get("setup") or "",
        "entry_point": tests.get("entry_point"),
        "asserts": list(style_asserts) if style_asserts else [],
        "test": tests.get("test"),
    }
    ep = tests.get("entry_point")
    prompt = tests.get("prompt")
    if prompt and ep and not re.search(rf"^\s*def\s+{re.escape(ep)}\s*\(", code, re.M):
        payload["code"] = prompt + code
    if payload["test"] is not None:
        payload["test_calls_check"] = bool(re.search(r"^check\s*\(", payload["test"], re.M))
    return _HARNESS.replace("PAYLOAD", repr(json.dumps(payload)))


def _bad_tests(tests) -> str | None:
    if not isinstance(tests, dict):
        return "tests: expected an object with a 'style'"
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
            isinstance(c, dict) and isinstance(c.get("stdout"), str) for c in cases
        ):
            return "tests.cases: expected a non-empty list of {stdin, stdout}"
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


def _verdict_asserts(r: SandboxResult, nonce: str, code: str, t0: float) -> Verdict:
    el = time.monotonic() - t0
    lines = r.channel.decode("utf-8", "replace").splitlines()
    if r.sandbox_error:
        return Verdict.errored(CHECK, r.sandbox_error, code, detail="sandbox_error", elapsed_s=el)
    if r.exit_code == 0 and f"ok {nonce}" in lines and not r.timed_out and not r.output_truncated:
        return Verdict.passed(CHECK, code, "all tests passed", elapsed_s=el)
    detail, reason = _failure(r)
    if not detail:
        first = next((ln for ln in lines if not ln.startswith("ok ")), "")
        if "MemoryError" in first:
            detail, reason = "oom", first
        elif first.startswith(("assert", "untrusted", "missing")):
            detail, reason = "wrong_answer", first
        elif first.startswith(("error", "exit")):
            detail, reason = "crash", first
        elif r.exit_code == 0:
            detail, reason = "wrong_answer", "exited before the tests finished"
        else:
            detail, reason = "crash", f"exit code {r.exit_code}"
    tail = r.stderr.strip().splitlines()[-1:] if r.stderr else []
    if tail and detail == "crash":
        reason = f"{reason}: {tail[0][:200]}"
    return Verdict.failed(CHECK, code, reason, detail=detail, elapsed_s=el)


def _run(box: Sandbox, completion: str, tests: dict) -> Verdict:
    t0 = time.monotonic()
    bad = _bad_tests(tests)
    if bad:
        return Verdict.unverifiable(CHECK, bad)
    code = extract_code(completion)
    if not code.strip():
        return Verdict.failed(CHECK, code, "no code in the answer", detail="wrong_answer")
    timeout = tests.get("timeout_s")
    if tests["style"] == "asserts":
        nonce = secrets.token_hex(16)
        r = box.run(_program(code, tests), "", timeout_s=timeout, secret=nonce)
        return _verdict_asserts(r, nonce, code, t0)
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
                sandbox: Sandbox | None = None) -> Verdict:
    """Verify one completion. Pass `sandbox` to reuse a started one (much faster per call)."""
    bad = _bad_tests(tests)
    if bad:  # the gold side is broken: nothing to run
        return Verdict.unverifiable(CHECK, bad)
    try:
        if sandbox is not None:
            return _run(sandbox, completion, tests)
        from .sandbox import _cached_box

        return _run(_cached_box(config or SandboxConfig()), completion, tests)
    except SandboxUnavailable as e:
        return Verdict.errored(CHECK, str(e), detail="sandbox_error")


def verify_code_batch(items: Iterable[tuple[str, dict] | dict], config: SandboxConfig | None = None,
                      workers: int = 2) -> list[Verdict]:
    """Verify many (completion, tests) pairs (or {"completion", "tests"} dicts), in input order,
    with `workers` sandboxes running side by side (one long-lived sandbox per worker)."""
    config = config or SandboxConfig()
    pairs: Sequence = [(i["completion"], i["tests"]) if isinstance(i, dict) else i for i in items]
    if not pairs:
        return []
    workers = max(1, min(workers, len(pairs)))
    try:
        boxes = [Sandbox(config) for _ in range(workers)]
    except SandboxUnavailable as e:
        return [Verdict.errored(CHECK, str(e), detail="sandbox_error") for _ in pairs]
    free: queue.Queue[Sandbox] = queue.Queue()
    for b in boxes:
        free.put(b)

    def one(pair) -> Verdict:
        box = free.get()
        try:
            return _run(box, pair[0], pair[1])
        except SandboxUnavailable as e:
            return Verdict.errored(CHECK, str(e), detail="sandbox_error")
        finally:
            free.put(box)

    try:
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(one, pairs))
    finally:
        for b in boxes:
            b.close()


__all__ = ["CHECK", "extract_code", "verify_code", "verify_code_batch"]
