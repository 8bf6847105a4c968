"""The code verifier's candidate runner: runs in the candidate box as __main__, sent as text after
codec.py (`source("codec.py", "runner.py")`, factory.verifiers.code).

Its stdin (JSON: {"code", "setup", "calls": [{"name", "args", "kwargs"}]}) holds the code and the
calls, read and decoded before the candidate's code runs. It writes one JSON document on fd 3:
{"results": [...]} in call order, or {"load": reason} when the code itself did not load.
Nothing here is trusted: whatever it writes is only data for the judge.
"""

if __name__ != "__main__":  # imported (tests, lint); in the sandbox codec.py is sent in front of this file
    from .codec import _rf_codec


def _rf_run(payload):
    import builtins
    import json
    import os
    import sys
    enc, dec, NotPlain, PendingArg = _rf_codec()
    _write, _exit, _dumps, T = os.write, os._exit, json.dumps, type
    MUTABLE = (list, dict, set, bytearray)
    me = os.getpid()
    calls = [(c["name"], dec(c["args"]), dec(c["kwargs"])) for c in payload["calls"]]
    def out(doc):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
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
        out({"load": f"SyntaxError: {e.msg!s} (line {e.lineno!s})"})
    except BaseException as e:
        out({"load": f"{T(e).__name__} while loading the code"})
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


if __name__ == "__main__":
    _rf_run(__import__("json").loads(__import__("sys").stdin.read()))
