"""The training loop the SFT and distillation recipes share: plan, micro-batches, globally
normalised loss, AdamW + schedule, clipping, metrics, checkpoints, resume, export.

    result = fit(config, env, model, tokenizer, examples, sft_loss)

`config` is any recipe Config with the sections `output_dir`, `data`, `optim`, `loop`,
`checkpoint`, `distributed`, `metrics` (trainer/config.py). `compute_loss(model, batch,
doc_weights, rows)` returns a `LossOut`: the weighted *sum* of per-token losses of the
micro-batch (the loop divides by the step's global denominator, so 1 process with accumulation
and N processes give the same gradient), plus sums of any extra metrics. The recipes' losses
run the LM head over `loop.loss_chunk_tokens` supervised tokens at a time (trainer/losses.py
`chunked_head_loss`), so a long micro-batch never holds its whole [tokens, vocab] logits.

Why the gradient is multiplied by the world size: FSDP2 averages gradients over ranks, and our
loss is already divided by the global denominator, so the average must be undone to get the
sum. Micro-batches of one rank accumulate without gradient sync until the last one.

The optimizer, schedule and clipping are trainer/optim.py's, shared with GRPO (`build_optimizer` and
`build_scheduler` stay importable from here).

Not covered: gradient-accumulation across steps of different denominators (a step is the unit),
dynamic batch sizes, EMA weights.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from storage.errors import BadInput

from .checkpoint import export_hf, find_resume_point, load_checkpoint, save_checkpoint, upload_checkpoint
from .config import OptimConfig
from .data import Example
from .distributed import DistEnv, all_reduce_sum, autocast, uses_fsdp
from .metrics import MetricsWriter
from .optim import build_optimizer, build_scheduler, clip_gradients
from .packing import Batch, collate, plan_steps, step_weights

log = logging.getLogger(__name__)


@dataclass
class LossOut:
    loss_sum: torch.Tensor  # weighted sum over the micro-batch's supervised tokens (has grad)
    metrics: dict[str, float] = field(default_factory=dict)  # sums, divided by the same denominator for logging
    denominator: float | None = None  # set when the loss brings its own (e.g. on-policy samples): a per-micro-batch mean
    flags: dict[str, float] = field(default_factory=dict)  # logged as they are (max over micro-batches), e.g. on_policy 0/1


LossFn = Callable[[torch.nn.Module, Batch, torch.Tensor, list[list[Example]], int], LossOut]


def seed_everything(seed: int, env: DistEnv) -> None:
    random.seed(seed + env.rank)
    torch.manual_seed(seed + env.rank)


def fit(
    config: Any,
    env: DistEnv,
    model: torch.nn.Module,
    tokenizer,
    examples: list[Example],
    compute_loss: LossFn,
    *,
    stop_after_steps: int | None = None,
    state_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `model` on `examples`; return the final metrics (and where things were written)."""
    out = Path(config.output_dir)
    plan, total, accum = _plan(config, env, examples)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total)
    params = [p for p in model.parameters() if p.requires_grad]
    prefix = config.checkpoint.prefix or f"checkpoints/{out.name}"
    seed_everything(config.loop.seed, env)
    start = _resume(config, env, model, optimizer, scheduler, prefix)
    metrics = MetricsWriter(out, tensorboard=config.metrics.tensorboard, enabled=env.is_main, resume_step=start)
    last: dict[str, float] = {}
    t_start = time.perf_counter()
    model.train()
    for step in range(start, total):
        t0 = time.perf_counter()
        rows = [[examples[i] for i in row] for row in plan[step]]
        sums = _accumulate(config, env, model, tokenizer, compute_loss, rows, step, accum)
        norm, lr = _optimizer_step(config.optim, params, optimizer, scheduler)
        last = _step_metrics(env, sums, rows, norm, lr, t0, t_start)
        done = step + 1
        if done % config.metrics.log_every == 0 or done == total:
            metrics.log(done, last)
            log.info("step %d/%d loss %.4f lr %.2e grad_norm %.3f tok/s %.0f", done, total, last["loss"], lr, norm, last["tokens_per_s"])
        every = config.checkpoint.every_steps
        stopping = stop_after_steps is not None and done >= stop_after_steps
        if (every and done % every == 0) or done == total or stopping:
            state = {"epoch_steps": len(plan), "total_steps": total, **(state_extra or {}), "metrics": last}
            _save(config, env, model, optimizer, scheduler, done, state, prefix)
        if stopping:
            metrics.close()
            return {**last, "step": done, "stopped_early": True, "output_dir": str(out)}
    metrics.close()
    result: dict[str, Any] = {**last, "step": total, "output_dir": str(out)}
    if config.checkpoint.export_hf:
        export_hf(model, tokenizer, out / "hf", env)
        result["hf"] = str(out / "hf")
    return result


# -- the steps of fit, in the order it runs them -------------------------------------------------


def _plan(config: Any, env: DistEnv, examples: list[Example]) -> tuple[list, int, int]:
    """(the step plan, the number of steps to train, micro-batches per rank per step); BadInput when
    the batch does not split over micro-batches and ranks, or the data makes no step."""
    loop, data = config.loop, config.data
    micro, world = loop.micro_batch_size, env.world_size
    if loop.batch_size % (micro * world):
        raise BadInput(f"loop.batch_size {loop.batch_size}: expected a multiple of micro_batch_size ({micro}) x world size ({world})")
    if world > 1 and not uses_fsdp(env, config.distributed):
        raise BadInput("distributed.strategy none with several processes: gradients would not be synchronised; use auto or fsdp")
    accum = loop.batch_size // (micro * world)
    plan = plan_steps(examples, capacity=data.max_length, packing=data.packing, batch_size=loop.batch_size, seed=loop.seed, epochs=loop.epochs)
    if not plan:
        raise BadInput(f"data: {len(examples)} example(s) make fewer rows than one step of loop.batch_size {loop.batch_size}")
    total = min(len(plan), loop.max_steps) if loop.max_steps else len(plan)
    if loop.max_steps and loop.max_steps > len(plan):
        log.warning("loop.max_steps %d > %d steps in %d epoch(s); training %d", loop.max_steps, len(plan), loop.epochs, len(plan))
    return plan, total, accum


def _resume(config: Any, env: DistEnv, model, optimizer, scheduler, prefix: str) -> int:
    """The step to start from: the newest checkpoint's (its model, optimizer, scheduler and RNG
    restored), or 0 when there is none or `checkpoint.resume` is off."""
    if not config.checkpoint.resume:
        return 0
    path = find_resume_point(Path(config.output_dir) / "checkpoints", config.checkpoint.store, prefix, env)
    if path is None:
        return 0
    return int(load_checkpoint(path, model, optimizer, scheduler, env)["step"])


@dataclass
class _StepSums:
    """One rank's sums over a step's micro-batches, each already divided by the step's denominator."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    flags: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    slots: int = 0


def _accumulate(config: Any, env: DistEnv, model, tokenizer, compute_loss: LossFn, rows: list[list[Example]], step: int,
                accum: int) -> _StepSums:
    """Forward/backward over this rank's `accum` micro-batches of the step's `rows`, adding to `.grad`
    (gradient sync only on the last one)."""
    micro, world = config.loop.micro_batch_size, env.world_size
    denom, weights = step_weights(rows, config.data.loss_weighting)
    doc_weights = torch.tensor(weights, dtype=torch.float32, device=env.device)
    mine = rows[env.rank * accum * micro : (env.rank + 1) * accum * micro]
    doc_offset = sum(len(r) for r in rows[: env.rank * accum * micro])
    out = _StepSums(torch.zeros(1, dtype=torch.float64))
    for m in range(accum):
        chunk = mine[m * micro : (m + 1) * micro]
        batch = collate(chunk, tokenizer.pad_token_id, doc_offset=doc_offset).to(env.device)
        doc_offset += sum(len(r) for r in chunk)
        if uses_fsdp(env, config.distributed) and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(m == accum - 1)
        with autocast(env, config.distributed):
            res = compute_loss(model, batch, doc_weights, chunk, step)
        scale = (1.0 / (res.denominator * accum * world)) if res.denominator else (1.0 / denom)
        (res.loss_sum * scale * world).backward()
        out.loss += float(res.loss_sum.detach()) * scale * world
        for k, v in res.metrics.items():
            out.metrics[k] = out.metrics.get(k, 0.0) + v * scale * world
        for k, v in res.flags.items():
            out.flags[k] = max(out.flags.get(k, v), v)
        out.tokens += batch.n_tokens
        out.slots += batch.n_slots
    return out


def _optimizer_step(cfg: OptimConfig, params: list[torch.Tensor], optimizer, scheduler) -> tuple[float, float]:
    """Clip, step the optimizer and the schedule, clear the gradients; (the pre-clip grad norm, the lr the step used)."""
    norm = clip_gradients(params, cfg.max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, lr


def _step_metrics(env: DistEnv, sums: _StepSums, rows: list[list[Example]], norm: float, lr: float, t0: float,
                 t_start: float) -> dict[str, float]:
    """The step's metrics row, summed over the ranks."""
    world = env.world_size
    keys = sorted(sums.metrics)
    packed = torch.tensor([sums.loss.item() / world, sums.tokens, sums.slots, *[sums.metrics[k] / world for k in keys]], dtype=torch.float64)
    packed = all_reduce_sum(packed.to(env.device) if env.device.type == "cuda" else packed, env).cpu()
    dt_s = time.perf_counter() - t0
    last = {
        "loss": float(packed[0]),
        "lr": lr,
        "grad_norm": norm,
        "tokens": int(packed[1]),
        "supervised_tokens": int(sum(ex.n_supervised for row in rows for ex in row)),
        "tokens_per_s": float(packed[1]) / dt_s,
        "padding_waste": 1.0 - float(packed[1]) / max(float(packed[2]), 1.0),
        "elapsed_s": time.perf_counter() - t_start,
    }
    for i, k in enumerate(keys):
        last[k] = float(packed[3 + i])
    last.update(sums.flags)
    return last


def _save(config: Any, env: DistEnv, model, optimizer, scheduler, step: int, state: dict[str, Any], prefix: str) -> None:
    """Checkpoint `step` under <output_dir>/checkpoints, mirrored to `checkpoint.store` when set."""
    ck = config.checkpoint
    path = save_checkpoint(Path(config.output_dir) / "checkpoints", step, model, optimizer, scheduler, state, env, keep_last=ck.keep_last)
    if ck.store and env.is_main:
        upload_checkpoint(path, ck.store, prefix)
