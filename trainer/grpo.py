"""GRPO: the recipe (R1-Zero-style RL with the factory's verifiers as rewards).

    torchrun --nproc-per-node 2 -m trainer.grpo recipes/train/grpo_tiny.yaml
    factory train grpo recipes/train/grpo_tiny.yaml            # the same, through the CLI
    python -m trainer.grpo recipes/train/grpo_tiny.yaml         # one process

One GRPO step: take `prompts_per_step` prompts (pre-selected from the lake by stored pass rate,
0 < p < 1, or from a JSONL file), sample `group_size` completions of each with the policy being
trained (trainer/rollout.py), score them with weighted reward functions (trainer/rewards.py),
turn rewards into group-normalised advantages, drop groups whose rewards do not vary (dynamic
sampling, DAPO) and refill from further prompts, then make `num_iterations` policy updates on
that generation batch, each over `micro_batch_size` rows at a time with gradient accumulation.
`train` reads as those steps: `_start`, `_resume`, `_start_engine`, then per step `_collect_groups`
(dynamic sampling), `_advantages`, `_update`, `_step_metrics`, and `_save` when a checkpoint is due.

The loss and the advantages are trainer/losses.py's (`grpo_loss`, `group_advantages`; the formulas
and the `loss_type` aggregations grpo | bnpo | dr_grpo | dapo are written out there); this module
is the recipe around them. The optimizer and LR schedule are trainer/optim.py's, as SFT's (AdamW,
`optim.weight_decay` on matrices only). The loss's normalisers come from the whole optimizer
step (all micro-batches, all ranks), so the loss and its gradient are the same whether a batch
runs whole, in micro-batches with accumulation, or split over processes (tests/trainer/test_grpo_invariance.py); TRL's `grpo` and `dr_grpo` divide by the
micro-batch instead and only agree when micro-batches are of equal size.

Advantages: (r - mean_group) / (std + 1e-4) with std the Bessel-corrected std of the group
(`scale_rewards: group`), of the whole batch over all ranks (`batch`, TRL's scale_rewards="batch")
or no division (`none`, Dr. GRPO). With `num_iterations` 1 the old log-probs are the current
ones detached (ratio 1, TRL's shortcut); above 1 they are scored once before the updates.

Metrics, per step, to <output_dir>/metrics.csv and TensorBoard (`factory report --metrics` plots
them): reward mean/std, total and per reward function; completion length mean/max and the share
cut by the length limit (the R1 paper's response-length curve); KL, entropy, clip fractions
low/high; the share of zero-std groups before and after dynamic sampling; generation rounds;
completion tokens/s; time split generation/scoring/training. Rewards and lengths are of every
completion generated in the step (refills included); the per-function breakdown and reward_std
are rank 0's.

Log-probs are computed the way TRL computes them: one forward over [left-padded prompt,
completion] with the attention mask and default position ids (with RoPE a constant shift of
positions under left padding changes nothing but rounding).

Checkpoints and exact resume (the `checkpoint` section, the same keys as SFT's, through
trainer/checkpoint.py; `python -m trainer.grpo CFG --stop-after-steps N` or a killed run, then
the same command again): every `checkpoint.every_steps` steps, when stopped early and at the end,
`<output_dir>/checkpoints/step-N` holds the policy and AdamW state (DCP), the scheduler, each
rank's torch/python/numpy RNG, each rank's prompt-stream position (its shuffle RNG and the rest of
the epoch's order: refills consume a varying number of prompts, so the step alone does not say
where it is) and the engine's sync count (the probe schedule); with `checkpoint.store` it is
mirrored to the lake's artifact store. A rerun resumes from the newest complete one (local, else
the store), drops metrics.csv rows past it and continues the curve: the resumed run's per-step
loss, rewards and final weights equal the uninterrupted run's (tests/trainer/test_grpo_resume.py).
What needs no saving: rollout sampling is seeded by (grpo.seed, step, round, problem, sample), not
by a global generator; dynamic sampling keeps nothing across steps (unused groups are dropped at
the end of each step); the reward cache only saves time (rewards are pure functions of the
sample, so a cold cache gives the same values); the reference model is the frozen initial policy,
rebuilt from `model` on resume and checked against a fingerprint stored in the checkpoint (a
changed `model.path` or `init_seed` is an error, not a silently different KL). A vLLM engine gets
the resumed weights through its weight sync before the first rollout.

Not covered: sequence-level importance sampling (GSPO), CISPO/SAPO losses, vLLM's importance
sampling correction, an entropy bonus; the reference model is a frozen copy of the initial policy
(no periodic sync); resuming on a different world size (each rank's prompt stream is saved for
that rank); code rewards whose sandbox verdict depends on timing (a timeout) may differ on resume.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator

from factory.teachers.base import RequestGroup
from storage.errors import BadInput

from .checkpoint import (
    export_hf,
    find_resume_point,
    load_checkpoint,
    save_checkpoint,
    upload_checkpoint,
)
from .config import (
    CheckpointConfig,
    DistributedConfig,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    Section,
    load_yaml,
)
from .losses import ADV_EPS, LossType, completion_logps, group_advantages, grpo_loss, zero_std_groups

# Re-exported (the `as` says so): they were defined here before the loss math moved to losses.py.
from .losses import LOSS_TYPES as LOSS_TYPES
from .losses import clipped_ratio as clipped_ratio
from .losses import kl_k3 as kl_k3
from .losses import token_logps as token_logps
from .optim import build_optimizer, build_scheduler, clip_gradients
from .prompts import DEFAULT_PROMPTS_SQL as DEFAULT_PROMPTS_SQL
from .prompts import PromptsConfig, PromptStream, messages_for, read_prompts
from .rewards import RewardConfig, Scorer
from .rollout import RolloutConfig, RolloutEngine, make_rollout_engine, run_with_timeout

if TYPE_CHECKING:
    from .distributed import DistEnv

log = logging.getLogger(__name__)



# --- the recipe --------------------------------------------------------------------------------


def _reduce(t: torch.Tensor, env, timeout_s: float, what: str) -> torch.Tensor:
    """all_reduce_sum under a deadline: a dead peer is a SyncError naming the collective, not a hang."""
    from .distributed import all_reduce_sum

    if not env.distributed:
        return t
    return run_with_timeout(lambda: all_reduce_sum(t, env), timeout_s, f"all-reduce of {what}")


class GRPOSection(Section):
    """The algorithm (names as in TRL's GRPOConfig where they exist)."""

    group_size: int = Field(8, ge=2)
    prompts_per_step: int = Field(8, ge=1, description="groups per generation batch, all ranks together")
    num_iterations: int = Field(1, ge=1, description="policy updates per generation batch (mu)")
    micro_batch_size: int = Field(8, ge=1, description="completions per forward/backward")
    loss_type: LossType = "dapo"
    epsilon_low: float = Field(0.2, ge=0, lt=1)
    epsilon_high: float | None = Field(0.28, ge=0)
    beta: float = Field(0.0, ge=0, description="k3 KL weight; 0: no reference model")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    dynamic_sampling: bool = True  # drop zero-std groups and refill (DAPO)
    max_refills: int = Field(4, ge=0, description="extra generation rounds to fill the batch with informative groups")
    max_steps: int = Field(20, ge=1)
    seed: int = 0


class Config(Section):
    """`trainer.grpo`'s whole config; every field has a default except the prompts' source."""

    model: ModelConfig = ModelConfig()
    prompts: PromptsConfig
    grpo: GRPOSection = GRPOSection()
    rollout: RolloutConfig = RolloutConfig()
    rewards: RewardConfig = RewardConfig()
    optim: OptimConfig = OptimConfig(lr=1e-6, schedule="constant", warmup_steps=0)
    distributed: DistributedConfig = DistributedConfig()
    metrics: MetricsConfig = MetricsConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()  # every_steps, resume, keep_last, store, prefix, export_hf
    output_dir: str = "runs/grpo"
    export_hf: bool = True  # the older spelling of checkpoint.export_hf: either false skips the export

    @model_validator(mode="after")
    def _vllm_needs_a_folder(self) -> Config:
        from factory.teachers.local import is_embedded

        m = self.model
        if self.rollout.engine == "vllm" and m.path and (m.gguf_file or m.path.endswith(".gguf") or is_embedded(m.path)):
            raise ValueError(f"rollout.engine vllm with model.path {m.path}: expected a Hugging Face folder (vLLM loads its own copy of "
                             "the weights and cannot take this GGUF); use rollout.engine: transformers, or save the base as a folder first")
        return self


def load_config(path: str | Path) -> Config:
    """The YAML at `path` as a Config; BadInput naming the file, the key path and the expected form."""
    return load_yaml(path, Config)


# -- a generation batch as tensors --------------------------------------------------------------


@dataclass
class RolloutBatch:
    """Rows of a generation batch: left-padded prompts, right-padded completions."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.size(0)

    def rows(self, start: int, end: int) -> RolloutBatch:
        fields = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "old_logps", "ref_logps")
        return RolloutBatch(*(None if getattr(self, f) is None else getattr(self, f)[start:end] for f in fields))

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.prompt_ids, self.completion_ids], 1), torch.cat([self.prompt_mask, self.completion_mask], 1)


def make_batch(prompts: list[list[int]], completions: list[list[int]], advantages: torch.Tensor, pad_id: int,
               device: torch.device | str = "cpu") -> RolloutBatch:
    B = len(prompts)
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    pi = torch.full((B, P), pad_id, dtype=torch.long)
    pm = torch.zeros((B, P), dtype=torch.long)
    ci = torch.full((B, C), pad_id, dtype=torch.long)
    cm = torch.zeros((B, C), dtype=torch.long)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        pi[r, P - len(p):] = torch.tensor(p)
        pm[r, P - len(p):] = 1
        if c:
            ci[r, : len(c)] = torch.tensor(c)
            cm[r, : len(c)] = 1
    return RolloutBatch(pi.to(device), pm.to(device), ci.to(device), cm.to(device), advantages.float().to(device))


@torch.no_grad()
def score_logps(model, batch: RolloutBatch, temperature: float, micro_batch_size: int) -> torch.Tensor:
    """Per-token log-probs of the batch's completions under `model` (no grad), micro-batched."""
    out = []
    C = batch.completion_ids.size(1)
    for s in range(0, len(batch), micro_batch_size):
        ids, att = batch.rows(s, s + micro_batch_size).inputs()
        out.append(completion_logps(model, ids, att, C, temperature)[0])
    return torch.cat(out)


def accumulate_gradients(model, batch: RolloutBatch, g: GRPOSection, *, temperature: float, max_completion_length: int,
                         micro_batch_size: int, num_sequences: int, num_tokens: float, num_chunks: int,
                         loss_scale: float = 1.0) -> dict[str, float]:
    """Forward/backward over `batch` in micro-batches, adding to `.grad`. The normalisers
    (`num_sequences`, `num_tokens`, `num_chunks`) are those of the whole optimizer step over all
    ranks, so the gradients summed over micro-batches and ranks are the whole batch's.
    `loss_scale`: the world size under FSDP/DDP, whose gradient reduction averages over ranks."""
    totals = {"loss": 0.0, "tokens": 0.0, "clip_low": 0.0, "clip_high": 0.0, "kl": 0.0, "entropy": 0.0}
    C = batch.completion_ids.size(1)
    for s in range(0, len(batch), micro_batch_size):
        mb = batch.rows(s, s + micro_batch_size)
        ids, att = mb.inputs()
        logps, entropy = completion_logps(model, ids, att, C, temperature)
        loss, stats = grpo_loss(
            logps, mb.advantages, mb.completion_mask, old_logps=mb.old_logps, ref_logps=mb.ref_logps, loss_type=g.loss_type,
            epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high, beta=g.beta, max_completion_length=max_completion_length,
            num_sequences=num_sequences, num_tokens=num_tokens, num_chunks=num_chunks,
        )
        (loss * loss_scale).backward()
        totals["loss"] += float(loss.detach())
        totals["entropy"] += float((entropy.detach() * mb.completion_mask).sum())
        for k in ("tokens", "clip_low", "clip_high", "kl"):
            totals[k] += stats[k]
    return totals


# -- the training loop ---------------------------------------------------------------------------


def _reduce_max(value: int, env, timeout_s: float) -> int:
    """The largest `value` over the ranks (under the collective deadline)."""
    if not env.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=env.device)
    run_with_timeout(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX), timeout_s, "all-reduce of the groups still needed")
    return int(t.item())


def _all_reduce_grads(params: list[torch.Tensor], env, timeout_s: float) -> None:
    """Sum unsharded gradients over the ranks (under the collective deadline)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g_.flatten() for g_ in grads])
    run_with_timeout(lambda: dist.all_reduce(flat, op=dist.ReduceOp.SUM), timeout_s, "all-reduce of the gradients")
    offset = 0
    for g_ in grads:
        g_.copy_(flat[offset: offset + g_.numel()].view_as(g_))
        offset += g_.numel()


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _fingerprint(model) -> list[float]:
    """(sum, sum of squares, count) of a model's parameters in float64: a cheap check that the
    reference model rebuilt on resume is the one the run started with. Call before sharding."""
    total = sq = n = 0.0
    with torch.no_grad():
        for p in model.parameters():
            d = p.detach().double()
            total += float(d.sum())
            sq += float((d * d).sum())
            n += d.numel()
    return [total, sq, n]


def _gather_objects(obj, env, timeout_s: float) -> list:
    """Every rank's `obj`, in rank order, on every rank (under the collective deadline)."""
    if not env.distributed:
        return [obj]
    import torch.distributed as dist

    box: list = [None] * env.world_size
    run_with_timeout(lambda: dist.all_gather_object(box, obj), timeout_s, "all-gather of the prompt streams")
    return box


@dataclass
class Generation:
    """One step's generation batch as dynamic sampling builds it, round after round, and the
    statistics of every completion generated on the way (refills included)."""

    kept: list[tuple[dict, list, list[float]]] = field(default_factory=list)  # (row, completions, rewards), informative
    spare: list[tuple[dict, list, list[float]]] = field(default_factory=list)  # zero-std groups dynamic sampling set aside
    per_fn: dict[str, list[float]] = field(default_factory=dict)  # each reward function's values
    rewards: list[float] = field(default_factory=list)  # total rewards
    lengths: list[int] = field(default_factory=list)  # completion tokens
    truncated: int = 0  # completions cut by the length limit
    zero_std_first: float | None = None  # the share of zero-std groups in the first round
    rounds: int = 0
    t_gen: float = 0.0
    t_score: float = 0.0

    def add_round(self, rows: list[dict], results: list[list], scored, group_size: int, dynamic_sampling: bool) -> None:
        """Record a round's groups (`results[i]`: the completions of `rows[i]`, `scored`: their
        rewards): informative ones are kept, zero-std ones too unless dynamic sampling sets them aside."""
        for name, vals in scored.per_function.items():
            self.per_fn.setdefault(name, []).extend(vals)
        self.rewards.extend(scored.total)
        for c in (c for comps in results for c in comps):
            self.lengths.append(c.completion_tokens or 0)
            self.truncated += c.finish_reason == "length"
        rewards = torch.tensor(scored.total).view(len(rows), group_size)
        flat = zero_std_groups(rewards.view(-1), group_size)
        if self.zero_std_first is None:
            self.zero_std_first = float(flat.float().mean())
        for i, (r, comps) in enumerate(zip(rows, results)):
            item = (r, comps, rewards[i].tolist())
            if dynamic_sampling and bool(flat[i]):
                self.spare.append(item)
            else:
                self.kept.append(item)
        self.rounds += 1

    def fill(self, groups: int) -> None:
        """Keep `groups` groups: short of informative ones after the refills, fill with flat ones (zero advantage)."""
        self.kept = (self.kept + self.spare)[:groups]

    def kept_rewards(self) -> torch.Tensor:
        return torch.tensor([x for _, _, rw in self.kept for x in rw])


@dataclass
class _Run:
    """What a GRPO run holds from step to step (built by `_start`)."""

    config: Config
    env: DistEnv
    tokenizer: object
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    ref_print: list[float] | None  # the reference model's fingerprint, checked on resume
    fsdp: bool
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scorer: Scorer
    stream: PromptStream
    pad_id: int
    groups_per_rank: int
    engine: RolloutEngine | None = None  # the rollout engine, made after the resume (it may need the resumed weights)

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def prefix(self) -> str:
        """Where checkpoints go in the artifact store."""
        return self.config.checkpoint.prefix or f"checkpoints/{self.out_dir.name}"


def train(config: Config, *, stop_after_steps: int | None = None) -> dict:
    """Run GRPO as `config` says, resuming from the newest checkpoint when there is one (and
    `checkpoint.resume`); returns the metrics of the steps this call ran and where the model went.
    `stop_after_steps`: stop after that step (counted from the run's start, resumed steps
    included), with a checkpoint to resume from."""
    from .distributed import close_distributed
    from .metrics import MetricsWriter

    g, ck = config.grpo, config.checkpoint
    run = _start(config)
    start, resumed_from = _resume(run)
    _start_engine(run, start)
    history: list[dict] = []
    last = min(g.max_steps, stop_after_steps or g.max_steps)
    done = start
    run.model.train()
    with MetricsWriter(run.out_dir, tensorboard=config.metrics.tensorboard, enabled=run.env.is_main, resume_step=start) as metrics:
        for step in range(start + 1, last + 1):
            row = _step(run, step)
            metrics.log(step, row)
            history.append(row)
            done = step
            # After the metrics row: a run killed before COMPLETE resumes from the previous
            # checkpoint, and the writer then drops this step's row (no duplicate steps).
            if (ck.every_steps and step % ck.every_steps == 0) or step == last:
                _save(run, step, row)
    exported = None
    if config.export_hf and ck.export_hf:
        exported = export_hf(run.model, run.tokenizer, run.out_dir / "hf", run.env)
    run.engine.close()
    close_distributed()
    return {"steps": len(history), "step": done, "stopped_early": done < g.max_steps, "resumed_from": resumed_from,
            "history": history, "output_dir": str(run.out_dir), "exported": str(exported) if exported else None}


# -- the steps of train, in the order it runs them ------------------------------------------------


def _start(config: Config) -> _Run:
    """Seed, build the policy (sharded), the frozen reference when beta > 0, the optimizer and
    schedule (trainer/optim.py, as SFT's), the scorer and this rank's prompt stream."""
    from .distributed import init_distributed, shard_model, uses_fsdp
    from .model import build_model, load_tokenizer

    env = init_distributed(config.distributed)
    g = config.grpo
    torch.manual_seed(g.seed)
    random.seed(g.seed + env.rank)
    if g.prompts_per_step % env.world_size:
        raise BadInput(f"grpo.prompts_per_step {g.prompts_per_step}: expected a multiple of the world size {env.world_size}")
    tokenizer = load_tokenizer(config.model.tokenizer_path())
    model = build_model(config.model, tokenizer, env.device)
    ref_model = ref_print = None
    if g.beta != 0.0:  # the frozen initial policy (rebuilt, not checkpointed: it never changes)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        ref_print = _fingerprint(ref_model)
    fsdp = uses_fsdp(env, config.distributed)
    model = shard_model(model, env, config.distributed)
    if ref_model is not None and fsdp:
        ref_model = shard_model(ref_model, env, config.distributed, trainable=False)
    scorer = Scorer(config.rewards)  # its cache is not checkpointed: rewards are pure functions of the sample
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, g.max_steps)
    stream = PromptStream(read_prompts(config.prompts), g.seed, env.rank, env.world_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _Run(config, env, tokenizer, model, ref_model, ref_print, fsdp, params, optimizer, scheduler, scorer, stream, pad_id,
               groups_per_rank=g.prompts_per_step // env.world_size)


def _resume(run: _Run) -> tuple[int, str | None]:
    """(the step to start from, the checkpoint it comes from): the newest checkpoint's policy,
    optimizer, scheduler, RNG and prompt stream restored, or (0, None)."""
    ck = run.config.checkpoint
    if not ck.resume:
        return 0, None
    path = find_resume_point(run.out_dir / "checkpoints", ck.store, run.prefix, run.env)
    if path is None:
        return 0, None
    state = load_checkpoint(path, run.model, run.optimizer, run.scheduler, run.env)
    _restore_prompts(run, path, state)
    return int(state["step"]), str(path)


def _restore_prompts(run: _Run, path, state: dict) -> None:
    """Continue this rank's prompt stream from the checkpoint; BadInput when the checkpoint cannot
    continue this run (another reference model, no prompt streams: another recipe's checkpoint,
    another world size), a warning when the grpo section changed."""
    saved_print = state.get("reference_fingerprint")
    if run.ref_print is not None and saved_print is not None and not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in zip(run.ref_print, saved_print)):
        raise BadInput(f"checkpoint {path}: the reference model rebuilt from `model` differs from the run's initial "
                       "policy: expected the same model.path / init_seed as when the run started")
    streams = state.get("prompt_streams")
    if not streams:
        raise BadInput(f"checkpoint {path}: no prompt-stream state: expected a checkpoint written by trainer.grpo "
                       "(another recipe's output_dir?), or checkpoint.resume: false")
    if len(streams) != run.env.world_size:
        raise BadInput(f"checkpoint {path}: saved by {len(streams)} rank(s), resumed on {run.env.world_size}: "
                       "expected the same world size (each rank's prompt stream is saved)")
    run.stream.restore(streams[run.env.rank])
    saved_grpo = state.get("grpo") or {}
    now = {**run.config.grpo.model_dump(mode="json"), "max_steps": saved_grpo.get("max_steps")}
    if saved_grpo and saved_grpo != now:
        log.warning("%s: the grpo section differs from the checkpointed run's; the resumed curve will not be the "
                    "uninterrupted one", path)


def _start_engine(run: _Run, start: int) -> None:
    """The rollout engine, holding the resumed weights when the run resumed."""
    ro = run.config.rollout
    run.engine = make_rollout_engine(ro, run.model, run.tokenizer, model_path=run.config.model.path, device=run.env.device)
    if run.fsdp and hasattr(run.engine.teacher, "synced_gpus"):
        run.engine.teacher.synced_gpus = True  # every rank must run the same number of forward passes
    if start:  # an engine with its own copy of the weights (vLLM) loaded model.path: give it the resumed ones
        run_with_timeout(lambda: run.engine.sync_weights(run.model), ro.sync_timeout_s, "weight sync")
        run.engine.syncs = start  # one sync per step: the probe stays on its schedule


def _step(run: _Run, step: int) -> dict:
    """One GRPO step: generate and score groups, advantages, the policy updates, the engine's weight
    sync; returns the step's metrics row."""
    t_start = time.perf_counter()
    gen = _collect_groups(run, step)
    adv = _advantages(run, gen.kept_rewards())
    prompts_ids = [c.extra["prompt_ids"] for _, comps, _ in gen.kept for c in comps]
    comp_ids = [c.extra["completion_ids"] for _, comps, _ in gen.kept for c in comps]
    batch = make_batch(prompts_ids, comp_ids, adv, run.pad_id, run.env.device)
    totals, grad_norm, t_train = _update(run, batch)
    probe = run.engine.after_step(run.model)
    row = _step_metrics(run, gen, totals, grad_norm, t_train, t_start)
    if probe is not None:
        row["sync_probe_logp_diff"] = probe
    log.info("grpo step %d: reward %.3f, length %.1f, loss %.4f, %.1fs (gen %.1f, score %.1f, train %.1f)", step, row["reward"],
             row["completion_length"], row["loss"], row["step_s"], gen.t_gen, gen.t_score, t_train)
    return row


def _collect_groups(run: _Run, step: int) -> Generation:
    """This rank's `groups_per_rank` groups for the step, with dynamic sampling: zero-std groups
    are set aside and further prompts generated, up to `max_refills` extra rounds."""
    g, ro = run.config.grpo, run.config.rollout
    gen = Generation()
    while True:
        # Every rank generates the same number of groups per round (FSDP runs the forward
        # passes of generate in lockstep): the most any rank still needs.
        need = _reduce_max(run.groups_per_rank - len(gen.kept), run.env, ro.sync_timeout_s)
        rows = [run.stream.next() for _ in range(need)]
        results, scored = _generate_and_score(run, rows, seed=g.seed * 1_000_003 + step * 101 + gen.rounds, gen=gen)
        gen.add_round(rows, results, scored, g.group_size, g.dynamic_sampling)
        short = _reduce_max(run.groups_per_rank - len(gen.kept), run.env, ro.sync_timeout_s)
        if not g.dynamic_sampling or short <= 0 or gen.rounds > g.max_refills:
            break
    gen.fill(run.groups_per_rank)
    return gen


def _generate_and_score(run: _Run, rows: list[dict], *, seed: int, gen: Generation):
    """`group_size` completions of each row from the engine, and their rewards (timed into `gen`)."""
    g, ro = run.config.grpo, run.config.rollout
    t0 = time.perf_counter()
    groups = [RequestGroup(problem_id=r["problem_id"], messages=messages_for(r, run.config.prompts),
                           sampling=run.engine.sampling(seed=seed), sample_indices=tuple(range(g.group_size))) for r in rows]
    results = run.engine.generate(groups)
    gen.t_gen += time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = [{**{k: r.get(k) for k in ("problem_id", "reference_answer", "tests", "domain")}, "completion": c.text,
                "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens, "max_tokens": ro.max_completion_length}
               for r, comps in zip(rows, results) for c in comps]
    scored = run.scorer.score(samples)
    gen.t_score += time.perf_counter() - t0
    return results, scored


def _advantages(run: _Run, rewards: torch.Tensor) -> torch.Tensor:
    """Advantages of the kept groups' rewards; `scale_rewards: batch` divides by the std of the
    whole batch over all ranks (from all-reduced moments)."""
    g = run.config.grpo
    if g.scale_rewards != "batch":
        return group_advantages(rewards, g.group_size, g.scale_rewards)
    s = _reduce(torch.tensor([rewards.sum(), (rewards ** 2).sum(), float(rewards.numel())], dtype=torch.float64, device=run.env.device),
                run.env, run.config.rollout.sync_timeout_s, "reward moments").cpu()
    mean = s[0] / s[2]
    std = torch.sqrt((s[1] - s[2] * mean ** 2) / (s[2] - 1).clamp(min=1))
    grouped = rewards.view(-1, g.group_size)
    return ((grouped - grouped.mean(1, keepdim=True)).view(-1) / (float(std) + ADV_EPS)).float()


def _update(run: _Run, batch: RolloutBatch) -> tuple[dict[str, float], float, float]:
    """`num_iterations` policy updates on the generation batch, then a scheduler step; (the loss
    sums of the last update, its pre-clip grad norm, the seconds spent, old/ref scoring included)."""
    g, ro, env = run.config.grpo, run.config.rollout, run.env
    t0 = time.perf_counter()
    if g.num_iterations > 1:
        batch.old_logps = score_logps(run.model, batch, ro.temperature, g.micro_batch_size)
    if run.ref_model is not None:
        batch.ref_logps = score_logps(run.ref_model, batch, ro.temperature, g.micro_batch_size)
    local = torch.tensor([float(len(batch)), float(batch.completion_mask.sum())], device=env.device)
    n_seq, n_tok = _reduce(local, env, ro.sync_timeout_s, "batch sizes").tolist()
    n_chunks = math.ceil(len(batch) / g.micro_batch_size) * env.world_size
    totals: dict[str, float] = {}
    grad_norm = 0.0
    for _ in range(g.num_iterations):
        run.optimizer.zero_grad(set_to_none=True)
        totals = accumulate_gradients(
            run.model, batch, g, temperature=ro.temperature, max_completion_length=ro.max_completion_length,
            micro_batch_size=g.micro_batch_size, num_sequences=int(n_seq), num_tokens=n_tok, num_chunks=n_chunks,
            loss_scale=float(env.world_size) if run.fsdp else 1.0,
        )
        if env.distributed and not run.fsdp:  # strategy none: sum the ranks' gradients here
            _all_reduce_grads(run.params, env, ro.sync_timeout_s)
        grad_norm = clip_gradients(run.params, run.config.optim.max_grad_norm)
        run.optimizer.step()
    run.scheduler.step()
    return totals, grad_norm, time.perf_counter() - t0


def _step_metrics(run: _Run, gen: Generation, totals: dict[str, float], grad_norm: float, t_train: float, t_start: float) -> dict:
    """The step's metrics row. Rewards and lengths are over every completion generated this step
    (refills included); loss, KL, entropy and clip fractions over the trained batch."""
    env = run.env
    sums = _reduce(torch.tensor([totals["loss"], totals["tokens"], totals["clip_low"], totals["clip_high"], totals["kl"],
                                 totals["entropy"], sum(gen.rewards), float(len(gen.rewards))], dtype=torch.float64,
                                device=env.device), env, run.config.rollout.sync_timeout_s, "step metrics").tolist()
    elapsed = time.perf_counter() - t_start
    lengths, tokens = gen.lengths, max(sums[1], 1.0)
    return {
        "loss": sums[0],
        "reward": sums[6] / max(sums[7], 1.0),  # all ranks
        "reward_std": _std(gen.rewards),  # this rank's, as the per-function breakdown below
        **{f"reward/{k}": sum(v) / len(v) for k, v in gen.per_fn.items()},
        **{f"reward/{k}_std": _std(v) for k, v in gen.per_fn.items()},
        "completion_length": sum(lengths) / len(lengths),
        "completion_length_max": float(max(lengths)),
        "clipped_ratio": gen.truncated / len(lengths),
        "kl": sums[4] / tokens,
        "entropy": sums[5] / tokens,
        "clip_ratio/low": sums[2] / tokens,
        "clip_ratio/high": sums[3] / tokens,
        "frac_zero_std_groups": gen.zero_std_first or 0.0,  # of the first generation round
        "frac_zero_std_groups_kept": float(zero_std_groups(gen.kept_rewards(), run.config.grpo.group_size).float().mean()),
        "generation_rounds": float(gen.rounds),
        "grad_norm": grad_norm,
        "lr": run.scheduler.get_last_lr()[0],
        "tokens_per_s": sum(lengths) * env.world_size / max(elapsed, 1e-9),  # completion tokens generated, all ranks
        "time/generation_s": gen.t_gen,
        "time/scoring_s": gen.t_score,
        "time/training_s": t_train,
        "step_s": elapsed,
    }


def _save(run: _Run, step: int, row: dict) -> None:
    """Checkpoint `step`: the policy, optimizer, scheduler, RNG, every rank's prompt stream, the grpo
    section and the reference fingerprint; mirrored to `checkpoint.store` when set."""
    ck = run.config.checkpoint
    streams = _gather_objects(run.stream.state(), run.env, run.config.rollout.sync_timeout_s)
    state = {"total_steps": run.config.grpo.max_steps, "metrics": row, "prompt_streams": streams,
             "grpo": run.config.grpo.model_dump(mode="json"), "reference_fingerprint": run.ref_print}
    path = save_checkpoint(run.out_dir / "checkpoints", step, run.model, run.optimizer, run.scheduler, state, run.env,
                           keep_last=ck.keep_last)
    if ck.store and run.env.is_main:
        upload_checkpoint(path, ck.store, run.prefix)


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.grpo CONFIG.yaml` (or under torchrun). Exit 2 on a bad config."""
    parser = argparse.ArgumentParser(prog="trainer.grpo", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the recipe YAML (its header comment is the launch command)")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="stop and checkpoint after step N (a preemption drill; resume by running again)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = train(load_config(args.config), stop_after_steps=args.stop_after_steps)
    except BadInput as exc:
        log.error("%s", exc)
        from .distributed import close_distributed

        close_distributed()
        return 2
    last = result["history"][-1] if result["history"] else {}
    log.info("done: %d steps, last reward %.3f, model %s", result["steps"], last.get("reward", float("nan")), result["exported"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
