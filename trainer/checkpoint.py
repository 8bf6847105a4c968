"""Checkpoints that resume exactly, and the Hugging Face export.

    save_checkpoint(out / "checkpoints", step, model, optimizer, scheduler, state, env)
    path = latest_checkpoint(out / "checkpoints")           # newest complete step-N, or None
    state = load_checkpoint(path, model, optimizer, scheduler, env)
    export_hf(model, tokenizer, out / "hf", env)            # transformers / vLLM load this folder

A checkpoint `step-N/` holds the model and optimizer as a torch.distributed.checkpoint (DCP)
directory (each rank writes its own shards, so an FSDP2 32B model never gathers on one rank),
`trainer_state.json` (step, data position, metrics so far, the scheduler), `rng-rank{R}.pt`
(python, numpy, torch CPU and CUDA generator states of each rank) and, last, an empty `COMPLETE`
marker: a checkpoint without it (a killed save) is ignored. Resuming restores all of them, so
the loss curve after resume is the uninterrupted one.

With a store (`CheckpointConfig.store`: a directory or s3://bucket/prefix) each complete
checkpoint is also uploaded to the lake's artifact store (storage.artifacts.ArtifactStore)
under `<prefix>/step-N/...`, and resume downloads the newest one when the local folder has none.

Not covered: resharding to a different world size through the trainer_state (DCP itself reshards
model and optimizer); async checkpointing.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from .distributed import DistEnv, barrier, broadcast_object

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE).exists() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=_step_of)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:  # numpy's global generator too (older checkpoints lack it: then it is left as it is)
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with the train extra
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(
    root: str | Path, step: int, model, optimizer, scheduler, state: dict[str, Any], env: DistEnv, keep_last: int = 2
) -> Path:
    """Write `root/step-N` (all ranks call this); return its path."""
    path = Path(root) / f"step-{step}"
    if env.is_main and path.exists():
        shutil.rmtree(path)  # a half-written one from a killed run
    barrier(env)
    msd, osd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process without a process group is the intended case
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))
    torch.save(rng_state(), path / f"rng-rank{env.rank}.pt")
    if env.is_main:
        full = {**state, "step": step, "scheduler": scheduler.state_dict(), "world_size": env.world_size}
        (path / "trainer_state.json").write_text(json.dumps(full, indent=1, default=str))
    barrier(env)
    if env.is_main:
        (path / COMPLETE).touch()
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    log.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | Path, model, optimizer, scheduler, env: DistEnv) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG from `path`; return trainer state."""
    path = Path(path)
    try:
        _load_dcp(path, model, optimizer)
    except (RuntimeError, CheckpointException) as exc:  # DCP wraps the missing key in a BaseException
        if "optim.param_groups" not in str(exc) or len(optimizer.param_groups) < 2:
            raise
        _load_one_group(path, model, optimizer)
    state = json.loads((path / "trainer_state.json").read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    rng = path / f"rng-rank{env.rank}.pt"
    if rng.exists() and state.get("world_size") == env.world_size:
        set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("%s: no RNG state for rank %d of %d; sampling continues from a fresh seed", path, env.rank, env.world_size)
    log.info("resumed from %s at step %d", path, state["step"])
    return state


def _load_dcp(path: Path, model, optimizer) -> None:
    msd, osd = get_state_dict(model, optimizer)
    box = {"model": msd, "optim": osd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(box, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=box["model"], optim_state_dict=box["optim"])


def _load_one_group(path: Path, model, optimizer) -> None:
    """A checkpoint whose optimizer had one parameter group: GRPO's, before trainer/optim.py gave
    biases and norms a group without weight decay. Its moments and step counts are the run's
    paid-for state, so they are loaded through a one-group AdamW and handed to `optimizer`."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    order = {id(p): i for i, p in enumerate(model.parameters())}
    params.sort(key=lambda p: order.get(id(p), len(order)))
    legacy = torch.optim.AdamW(params)
    legacy.param_groups[0].update({k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    _load_dcp(path, model, legacy)
    for p in params:
        if p in legacy.state:
            optimizer.state[p] = legacy.state[p]
    for group in optimizer.param_groups:  # the learning rate where the run stopped, as a normal resume sets it
        group.update({k: legacy.param_groups[0][k] for k in ("lr", "initial_lr") if k in legacy.param_groups[0]})
    log.warning("%s: the optimizer was saved with one parameter group (no weight-decay exemption for biases and norms); "
                "its state is kept and the run goes on with this version's groups", path)


# -- the artifact store -------------------------------------------------------------------


def upload_checkpoint(path: Path, store: str, prefix: str) -> list[str]:
    """Copy a complete checkpoint folder into the lake's artifact store; COMPLETE goes last."""
    from storage.artifacts import ArtifactStore
    from storage.config import LakeConfig

    artifacts = ArtifactStore(LakeConfig.resolve(store))
    if artifacts.config.is_s3:
        artifacts.ensure_bucket()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMPLETE)
    keys = [artifacts.put_file(p, f"{prefix}/{path.name}/{p.relative_to(path).as_posix()}") for p in files]
    keys.append(artifacts.put_file(path / COMPLETE, f"{prefix}/{path.name}/{COMPLETE}"))
    return keys


def download_latest(store: str, prefix: str, root: Path) -> Path | None:
    """The newest complete checkpoint under `prefix` in the store, copied into `root`."""
    from storage.artifacts import ArtifactStore
    from storage.config import LakeConfig

    artifacts = ArtifactStore(LakeConfig.resolve(store))
    if artifacts.config.is_s3:
        artifacts.ensure_bucket()  # a first run: the bucket the checkpoints will go to may not exist yet
    keys = artifacts.list(prefix + "/")
    steps = sorted({k.split("/")[-2] for k in keys if k.endswith("/" + COMPLETE)}, key=lambda n: int(n.split("-", 1)[1]))
    if not steps:
        return None
    name = steps[-1]
    for key in keys:
        if f"/{name}/" in key:
            rel = key.split(f"/{name}/", 1)[1]
            artifacts.get_file(key, root / name / rel)
    return root / name


def find_resume_point(root: Path, store: str | None, prefix: str, env: DistEnv) -> Path | None:
    """The checkpoint to resume from (local first, then the store), agreed by all ranks."""
    path = latest_checkpoint(root)
    if path is None and store and env.is_main:
        path = download_latest(store, prefix, root)
    found = broadcast_object(str(path) if path else None, env)
    return Path(found) if found else None


# -- Hugging Face export ------------------------------------------------------------------


def export_hf(model, tokenizer, out_dir: str | Path, env: DistEnv, dtype: torch.dtype | None = None) -> Path | None:
    """Gather the full weights to rank 0 and write a transformers folder (config, safetensors,
    tokenizer with its chat template) that `from_pretrained` and vLLM load. LoRA adapters are
    merged into the base weights first."""
    out_dir = Path(out_dir)
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not env.is_main:
        barrier(env)
        return None
    target = model
    if hasattr(model, "merge_and_unload"):  # peft: rebuild the base model with merged weights
        import copy

        cpu = copy.deepcopy(model).to("cpu") if not env.distributed else None
        if cpu is None:
            raise NotImplementedError("exporting a LoRA model trained with FSDP: merge on one process from the checkpoint")
        target = cpu.merge_and_unload()
        sd = target.state_dict()
    if getattr(target.config, "tie_word_embeddings", False):
        # The gathered state dict holds the tied head as a separate copy; the folder must not.
        sd.pop("lm_head.weight", None)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    config = target.config
    config.use_cache = True
    # save_pretrained with an explicit state dict works on the (possibly sharded) module: the
    # weights written are the gathered ones.
    target.save_pretrained(str(out_dir), state_dict=sd, safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    barrier(env)
    log.info("exported Hugging Face model to %s", out_dir)
    return out_dir
