"""The optimizer, LR schedule and gradient clipping every recipe uses (SFT and distillation
through trainer/loop.py, GRPO in trainer/grpo.py), so `optim.*` means the same in each.

    optimizer = build_optimizer(model, config.optim)                 # AdamW, no decay on biases/norms
    scheduler = build_scheduler(optimizer, config.optim, total_steps)  # warmup, then cosine/linear/constant
    norm = clip_gradients(params, config.optim.max_grad_norm)         # the pre-clip norm, as a float

`optim.weight_decay` applies to the matrices (parameters of 2 or more dimensions: linear and
embedding weights); biases and norm scales get none, as nanoGPT splits them (transformers'
Trainer, which TRL's trainers use, excludes biases and LayerNorm weights by name). The scheduler
is stepped once per optimizer step.

Not covered: optimizers other than AdamW, per-module learning rates, restarts in the schedule.
"""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (no weight decay on biases and norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine/linear decay to min_lr_ratio (or constant) over total_steps."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def grad_norm_of(norm: torch.Tensor) -> float:
    """A norm from clip_grad_norm_ as a float (under FSDP2 it is a DTensor: gathered first)."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def clip_gradients(params: list[torch.Tensor], max_grad_norm: float | None) -> float:
    """Clip the gradients of `params` to `max_grad_norm` (None: no clipping) and return their norm before clipping."""
    max_norm = max_grad_norm if max_grad_norm is not None else float("inf")
    return grad_norm_of(torch.nn.utils.clip_grad_norm_(params, max_norm))
