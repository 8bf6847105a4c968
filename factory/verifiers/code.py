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


# Plain-data codec, shared by the candidate runner (encode) and the judge (decode). It runs in
# the sandbox with the standard library only. Every type is captured when the codec is built,
# before any candidate code runs; exact type identity is checked, never isinstance.
_CODEC = r"""
def _rf_codec(pending=None):
    import math, collections, fractions, decimal
    T = type
    NoneT = T(None)
    gen_t = T((lambda: (yield))())
    iters = {T(iter([])), T(iter(())), T(iter("")), T(iter(range(0))), T(iter({})), T(iter(set())),
             T(iter({}.values())), T(iter({}.items())), T(reversed([])), map, filter, zip, enumerate,
             reversed, gen_t, T(iter(b"")), T(iter(collections.deque()))}
    Counter, OrderedDict, defaultdict, deque = (collections.Counter, collections.OrderedDict,
                                                collections.defaultdict, collections.deque)
    Fraction, Decimal = fractions.Fraction, decimal.Decimal
    isfinite, fmt, _next, _iter, _len, _list, _dict = math.isfinite, format, next, iter, len, list, dict
    dict_items, list_iter = dict.items, list.__iter__
    MAX_NODES, MAX_DEPTH = 1000000, 100
    BIG = 1 << 53
    import builtins as _b
    TYPES = {v: k for k, v in vars(_b).items() if T(v) is type and not issubclass(v, BaseException)}
    TYPES_BY_NAME = {k: v for v, k in TYPES.items()}

    class NotPlain(Exception):
        pass

    class PendingArg(Exception):
        pass

    def enc(x, depth=0, budget=None):
        if budget is None:
            budget = [MAX_NODES]
        budget[0] -= 1
        if budget[0] < 0:
            raise NotPlain("more than %d values" % MAX_NODES)
        if depth > MAX_DEPTH:
            raise NotPlain("nested deeper than %d" % MAX_DEPTH)
        t = T(x)
        if pending is not None and t is pending:
            raise PendingArg()
        if t is NoneT or t is bool or t is str:
            return x
        if t is int:
            return x if -BIG < x < BIG else {"$": "int", "v": fmt(x, "x")}
        if t is float:
            return x if isfinite(x) else {"$": "float", "v": repr(x)}
        d = depth + 1
        if t is list:
            return [enc(v, d, budget) for v in list_iter(x)]
        if t is tuple:
            return {"$": "tuple", "v": [enc(v, d, budget) for v in x]}
        if t is dict or t is Counter or t is OrderedDict or t is defaultdict:
            name = {dict: "dict", Counter: "Counter", OrderedDict: "OrderedDict", defaultdict: "dict"}[t]
            return {"$": name, "v": [[enc(k, d, budget), enc(v, d, budget)] for k, v in dict_items(x)]}
        if t is set or t is frozenset:
            return {"$": "set" if t is set else "frozenset", "v": [enc(v, d, budget) for v in x]}
        if t is bytes or t is bytearray:
            return {"$": "bytes" if t is bytes else "bytearray", "v": x.hex()}
        if t is complex:
            return {"$": "complex", "v": [enc(x.real, d, budget), enc(x.imag, d, budget)]}
        if t is range:
            return {"$": "range", "v": [x.start, x.stop, x.step]}
        if t is type and x in TYPES:
            return {"$": "type", "v": TYPES[x]}
        if t is deque:
            return {"$": "deque", "v": [enc(v, d, budget) for v in _list(x)]}
        if t is Fraction:
            return {"$": "Fraction", "v": [enc(x.numerator, d, budget), enc(x.denominator, d, budget)]}
        if t is Decimal:
            return {"$": "Decimal", "v": str(x)}
        if t in iters:
            out = []
            it = _iter(x)
            while True:
                budget[0] -= 1
                if budget[0] < 0:
                    raise NotPlain("more than %d values" % MAX_NODES)
                try:
                    v = _next(it)
                except StopIteration:
                    break
                out.append(enc(v, d, budget))
            return {"$": "iter", "v": out}
        raise NotPlain("a %s is not plain data" % getattr(t, "__qualname__", "?"))

    def dec(v, depth=0):
        if depth > MAX_DEPTH + 2:
            raise NotPlain("nested too deeply")
        t = T(v)
        if t is NoneT or t is bool or t is str or t is int or t is float:
            return v
        d = depth + 1
        if t is list:
            return [dec(x, d) for x in v]
        if t is not dict or T(v.get("$")) is not str:
            raise NotPlain("malformed data")
        tag, w = v["$"], v.get("v")
        try:
            if tag == "int":
                return int(w, 16)
            if tag == "float":
                if w not in ("nan", "inf", "-inf"):
                    raise NotPlain("malformed float")
                return float(w)
            if tag == "tuple":
                return tuple(dec(x, d) for x in w)
            if tag in ("dict", "Counter", "OrderedDict"):
                cls = {"dict": dict, "Counter": Counter, "OrderedDict": OrderedDict}[tag]
                out = cls()
                for k, x in w:
                    out[dec(k, d)] = dec(x, d)
                return out
            if tag == "set":
                return {dec(x, d) for x in w}
            if tag == "frozenset":
                return frozenset(dec(x, d) for x in w)
            if tag == "bytes":
                return bytes.fromhex(w)
            if tag == "bytearray":
                return bytearray.fromhex(w)
            if tag == "complex":
                return complex(dec(w[0], d), dec(w[1], d))
            if tag == "range":
                return range(*[int(x) for x in w])
            if tag == "deque":
                return deque(dec(x, d) for x in w)
            if tag == "Fraction":
                return Fraction(dec(w[0], d), dec(w[1], d))
            if tag == "Decimal":
                return Decimal(w)
            if tag == "iter":
                return iter([dec(x, d) for x in w])
            if tag == "type":
                return TYPES_BY_NAME[w]
        except NotPlain:
            raise
        except Exception as e:
            raise NotPlain("malformed %s: %s" % (tag, type(e).__name__))
        raise NotPlain("unknown tag %r" % (tag,))

    return enc, dec, NotPlain, PendingArg
"""

# The candidate runner: runs in the candidate box as __main__. Its stdin (JSON) holds the code
# and the calls, read and decoded before the candidate's code runs. It writes one JSON
# document on fd 3: {"results": [...]} in call order, or {"load": reason} when the code itself
# did not load. Nothing here is trusted: whatever it writes is only data for the judge.
_RUNNER = _CODEC + r"""
def _rf_run(payload):
    import os, sys, builtins, json
    enc, dec, NotPlain, PendingArg = _rf_codec()
    _write, _exit, _dumps, T = os.write, os._exit, json.dumps, type
    MUTABLE = (list, dict, set, bytearray)
    me = os.getpid()
    calls = [(c["name"], dec(c["args"]), dec(c["kwargs"])) for c in payload["calls"]]
    def out(doc):
        try:
            sys.stdout.flush(); sys.stderr.flush()
        except BaseException:
            pass
        if os.getpid() != me:  # a child the code forked came back here: only the runner reports
            _exit(0)
        data = _dumps(doc).encode()
        while data:
            data = data[_write(3, data):]
        _exit(0)
    user = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if payload["setup"]:
            exec(compile(payload["setup"], "<setup>", "exec"), user)
        exec(compile(payload["code"], "<solution>", "exec"), user)
    except SyntaxError as e:
        out({"load": "SyntaxError: %s (line %s)" % (e.msg, e.lineno)})
    except BaseException as e:
        out({"load": "%s while loading the code" % T(e).__name__})
    results = []
    for name, args, kwargs in calls:
        fn = user.get(name)
        if fn is None:
            results.append({"missing": name})
            continue
        try:
            r = fn(*args, **kwargs)
        except BaseException as e:
            try:
                msg = str(e)[:300]
            except BaseException:
                msg = ""
            results.append({"raise": T(e).__name__, "msg": msg})
            continue
        try:
            entry = {"v": enc(r)}
        except (NotPlain, RecursionError) as e:
            entry = {"error": str(e)[:300]}
        after = []
        for a in args:
            try:
                after.append(enc(a) if T(a) in MUTABLE else None)
            except (NotPlain, RecursionError):
                after.append(None)
        if any(x is not None for x in after):
            entry["after"] = after
        results.append(entry)
    out({"results": results})
_rf_run(__import__("json").loads(__import__("sys").stdin.read()))
"""

# The judge: runs in the judge box (its own sandbox), with the test and the results known so far
# on stdin. Writes one JSON document on fd 3: {"need": [calls]} while results are missing, else
# {"verdict": "pass"} or {"verdict": "fail", "detail", "reason"} or {"verdict": "unverifiable",
# "reason"}. No candidate code runs here: results are rebuilt from data by the codec.
_JUDGE = _CODEC + r"""
def _rf_judge():
    import os, sys, json, ast, builtins, signal, random
    _write, _exit, _dumps = os.write, os._exit, json.dumps
    req = json.loads(sys.stdin.read())
    payload, table, budget = req["payload"], req["table"], req["budget_s"]

    class Pending:
        # Stands for a result not known yet: absorbs whatever the test does with it, so that
        # one pass reaches every call. A pass that made one never decides a verdict.
        def __init__(self, *a, **k): pass
        def __getattr__(self, name): return Pending()
        def __call__(self, *a, **k): return Pending()
        def __getitem__(self, k): return Pending()
        def __iter__(self): return iter(())
        def __len__(self): return 0
        def __bool__(self): return True
        def __eq__(self, o): return True
        def __ne__(self, o): return True
        __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __eq__
        def __hash__(self): return 0
        def __float__(self): return 0.0
        def __int__(self): return 0
        __index__ = __int__
        def __str__(self): return ""
        __repr__ = __str__
        def __format__(self, spec): return ""
        def _absorb(self, *a): return Pending()
        (__add__, __radd__, __sub__, __rsub__, __mul__, __rmul__, __truediv__, __rtruediv__,
         __floordiv__, __rfloordiv__, __mod__, __rmod__, __pow__, __rpow__, __neg__, __pos__,
         __abs__, __round__, __and__, __rand__, __or__, __ror__, __xor__, __rxor__, __invert__,
         __lshift__, __rshift__, __matmul__) = (_absorb,) * 28

    enc, dec, NotPlain, PendingArg = _rf_codec(pending=Pending)

    class Stop(BaseException):
        # Ends the test at once; BaseException so that `except Exception` in a test cannot
        # swallow it (a bare `except:` could: `state["stop"]` remembers it regardless).
        pass

    class CandidateError(Exception):
        pass

    state = {"pending": False, "stop": None, "raised": None}
    need, seen = [], set()

    def stop(kind, detail, reason):
        if state["stop"] is None:
            state["stop"] = (kind, detail, reason)
        raise Stop()

    def finish(doc):
        data = _dumps(doc).encode()
        while data:
            data = data[_write(3, data):]
        _exit(0)

    def standin(name):
        def call(*args, **kwargs):
            try:
                e_args, e_kwargs = enc(list(args)), enc(dict(kwargs))
            except PendingArg:
                state["pending"] = True
                return Pending()
            except (NotPlain, RecursionError) as e:
                stop("unverifiable", None, "the test passes %s to %s" % (e, name))
            key = _dumps([name, e_args, e_kwargs])
            got = table.get(key)
            if got is None:
                state["pending"] = True
                if key not in seen:
                    seen.add(key)
                    need.append({"name": name, "args": e_args, "kwargs": e_kwargs, "key": key})
                    if len(need) > 20000:
                        stop("fail", "crash", "the tests make more than 20000 distinct calls")
                return Pending()
            if "missing" in got:
                stop("fail", "wrong_answer", "missing " + name)
            if "error" in got:
                stop("fail", "wrong_answer", "%s returned %s" % (name, str(got["error"])[:200]))
            try:
                for a, after in zip(args, got.get("after") or ()):
                    if after is None:
                        continue
                    new = dec(after)
                    if type(a) is list or type(a) is bytearray:
                        a[:] = new
                    elif type(a) is dict or type(a) is set:
                        a.clear(); a.update(new)
                if "raise" in got:
                    exc = getattr(builtins, str(got["raise"]), None)
                    if not (isinstance(exc, type) and issubclass(exc, Exception)) or exc in (
                            StopIteration, StopAsyncIteration):
                        exc = CandidateError
                    state["raised"] = "%s raised %s" % (name, got["raise"])
                    raise exc(str(got.get("msg", ""))[:300])
                return dec(got["v"])
            except (NotPlain, RecursionError) as e:
                stop("fail", "wrong_answer", "%s returned %s" % (name, e))
        call.__name__ = name
        return call

    # The same random numbers in every pass (tests that draw random inputs), whatever the seed.
    _rinit = random.Random.__init__
    random.Random.__init__ = lambda self, x=None: _rinit(self, 1234 if x is None else x)
    random.seed(1234)

    def alarm(sig, frame):
        stop("fail", "timeout", "the tests ran past %.1fs" % budget)
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)

    def bound(src):
        names = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
        return names

    def loads(src):
        return {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}

    ns = {"__name__": "__rf_tests__", "__builtins__": builtins}
    stage = "setup"
    tests = [payload["test"]] if payload.get("test") is not None else []
    asserts = list(payload.get("asserts") or ())
    prompt = payload.get("prompt") or ""
    try:  # the prompt may stop at the signature: give it a body, or leave it out
        compile(prompt, "<prompt>", "exec")
    except SyntaxError:
        prompt = prompt + "\n    pass\n"
        try:
            compile(prompt, "<prompt>", "exec")
        except SyntaxError:
            prompt = ""
    try:
        for src in [payload.get("setup") or ""] + tests + asserts:
            compile(src, "<test>", "exec")
        if prompt:
            exec(compile(prompt, "<prompt>", "exec"), ns)
        if payload.get("setup"):
            exec(compile(payload["setup"], "<setup>", "exec"), ns)
    except SyntaxError as e:
        finish({"verdict": "unverifiable", "reason": "the test code does not compile: %s" % e.msg})
    except BaseException as e:
        finish({"verdict": "unverifiable", "reason": "the test setup raised %s" % type(e).__name__})
    ep = payload.get("entry_point")
    cand = payload.get("candidate_names") or {}
    cand_defs = set(cand.get("defs") or ()) | set(cand.get("classes") or ())
    cand_classes = set(cand.get("classes") or ())
    names = {ep} if ep else set()
    defined = set(dir(builtins)) | set(ns)
    primary = set()  # the function each test calls first: the one under test
    for src in tests + asserts:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                primary.add(node.func.id)
                break
    for src in tests + asserts:
        for n in loads(src) - bound(src) - defined:
            if n in cand_classes and n != ep and n not in primary:
                finish({"verdict": "unverifiable",
                        "reason": "the tests build objects of the answer's class %s: not plain data" % n})
            if n not in cand_defs:
                try:  # a module the answer imported and the tests use (sys.getsizeof, math.pi)
                    ns[n] = __import__(n)
                    continue
                except BaseException:
                    pass
            names.add(n)
    if not ep:  # the answer may define the function under test with a builtin's name (sum)
        names |= primary & cand_defs & set(dir(builtins))
    names.discard(None)
    if not names:
        finish({"verdict": "unverifiable", "reason": "the tests call no function of the answer"})
    for n in names:
        ns[n] = standin(n)
    failure = None

    def note(kind, detail, reason):
        nonlocal failure
        if failure is None:
            failure = (kind, detail, reason)

    class Asserts(ast.NodeTransformer):
        # `assert x` -> `_rf_assert(x)`: the same check, except that in a pass that already made
        # a placeholder (its verdict will not count) a failed assert does not end the test, so
        # the pass goes on to find the remaining calls (a loop of 100 asserts: one pass, not 100).
        def visit_Assert(self, node):
            call = ast.Call(func=ast.Name(id="_rf_assert", ctx=ast.Load()), args=[node.test], keywords=[])
            return ast.copy_location(ast.Expr(value=call), node)

    def _rf_assert(ok):
        if not ok and not state["pending"]:
            raise AssertionError()
    ns["_rf_assert"] = _rf_assert

    def run_one(src, label, then=None):
        try:
            tree = ast.fix_missing_locations(Asserts().visit(ast.parse(src)))
            exec(compile(tree, label, "exec"), ns)
            if then is not None:
                then()
        except Stop:
            pass
        except AssertionError:
            note("fail", "wrong_answer", "assert failed in " + label.strip("<>"))
        except BaseException as e:
            if state["raised"]:
                note("fail", "oom" if state["raised"].endswith(" MemoryError") else "crash",
                     "%s in %s" % (state["raised"], label.strip("<>")))
            else:
                note("fail", "crash", "%s in %s" % (type(e).__name__, label.strip("<>")))
        state["raised"] = None

    for src in tests:
        then = None
        if ep and not payload.get("test_calls_check"):
            then = lambda: ns["check"](ns[ep])
        run_one(src, "<test>", then)
        if state["stop"] and not need:
            break
    for i, src in enumerate(asserts):
        if state["stop"] and not need:
            break
        run_one(src, "<assert %d>" % i)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if need:
        finish({"need": need})
    if state["stop"]:
        kind, detail, reason = state["stop"]
        finish({"verdict": kind, "detail": detail, "reason": reason})
    if state["pending"]:  # a placeholder was made, yet no call is missing: never a pass
        finish({"verdict": "fail", "detail": "crash", "reason": "the tests never settled"})
    if failure:
        kind, detail, reason = failure
        finish({"verdict": kind, "detail": detail, "reason": reason})
    finish({"verdict": "pass", "reason": "all tests passed"})
_rf_judge()
"""

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
