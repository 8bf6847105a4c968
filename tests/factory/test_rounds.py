"""The run's round bookkeeping without a lake or Prefect: what each round asks for, the budget
it may spend, when sampling stops, and what an incomplete run says."""

from factory.recipe import Recipe
from factory.rounds import RoundState
from factory.sampler import SamplingStats


def make(**extra) -> RoundState:
    recipe = Recipe.model_validate({"name": "r", "questions": [{"source": "generator", "generator": "arithmetic", "count": 2}],
                                    "teacher": {"samples_per_problem": 2}, **extra})
    problems = {pid: {"problem_id": pid, "problem": f"What is {i} + {i}?"} for i, pid in enumerate(("p0", "p1"))}
    return RoundState(recipe, problems, recipe.teacher.to_config())


def answer(rounds: RoundState, right: dict[str, int], groups) -> None:
    """Sample every key of `groups` and verify it: the first `right[pid]` samples of a problem
    pass math, the rest fail."""
    n = sum(len(g.sample_indices) for g in groups)
    rounds.sampled(SamplingStats(keys=n, committed=n, received=n))
    rows = []
    for g in groups:
        for i, key in g.keys(rounds.config).items():
            rows.append({"sample_id": key, "check": "math", "status": "pass" if i < right.get(g.problem_id, 0) else "fail"})
    rounds.add_verdicts(rows, covering=[r["sample_id"] for r in rows])


def test_one_round_without_adaptive_sampling():
    rounds = make()
    groups = rounds.plan()
    assert {g.problem_id: g.sample_indices for g in groups} == {"p0": (0, 1), "p1": (0, 1)}
    assert len(rounds.keys) == 4 and sorted(rounds.keys.values()) == ["p0", "p0", "p1", "p1"]
    answer(rounds, {"p0": 1}, groups)
    assert rounds.close_round() == "1 accepted of 4 planned"
    assert rounds.plan() == []  # adaptive sampling off: one round


def test_adaptive_rounds_double_until_enough_are_accepted_or_the_cap():
    rounds = make(adaptive={"accepted_per_problem": 2, "max_samples_per_problem": 5})
    answer(rounds, {"p0": 2, "p1": 0}, rounds.plan())
    rounds.close_round()
    # p0 has its 2 accepted; p1 has none: it gets as many again (indices 2, 3).
    second = rounds.plan()
    assert {g.problem_id: g.sample_indices for g in second} == {"p1": (2, 3)}
    answer(rounds, {}, second)
    assert rounds.close_round() == "2 accepted of 6 planned"
    assert {g.problem_id: g.sample_indices for g in rounds.plan()} == {"p1": (4,)}  # doubling stops at the cap, 5


def test_the_budget_carries_over_and_a_round_that_hits_it_ends_sampling():
    rounds = make(adaptive={"accepted_per_problem": 2, "max_samples_per_problem": 8}, budget={"max_tokens": 1000, "max_usd": 2.0})
    assert (rounds.budget().max_tokens, rounds.budget().max_usd) == (1000, 2.0)
    groups = rounds.plan()
    rounds.sampled(SamplingStats(keys=4, committed=4, received=4, prompt_tokens=100, completion_tokens=300, cost_usd=0.5))
    assert (rounds.budget().max_tokens, rounds.budget().max_usd) == (600, 1.5)
    rounds.add_verdicts([], covering=rounds.keys)
    rounds.close_round()
    assert rounds.plan()  # nothing accepted yet: a second round
    rounds.sampled(SamplingStats(keys=4, committed=2, received=2, prompt_tokens=500, completion_tokens=100, stopped_by_budget=True))
    assert rounds.budget().max_tokens == 0
    rounds.close_round()
    assert rounds.plan() == [] and rounds.budget_reached and rounds.sent == 6
    assert groups and make().budget() is None


def test_missing_keys_make_the_run_incomplete_unless_the_budget_stopped_it():
    rounds = make(adaptive={"accepted_per_problem": 1, "max_samples_per_problem": 8})
    rounds.plan()
    stats = SamplingStats(keys=4, committed=1, received=1)
    stats.errors.update({"HTTP 500": 3})
    rounds.sampled(stats)
    rounds.close_round()
    assert rounds.plan() == [] and rounds.may_miss  # keys without a sample end the rounds
    missing = sorted(k for k, p in rounds.keys.items() if p == "p1")
    assert rounds.incomplete(missing) and not rounds.incomplete([])
    message = rounds.missing_message("run-1", missing)
    assert message.startswith("run run-1: 2 of 4 requests got no sample (problems: p1; teacher errors: {'HTTP 500': 3})")
    assert message.endswith("run the same command again to resume.")
    rounds.stats[-1].stopped_by_budget = True
    assert not rounds.incomplete(missing)


def test_verdicts_of_an_earlier_attempt_are_asked_for_once():
    rounds = make()
    groups = rounds.plan()
    first = list(groups[0].keys(rounds.config).values())
    rounds.add_verdicts([{"sample_id": first[0], "check": "math", "status": "pass"}], covering=first)
    assert sorted(rounds.unasked()) == sorted(set(rounds.keys) - set(first))
    rounds.add_verdicts([], covering=rounds.unasked())
    assert rounds.unasked() == []
    rounds.close_round()
    assert rounds.accepted == {first[0]}
