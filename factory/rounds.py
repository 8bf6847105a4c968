"""A run's sampling rounds as plain state: the request keys planned so far, what the teacher
sent and cost, the verdicts of the planned samples, and what to ask for next.

    rounds = RoundState(recipe, problems_by_id, teacher.config)
    while groups := rounds.plan():                    # the next round's RequestGroups; [] when done
        rounds.sampled(sample_teacher(lake, teacher, groups, run_id=run_id, budget=rounds.budget(),
                                      escalation=rounds.escalation()))
        rounds.add_verdicts(rows, covering=sample_ids)  # (sample_id, check, status) of the round's samples
        rounds.add_verdicts(earlier_rows, covering=rounds.unasked())   # verdicts an earlier attempt stored
        note = rounds.close_round()                   # "12 accepted of 24 planned"
    if rounds.incomplete(missing_keys):
        raise RunIncomplete(rounds.missing_message(run_id, missing_keys))

flows/pipeline.py drives it on Prefect; nothing here touches the lake or Prefect, so the round
logic is tested with plain values (tests/factory/test_rounds.py). Rounds: the first asks for
`samples_per_problem` samples of every problem; with adaptive sampling on, each later one asks
again for the problems still short of `accepted_per_problem` accepted samples (stages.plan_round).
Sampling stops after a round that hit the budget, left request keys without a sample, or when
adaptive sampling is off. The budget carries over: each round gets what the earlier rounds left.
The retries of cut samples that a round's sampling asked for (the recipe's `truncation`) join
`keys` (they are verified and counted like any sample) but not the per-problem sample counts
that adaptive sampling continues its indices from: a retry reuses its cut sample's index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .recipe import Recipe
from .sampler import Budget, Escalation, SamplingStats
from .stages import accepted_ids, plan_round
from .teachers import RequestGroup


class RoundState:
    """The bookkeeping of one run's rounds (see the module docstring for the order of calls)."""

    def __init__(self, recipe: Recipe, problems: dict[str, dict], config: Any) -> None:
        self.recipe = recipe
        self.problems = problems  # problem_id -> the problem row, the run's eligible problems
        self.config = config  # the teacher's config: request keys depend on it
        self.keys: dict[str, str] = {}  # request key -> problem id, every key planned so far (retries too)
        self.retries: set[str] = set()  # the keys of `keys` that retry a cut sample with more max_tokens
        self.verdicts: list[dict] = []  # (sample_id, check, status) of planned samples verified so far
        self.accepted: set[str] = set()  # sample ids accepted after the last round
        self.stats: list[SamplingStats] = []
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self._asked: set[str] = set()  # keys whose verdicts are in `verdicts` (or that have none yet)
        self._counts = {pid: (0, 0) for pid in problems}  # problem -> (samples planned, accepted)
        self._done = False

    def plan(self) -> list[RequestGroup]:
        """The next round's request groups (their keys join `keys`); [] when sampling is over."""
        if self._done:
            return []
        sampling = self.recipe.teacher.sampling
        groups = [RequestGroup(pid, tuple(self.recipe.prompt.messages(self.problems[pid])), sampling, idx)
                  for pid, idx in plan_round(self._counts, self.recipe).items()]
        for g in groups:
            self.keys.update({k: g.problem_id for k in g.keys(self.config).values()})
        return groups

    def escalation(self) -> Escalation | None:
        """How the sampler retries a sample cut at max_tokens (None: it does not)."""
        return self.recipe.truncation.escalation() if self.recipe.truncation else None

    def budget(self) -> Budget | None:
        """What the recipe's budget leaves for the next round (None: no budget)."""
        b = self.recipe.budget
        if not (b.max_tokens or b.max_usd):
            return None
        return Budget(max_tokens=b.max_tokens - self.spent_tokens if b.max_tokens else None,
                      max_usd=b.max_usd - self.spent_usd if b.max_usd else None)

    def sampled(self, stats: SamplingStats) -> str:
        """Count a round's sampling; returns the progress note."""
        self.stats.append(stats)
        self.keys.update(stats.escalations)
        self.retries.update(stats.escalations)
        self.spent_tokens += stats.prompt_tokens + stats.completion_tokens
        self.spent_usd += stats.cost_usd
        return f"{stats.received} received, {stats.already_done} already in the lake"

    def unasked(self) -> list[str]:
        """Planned keys whose verdicts were not added yet (an earlier attempt verified them)."""
        return [k for k in self.keys if k not in self._asked]

    def add_verdicts(self, rows: Iterable[dict], covering: Iterable[str]) -> None:
        """Verdict rows (sample_id, check, status) of the samples `covering` names (a key without
        a sample has none)."""
        self.verdicts += rows
        self._asked.update(covering)

    def close_round(self) -> str:
        """Decide the round: accepted samples per problem for the next plan, and whether sampling
        goes on. Returns the progress note."""
        self.accepted = accepted_ids(self.verdicts, self.recipe)
        have = Counter(pid for k, pid in self.keys.items() if k not in self.retries)
        good = Counter(self.keys[s] for s in self.accepted if s in self.keys)
        self._counts = {pid: (have[pid], good[pid]) for pid in self.problems}
        last = self.stats[-1] if self.stats else SamplingStats()
        self._done = last.stopped_by_budget or bool(last.missing) or self.recipe.adaptive.accepted_per_problem is None
        return f"{len(self.accepted)} accepted of {len(self.keys)} planned"

    @property
    def sent(self) -> int:
        return sum(s.received for s in self.stats)

    @property
    def budget_reached(self) -> bool:
        return any(s.stopped_by_budget for s in self.stats)

    @property
    def may_miss(self) -> bool:
        """Whether the sampler said keys are missing: only then is the lake asked which."""
        return any(s.missing for s in self.stats)

    def incomplete(self, missing: list[str]) -> bool:
        """A run ends incomplete when keys got no sample for another reason than the budget."""
        return bool(missing) and not self.budget_reached

    def missing_message(self, run_id: str, missing: list[str]) -> str:
        """The failure message of an incomplete run: how many keys, which problems, which errors."""
        problems = sorted({self.keys[k] for k in missing})
        errors: Counter = Counter()
        for s in self.stats:
            errors.update(s.errors)
        return (f"run {run_id}: {len(missing)} of {len(self.keys)} requests got no sample (problems: "
                f"{', '.join(problems[:10])}{' ...' if len(problems) > 10 else ''}; teacher errors: "
                f"{dict(errors) or 'none recorded'}). Everything received is stored; run the same command again to resume.")
