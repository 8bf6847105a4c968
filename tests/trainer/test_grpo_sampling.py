"""Dynamic sampling's bookkeeping (trainer/grpo.py `Generation`), without a model: which groups a
round keeps or sets aside, what the step's metrics count, and how a short batch is filled."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from factory.teachers.base import Completion
from trainer.grpo import Generation


def round_of(rewards: list[list[float]], finish: str = "stop"):
    """Rows, completions and scores of a round: one group per inner list, one completion per reward."""
    rows = [{"problem_id": f"p{i}"} for i in range(len(rewards))]
    results = [[Completion(sample_index=j, text=str(r), finish_reason=finish, completion_tokens=i + 1) for j, r in enumerate(group)]
               for i, group in enumerate(rewards)]
    flat = [r for group in rewards for r in group]
    return rows, results, SimpleNamespace(total=flat, per_function={"accuracy": flat})


def test_a_round_keeps_informative_groups_and_sets_flat_ones_aside():
    gen = Generation()
    gen.add_round(*round_of([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), group_size=2, dynamic_sampling=True)
    assert [row["problem_id"] for row, _, _ in gen.kept] == ["p0"]
    assert [row["problem_id"] for row, _, _ in gen.spare] == ["p1", "p2"]
    assert gen.zero_std_first == pytest.approx(2 / 3) and gen.rounds == 1
    assert gen.lengths == [1, 1, 2, 2, 3, 3] and gen.truncated == 0
    # A refill: the metrics count every completion generated; the first round's zero-std share stays.
    gen.add_round(*round_of([[0.0, 1.0]], finish="length"), group_size=2, dynamic_sampling=True)
    assert [row["problem_id"] for row, _, _ in gen.kept] == ["p0", "p0"] and gen.rounds == 2
    assert gen.rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0] and gen.per_fn["accuracy"] == gen.rewards
    assert gen.truncated == 2 and gen.zero_std_first == pytest.approx(2 / 3)


def test_short_of_informative_groups_the_batch_is_filled_with_flat_ones_in_order():
    gen = Generation()
    gen.add_round(*round_of([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), group_size=2, dynamic_sampling=True)
    gen.fill(2)
    assert [row["problem_id"] for row, _, _ in gen.kept] == ["p1", "p0"]
    assert gen.kept_rewards().tolist() == [0.0, 1.0, 1.0, 1.0]


def test_without_dynamic_sampling_every_group_is_kept_in_order():
    gen = Generation()
    gen.add_round(*round_of([[1.0, 1.0], [0.0, 1.0]]), group_size=2, dynamic_sampling=False)
    assert [row["problem_id"] for row, _, _ in gen.kept] == ["p0", "p1"] and gen.spare == []
