"""The torchrun world a recipe runs in, and FSDP2 sharding of a model inside it.

    env = init_distributed(DistributedConfig())     # reads RANK/WORLD_SIZE/LOCAL_RANK from torchrun
    model = shard_model(model, env, DistributedConfig())
    ...
    close_distributed()

Without torchrun's variables this is one process with no process group (plain `python -m`).
With them: gloo on CPU, nccl on CUDA, one device per local rank. `shard_model` applies FSDP2
`fully_shard` to every decoder layer and then the root (parameters sharded across the world,
gathered layer by layer), with a bf16 `MixedPrecisionPolicy` (fp32 reductions) and
non-reentrant activation checkpointing on CUDA. On one process the model is left as it is.

Not covered: tensor/pipeline/context parallelism, HSDP (replicate across nodes, shard within),
CPU offload of parameters.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import DistributedConfig
from .model import decoder_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(cfg: DistributedConfig, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from storage.errors import BadInput

            raise BadInput("distributed.device: cuda was asked for but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(cfg: DistributedConfig | None = None) -> DistEnv:
    """Join the torchrun world (or be a world of one); idempotent."""
    cfg = cfg or DistributedConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg, local_rank)
    # Under torchrun (MASTER_ADDR set) a world of one still gets a process group when FSDP is
    # forced, since fully_shard builds its device mesh on the default group.
    wants_group = world > 1 or (cfg.strategy == "fsdp" and "MASTER_ADDR" in os.environ)
    if wants_group and not dist.is_initialized():
        backend = cfg.backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=cfg.timeout_s), **kwargs)
        log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over the world (a copy; the world of one returns it unchanged)."""
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj, env: DistEnv):
    """Rank 0's Python object on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def uses_fsdp(env: DistEnv, cfg: DistributedConfig) -> bool:
    return cfg.strategy == "fsdp" or (cfg.strategy == "auto" and env.distributed)


def uses_bf16(env: DistEnv, cfg: DistributedConfig) -> bool:
    return cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and env.device.type == "cuda")


def shard_model(model: torch.nn.Module, env: DistEnv, cfg: DistributedConfig, *, trainable: bool = True) -> torch.nn.Module:
    """FSDP2 per decoder layer then the root, bf16 mixed precision and activation checkpointing
    as `cfg` says; a frozen model (a teacher) gets sharding but no checkpointing."""
    ac = cfg.activation_checkpointing if cfg.activation_checkpointing is not None else env.device.type == "cuda"
    if ac and trainable:
        # Non-reentrant checkpointing composes with FSDP2 (reentrant would re-gather in backward twice).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if not uses_fsdp(env, cfg):
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        from storage.errors import BadInput

        raise BadInput("distributed.strategy fsdp needs a process group: launch with torchrun (factory train ... --nproc-per-node N)")

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if uses_bf16(env, cfg) else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def autocast(env: DistEnv, cfg: DistributedConfig):
    """bf16 autocast for a single CUDA process (FSDP's policy casts in the sharded case)."""
    import contextlib

    if env.device.type == "cuda" and uses_bf16(env, cfg) and not uses_fsdp(env, cfg):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
