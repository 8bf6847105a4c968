"""The optimizer, schedule and clipping every recipe shares (trainer/optim.py): the no-decay
groups (in GRPO too, which built a bare AdamW before), the schedule's hand-computed factors,
and the clipped norm."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import OptimConfig
from trainer.optim import build_optimizer, build_scheduler, clip_gradients


def groups_by_decay(optimizer) -> dict[float, set[int]]:
    return {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}


def test_weight_decay_skips_biases_and_norms_and_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[3].requires_grad_(False)
    groups = groups_by_decay(build_optimizer(model, OptimConfig(weight_decay=0.1)))
    assert groups == {0.1: {id(model[0].weight), id(model[1].weight)},
                      0.0: {id(model[1].bias), id(model[2].weight), id(model[2].bias)}}


def test_grpo_checkpoints_an_optimizer_without_decay_on_norms(tmp_path):
    """Black-box: the optimizer state a GRPO run checkpoints has the matrices decayed, the norms not."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from trainer.checkpoint import latest_checkpoint
    from trainer.grpo import Config, train

    from .test_grpo_learning import tiny_config

    raw = tiny_config(tmp_path, max_steps=1).model_dump(mode="json")
    raw["optim"]["weight_decay"] = 0.1
    train(Config.model_validate(raw))
    dcp_to_torch_save(latest_checkpoint(tmp_path / "run" / "checkpoints"), tmp_path / "state.pt")
    groups = {g["weight_decay"]: set(g["params"]) for g in torch.load(tmp_path / "state.pt", weights_only=False)["optim"]["param_groups"]}
    assert set(groups) == {0.1, 0.0}
    assert groups[0.0] and all("norm" in name for name in groups[0.0])  # RMSNorm weights (a Llama has no biases)
    assert groups[0.1] and not any("norm" in name for name in groups[0.1])


@pytest.mark.parametrize(("schedule", "step", "factor"), [
    ("cosine", 0, 0.5), ("cosine", 1, 1.0), ("cosine", 2, 1.0),  # warmup 2: (step + 1) / 2, then the peak
    ("cosine", 4, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # progress (4 - 2) / (10 - 2) = 0.25
    ("linear", 4, 0.1 + 0.9 * 0.75),
    ("cosine", 10, 0.1), ("cosine", 15, 0.1),  # the floor, also past the end
    ("constant", 0, 0.5), ("constant", 9, 1.0),
])
def test_schedule_factors_hand_computed(schedule, step, factor):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(schedule=schedule, warmup_steps=2, min_lr_ratio=0.1), total_steps=10)
    assert sched.lr_lambdas[0](step) == pytest.approx(factor, abs=1e-12)


def test_clip_gradients_returns_the_norm_before_clipping():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients([p], 1.0) == pytest.approx(5.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6)
    assert clip_gradients([p], None) == pytest.approx(1.0, abs=1e-5)  # None: measured, not clipped
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6)


def test_a_one_group_checkpoint_resumes_into_the_split_groups(tmp_path):
    """GRPO checkpoints written before build_optimizer split off the no-decay group hold one
    parameter group; resuming one keeps its Adam moments instead of failing on the group count."""
    from trainer.checkpoint import load_checkpoint, save_checkpoint
    from trainer.distributed import DistEnv

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    old = torch.optim.AdamW(list(model.parameters()), lr=3e-3, weight_decay=0.1)
    model(torch.randn(3, 4)).sum().backward()
    old.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(old, lambda step: 1.0)
    path = save_checkpoint(tmp_path, 1, model, old, scheduler, {}, DistEnv())

    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    new = build_optimizer(fresh, OptimConfig(lr=1e-2, weight_decay=0.1))
    assert len(new.param_groups) == 2
    state = load_checkpoint(path, fresh, new, build_scheduler(new, OptimConfig(), 10), DistEnv())
    assert state["step"] == 1
    for p_old, p_new in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p_old, p_new)
        assert torch.equal(old.state[p_old]["exp_avg"], new.state[p_new]["exp_avg"])
        assert torch.equal(old.state[p_old]["exp_avg_sq"], new.state[p_new]["exp_avg_sq"])
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0]
    assert [g["lr"] for g in new.param_groups] == [3e-3, 3e-3]  # where the run stopped, not this config's
