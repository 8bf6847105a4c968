"""The math-verify worker loop (factory.verifiers.math): parses and compares answers with sympy in a
process the caller kills when it overruns.

Not sent as text like the other programs here: it needs math-verify and sympy, so math.py's pool
runs `main` in a process forked from a forkserver that has preloaded them (workers.ForkWorker).
Each request is (gold candidates, gold need_math, pred candidates, options, sleep_s); each
answer is (kind, info), kind one of equal, different, gold_unparseable, pred_unparseable, error.

    parse_first = parser()                           # in-process, as tests do
    answer((("\\\\boxed{1/2}",), True, ("0.5",), MathOptions(), 0.0), parse_first)   # ("equal", "")
"""

from __future__ import annotations

import functools
import logging
import os
import time


def parser():
    """math-verify `parse` of the first candidate that gives a sympy object, cached per worker
    (the gold of a problem is parsed once)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from sympy import Basic
    from sympy.matrices import MatrixBase

    configs = {
        "latex": LatexExtractionConfig(boxed_match_priority=0),
        "expr": ExprExtractionConfig(),
    }

    @functools.lru_cache(maxsize=4096)
    def parse_first(cands: tuple[str, ...], match_types: tuple[str, ...], need_math: bool):
        """The first candidate that parses to a sympy object; else (unless `need_math`) the first
        that math-verify kept as a bare string."""
        targets = [configs[m] for m in match_types]
        fallback: list = []
        for c in cands:
            parsed = parse(c, targets, parsing_timeout=None)
            if any(isinstance(x, (Basic, MatrixBase)) for x in parsed):
                return parsed
            if parsed and not fallback:
                fallback = parsed
        return [] if need_math else fallback

    return parse_first


def answer(req: tuple, parse_first) -> tuple[str, str]:
    """(kind, info) for one request; math-verify runs with its signal timeouts off."""
    from math_verify import verify

    gold_cands, gold_need_math, pred_cands, opts, sleep_s = req
    try:
        if sleep_s:
            time.sleep(sleep_s)  # test hook: a worker that hangs
        gold = parse_first(gold_cands, opts.match_types, gold_need_math)
        if not gold:
            return ("gold_unparseable", "")
        pred = parse_first(pred_cands, opts.match_types, False) if pred_cands else []
        if not pred:
            return ("pred_unparseable", "")
        ok = verify(
            gold,
            pred,
            float_rounding=opts.float_rounding,
            strict=opts.strict,
            allow_set_relation_comp=opts.allow_set_relation_comp,
            timeout_seconds=None,
        )
        return ("equal" if ok else "different", "")
    except MemoryError:
        return ("error", "MemoryError (worker memory cap)")
    except Exception as e:  # math-verify swallows most errors itself; anything else is ours
        return ("error", f"{type(e).__name__}: {e}"[:300])


def main(conn, memory_bytes: int) -> None:
    """Loop of one worker: send ("ready", pid), then answer each request on `conn` until None or
    the parent goes away.

    The parent enforces the deadline by killing this process, which also covers sympy code that
    never returns to the interpreter loop.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us
    if memory_bytes:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        except (ImportError, ValueError, OSError):
            pass
    # "Timeout is disabled" warnings are expected here: the parent owns the timeout.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    parse_first = parser()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if req is None:
            return
        resp = answer(req, parse_first)
        try:
            conn.send(resp)
        except (EOFError, OSError):
            return
