"""Majority-vote labels (ties, too few votes, equal forms), the gold audit on planted wrong golds
over REAL model solutions (GPT-3 on GSM8K, four per problem), pass rates and the band selection
through a lake."""

import json

import pytest

from factory.questions import iter_problems, parse_source
from factory.questions.labels import (
    audit_gold,
    label_lake,
    label_rows,
    majority_vote,
    pass_counts,
    sample_answer,
    select_by_pass_rate,
    write_labels,
)
from storage import Lake
from tests.data import GSM8K_TEST, LABELLED

MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def test_majority_with_agreement():
    v = majority_vote(["18", "18", "17", "18"], min_votes=3, min_agreement=0.6)
    assert (v.label, v.confidence, v.votes, v.reason) == ("18", 0.75, 4, "majority")
    assert v.counts == {"18": 3, "17": 1}


def test_equal_values_vote_together():
    v = majority_vote(["18", "18.0", "$18", "1,8", None, r"\frac{36}{2}"], min_votes=3)
    # 18, 18.0, $18 and 36/2 are one number; "1,8" is no thousands form, so another answer
    assert v.label == "18" and v.votes == 5 and v.confidence == pytest.approx(4 / 5) and v.n_samples == 6
    w = majority_vote([r"\frac{1}{2}", "0.5", "1/2", r"\dfrac{1}{2}", "x"], min_votes=3)
    assert w.votes == 5 and w.confidence == pytest.approx(0.8)


def test_ties_give_no_label():
    v = majority_vote(["3", "4", "3", "4"], min_votes=2)
    assert v.label is None and v.reason == "tie" and v.confidence == 0.5 and v.top in ("3", "4")
    assert majority_vote(["a", "b", "c"], min_votes=3, min_agreement=0.3).reason == "tie"


def test_too_few_votes_give_no_label():
    v = majority_vote(["7", "7", None, None, ""], min_votes=3)
    assert v.label is None and v.reason == "too few votes" and v.votes == 2 and v.n_samples == 5 and v.top == "7"
    assert majority_vote([], min_votes=1).reason == "too few votes"


def test_low_agreement_gives_no_label():
    v = majority_vote(["1", "1", "2", "3", "4"], min_votes=3, min_agreement=0.6)
    assert v.label is None and v.reason == "no agreement" and v.confidence == pytest.approx(0.4)
    assert majority_vote(["1", "1", "2", "3", "4"], min_votes=3, min_agreement=0.4).label == "1"
    with pytest.raises(ValueError, match="min_agreement"):
        majority_vote(["1"], min_agreement=0)


def test_audit_needs_a_strong_majority():
    strong = majority_vote(["5"] * 9 + ["6"], min_votes=3)
    assert audit_gold("6", strong) is True and audit_gold("5", strong) is False and audit_gold("5.0", strong) is False
    weak = majority_vote(["5"] * 6 + ["6"] * 4, min_votes=3)
    assert audit_gold("6", weak) is None  # 0.6 is a majority, not a strong one
    assert audit_gold(None, strong) is None
    symbolic = majority_vote([r"\frac{\sqrt{2}}{2}"] * 5, min_votes=3)
    assert audit_gold(r"\frac{1}{\sqrt{2}}", symbolic) is False  # equal by math-verify, not by form


def test_gold_audit_finds_planted_wrong_golds_in_real_solutions():
    seeds = list(iter_problems(parse_source({"source": "jsonl", "path": GSM8K_TEST.name, "limit": 400,
                                             "fields": {"problem": "question", "answer": "answer"}}), base_dir=GSM8K_TEST.parent))
    by_question = {}
    with open(LABELLED, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            by_question[rec["question"]] = rec
    problems, samples, all_right = [], [], []
    for p in seeds:
        rec = by_question[p["problem"]]
        for m in MODELS:
            samples.append({"sample_id": f"{p['problem_id']}:{m}", "problem_id": p["problem_id"], "completion": rec[m]["solution"]})
        if all(rec[m]["is_correct"] for m in MODELS):
            all_right.append(p["problem_id"])
        problems.append(p)
    assert len(all_right) >= 20, "the data should have problems that all four models solved"
    planted = set(all_right[::2])
    for p in problems:
        if p["problem_id"] in planted:
            p["reference_answer"] = str(int(p["reference_answer"]) + 7)  # a wrong gold
    rows = {r["problem_id"]: r for r in label_rows(problems, samples, min_votes=3, strong=0.75)}
    flagged = {pid for pid, r in rows.items() if r["gold_disagrees"]}
    assert planted <= flagged  # every planted wrong gold is found
    assert not flagged & (set(all_right) - planted)  # no right gold among the all-solved is accused
    # what else is flagged: the four models agree on one wrong answer against a right gold
    for pid in flagged - planted:
        assert rows[pid]["confidence"] >= 0.75 and rows[pid]["majority_answer"] != rows[pid]["label"]
    assert rows[next(iter(planted))]["method"] == "gold"


def test_sample_answers_and_pass_counts():
    assert sample_answer({"completion": "<think>2+2</think>The answer is 4."}) == "4"
    assert sample_answer({"completion": "it is 1,204 apples"}) is None
    assert sample_answer({"completion": "it is 1,204 apples"}, last_number=True) == "1204"
    verdicts = [
        {"sample_id": "a", "status": "pass"}, {"sample_id": "a", "status": "pass"},
        {"sample_id": "b", "status": "pass"}, {"sample_id": "b", "status": "fail"},
        {"sample_id": "c", "status": "unverifiable"},
    ]
    assert pass_counts(["a", "b", "c", "d"], verdicts) == (4, 1)  # d has no verdict: not passed


def test_labels_through_the_lake_and_the_pass_rate_band(tmp_path):
    problems = [
        {"problem_id": "easy", "problem": "1+1?", "reference_answer": "2"},
        {"problem_id": "mid", "problem": "12*12?", "reference_answer": "144"},
        {"problem_id": "hard", "problem": "13^13?", "reference_answer": "302875106592253"},
        {"problem_id": "nogold", "problem": "A new one?", "reference_answer": None},
        {"problem_id": "split", "problem": "Another?", "reference_answer": None},
    ]
    answers = {"easy": ["2", "2", "2", "2"], "mid": ["144", "144", "140", "12"], "hard": ["1", "2", "3", "4"],
               "nogold": ["9", "9", "9", "8"], "split": ["1", "1", "2", "2"]}
    samples, verdicts = [], []
    for pid, said in answers.items():
        gold = next(p["reference_answer"] for p in problems if p["problem_id"] == pid)
        for i, a in enumerate(said):
            sid = f"{pid}-{i}"
            samples.append({"sample_id": sid, "problem_id": pid, "completion": f"Answer: {a}", "run_id": "r"})
            if gold:
                verdicts.append({"sample_id": sid, "check": "math", "status": "pass" if a == gold else "fail",
                                 "extracted_answer": a, "run_id": "r"})
    with Lake.open(str(tmp_path / "store")) as lake:
        lake.commit("problems", problems, batch_key="p", run_id="r")
        lake.commit("samples", samples, batch_key="s", run_id="r")
        lake.commit("verdicts", verdicts, batch_key="v", run_id="r")
        rows = {r["problem_id"]: r for r in label_lake(lake, run_id="label-1", answer_check=None, min_votes=3)}
        assert rows["easy"]["pass_rate"] == 1.0 and rows["mid"]["pass_rate"] == 0.5 and rows["hard"]["pass_rate"] == 0.0
        assert (rows["nogold"]["method"], rows["nogold"]["label"], rows["nogold"]["confidence"]) == ("majority", "9", 0.75)
        assert rows["split"]["method"] == "none" and rows["split"]["label"] is None
        assert rows["nogold"]["pass_rate"] == 0.0  # no verdicts yet: nothing passed
        assert rows["mid"]["gold_disagrees"] is None  # 0.5 is no strong majority
        band = select_by_pass_rate(lake, 0.0, 1.0).to_pylist()
        assert [r["problem_id"] for r in band] == ["mid"] and band[0]["problem"] == "12*12?"
        assert {r["problem_id"] for r in select_by_pass_rate(lake, 0.0, 1.0, inclusive=True).to_pylist()} == set(answers)
        # a newer labelling pass wins: "hard" is now half solved
        newer = [dict(rows["hard"], n_passed=2, pass_rate=0.5)]
        assert write_labels(lake, newer, run_id="label-2") == 1
        assert write_labels(lake, newer, run_id="label-2") == 0  # exactly once
        assert [r["problem_id"] for r in select_by_pass_rate(lake, 0.0, 1.0).to_pylist()] == ["hard", "mid"]
        assert lake.query("SELECT count(*) AS n FROM labels").column("n")[0].as_py() == 6
    with pytest.raises(ValueError, match="band"):
        select_by_pass_rate(None, 0.8, 0.2)
