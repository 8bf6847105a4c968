import asyncio
import os
import time

import pytest

from factory.teachers.base import Completion, TeacherError
from factory.verifiers.answers import (
    extract_final,
    regex_worker_pids,
    verify_choice,
    verify_exact,
    verify_regex,
    verify_regex_batch,
    verify_with_judge,
)


def test_extract_final_prefers_boxed_then_answer_lines_and_ignores_reasoning():
    assert extract_final("<think>maybe \\boxed{3}</think>So \\boxed{\\frac{1}{2}} it is") == "\\frac{1}{2}"
    assert extract_final("<think>the answer is 7</think>Final answer: 9.") == "9"
    assert extract_final("line one\nParis") == "Paris"
    assert extract_final("<think>only thoughts</think>   ") is None


def test_exact():
    assert verify_exact("<think>x</think>The answer is **Paris**.", "paris").status == "pass"
    v = verify_exact("<think>x</think>The answer is Lyon", "Paris")
    assert (v.status, v.score, v.extracted_answer) == ("fail", 0.0, "Lyon")
    assert verify_exact("<think>x</think>", "Paris").status == "unverifiable"
    assert verify_exact("Paris", "").status == "unverifiable"


def test_choice():
    assert verify_choice("<think>A looks wrong, maybe B</think>The answer is (C).", "C").status == "pass"
    v = verify_choice("<think>...</think>Answer: B", "(d)")
    assert (v.status, v.extracted_answer) == ("fail", "B")
    assert verify_choice("<think>...</think>Answer: none", "D").status == "unverifiable"
    assert verify_choice("x", "Z").status == "unverifiable"


def test_regex():
    assert verify_regex("Answer: 2024-11", r"\d{4}-\d{2}").status == "pass"
    assert verify_regex("Answer: 2024-11-01", r"\d{4}-\d{2}").status == "fail"
    assert verify_regex("Answer: x", r"(").status == "unverifiable"


def _reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_regex_timeout_holds_on_catastrophic_backtracking():
    assert verify_regex("Answer: ok", "ok").status == "pass"  # a worker is up
    before = set(regex_worker_pids())
    t0 = time.monotonic()
    v = verify_regex("Answer: " + "a" * 40 + "b", r"(a+)+$", timeout_s=2)  # ~2^40 steps in `re`
    took = time.monotonic() - t0
    assert (v.status, v.detail, v.score) == ("unverifiable", "timeout", None)
    assert "2s" in v.reason and v.extracted_answer == "a" * 40 + "b"
    assert 1.9 <= took < 10, took
    killed = before - set(regex_worker_pids())
    assert killed and all(_reaped(p) for p in killed)  # killed and waited for, not a zombie
    assert verify_regex("Answer: 12:30", r"\d\d:\d\d").status == "pass"  # a fresh worker answers


def test_regex_batch_keeps_order_and_costs_a_hostile_row_only_its_timeout():
    hostile = ("Answer: " + "a" * 40 + "b", r"(a+)+$")
    pairs = [hostile, ("Answer: 7", r"\d"), hostile, ("Answer: x", r"\d"), ("Answer: x", "(")]
    t0 = time.monotonic()
    got = verify_regex_batch(pairs, timeout_s=1)
    assert [v.status for v in got] == ["unverifiable", "pass", "unverifiable", "fail", "unverifiable"]
    assert [v.detail for v in got] == ["timeout", None, "timeout", None, None]
    assert "bad pattern" in got[4].reason
    assert time.monotonic() - t0 < 2 * 1.0 + 8  # two timeouts at most, with room for a busy machine


N = 200_000
HOSTILE = [
    "\\boxed{" * (N // 7),
    "Answer: " + "\\text{" * (N // 6),  # `_norm` scanned from every unclosed \text{ to the end
    "answer is " * (N // 10),
    "(A) " * (N // 4),
    " " * N + "x",
    "{" * N,
]


@pytest.mark.parametrize("i", range(len(HOSTILE)))
def test_hostile_completions_are_read_in_linear_time(i):
    text = HOSTILE[i]
    for check in (extract_final, lambda t: verify_exact(t, "Paris"), lambda t: verify_choice(t, "C")):
        t0 = time.perf_counter()
        check(text)
        assert time.perf_counter() - t0 < 2.0


class Judge:
    def __init__(self, text=None, error=None):
        self.text, self.error, self.prompts = text, error, []

    async def generate(self, group):
        self.prompts.append(group.messages[0]["content"])
        if self.error:
            raise self.error
        return [Completion(0, self.text, "stop")]


@pytest.mark.parametrize(
    "judge,status",
    [
        (Judge("<think>same city</think>VERDICT: CORRECT"), "pass"),
        (Judge("VERDICT: INCORRECT"), "fail"),
        (Judge("I think so"), "unverifiable"),
        (Judge(error=TeacherError("500", retryable=True)), "error"),
    ],
)
def test_judge_through_a_teacher(judge, status):
    v = asyncio.run(verify_with_judge("<think>hmm</think>Paris, France", "Paris", judge, question="Capital of France?"))
    assert v.status == status
    assert v.score is None if status in ("unverifiable", "error") else v.score in (0.0, 1.0)
    assert "Reference answer: Paris" in judge.prompts[0] and "hmm" not in judge.prompts[0]
