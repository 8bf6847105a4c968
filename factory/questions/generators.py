"""Procedural problem generators with exact answers, and the checkers that score samples on them.

    from factory.questions.generators import generate, check_countdown
    rows = list(generate("countdown", count=100, difficulty=3, seed=7))   # `problems` rows
    v = check_countdown("... Answer: (25 - 5) * 4 + 3", numbers=[25, 5, 4, 3], target=83)

Five generators, each reproducible from (generator, difficulty, seed, index): item i draws from
its own `random.Random` seeded by that tuple, so item 17 is the same whether 20 or 2000 are made,
and changing `seed` gives an independent set. `difficulty` (1..5) is the knob:

- addition: "What is 3 + 4?": two whole numbers to add, one digit each at difficulty 1 (the
  81 pairs of 1..9, in an order drawn from `seed`, so the first 81 items are all different),
  then larger: 10..99 + 1..9, two two-digit numbers, three-digit + two-or-three-digit,
  four-digit + three-or-four-digit. Small enough for SmolLM2-135M at difficulty 1 (the
  quickstart). Answer: an integer. Checker: the math verifier.
- arithmetic: a multi-step word problem (a person's stock of things changes step by step:
  buys, gives away, packs into boxes, shares equally); 1 + difficulty steps, larger numbers
  with difficulty; every intermediate value is a non-negative integer, divisions are exact.
  Answer: an integer. Checker: the math verifier.
- linear: `a*x + b = c*x + d` with a unique solution (x on one side only at difficulty 1);
  integer solutions up to difficulty 3, then fractions; coefficients grow with difficulty. Answer: an integer or `p/q` in lowest
  terms. Checker: the math verifier.
- countdown: use each of 3..6 given numbers exactly once with + - * / and parentheses to hit
  the target (TinyZero's task); the target is the value of a random expression over the numbers
  (only exact divisions), so a solution exists; the witness is kept in metadata. Answer: any
  expression that works. Checker: `check_countdown`.
- sorting: put 4..12 items in order: numbers ascending or descending, words alphabetically, or
  people by height from shuffled pairwise clues that form one chain (the order is unique).
  Answer: the items, comma-separated. Checker: `check_sorting`.

Every row's metadata names its checker (`{"verifier": "math" | "countdown" | "sorting", ...}`)
plus the generator's parameters, so `factory.questions.check_sample` can dispatch on it.

Checkers read the final answer the way the math verifier does (after the last `</think>`; the
last `\\boxed{}`, else the last "Answer:" / "answer is" line), and for countdown an expression
may also be the last line of the answer. A checker never raises on a model's text: no answer is
`unverifiable`, a wrong one `fail`. Not covered: word problems in other languages, and
countdown answers written in words ("twenty-five times four").
"""

from __future__ import annotations

import ast
import functools
import json
import random
import re
from collections.abc import Callable, Iterator
from fractions import Fraction

from ..records import problem_id
from ..verifiers.base import Verdict
from ..verifiers.math import extract_answer, verify_math

GENERATORS = ("addition", "arithmetic", "linear", "countdown", "sorting")
CHECK_VERSION = "1"


def _rng(name: str, difficulty: int, seed: int, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random` (stable across processes and versions).
    return random.Random(f"{name}:{difficulty}:{seed}:{index}")


def _row(name: str, problem: str, answer: str, difficulty: int, seed: int, index: int, verifier: str, domain: str, **extra) -> dict:
    meta = {"verifier": verifier, "generator": name, "difficulty": difficulty, "seed": seed, "index": index, **extra}
    return {
        "problem_id": problem_id(problem),
        "source": f"gen-{name}",
        "domain": domain,
        "problem": problem,
        "reference_answer": answer,
        "tests": None,
        "difficulty": float(difficulty),
        "metadata": json.dumps(meta, sort_keys=True),
        "contamination": [],
    }


# -- addition ---------------------------------------------------------------------------------

# The operand ranges per difficulty (first, second).
_ADDENDS = {1: ((1, 9), (1, 9)), 2: ((10, 99), (1, 9)), 3: ((10, 99), (10, 99)),
            4: ((100, 999), (10, 999)), 5: ((1000, 9999), (100, 9999))}


@functools.lru_cache(maxsize=8)
def _one_digit_pairs(seed: int) -> list[tuple[int, int]]:
    # Only 81 pairs: drawn without replacement (one shuffle per seed), so a small set has no
    # repeated problem; item i is still the same whatever `count` is.
    (lo_a, hi_a), (lo_b, hi_b) = _ADDENDS[1]
    pairs = [(a, b) for a in range(lo_a, hi_a + 1) for b in range(lo_b, hi_b + 1)]
    random.Random(f"addition:1:{seed}").shuffle(pairs)
    return pairs


def _addition(difficulty: int, seed: int, index: int) -> tuple[str, int, dict]:
    (lo_a, hi_a), (lo_b, hi_b) = _ADDENDS[difficulty]
    if difficulty == 1:
        pairs = _one_digit_pairs(seed)
        a, b = pairs[index % len(pairs)]
    else:
        rng = _rng("addition", difficulty, seed, index)
        a, b = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
    return f"What is {a} + {b}?", a + b, {"addends": [a, b]}


# -- arithmetic word problems -----------------------------------------------------------------

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam", "Maya", "Noor", "Omar", "Priya"]
_THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "shells", "cards", "coins"]


def _arithmetic(rng: random.Random, difficulty: int) -> tuple[str, int, list[list]]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    hi = 10 * 5**difficulty // 5 + 10  # 20, 60, 260, 1260, 6260
    value = rng.randint(5, hi)
    steps: list[list] = []
    sentences = [f"{name} has {value} {thing}."]
    for _ in range(1 + difficulty):
        ops = ["buy", "give"] + (["pack", "share"] if difficulty >= 2 else []) + (["double"] if difficulty >= 3 else [])
        op = rng.choice(ops)
        if op == "give" and value < 2:
            op = "buy"
        if op == "share":
            divisors = [d for d in range(2, 10) if value % d == 0]
            if not divisors:
                op = "buy"
        if op == "buy":
            n = rng.randint(2, hi)
            value += n
            sentences.append(f"Then {name} buys {n} more {thing}.")
        elif op == "give":
            n = rng.randint(1, value - 1)
            value -= n
            sentences.append(f"Then {name} gives away {n} {thing}.")
        elif op == "pack":
            boxes, per = rng.randint(2, 3 + difficulty), rng.randint(2, 4 + 2 * difficulty)
            value += boxes * per
            sentences.append(f"Then {name} gets {boxes} boxes with {per} {thing} in each box.")
            n = [boxes, per]
        elif op == "share":
            d = rng.choice(divisors)
            value //= d
            sentences.append(f"Then {name} shares the {thing} equally among {d} friends and keeps one share.")
            n = d
        else:  # double
            value *= 2
            sentences.append(f"Then {name} doubles the number of {thing}.")
            n = 2
        steps.append([op, n])
    sentences.append(f"How many {thing} does {name} have now?")
    return " ".join(sentences), value, steps


# -- linear equations -------------------------------------------------------------------------


def _signed(coef: int, var: str = "x", first: bool = False) -> str:
    body = (f"{abs(coef)}{var}" if abs(coef) != 1 else var) if var else str(abs(coef))
    if first:
        return body if coef >= 0 else f"-{body}"
    return f"+ {body}" if coef >= 0 else f"- {body}"


def _linear(rng: random.Random, difficulty: int) -> tuple[str, str, dict]:
    span = 3 + 3 * difficulty
    while True:
        a = rng.choice([k for k in range(-span, span + 1) if k != 0])
        c = rng.randint(-span, span) if difficulty >= 2 else 0
        if a == c:
            continue
        b = rng.randint(-span * 2, span * 2)
        if difficulty <= 3:
            # An integer solution: choose x, then the d that makes a*x + b = c*x + d hold.
            x = Fraction(rng.randint(-span, span))
            d = int((a - c) * x + b)
            break
        # A fractional solution: choose d, and x = (d - b) / (a - c) must not be an integer.
        d = rng.randint(-span * 4, span * 4)
        x = Fraction(d - b, a - c)
        if x.denominator != 1:
            break
    left = f"{_signed(a, first=True)} {_signed(b, var='')}" if b else _signed(a, first=True)
    if c:
        right = f"{_signed(c, first=True)} {_signed(d, var='')}" if d else _signed(c, first=True)
    else:
        right = str(d)
    equation = f"{left} = {right}"
    answer = str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
    problem = f"Solve for x: {equation}. Give x as an integer or a fraction in lowest terms."
    return problem, answer, {"equation": equation, "a": a, "b": b, "c": c, "d": d}


# -- countdown ------------------------------------------------------------------------------


def _countdown(rng: random.Random, difficulty: int) -> tuple[str, int, dict]:
    n = min(6, 2 + difficulty) if difficulty > 1 else 3
    hi = 10 if difficulty <= 2 else 25 if difficulty <= 4 else 100
    while True:
        numbers = [rng.randint(1, hi) for _ in range(n)]
        # A random expression tree over all the numbers, in a random order.
        items: list[tuple[Fraction, str]] = [(Fraction(v), str(v)) for v in rng.sample(numbers, n)]
        while len(items) > 1:
            i, j = sorted(rng.sample(range(len(items)), 2))
            (x, ex), (y, ey) = items[i], items[j]
            options = [("+", x + y), ("*", x * y)]
            if x - y > 0:
                options.append(("-", x - y))
            if y - x > 0:
                options.append(("-r", y - x))
            if y != 0 and (x / y).denominator == 1 and y != 1:
                options.append(("/", x / y))
            op, val = rng.choice(options)
            expr = f"({ey} - {ex})" if op == "-r" else f"({ex} {op} {ey})"
            items = [it for k, it in enumerate(items) if k not in (i, j)] + [(val, expr)]
        target, witness = items[0]
        if target.denominator == 1 and 1 <= target <= 10 * hi * difficulty:
            break
    witness = witness[1:-1] if witness.startswith("(") and witness.endswith(")") else witness
    shown = ", ".join(str(v) for v in numbers)
    problem = (
        f"Using the numbers {shown}, write an arithmetic expression that equals {int(target)}. "
        "Use each number exactly once; you may use +, -, *, / and parentheses. "
        "End with the expression on a line of its own, as: Answer: <expression>"
    )
    return problem, int(target), {"numbers": numbers, "target": int(target), "solution": witness}


# -- sorting / ordering ----------------------------------------------------------------------

_WORDS = ["apple", "banana", "cherry", "delta", "ember", "falcon", "garden", "harbor", "island", "jungle", "kettle", "lemon",
          "meadow", "nectar", "orbit", "pepper", "quartz", "river", "saddle", "timber", "umbra", "velvet", "willow", "zephyr"]


def _sorting(rng: random.Random, difficulty: int) -> tuple[str, list[str], dict]:
    n = 2 + 2 * difficulty
    kind = rng.choice(["ascending", "descending", "alphabetical", "heights"] if difficulty >= 2 else ["ascending", "alphabetical"])
    if kind in ("ascending", "descending"):
        values = rng.sample(range(-10 * difficulty, 50 * difficulty), n)
        order = sorted(values, reverse=kind == "descending")
        problem = f"Sort these numbers in {kind} order: {', '.join(map(str, values))}."
        answer = [str(v) for v in order]
    elif kind == "alphabetical":
        words = rng.sample(_WORDS, n)
        problem = f"Sort these words alphabetically: {', '.join(words)}."
        answer = sorted(words)
    else:
        people = rng.sample(_NAMES, min(n, len(_NAMES)))
        # people is the true order, tallest first; the clues are the chain's neighbours, shuffled.
        clues = [f"{people[i]} is taller than {people[i + 1]}." for i in range(len(people) - 1)]
        rng.shuffle(clues)
        problem = (
            " ".join(clues) + " List everyone from tallest to shortest."
        )
        answer = people
    problem += " Give the answer as a comma-separated list, as: Answer: <list>"
    return problem, answer, {"kind": kind}


# -- the public generator -----------------------------------------------------------------------


def generate(name: str, *, count: int, difficulty: int = 2, seed: int = 0, start: int = 0) -> Iterator[dict]:
    """`count` problems rows of generator `name` (items start .. start+count-1)."""
    if name not in GENERATORS:
        raise ValueError(f"generator {name!r}: expected one of {', '.join(GENERATORS)}")
    if not 1 <= int(difficulty) <= 5:
        raise ValueError(f"difficulty {difficulty!r}: expected an integer from 1 to 5")
    if count < 0:
        raise ValueError(f"count {count!r}: expected a non-negative integer")
    for i in range(start, start + count):
        rng = _rng(name, difficulty, seed, i)
        if name == "addition":
            problem, value, extra = _addition(difficulty, seed, i)
            yield _row(name, problem, str(value), difficulty, seed, i, "math", "math", **extra)
        elif name == "arithmetic":
            problem, value, steps = _arithmetic(rng, difficulty)
            yield _row(name, problem, str(value), difficulty, seed, i, "math", "math", steps=steps)
        elif name == "linear":
            problem, answer, extra = _linear(rng, difficulty)
            yield _row(name, problem, answer, difficulty, seed, i, "math", "math", **extra)
        elif name == "countdown":
            problem, target, extra = _countdown(rng, difficulty)
            yield _row(name, problem, str(target), difficulty, seed, i, "countdown", "puzzle", **extra)
        else:
            problem, order, extra = _sorting(rng, difficulty)
            yield _row(name, problem, ", ".join(order), difficulty, seed, i, "sorting", "puzzle", **extra)


# -- checkers ---------------------------------------------------------------------------------

_EXPR_CHARS = re.compile(r"^[\d\s+\-*/().×÷x]+$")
_EXPR_RUN = re.compile(r"[\d(][\d\s+\-*/().×÷]*[\d)]")


def _answer_text(completion: str) -> str:
    return completion.rsplit("</think>", 1)[1] if "</think>" in completion else completion


def _final(completion: str) -> str | None:
    """The final answer: the math extractor's (boxed, Answer: line, ...), else the last line."""
    found = extract_answer(completion)
    if found:
        return found
    lines = [ln.strip() for ln in _answer_text(completion).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _countdown_expression(completion: str) -> str | None:
    text = _final(completion)
    if text is None:
        return None
    text = text.strip().strip("$").replace("\\times", "*").replace("\\div", "/").replace("\\cdot", "*")
    text = text.replace("×", "*").replace("÷", "/")
    text = text.split("=")[0] if text.count("=") == 1 and re.search(r"=\s*-?\d+\s*$", text) else text
    if _EXPR_CHARS.match(text):
        return text.strip()
    runs = [m.group(0).strip() for m in _EXPR_RUN.finditer(text)]
    runs = [r for r in runs if re.search(r"[+\-*/]", r)]
    return max(runs, key=len) if runs else None


def _evaluate(node: ast.AST) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an expression of + - * / and parentheses."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        (a, na), (b, nb) = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return a + b, na + nb
        if isinstance(node.op, ast.Sub):
            return a - b, na + nb
        if isinstance(node.op, ast.Mult):
            return a * b, na + nb
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a / b, na + nb
    raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:60]}")


def check_countdown(completion: str, numbers: list[int], target: int) -> Verdict:
    """pass: the answer's expression uses each given number exactly once (only + - * / and
    parentheses; no unary minus, no concatenation) and equals the target exactly."""
    expr = _countdown_expression(completion or "")
    if expr is None:
        return Verdict.unverifiable("countdown", "no expression found in the answer")
    if len(expr) > 200:
        return Verdict.failed("countdown", expr[:200], "expression too long")
    try:
        value, used = _evaluate(ast.parse(expr, mode="eval"))
    except ZeroDivisionError:
        return Verdict.failed("countdown", expr, "divides by zero")
    except (SyntaxError, ValueError) as exc:
        return Verdict.failed("countdown", expr, f"not a + - * / expression: {exc}")
    if sorted(used) != sorted(numbers):
        return Verdict.failed("countdown", expr, f"uses {sorted(used)}, expected each of {sorted(numbers)} exactly once")
    if value != target:
        return Verdict.failed("countdown", expr, f"equals {value}, expected {target}")
    return Verdict.passed("countdown", expr)


def _items(text: str) -> list[str]:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text).strip().strip("$").strip()
    text = re.sub(r"^\[|\]$", "", text)
    parts = re.split(r"\s*(?:,|;|<|>|\s+then\s+|\s*→\s*|\s*->\s*)\s*", text)
    return [p.strip().strip(".").strip().strip("'\"").lower() for p in parts if p.strip().strip(".")]


def check_sorting(completion: str, reference: str) -> Verdict:
    """pass: the answer lists exactly the reference's items in the reference's order
    (case-insensitive; separated by commas, semicolons, `<`, `>`, `->` or "then")."""
    found = _final(completion or "")
    if found is None:
        return Verdict.unverifiable("sorting", "no answer found in the completion")
    got, want = _items(found), _items(reference)
    if got == want:
        return Verdict.passed("sorting", found)
    if sorted(got) != sorted(want):
        return Verdict.failed("sorting", found, f"lists {len(got)} item(s) that are not the {len(want)} given ones")
    return Verdict.failed("sorting", found, "the items are in the wrong order")


def check_math(completion: str, reference: str) -> Verdict:
    return verify_math(completion or "", reference)


CHECKERS: dict[str, Callable[[str, dict], Verdict]] = {
    "math": lambda completion, problem: check_math(completion, problem.get("reference_answer") or ""),
    "countdown": lambda completion, problem: check_countdown(
        completion, _meta(problem)["numbers"], int(_meta(problem)["target"])
    ),
    "sorting": lambda completion, problem: check_sorting(completion, problem.get("reference_answer") or ""),
}


def _meta(problem: dict) -> dict:
    meta = problem.get("metadata")
    return json.loads(meta) if isinstance(meta, str) else dict(meta or {})
