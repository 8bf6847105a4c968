"""The code verifier's plain-data codec: the candidate runner encodes results with it, the judge
decodes them (factory.verifiers.code).

Sent as text in front of runner.py and judge.py (`source("codec.py", "runner.py")`): it runs in
the sandbox with the standard library only. Every type is captured when `_rf_codec()` builds the
codec, before any candidate code runs; exact type identity is checked, never isinstance. Values
are JSON with tags for exact builtin types; any other type raises NotPlain.

    enc, dec, NotPlain, PendingArg = _rf_codec()
    dec(enc((1, {2: [3.5]}))) == (1, {2: [3.5]})
"""


def _rf_codec(pending=None):
    import collections
    import decimal
    import fractions
    import math
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
            raise NotPlain(f"more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise NotPlain(f"nested deeper than {MAX_DEPTH}")
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
                    raise NotPlain(f"more than {MAX_NODES} values")
                try:
                    v = _next(it)
                except StopIteration:
                    break
                out.append(enc(v, d, budget))
            return {"$": "iter", "v": out}
        raise NotPlain(f"a {getattr(t, '__qualname__', '?')!s} is not plain data")

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
            raise NotPlain(f"malformed {tag}: {type(e).__name__}") from e
        raise NotPlain(f"unknown tag {tag!r}")

    return enc, dec, NotPlain, PendingArg
