"""The preview's projection: hand-computed totals and intervals, Wilson's interval against its
textbook values, the intervals' coverage on simulated populations, and the choice of problems."""

import math
import random

import pytest

from factory.preview import preview_problems, project, stratified_total, t95, wilson


def test_stratified_total_by_hand():
    # One source of 10 problems, 2 previewed with 2 and 4: mean 3, total 30; s^2 = 2,
    # variance 10^2 * (1 - 2/10) * 2 / 2 = 80; t at 1 degree of freedom = 12.706.
    est = stratified_total({"a": [2.0, 4.0]}, {"a": 10})
    assert est["value"] == pytest.approx(30.0)
    assert est["high"] == pytest.approx(30 + 12.706 * math.sqrt(80))
    assert est["low"] == 0.0  # clipped: a total is never negative
    # Two sources: totals add, variances add, the fewest degrees of freedom decide t.
    est = stratified_total({"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0]}, {"a": 6, "b": 5})
    var = 36 * (1 - 3 / 6) * 4 / 3 + 0.0
    assert est["value"] == pytest.approx(6 * 4 + 5 * 1)
    assert est["high"] - est["value"] == pytest.approx(t95(1) * math.sqrt(var))


def test_a_preview_of_everything_is_exact_and_one_problem_gives_no_interval():
    assert stratified_total({"a": [1.0, 5.0, 9.0]}, {"a": 3}) == {"value": 15.0, "low": 15.0, "high": 15.0}
    assert stratified_total({"a": [7.0]}, {"a": 3}) == {"value": 21.0, "low": None, "high": None}
    assert stratified_total({"a": [7.0, 7.0]}, {"a": 3, "b": 4})["value"] is None  # a source never previewed


def test_wilson_matches_textbook_values():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson(0, 4)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 7.8415, abs=1e-4)  # z^2 / (n + z^2)
    assert wilson(0, 0) == (0.0, 1.0)


def test_the_total_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    population = [rng.lognormvariate(5, 0.5) for _ in range(400)]  # skewed, like completion tokens
    truth = sum(population)
    hits = 0
    for _ in range(1000):
        est = stratified_total({"a": rng.sample(population, 30)}, {"a": len(population)})
        hits += est["low"] <= truth <= est["high"]
    assert 0.91 <= hits / 1000 <= 0.98


def test_project_by_hand():
    measured = [
        {"problem_id": "p1", "source": "a", "requests": 2, "samples": 2, "prompt_tokens": 8, "completion_tokens": 10, "cost_usd": 0.1},
        {"problem_id": "p2", "source": "a", "requests": 2, "samples": 2, "prompt_tokens": 8, "completion_tokens": 20, "cost_usd": 0.2},
    ]
    p = project(measured, {"a": 4}, {"a": 2}, send_s=2.0, verify_s=1.0, fixed_s=1.0, sent_completion_tokens=30)
    t = p["totals"]
    assert (t["requests"]["value"], t["requests"]["low"], t["requests"]["high"]) == (8, 8, 8)  # no variance: exact
    assert t["completion_tokens"]["value"] == pytest.approx(60) and t["completion_tokens"]["rest"] == pytest.approx(30)
    assert t["cost_usd"]["value"] == pytest.approx(0.6)
    # Yield 2 of 4 samples; 8 samples projected, 4 to come: 2 + 4 * 0.5 accepted.
    lo, hi = wilson(2, 4)
    assert t["accepted"]["value"] == pytest.approx(4) and t["accepted"]["low"] == pytest.approx(2 + 4 * lo)
    assert t["accepted"]["high"] == pytest.approx(2 + 4 * hi) and p["by_source"]["a"]["yield"] == 0.5
    # 3 busy seconds for 30 generated tokens: the 30 to come take 3 s, plus the 1 s fixed cost.
    assert t["wall_s"]["rest"] == pytest.approx(4.0) and t["wall_s"]["value"] == pytest.approx(8.0)
    none_sent = project(measured, {"a": 4}, {"a": 2}, sent_completion_tokens=0)
    assert none_sent["totals"]["wall_s"]["value"] is None  # all from an earlier run: no rate measured


def test_preview_problems_spread_over_sources_in_problem_id_order():
    problems = [{"problem_id": f"{s}{i}", "source": s} for s in "ab" for i in (3, 1, 2)] + [{"problem_id": "c1", "source": "c"}]
    picked = [p["problem_id"] for p in preview_problems(problems, 5)]
    assert picked == ["a1", "b1", "c1", "a2", "b2"]
    assert [p["problem_id"] for p in preview_problems(problems, 50)][-2:] == ["a3", "b3"]  # every problem once
    assert preview_problems(list(reversed(problems)), 5) == preview_problems(problems, 5)
