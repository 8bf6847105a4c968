"""Math answer verification: extract the final answer from a long reasoning trace and decide
whether it equals the reference answer.

    from factory.verifiers.math import verify_math, verify_math_batch, prepare_gold

    v = verify_math(completion, "18")                  # -> Verdict(check="math")
    v.status, v.score, v.extracted_answer              # ("pass", 1.0, "18")

    gold = prepare_gold(r"\\frac{14}{3}")              # parse-once handle for one problem
    verdicts = verify_math_batch([(c, gold) for c in completions])   # many samples, one call

    verify_answer("0.333333", r"$\\frac{1}{3}$")       # compare two answers, no extraction

How a completion is judged:
1. `extract_answer` looks only after the last `</think>` when there is one (else the whole
   text) and takes, in this order, the last `\\boxed{...}` / `\\fbox{...}` (balanced braces),
   the last "final answer is ...", the last `#### ...` (GSM8K), the last `A:` / `Answer:` line,
   the last "the answer is ...". Nothing found -> `unverifiable` (never `fail`).
   Extraction is linear in the completion (a hostile 200k-character one takes milliseconds).
2. Strict numeric answers (`MathOptions.strict_numeric`, on by default; `check_version` records
   it): when the gold is a plain number (one `fast_number` reads: 7, -3, 0.5, 1,000, $18, 3/4,
   \\frac{3}{4}), an answer that is not itself a number literal fails, whatever it evaluates
   to: `2 + 5`, `4 + 4 = 8`, `4 + 4 = N`, `N`, `\\sqrt{49}` against 7 or 8. Under GRPO on
   arithmetic a policy otherwise learns to echo the question. The exact rule (what counts as a
   literal: `14/2`, `x = 7`, `7 apples`, ...) is in `why_not_a_number`. `verify_answer` does not
   apply it (math-verify's semantics exactly).
3. Fast path: when the gold and the answer are both plain numbers (integers, decimals, `1,000`,
   `$18`, `18.0`, `3/4`, `\\frac{3}{4}`, `-2`) the verdict is decided here, without sympy, with
   math-verify's own rules (exact for integers and fractions; decimals rounded to
   `float_rounding` places). A case that those rules could round either way is not decided
   here but handed on.
4. Same form: an answer whose `surface_form` (delimiters, `\\dfrac`, `\\left`, spacing removed)
   equals the gold's passes without sympy, once a worker has parsed that gold (so a gold that
   is not math still comes out `unverifiable`). A batch probes each new gold with one of its
   differing answers first, so the others of the same problem can take this shortcut.
5. Slow path: math-verify `parse` + `verify`, in a small pool of worker processes (workers.py).
   math-verify's own timeouts use `signal.alarm`, which only works on the main thread; here the
   worker runs without them and the caller waits on a pipe with a deadline: a worker that
   overruns is killed and replaced, and the verdict is `error` (detail "timeout"), never `fail`.
   This works from any thread and from asyncio via `asyncio.to_thread`.

Statuses (the rule, for reports and rewards):
- gold that math-verify cannot parse to a sympy object -> `unverifiable` (its string fallback
  does not count in `verify_math`; `verify_answer` keeps math-verify's own string comparison);
- no answer found in the completion -> `unverifiable`;
- an answer was found but cannot be parsed, or parses and differs, or is not a number against a
  plain-number gold (strict numeric) -> `fail`: the model committed to an answer and it is not
  the right one;
- worker timeout or crash -> `error` (the checker broke, not the model).

The pool size is `FACTORY_MATH_WORKERS` (default: min(4, CPUs)); `configure_pool(workers=N)`
changes it, `shutdown_pool()` stops the workers (also done at exit). Workers start lazily on
the first slow-path call and are re-created after a fork of the parent. Workers are started
through multiprocessing's forkserver, which re-imports the calling script: a script that
verifies math must keep its work under `if __name__ == "__main__":` (as for any
multiprocessing use). Not covered: a worker's memory is capped (4 GiB address space), not its
CPU share; a timed-out request costs one worker restart (a fork of the preloaded forkserver,
not a fresh import).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

from .base import Verdict
from .programs import math_worker
from .workers import ForkWorker, SharedPool, WorkerPool, default_size

CHECK = "math"
DEFAULT_TIMEOUT_S = 5.0
# A worker that cannot even import sympy + math-verify in this long is broken (or the machine is
# badly overloaded); the first start on a cold, busy 2-core box takes a few seconds.
WORKER_START_TIMEOUT_S = 120.0
# Address-space cap per worker: a pathological expression should die with MemoryError inside
# the worker, not push the machine into swap. sympy + math-verify need ~300 MB.
WORKER_MEMORY_BYTES = 4 << 30


@dataclass(frozen=True)
class MathOptions:
    """Settings that change a verdict: math-verify's (the keyword arguments of its test suite),
    and `strict_numeric`, ours (see `why_not_a_number`)."""

    match_types: tuple[str, ...] = ("latex", "expr")  # which math-verify extractors parse a string
    float_rounding: int = 6  # decimals compared after rounding (math-verify `float_rounding`)
    strict: bool = True  # False: variables matched by position, sets comparable with tuples
    allow_set_relation_comp: bool = False  # True: `1 < x < 2` may equal the set `(1, 2)`
    # True: against a plain-number reference, an extracted answer must itself be a number, not an
    # expression or equation that evaluates to it (`2 + 5`, `4 + 4 = 8`). Not applied by
    # `verify_answer`, which keeps math-verify's semantics exactly.
    strict_numeric: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.match_types if m not in ("latex", "expr")]
        if bad or not self.match_types:
            raise ValueError(f"match_types {self.match_types!r}: expected a non-empty subset of ('latex', 'expr')")
        if not isinstance(self.float_rounding, int) or self.float_rounding < 0:
            raise ValueError(f"float_rounding {self.float_rounding!r}: expected an int >= 0")


DEFAULT_OPTIONS = MathOptions()
# Stored with every verdict (`verdicts.check_version`, see `check_version`): bump it when a change
# makes the same completion get another verdict, so old and new verdicts are not mixed.
# 2: strict numeric answers (`MathOptions.strict_numeric`).
CHECK_VERSION = "2"


def check_version(options: MathOptions = DEFAULT_OPTIONS) -> str:
    """The version of the math check under `options`: "2+strict" by default."""
    return CHECK_VERSION + ("+strict" if options.strict_numeric else "")


# --------------------------------------------------------------------------- extraction

_THINK_END = "</think>"
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_FINAL_RE = re.compile(r"final answer is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
_ALINE_RE = re.compile(r"^[ \t>*_#]*(?:A|Answer|Final Answer)[ \t*_]*:[ \t*_]*([^\n]*)", re.IGNORECASE | re.MULTILINE)
_ANSWER_IS_RE = re.compile(r"\banswer is\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
# A sentence end after the answer ("18. I hope it is correct."); a decimal point has no space after it.
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def _balanced(text: str, open_at: int) -> int | None:
    """Index just past the `}` that closes the `{` at `open_at`; escaped `\\{ \\}` do not count."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # `\{`, `\}` and `\\` are content, not structure
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


_BRACE_RE = re.compile(r"\\.|[{}]", re.S)  # an escape pair (`\{`, `\\`) or a structural brace
_TOKEN_RE = re.compile(r"[^\s$]+")


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """For each `{` from `start` on, the index just past its closing `}` (unclosed ones absent):
    `_balanced` for every brace in one pass, so many boxes cost one scan, not one each."""
    closes: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_RE.finditer(text, start):
        c = m.group()
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            closes[stack.pop()] = m.end()
    return closes


def _last_boxed(text: str) -> str | None:
    """The content of the last complete box with something in it. Linear in the text: a hostile
    completion of 30,000 unclosed `\\boxed{` took minutes when each box scanned to the end."""
    boxes = [m.end() for m in _BOXED_RE.finditer(text)]
    closes: dict[int, int] | None = None
    for start in reversed(boxes):
        if start < len(text) and text[start] == "{":
            if closes is None:
                closes = _closing_braces(text, boxes[0])
            end = closes.get(start)
            if end is None:
                continue  # truncated box (ran out of tokens): an earlier complete one still counts
            content = text[start + 1 : end - 1].strip()
        else:
            # `\boxed 5`: TeX takes the next token as the argument
            tok = _TOKEN_RE.match(text, start)
            content = tok.group(0) if tok else ""
        if content:
            return content
    return None


def _trim_line(rest: str) -> str | None:
    """The answer part of a line such as "18. I hope it is correct." or "$28\\%$ ..."."""
    rest = rest.strip().strip("*_").strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end > len(open_):
                return rest[len(open_) : end].strip() or None
            break
    m = _SENTENCE_END_RE.search(rest)
    if m:
        rest = rest[: m.start()]
    rest = rest.strip().rstrip(".").strip().strip("*_").strip()
    return rest or None


def _last_line_match(regex: re.Pattern, text: str) -> str | None:
    found = None
    for m in regex.finditer(text):
        ans = _trim_line(m.group(1))
        if ans:
            found = ans
    return found


def _extract(completion: str) -> tuple[str, str] | None:
    """(answer, how) or None; `how` is "boxed" or "line" (decides how the answer is parsed)."""
    if not completion:
        return None
    text = completion.rsplit(_THINK_END, 1)[1] if _THINK_END in completion else completion
    boxed = _last_boxed(text)
    if boxed:
        return boxed, "boxed"
    for regex in (_FINAL_RE, _HASHES_RE, _ALINE_RE, _ANSWER_IS_RE):
        ans = _last_line_match(regex, text)
        if ans:
            return ans, "line"
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of `completion`, or None when it states none (see the module docstring)."""
    found = _extract(completion)
    return found[0] if found else None


# --------------------------------------------------------------------------- fast path

_INT = r"(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)"  # `1,000` groups of three; `0,111` is a decimal comma: not here
_DEC_RE = re.compile(rf"([+-]?)({_INT})(?:\.(\d+))?|([+-]?)\.(\d+)")
_FRAC_RE = re.compile(r"([+-]?)(\d+)/(\d+)")
_LFRAC_RE = re.compile(r"([+-]?)\\[dt]?frac\{\s*([+-]?\d+)\s*\}\{\s*(\d+)\s*\}")


def _unwrap(s: str) -> str:
    s = s.strip()
    for _ in range(4):  # `$\boxed{18}$` and the like: a few layers at most
        before = s
        if s.startswith("\\boxed{") and s.endswith("}"):
            s = s[7:-1].strip()
        elif s.startswith("$$") and s.endswith("$$") and len(s) > 4:
            s = s[2:-2].strip()
        elif s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
        elif s.startswith("$") and s.endswith("$") and len(s) > 2:
            s = s[1:-1].strip()
        if s == before:
            break
    # currency: `$18`, `\$18`, `18$` (math-verify reads all three as 18)
    if s.startswith("\\$"):
        s = s[2:]
    elif s.startswith("$") or s.endswith("$"):
        s = s.strip("$")
    return s.replace("{,}", ",").replace("\\!", "").strip()  # `32,\!348`: a negative thin space


def fast_number(text: str) -> tuple[Fraction, bool] | None:
    """`(value, is_decimal)` when `text` is a plain number the fast path decides, else None."""
    if len(text) > 64:
        return None
    s = _unwrap(text)
    m = _DEC_RE.fullmatch(s)
    if m:
        if m.group(2) is not None:
            sign, whole, frac = m.group(1), m.group(2).replace(",", ""), m.group(3)
            value = Fraction(int(whole)) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
            is_dec = frac is not None
        else:
            sign, frac = m.group(4), m.group(5)
            value, is_dec = Fraction(int(frac), 10 ** len(frac)), True
        return (-value if sign == "-" else value), is_dec
    m = _FRAC_RE.fullmatch(s) or _LFRAC_RE.fullmatch(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) == "-" else value), False
    return None


def _fast_equal(gold: tuple[Fraction, bool], pred: tuple[Fraction, bool], float_rounding: int) -> bool | None:
    """math-verify's numeric rule on plain numbers, or None where only math-verify can tell."""
    (g, g_dec), (p, p_dec) = gold, pred
    if g == p:
        return True
    if not (g_dec or p_dec):
        return False  # integers and fractions: math-verify compares them exactly
    # A decimal is a sympy Float there: both sides are rounded to `float_rounding` places. Values
    # more than one step apart round apart whatever the tie rule; closer ones (1/3 vs 0.333333)
    # and huge ones (Float keeps ~15 digits) are left to math-verify.
    if max(abs(g), abs(p)) >= 10**12:
        return None
    if abs(g - p) > Fraction(1, 10**float_rounding):
        return False
    return None


_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~")
_LEFTRIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")


def _peel(s: str) -> str:
    """`$...$`, `\\(...\\)` and a `\\boxed{...}` that spans the whole string, removed."""
    for _ in range(4):
        before = s = s.strip()
        if s.startswith("\\boxed{") and _balanced(s, 6) == len(s):
            s = s[7:-1]
        elif s.startswith("$$") and s.endswith("$$") and len(s) > 4:
            s = s[2:-2]
        elif s.startswith("$") and s.endswith("$") and len(s) > 2:
            s = s[1:-1]
        elif s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s == before:
            break
    return s


def surface_form(text: str) -> str:
    """A LaTeX answer with the writing choices that carry no meaning removed: math delimiters and
    a whole-answer box, `\\dfrac`/`\\tfrac` (-> `\\frac`), `\\left`/`\\right`, spacing commands,
    spaces next to symbols, a final period. Two answers with the same surface form are equal
    for math-verify too; this decides the common case (the teacher writes the reference's
    form) without sympy."""
    s = _peel(text.strip().rstrip("."))
    s = _LEFTRIGHT_RE.sub("", _SPACING_RE.sub(" ", s))
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r" ?([^A-Za-z0-9 ]) ?", r"\1", s)  # `x + 1` = `x+1`; `\\pi r` keeps its space
    return _peel(s.rstrip("."))


# --------------------------------------------------------------------------- strict numeric answers

# An answer is read as tokens, left to right, one `match` at a time (no pattern here can backtrack
# across tokens, and answers over _LITERAL_MAX characters are refused first, so this is linear).
_LITERAL_MAX = 200
_INT_ = r"[0-9]+"
_SIGN_ = r"(?:[+\-−]\s*)?"
_NUMBER_TOKEN = (
    rf"{_SIGN_}(?:"
    rf"{_INT_}(?:\.{_INT_})?\s*(?:\\times|\\cdot|×)\s*10\s*\^\s*(?:\{{\s*[+\-−]?{_INT_}\s*\}}|[+\-−]?[0-9])"  # 1.2 \times 10^3
    rf"|{_INT_}(?:\.{_INT_})?[eE][+\-]?{_INT_}"  # 1.2e3
    rf"|(?:{_INT_}\s*)?\\[dtc]?frac\s*(?:\{{\s*[+\-−]?{_INT_}(?:\.{_INT_})?\s*\}}|[0-9])"
    rf"\s*(?:\{{\s*{_INT_}(?:\.{_INT_})?\s*\}}|[0-9])"  # \frac{1}{2}, \dfrac12, 2\frac{1}{2}
    rf"|{_INT_}\s*/\s*{_INT_}"  # 3/4
    r"|[0-9]{1,3}(?:(?:,|\{,\}|\\,|,\\!|\\!| )[0-9]{3})+(?:\.[0-9]+)?"  # 1,000  1{,}000  1\,000  1 000
    rf"|{_INT_}(?:[.,]{_INT_})?|[.,]{_INT_}"  # 7  7.5  7,5  .5
    r")"
)
_LITERAL_TOKEN_RE = re.compile(
    rf"(?P<num>{_NUMBER_TOKEN})"
    r"|(?P<space>\s+|\\[,;:! ]|~|\\q?quad(?![A-Za-z]))"
    r"|(?P<currency>\\\$|\$|€|£|¥|₹)"
    r"|(?P<percent>\\?%|\\percent(?![A-Za-z]))"
    r"|(?P<degree>\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z]))"
    r"|(?P<power>\^\s*\{\s*[23]\s*\}|\^\s*[23]|[²³])"  # of a unit only: cm^2
    r"|(?P<eq>=|\\approx(?![A-Za-z])|≈)"
    r"|(?P<word>[A-Za-z][A-Za-z'’.]*(?:[-/][A-Za-z][A-Za-z'’.]*)*)"  # apples, sq.ft., km/h, x
    r"|(?P<sub>_\s*(?:\{[A-Za-z0-9]*\}|[A-Za-z0-9]))"  # x_1
    r"|(?P<cmd>\\[A-Za-z]+)"  # \sqrt, \pi, \times, \theta: only a variable name may be one
    r"|(?P<punct>[:,;()!])"
    r"|(?P<op>.)",  # + * ? { } and anything else: not part of a number literal
    re.S,
)
_TEXT_CMD_RE = re.compile(r"\\(?:text(?:bf|it|rm|up|normal)?|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def why_not_a_number(answer: str) -> str | None:
    """None when `answer` is a number literal as people write one, else why it is not.

    A number literal: one number in a usual form (7, -3, 7.0, .5, 1,000, 1{,}000, 1 000, 3/4,
    14/2, \\frac{1}{2}, \\dfrac12, 2\\frac{1}{2}, 1.2 \\times 10^{3}, 1.2e3, 7,5), optionally with a
    currency sign ($7, \\$7, €7), a percent or degree sign (7%, 7\\%, 30^\\circ), unit words
    (7 apples, 24 \\text{ cm}^2, 7 km/h), other words around it without numbers or operators
    ("Janet earns $18 a day"), math delimiters or a box ($7$, \\boxed{7}), and at most one
    assignment whose left side is a name ("x = 7", "k \\approx 0.33", "total = 7").
    Not one: a sum, product or power (2 + 5, 2 \\cdot 3, 2^3, \\sqrt{49}), an equation whose left
    side is not a name (4 + 4 = 8, 2 + 5 = 7, 4 + 4 = N), more than one number (7 and 8,
    x=7, y=8), or no number at all (N, x, ?, ...). A plain fraction a/b IS a literal (14/2 for 7
    passes): it is how fractions are written, and a/b alone is no restatement of a question.
    Closed forms (\\sqrt{2}, \\pi) are not literals: against a decimal reference they fail
    under strict_numeric.
    """
    s = answer.strip()
    if len(s) > _LITERAL_MAX:
        return f"it is over {_LITERAL_MAX} characters long"
    s = _LEFTRIGHT_RE.sub("", _peel(s.rstrip(".")))
    s = _TEXT_CMD_RE.sub(lambda m: f" {m.group(1)} ", s).strip().rstrip(".")
    kinds: list[tuple[str, str]] = []
    pos = 0
    while pos < len(s):
        m = _LITERAL_TOKEN_RE.match(s, pos)
        assert m is not None  # `op` matches any one character
        pos = m.end()
        if m.lastgroup != "space":
            kinds.append((m.lastgroup or "op", m.group()))
    if not any(k == "num" for k, _ in kinds):
        return "it has no number in it"
    eqs = [i for i, (k, _) in enumerate(kinds) if k == "eq"]
    if len(eqs) > 1:
        return "it is a chain of equations"
    if eqs:
        lhs, kinds = kinds[: eqs[0]], kinds[eqs[0] + 1 :]
        if not lhs or any(k not in ("word", "cmd", "sub", "punct") for k, _ in lhs):
            return "it is an equation, not a value"
    for i, (k, text) in enumerate(kinds):
        if k in ("op", "cmd", "sub") or (k == "power" and (i == 0 or kinds[i - 1][0] != "word")):
            return f"{text!r} makes it an expression"
    nums = sum(k == "num" for k, _ in kinds)
    if nums != 1:
        return f"it has {nums} numbers: an expression or a list, not one value" if nums else "it has no number after '='"
    return None


# --------------------------------------------------------------------------- gold


_DELIM_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")  # an escaped `\$` is a dollar sign, not math


def _has_math_delimiters(s: str) -> bool:
    return _DELIM_RE.search(s) is not None


def _candidates(answer: str, how: str) -> tuple[str, ...]:
    """The strings handed to math-verify `parse`, tried in order until one parses.

    A bare LaTeX answer (`\\frac{14}{3}` from a box or a reference column) is only found by
    math-verify inside delimiters, so it goes in as `\\boxed{...}`; an answer taken from a text
    line ("18 dollars", "1,000.99€") parses best as is, with the boxed form as a fallback.
    """
    if how == "raw" or _has_math_delimiters(answer):
        return (answer,)
    boxed = "\\boxed{" + answer + "}"
    return (boxed, answer) if how == "boxed" else (answer, boxed)


@dataclass(frozen=True)
class MathGold:
    """A reference answer prepared once per problem: its fast-path number and parse candidates.

    The sympy parse of the gold happens in the worker processes (sympy objects are costly to
    ship), where it is cached by its candidates; this object only carries what the caller needs.
    """

    text: str
    candidates: tuple[str, ...]
    number: tuple[Fraction, bool] | None = field(default=None, compare=False)
    # True: only a sympy object counts as a parsed gold. math-verify falls back to the raw string
    # when sympy fails, so `\boxed{Let's think step by step.}` would otherwise "parse" and every
    # answer would fail against it instead of the gold being reported unverifiable.
    need_math: bool = True


@functools.lru_cache(maxsize=8192)
def _prepare_gold(text: str, raw: bool) -> MathGold:
    cands = _candidates(text, "raw" if raw else "boxed")
    return MathGold(text=text, candidates=cands, number=fast_number(text), need_math=not raw)


def prepare_gold(gold: str | int | float | MathGold, *, raw: bool = False) -> MathGold:
    """Prepare a reference answer once per problem (cached; cheap to call again).

    `raw=True` hands the gold to math-verify exactly as given (its test-suite semantics); by
    default a bare answer is wrapped in `\\boxed{}` so that LaTeX without delimiters parses.
    """
    if isinstance(gold, MathGold):
        return gold
    if gold is None:
        raise ValueError("gold is None: expected the reference answer as a string or number")
    return _prepare_gold(str(gold).strip(), raw)


# --------------------------------------------------------------------------- worker pool (the loop: programs/math_worker.py)


def _mp_context():
    # forkserver: workers are forked from a clean server process (preloaded with math-verify, so a
    # replacement after a timeout starts in milliseconds) rather than from this possibly
    # multi-threaded parent, where a plain fork can inherit a held lock and hang.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify", "factory.verifiers.math", math_worker.__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _default_size() -> int:
    env = os.environ.get("FACTORY_MATH_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"FACTORY_MATH_WORKERS={env!r}: expected a positive integer") from None
    return default_size()


def _start_worker() -> ForkWorker:
    return ForkWorker(_mp_context(), math_worker.main, (WORKER_MEMORY_BYTES,), "math-verify", WORKER_START_TIMEOUT_S)


_POOL = SharedPool(_start_worker, _default_size, "math-verify")


def _get_pool() -> WorkerPool:
    return _POOL.get()


def configure_pool(workers: int | None = None) -> None:
    """Set the number of worker processes (None: FACTORY_MATH_WORKERS or min(4, CPUs)); restarts the pool."""
    _POOL.configure(workers)


def shutdown_pool() -> None:
    """Stop the worker processes (busy ones stop when their request ends). Safe to call twice."""
    _POOL.shutdown()


def worker_pids() -> list[int]:
    """Pids of the live worker processes (for accounting and tests)."""
    return _POOL.pids()


# --------------------------------------------------------------------------- verdicts


def _verdict_from_worker(resp: tuple[str, str], answer: str, t0: float) -> Verdict:
    kind, info = resp
    el = time.perf_counter() - t0
    extra = {"path": "math-verify"}
    if kind == "equal":
        return Verdict.passed(CHECK, answer, "math-verify: equal", elapsed_s=el, extra=extra)
    if kind == "different":
        return Verdict.failed(CHECK, answer, "math-verify: not equal", elapsed_s=el, extra=extra)
    if kind == "pred_unparseable":
        return Verdict.failed(CHECK, answer, "answer could not be parsed", elapsed_s=el, extra=extra)
    if kind == "gold_unparseable":
        return Verdict.unverifiable(CHECK, "gold answer could not be parsed", answer, elapsed_s=el, extra=extra)
    detail = kind if kind in ("timeout", "crash") else None
    return Verdict.errored(CHECK, info or kind, answer, detail=detail, elapsed_s=el, extra=extra)


def _fast_verdict(answer: str, pred: tuple[Fraction, bool] | None, gold: MathGold, opts: MathOptions,
                  t0: float) -> Verdict | None:
    # Only with both extractors on: with one of them off math-verify may not even see a number
    # that the fast path would read (a bare `9` under latex-only parses to nothing).
    if gold.number is None or pred is None or set(opts.match_types) != {"latex", "expr"}:
        return None
    same = _fast_equal(gold.number, pred, opts.float_rounding)
    if same is None:
        return None
    el = time.perf_counter() - t0
    extra = {"path": "fast"}
    if same:
        return Verdict.passed(CHECK, answer, "equal numbers", elapsed_s=el, extra=extra)
    return Verdict.failed(CHECK, answer, f"{answer} != {gold.text}", elapsed_s=el, extra=extra)


# Whether a worker managed to parse a gold, by (candidates, need_math, match_types). Until one has,
# the same-form shortcut is off for that gold: an unparseable gold must stay `unverifiable` even
# when an answer repeats it word for word.
_gold_parsed: dict[tuple, bool] = {}
_GOLD_STATUS_MAX = 200_000


def _gold_key(gold: MathGold, opts: MathOptions) -> tuple:
    return (gold.candidates, gold.need_math, opts.match_types)


def _same_form_verdict(job: _Job, opts: MathOptions) -> Verdict | None:
    if job.gold is None or job.answer is None or set(opts.match_types) != {"latex", "expr"}:
        return None
    if not _gold_parsed.get(_gold_key(job.gold, opts)):
        return None
    if job.answer_form != job.gold_form:
        return None
    el = time.perf_counter() - job.t0
    return Verdict.passed(CHECK, job.answer, "same form as the gold", elapsed_s=el, extra={"path": "same-form"})


@dataclass
class _Job:
    t0: float
    answer: str | None = None
    pred_cands: tuple[str, ...] = ()
    gold: MathGold | None = None
    gold_form: str = ""
    answer_form: str = ""
    verdict: Verdict | None = None  # decided without a worker


def _plan(pred_text: str | None, how: str, gold, opts: MathOptions, raw_gold: bool) -> _Job:
    t0 = time.perf_counter()
    job = _Job(t0=t0)
    if pred_text is None or not pred_text.strip():
        job.verdict = Verdict.unverifiable(
            CHECK, "no final answer found (no \\boxed{}, 'final answer is', ####, A: or Answer: line)",
            elapsed_s=time.perf_counter() - t0,
        )
        return job
    answer = pred_text.strip()
    job.answer = answer
    try:
        g = prepare_gold(gold, raw=raw_gold)
    except ValueError as e:
        job.verdict = Verdict.unverifiable(CHECK, str(e), answer, elapsed_s=time.perf_counter() - t0)
        return job
    job.gold = g
    if not g.text:
        job.verdict = Verdict.unverifiable(CHECK, "gold answer is empty", answer, elapsed_s=time.perf_counter() - t0)
        return job
    pred = fast_number(answer) if g.number is not None else None
    if opts.strict_numeric and how != "raw" and g.number is not None and pred is None:
        why = why_not_a_number(answer)
        if why:  # checked first: math-verify would evaluate `2 + 5` to the reference 7
            job.verdict = Verdict.failed(CHECK, answer, f"the reference is a number and the answer is not: {why}",
                                         elapsed_s=time.perf_counter() - t0, extra={"path": "strict"})
            return job
    job.verdict = _fast_verdict(answer, pred, g, opts, t0)
    job.pred_cands = _candidates(answer, how)
    if job.verdict is None and how != "raw":  # raw: math-verify's semantics exactly, no shortcut
        job.gold_form = surface_form(g.text)
        job.answer_form = surface_form(answer)
        job.verdict = _same_form_verdict(job, opts)
    return job


def _run_slow(job: _Job, opts: MathOptions, timeout_s: float, sleep_s: float = 0.0) -> Verdict:
    assert job.gold is not None and job.answer is not None
    try:
        request = (job.gold.candidates, job.gold.need_math, job.pred_cands, opts, sleep_s)
        resp = _get_pool().call(request, timeout_s)
    except RuntimeError as e:  # the pool could not start a worker
        return Verdict.errored(CHECK, str(e), job.answer, elapsed_s=time.perf_counter() - job.t0)
    if resp[0] in ("equal", "different", "pred_unparseable", "gold_unparseable"):
        if len(_gold_parsed) > _GOLD_STATUS_MAX:
            _gold_parsed.clear()  # a crude bound; it only costs a few more worker calls
        _gold_parsed[_gold_key(job.gold, opts)] = resp[0] != "gold_unparseable"
    return _verdict_from_worker(resp, job.answer, job.t0)


def verify_math(
    completion: str,
    gold: str | int | float | MathGold,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: MathOptions = DEFAULT_OPTIONS,
    _worker_sleep_s: float = 0.0,
) -> Verdict:
    """Verdict of a completion's final answer against the reference answer `gold`.

    `_worker_sleep_s` is a test hook: the worker sleeps that long first (forces the slow path).
    """
    found = _extract(completion)
    answer, how = found if found else (None, "line")
    job = _plan(answer, how, gold, options, raw_gold=False)
    can_run = job.answer is not None and job.gold is not None and bool(job.gold.text)
    if job.verdict is not None and not (_worker_sleep_s and can_run):
        return job.verdict
    return _run_slow(job, options, timeout_s, _worker_sleep_s)


def verify_answer(
    pred: str,
    gold: str | int | float | MathGold,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: MathOptions = DEFAULT_OPTIONS,
) -> Verdict:
    """Compare an answer string with the gold, both handed to math-verify as given (no extraction,
    no `\\boxed{}` wrapping): the semantics of math-verify's own test suite. An empty `pred` is
    unverifiable."""
    job = _plan(pred, "raw", gold, options, raw_gold=True)
    if job.verdict is not None:
        return job.verdict
    return _run_slow(job, options, timeout_s)


def verify_math_batch(
    pairs: Iterable[tuple[str, str | int | float | MathGold]],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: MathOptions = DEFAULT_OPTIONS,
) -> list[Verdict]:
    """Verdicts for many (completion, gold) pairs, in order: plain numbers are decided inline,
    the rest spread over the worker pool (one request in flight per worker)."""
    jobs: list[_Job] = []
    for completion, gold in pairs:
        found = _extract(completion)
        answer, how = found if found else (None, "line")
        jobs.append(_plan(answer, how, gold, options, raw_gold=False))
    slow = [j for j in jobs if j.verdict is None]
    # Two rounds: first one job per gold whose parse status is unknown, so that the others of the
    # same problem can then take the same-form shortcut (many samples of one problem repeat the
    # reference's form) instead of all going to sympy.
    # The probe of each gold is, where possible, a job whose answer differs in form from the gold
    # (it needs sympy anyway), so the status comes for free.
    probe: dict[tuple, _Job] = {}
    for j in slow:
        key = _gold_key(j.gold, options)  # type: ignore[arg-type]
        if key in _gold_parsed or not j.gold_form:
            continue
        if key not in probe or (probe[key].answer_form == j.gold_form and j.answer_form != j.gold_form):
            probe[key] = j
    first = list(probe.values())
    chosen = {id(j) for j in first}
    rest = [j for j in slow if id(j) not in chosen]
    _run_many(first, options, timeout_s)
    for j in rest:
        j.verdict = _same_form_verdict(j, options) if j.gold_form else None
    _run_many([j for j in rest if j.verdict is None], options, timeout_s)
    return [j.verdict for j in jobs]  # type: ignore[misc]


def _run_many(jobs: list[_Job], options: MathOptions, timeout_s: float) -> None:
    if not jobs:
        return
    pool = _get_pool()
    if len(jobs) == 1 or pool.size == 1:
        for j in jobs:
            j.verdict = _run_slow(j, options, timeout_s)
        return
    with ThreadPoolExecutor(max_workers=min(pool.size, len(jobs)), thread_name_prefix="math-verify") as ex:
        for j, v in zip(jobs, ex.map(lambda j: _run_slow(j, options, timeout_s), jobs)):
            j.verdict = v


__all__ = [
    "CHECK",
    "CHECK_VERSION",
    "check_version",
    "MathGold",
    "MathOptions",
    "configure_pool",
    "extract_answer",
    "fast_number",
    "prepare_gold",
    "shutdown_pool",
    "surface_form",
    "verify_answer",
    "verify_math",
    "verify_math_batch",
    "why_not_a_number",
    "worker_pids",
]
