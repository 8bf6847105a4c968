"""Decontamination against the shipped benchmarks: lightly edited copies are flagged with the
right benchmark item, fresh problems are not, responses that quote a benchmark are flagged."""

import json

import pyarrow as pa
import pytest

from factory import decontaminate as dc
from factory.benchmarks import load
from storage.errors import BadInput
from tests.data import GSM8K_TRAIN


def by_id(name, item_id):
    return next(it for it in load(name) if it["id"] == item_id)


def check(texts, benchmarks=None, **kw):
    return dc.decontaminate_records([{"text": t} for t in texts], "text", benchmarks, **kw)


FRESH = [
    "A baker fills 7 trays with 23 croissants each and sells all but 19 of them before noon. "
    "How many croissants are left for the afternoon if she bakes 40 more at lunch?",
    "Let $f(x) = 3x^3 - 7x + 11$. Find the remainder when $f(x^2)$ is divided by $x^2 + x + 1$.",
    "How many ordered triples $(a, b, c)$ of positive integers satisfy $a + 2b + 3c = 101$ and $a \\le b$?",
    "Write a Python function that returns the longest run of equal adjacent characters in a string, together with the character.",
    "Two trains leave stations 350 km apart at 9:00, one at 80 km/h and the other at 95 km/h, heading toward each other. At what time do they meet?",
    "Find all real $x$ such that $\\sqrt{x + 14} - \\sqrt{x - 7} = 3$.",
]


def test_normalisation_keeps_numbers_and_drops_formatting():
    assert dc.normalise_words("Karla drove  12,000 miles; $\\dfrac{1}{2}$ of them\\left(fast\\right).") == [
        "karla", "drove", "12000", "miles", "frac", "1", "2", "of", "them", "fast"]
    assert dc.normalise_words("Drove 12000 MILES") == ["drove", "12000", "miles"]


def test_a_math500_problem_with_light_edits_is_flagged_with_its_item():
    item = by_id("math500", "test/prealgebra/2037.json")
    assert "12,000 miles" in item["problem"]
    edited = (
        "Solve: " + item["problem"]
        .replace("12,000", "12000")  # number formatting
        .replace("fuel-efficient", "fuel efficient")  # punctuation
        .replace("vehicle", "car")  # a word swapped
        .replace(" last year.", "  last year ;")  # whitespace and punctuation
    )
    row, = check([edited])
    assert row["contaminated"] and row["match_method"] == "ngram"
    assert (row["benchmark"], row["benchmark_id"]) == ("math500", "test/prealgebra/2037.json")
    assert 0.5 <= row["score"] < 1.0
    assert "hybrid car averaging 48 miles per gallon" in row["matched"]
    assert row["contamination"][0]["part"] == "text"


def test_fresh_problems_are_not_flagged():
    rows = check(FRESH)
    assert [r["contaminated"] for r in rows] == [False] * len(FRESH), [r["contamination"] for r in rows]
    assert all(r["benchmark"] is None and r["score"] == 0.0 and r["contamination"] == [] for r in rows)


def test_a_lightly_paraphrased_gsm8k_test_problem_is_flagged():
    item = load("gsm8k")[0]
    para = (item["problem"].replace("Janet\u2019s", "Janet's").replace("every morning", "each morning")
            .replace("$2", "2 dollars"))
    row, = check([para], ["gsm8k", "math500"])
    assert (row["benchmark"], row["benchmark_id"], row["match_method"]) == ("gsm8k", "0", "ngram")


def test_a_short_aime_problem_copied_exactly_is_flagged():
    item = load("aime2025")[0]  # 19 words
    row, = check(["  " + item["problem"].upper() + "  "])
    assert (row["benchmark"], row["benchmark_id"], row["match_method"], row["score"]) == ("aime2025", "0", "exact", 1.0)


def test_a_very_short_problem_with_a_word_added_is_found_by_minhash():
    # 7 words: under the whole-gram minimum (8), so only MinHash can see it; J = 3/4.
    row, = check(["Factor the expression $ab+5b+2a+10$ completely."], ["math500"])
    assert (row["benchmark_id"], row["match_method"]) == ("test/intermediate_algebra/431.json", "minhash")
    assert row["score"] >= 0.7
    row, = check(["Factor the expression $ab+5b+2a+10$ completely."], ["math500"], minhash_threshold=None)
    assert not row["contaminated"]


def test_a_short_item_contained_in_a_longer_problem_is_flagged():
    short = next(it for it in load("mbpp") if len(dc.normalise_words(it["problem"])) == 10)
    row, = check(["Please solve this task carefully. " + short["problem"] + " Use recursion."], ["mbpp"])
    assert (row["benchmark"], row["benchmark_id"], row["score"]) == ("mbpp", short["id"], 1.0)


def test_a_response_quoting_a_humaneval_prompt_is_flagged():
    prompt = by_id("humaneval", "HumanEval/10")["problem"]
    response = (
        "<think>The task is this:\n" + prompt + "\nSo I reverse the prefix before the palindromic suffix.</think>"
        "```python\ndef make_palindrome(string):\n    return string\n```"
    )
    clean = "<think>Two plus two is four, as counting on fingers confirms.</think>The answer is 4."
    rows = check([response, clean], ["humaneval", "mbpp"], kind="response")
    assert (rows[0]["benchmark"], rows[0]["benchmark_id"], rows[0]["contamination"][0]["part"]) == ("humaneval", "HumanEval/10", "reasoning")
    assert rows[0]["score"] > 0.9
    assert not rows[1]["contaminated"]


def test_a_response_restating_a_benchmark_problem_after_think_is_flagged():
    item = load("math500")[100]
    rows = check(["<think>hmm</think>Problem: " + item["problem"] + " Answer: \\boxed{" + item["answer"] + "}"],
                 ["math500"], kind="response")
    assert (rows[0]["benchmark_id"], rows[0]["contamination"][0]["part"]) == (item["id"], "answer")


def test_summary_counts_per_benchmark():
    gsm = load("gsm8k")[5]["problem"]
    m5 = load("math500")[7]["problem"]
    rows = check([gsm, m5, FRESH[0], FRESH[1], None], ["gsm8k", "math500", "aime2024"])
    s = dc.summary(rows, ["gsm8k", "math500", "aime2024"])
    assert (s["rows"], s["contaminated"]) == (5, 2)
    assert s["benchmarks"]["gsm8k"] == {"hits": 1, "rows_checked": 5, "share": 0.2}
    assert s["benchmarks"]["math500"]["hits"] == 1
    assert s["benchmarks"]["aime2024"]["hits"] == 0
    assert rows[4]["contaminated"] is False and rows[4]["text"] is None  # a null text is clean, kept
    assert json.loads(dc.contamination_labels(rows[0])[0])["benchmark"] == "gsm8k"


def test_bad_options_are_bad_input():
    with pytest.raises(BadInput, match="known"):
        check(["x"], ["math5000"])
    with pytest.raises(BadInput, match="column 'problem'"):
        dc.decontaminate_records([{"text": "x"}], "problem")
    with pytest.raises(BadInput, match="kind"):
        check(["x"], kind="trace")


def test_the_lake_stage_returns_hits_without_writing():
    item = load("math500")[3]

    class FakeLake:
        def query(self, sql, params):
            assert "FROM problems WHERE run_id = ?" in sql and params == ["run-1"]
            return pa.table({"problem_id": ["p1", "p2"], "problem": [item["problem"], FRESH[2]]})

    rows = dc.decontaminate_lake(FakeLake(), "run-1", benchmarks="math500")
    assert [r["problem_id"] for r in rows] == ["p1", "p2"]
    assert [r["contaminated"] for r in rows] == [True, False]
    assert "problem" not in rows[0]


def test_gsm8k_train_problems_are_mostly_not_flagged_against_gsm8k_test():
    sample = GSM8K_TRAIN.read_text().splitlines()  # the first 400 train problems
    rows = check([json.loads(line)["question"] for line in sample], ["gsm8k"])
    rate = sum(r["contaminated"] for r in rows) / len(rows)
    # Measured: 1/400 (0.25%) here, row 20; 4 of all 7,473 train problems (0.05%: rows 20, 406,
    # 1314, 5162) share a 13-gram with a test problem, and those are real near-copies (GSM8K's own
    # train/test overlap).
    assert rate <= 0.02, f"false-positive rate {rate:.1%}"
    strict = check([json.loads(line)["question"] for line in sample], ["gsm8k"], min_score=0.5)
    assert sum(r["contaminated"] for r in strict) <= sum(r["contaminated"] for r in rows)


def test_ten_thousand_problems_are_checked_in_seconds():
    import time

    items = [it["problem"] for it in load("gsm8k")] + FRESH * 1400
    dc.index_for()  # built once per process (cached)
    t0 = time.perf_counter()
    rows = check(items[:10_000])
    elapsed = time.perf_counter() - t0
    assert sum(r["contaminated"] for r in rows) == 1319
    assert elapsed < 15, f"{elapsed:.1f}s for 10,000 problems"
