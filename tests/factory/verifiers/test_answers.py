import asyncio

import pytest

from factory.teachers.base import Completion, TeacherError
from factory.verifiers.answers import extract_final, verify_choice, verify_exact, verify_regex, verify_with_judge


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
