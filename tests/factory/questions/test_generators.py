"""Procedural generators: every answer re-derived here by an independent computation from the
problem TEXT (parsed with this file's own rules, or solved with sympy / brute force), the
difficulty knob, reproducibility by seed, and the checkers' verdicts."""

import itertools
import json
import re
from fractions import Fraction

import pytest

from factory.questions import check_sample
from factory.questions.generators import (
    GENERATORS,
    check_countdown,
    check_sorting,
    generate,
)
from factory.records import problem_id

N = 60  # problems per generator and difficulty checked


def meta(row):
    return json.loads(row["metadata"])


# -- addition: parse the two numbers and add them --------------------------------------------

@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_addition_sums_and_sizes(difficulty):
    # digits of (a, b): the knob makes both longer
    digits = {1: ((1, 1), (1, 1)), 2: ((2, 2), (1, 1)), 3: ((2, 2), (2, 2)), 4: ((3, 3), (2, 3)), 5: ((4, 4), (3, 4))}[difficulty]
    for r in generate("addition", count=N, difficulty=difficulty, seed=9):
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", r["problem"]).groups())
        assert int(r["reference_answer"]) == a + b and meta(r)["verifier"] == "math"
        assert digits[0][0] <= len(str(a)) <= digits[0][1] and digits[1][0] <= len(str(b)) <= digits[1][1] and a * b > 0
        assert check_sample(r, {"completion": f"{a} plus {b} is {a + b}, so the answer is {a + b}."}).status == "pass"
        assert check_sample(r, {"completion": f"{a} + {b} = {a + b}"}).status != "pass"  # no answer stated


def test_one_digit_additions_do_not_repeat_until_all_81_are_used():
    rows = list(generate("addition", count=81, difficulty=1, seed=3))
    assert len({r["problem"] for r in rows}) == 81
    assert rows[:5] != list(generate("addition", count=5, difficulty=1, seed=4))  # the seed picks the order
    assert list(generate("addition", count=3, difficulty=1, seed=3, start=81)) == [
        {**a, "metadata": a["metadata"].replace(f'"index": {i}', f'"index": {i + 81}')} for i, a in enumerate(rows[:3])
    ]


# -- arithmetic: replay the story sentence by sentence --------------------------------------

def replay_story(text: str) -> int:
    sentences = re.split(r"(?<=[.?])\s+", text)
    value = int(re.match(r"\w+ has (\d+) \w+\.", sentences[0]).group(1))
    for s in sentences[1:-1]:
        if m := re.search(r"buys (\d+) more", s):
            value += int(m.group(1))
        elif m := re.search(r"gives away (\d+)", s):
            value -= int(m.group(1))
        elif m := re.search(r"gets (\d+) boxes with (\d+)", s):
            value += int(m.group(1)) * int(m.group(2))
        elif m := re.search(r"equally among (\d+) friends and keeps one share", s):
            d = int(m.group(1))
            assert value % d == 0, f"an uneven share in {text!r}"
            value //= d
        elif "doubles" in s:
            value *= 2
        else:
            raise AssertionError(f"unknown step {s!r}")
        assert value >= 0
    assert sentences[-1].startswith("How many")
    return value


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_arithmetic_answers_replay(difficulty):
    rows = list(generate("arithmetic", count=N, difficulty=difficulty, seed=11))
    for r in rows:
        assert int(r["reference_answer"]) == replay_story(r["problem"])
        assert len(re.findall(r"Then ", r["problem"])) == 1 + difficulty  # the knob: steps
        assert meta(r)["verifier"] == "math" and r["problem_id"] == problem_id(r["problem"])


# -- linear equations: solve with sympy ---------------------------------------------------

@pytest.mark.parametrize("difficulty", [1, 2, 4, 5])
def test_linear_solutions_by_sympy(difficulty):
    sympy = pytest.importorskip("sympy")
    x = sympy.Symbol("x")
    fractions = 0
    for r in generate("linear", count=N, difficulty=difficulty, seed=5):
        eq = re.match(r"Solve for x: (.+?)\. Give", r["problem"]).group(1)
        left, right = (sympy.sympify(re.sub(r"(\d)x", r"\1*x", side)) for side in eq.split("="))
        solutions = sympy.solve(sympy.Eq(left, right), x)
        assert len(solutions) == 1
        assert Fraction(r["reference_answer"]) == Fraction(str(solutions[0]))
        fractions += "/" in r["reference_answer"]
    assert (fractions == 0) if difficulty <= 3 else (fractions == N)


# -- countdown: brute force that a solution exists; the witness checks -------------------

def reachable(numbers: list[int], target: int) -> bool:
    """All values of expressions using each number exactly once (exhaustive, exact)."""
    def values(nums: tuple[Fraction, ...]) -> set[Fraction]:
        if len(nums) == 1:
            return {nums[0]}
        out = set()
        for k in range(1, len(nums)):
            for left in itertools.combinations(range(len(nums)), k):
                a = tuple(nums[i] for i in left)
                b = tuple(nums[i] for i in range(len(nums)) if i not in left)
                for u in values(a):
                    for v in values(b):
                        out |= {u + v, u - v, u * v}
                        if v:
                            out.add(u / v)
        return out
    return Fraction(target) in values(tuple(Fraction(n) for n in numbers))


@pytest.mark.parametrize("difficulty", [1, 2])
def test_countdown_targets_are_reachable(difficulty):
    for r in generate("countdown", count=20, difficulty=difficulty, seed=2):
        nums = [int(v) for v in re.search(r"Using the numbers ([\d, ]+), write", r["problem"]).group(1).split(", ")]
        target = int(re.search(r"that equals (\d+)\.", r["problem"]).group(1))
        assert str(target) == r["reference_answer"] and nums == meta(r)["numbers"]
        assert reachable(nums, target)


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_countdown_witness_passes_and_perturbations_fail(difficulty):
    for r in generate("countdown", count=N, difficulty=difficulty, seed=9):
        m = meta(r)
        # independent: Python's own evaluator and the literals of the witness
        assert eval(m["solution"], {"__builtins__": {}}) == m["target"]
        assert sorted(int(t) for t in re.findall(r"\d+", m["solution"])) == sorted(m["numbers"])
        assert len(m["numbers"]) == min(6, 2 + difficulty) if difficulty > 1 else len(m["numbers"]) == 3
        assert check_sample(r, {"completion": f"<think>try</think>Answer: {m['solution']}"}).status == "pass"
        assert check_countdown(f"Answer: {m['solution']} + 1 - 1", m["numbers"], m["target"]).status == "fail"  # extra numbers
        assert check_countdown(f"Answer: ({m['solution']}) * 2", m["numbers"], m["target"]).status == "fail"


def test_countdown_checker_cases():
    nums, target = [25, 5, 4, 3], 83
    assert check_countdown("Answer: (25 - 5) * 4 + 3", nums, target).status == "pass"
    assert check_countdown(r"so $\boxed{(25-5)\times 4+3}$", nums, target).status == "pass"
    assert check_countdown("(25 - 5) * 4 + 3 = 83", nums, target).status == "pass"
    assert check_countdown("Answer: 25 * 4 - 5 * 3 - 2", nums, target).reason.startswith("uses")
    assert check_countdown("Answer: (25 - 5) * 3 + 4", nums, target).reason == "equals 64, expected 83"
    assert check_countdown("Answer: 25 / (5 - 5) + 4 + 3", [25, 5, 5, 4, 3], 1).reason == "divides by zero"
    assert check_countdown("Answer: 2**5 + 3", [2, 5, 3], 35).status == "fail"  # no powers
    assert check_countdown("I cannot find one.", nums, target).status == "unverifiable"


# -- sorting: sort / topologically order the parsed items ----------------------------------

def order_from_text(text: str) -> list[str]:
    if m := re.match(r"Sort these numbers in (ascending|descending) order: ([-\d, ]+)\.", text):
        return [str(v) for v in sorted(map(int, m.group(2).split(", ")), reverse=m.group(1) == "descending")]
    if m := re.match(r"Sort these words alphabetically: ([a-z, ]+)\.", text):
        return sorted(m.group(1).split(", "))
    pairs = re.findall(r"(\w+) is taller than (\w+)\.", text)
    people = {p for pair in pairs for p in pair}
    order = []
    while people:  # Kahn's algorithm: the one nobody is taller than goes next
        top = [p for p in people if not any(b == p and a in people for a, b in pairs)]
        assert len(top) == 1, "the clues must give one order"
        order.append(top[0])
        people.remove(top[0])
    return order


@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_sorting_orders_are_recomputed(difficulty):
    kinds = set()
    for r in generate("sorting", count=N, difficulty=difficulty, seed=4):
        want = order_from_text(r["problem"])
        assert r["reference_answer"] == ", ".join(want) and len(want) == 2 + 2 * difficulty
        assert check_sample(r, {"completion": "Answer: " + " < ".join(want)}).status == "pass"
        assert check_sorting("Answer: " + ", ".join(want[::-1]), r["reference_answer"]).reason == "the items are in the wrong order"
        kinds.add(meta(r)["kind"])
    assert len(kinds) >= 2


# -- reproducibility and the contract ------------------------------------------------------

@pytest.mark.parametrize("name", GENERATORS)
def test_reproducible_by_seed(name):
    a = list(generate(name, count=30, difficulty=3, seed=1))
    assert a == list(generate(name, count=30, difficulty=3, seed=1))
    assert list(generate(name, count=10, difficulty=3, seed=1, start=20)) == a[20:]  # item i does not depend on count
    b = list(generate(name, count=30, difficulty=3, seed=2))
    assert len({r["problem_id"] for r in a} & {r["problem_id"] for r in b}) < 5
    assert len({r["problem_id"] for r in a}) >= 25  # few repeats within a set
    assert all(meta(r)["verifier"] in ("math", "countdown", "sorting") for r in a)


def test_bad_generator_arguments():
    with pytest.raises(ValueError, match="expected one of addition, arithmetic"):
        list(generate("sudoku", count=1))
    with pytest.raises(ValueError, match="difficulty 6: expected an integer from 1 to 5"):
        list(generate("linear", count=1, difficulty=6))


def test_check_sample_dispatch_and_edges():
    row = next(generate("arithmetic", count=1, difficulty=2, seed=3))
    gold = row["reference_answer"]
    assert check_sample(row, {"completion": f"... so the answer is {gold}."}).status == "pass"
    assert check_sample(row, {"reasoning": "work", "answer": f"Answer: {int(gold) + 1}"}).status == "fail"
    assert check_sample(row, {"completion": "no idea"}).status == "unverifiable"
    assert check_sample({**row, "metadata": json.dumps({"verifier": "tarot"})}, {"completion": "x"}).reason.startswith("unknown verifier")
    assert check_sample({**row, "metadata": "{broken"}, {"completion": "x"}).status == "error"
    cd = next(generate("countdown", count=1, seed=3))
    assert check_sample({**cd, "metadata": json.dumps({"verifier": "countdown"})}, {"completion": "Answer: 1+2"}).status == "error"
