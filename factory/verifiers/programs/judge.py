"""The code verifier's judge: runs in the judge box (a sandbox of its own, where no candidate code
ever runs), sent as text after codec.py (`source("codec.py", "judge.py")`, factory.verifiers.code).

Its stdin (JSON: {"payload": the tests, "table": results known so far by call key, "budget_s"})
says what to judge. It runs the test code with a recording stand-in for each function of the
answer, and writes one JSON document on fd 3: {"need": [calls]} while results are missing, else
{"verdict": "pass"} or {"verdict": "fail", "detail", "reason"} or {"verdict": "unverifiable",
"reason"}. Results are rebuilt from data by the codec.
"""

import ast

if __name__ != "__main__":  # imported (tests, lint); in the sandbox codec.py is sent in front of this file
    from .codec import _rf_codec


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


def bound(src):
    """The names a test source binds: assigned, defined, arguments, imported."""
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
    """The names a test source reads."""
    return {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class Asserts(ast.NodeTransformer):
    # `assert x` -> `_rf_assert(x)`: the same check, except that in a pass that already made
    # a placeholder (its verdict will not count) a failed assert does not end the test, so
    # the pass goes on to find the remaining calls (a loop of 100 asserts: one pass, not 100).
    def visit_Assert(self, node):
        call = ast.Call(func=ast.Name(id="_rf_assert", ctx=ast.Load()), args=[node.test], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)


def _rf_judge():
    import builtins
    import json
    import os
    import random
    import signal
    import sys
    _write, _exit, _dumps = os.write, os._exit, json.dumps
    req = json.loads(sys.stdin.read())
    payload, table, budget = req["payload"], req["table"], req["budget_s"]

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
                stop("unverifiable", None, f"the test passes {e!s} to {name}")
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
                stop("fail", "wrong_answer", f"{name} returned {str(got['error'])[:200]}")
            try:
                for a, after in zip(args, got.get("after") or ()):
                    if after is None:
                        continue
                    new = dec(after)
                    if type(a) is list or type(a) is bytearray:
                        a[:] = new
                    elif type(a) is dict or type(a) is set:
                        a.clear()
                        a.update(new)
                if "raise" in got:
                    exc = getattr(builtins, str(got["raise"]), None)
                    if not (isinstance(exc, type) and issubclass(exc, Exception)) or exc in (
                            StopIteration, StopAsyncIteration):
                        exc = CandidateError
                    state["raised"] = f"{name} raised {got['raise']!s}"
                    raise exc(str(got.get("msg", ""))[:300])
                return dec(got["v"])
            except (NotPlain, RecursionError) as e:
                stop("fail", "wrong_answer", f"{name} returned {e!s}")
        call.__name__ = name
        return call

    # The same random numbers in every pass (tests that draw random inputs), whatever the seed.
    _rinit = random.Random.__init__
    random.Random.__init__ = lambda self, x=None: _rinit(self, 1234 if x is None else x)
    random.seed(1234)

    def alarm(sig, frame):
        stop("fail", "timeout", f"the tests ran past {budget:.1f}s")
    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)

    ns = {"__name__": "__rf_tests__", "__builtins__": builtins}
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
        finish({"verdict": "unverifiable", "reason": f"the test code does not compile: {e.msg!s}"})
    except BaseException as e:
        finish({"verdict": "unverifiable", "reason": f"the test setup raised {type(e).__name__}"})
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
                        "reason": f"the tests build objects of the answer's class {n}: not plain data"})
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
                     f"{state['raised']} in {label.strip('<>')}")
            else:
                note("fail", "crash", f"{type(e).__name__} in {label.strip('<>')}")
        state["raised"] = None

    def check_entry_point():
        ns["check"](ns[ep])

    for src in tests:
        then = check_entry_point if ep and not payload.get("test_calls_check") else None
        run_one(src, "<test>", then)
        if state["stop"] and not need:
            break
    for i, src in enumerate(asserts):
        if state["stop"] and not need:
            break
        run_one(src, f"<assert {i}>")
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


if __name__ == "__main__":
    _rf_judge()
