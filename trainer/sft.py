"""Supervised fine-tuning on chat-formatted reasoning traces from the lake; also the
sequence-level distillation recipe (SFT on teacher traces, as in DeepSeek-R1-Distill).

    torchrun --nproc-per-node 8 -m trainer.sft recipes/train/sft.yaml
    python -m trainer.sft recipes/train/sft_tiny.yaml          # one process, CPU or one GPU
    factory train sft recipes/train/sft.yaml --nproc-per-node 8

    from trainer import sft
    result = sft.train(sft.load_config("recipes/train/sft_tiny.yaml"))

Steps: read rows (trainer/data.py) -> tokenise with the student's chat template, loss on the
assistant turn -> best-fit-decreasing packing (trainer/packing.py) -> FSDP2 when world > 1
(trainer/distributed.py) -> the shared loop (trainer/loop.py): token- or sequence-weighted
cross-entropy normalised over the global step, AdamW, checkpoints, metrics, HF export.
The LM head and the cross-entropy run over `loop.loss_chunk_tokens` supervised tokens at a time
(trainer/losses.py `chunked_head_loss`), so the [tokens, vocab] logits never exist whole.

Not covered: multi-turn supervision of every assistant turn, NEFTune noise, packing across
epochs (each epoch is packed and shuffled on its own).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from .config import CheckpointConfig, DataConfig, DistributedConfig, LoopConfig, MetricsConfig, ModelConfig, OptimConfig, load_yaml
from .data import Example, read_rows, tokenize_rows
from .distributed import close_distributed, init_distributed, shard_model
from .loop import LossOut, fit
from .losses import chunked_head_loss, token_nll, weighted_sum
from .model import build_model, load_tokenizer
from .packing import Batch

log = logging.getLogger(__name__)


class Config(BaseModel):
    """An SFT run. Sections: see trainer/config.py."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    output_dir: str = "runs/sft"
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    loop: LoopConfig = LoopConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    distributed: DistributedConfig = DistributedConfig()
    metrics: MetricsConfig = MetricsConfig()


def load_config(path: str | Path) -> Config:
    """Read an SFT YAML config (BadInput names the file, the key path and what was expected)."""
    return load_yaml(path, Config)


def forward_logits(model: torch.nn.Module, batch: Batch, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a packed batch: positions restart per document and no attention mask is passed,
    so transformers builds the block-diagonal causal mask (see trainer/packing.py). With `keep`
    (sequence indices), only those positions go through the LM head."""
    kwargs = {"logits_to_keep": keep} if keep is not None else {}
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **kwargs).logits


def supervised_positions(batch: Batch) -> torch.Tensor:
    """Sequence indices where any row has a target: the LM head (the [tokens, vocab] matmul and
    softmax, the costliest part for a small model with a large vocabulary) runs only there."""
    return (batch.doc_ids >= 0).any(0).nonzero().squeeze(1)


def forward_hidden(model: torch.nn.Module, batch: Batch, run=None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(final hidden states [rows, T, H] as the LM head receives them, anchor, run's result) of a
    packed batch, the LM head itself run on no position. A forward pre-hook on the output
    embeddings takes the head's input and hands it an empty slice, so this works for any causal
    LM (through peft too) without knowing where its final norm sits.

    `run(hidden, head)`, if given, is called inside the hook, i.e. while the model's forward is
    running: under FSDP2 the root's parameters (the head's weight among them) are gathered then,
    which is why the distillation loss is computed inside the teacher's forward. `anchor` is a
    zero scalar tied to the model's output: adding it to the loss makes the backward pass
    through the output, as FSDP2's backward hooks expect."""
    head = model.get_output_embeddings()
    box: dict[str, Any] = {"busy": False}

    def take(module, args):
        if box["busy"]:  # `run` calling the head itself
            return None
        hidden = args[0]
        box["hidden"] = hidden
        if run is not None:
            box["busy"] = True
            try:
                with torch.enable_grad():
                    box["result"] = run(hidden, module)
            finally:
                box["busy"] = False
        return (hidden[..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    finally:
        handle.remove()
    return box["hidden"], logits.sum(), box.get("result")


def supervised_rows(batch: Batch, hidden: torch.Tensor, doc_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask [rows, T], hidden [N, H], labels [N], weights [N]) of the N supervised tokens of a
    batch, packed rows flattened: each token weighs what its document does (as weighted_sum)."""
    sel = batch.doc_ids >= 0
    weights = doc_weights.to(hidden.device, torch.float32)[batch.doc_ids[sel]]
    return sel, hidden[sel], batch.labels[sel], weights


def sft_loss(model: torch.nn.Module, batch: Batch, doc_weights: torch.Tensor, rows: list[list[Example]], step: int) -> LossOut:
    """Weighted cross-entropy sum over the micro-batch's assistant tokens, all logits at once
    (the reference the chunked loss is tested against; `loop.loss_chunk_tokens: 0`)."""
    keep = supervised_positions(batch)
    nll = token_nll(forward_logits(model, batch, keep), batch.labels[:, keep])
    return LossOut(weighted_sum(nll, batch.doc_ids[:, keep], doc_weights))


def make_sft_loss(chunk_tokens: int):
    """The SFT loss: `sft_loss` when chunk_tokens is 0, else the same sum with the LM head and
    cross-entropy over `chunk_tokens` supervised tokens at a time."""
    if not chunk_tokens:
        return sft_loss

    def chunked_sft_loss(model: torch.nn.Module, batch: Batch, doc_weights: torch.Tensor, rows: list[list[Example]], step: int) -> LossOut:
        hidden, anchor, _ = forward_hidden(model, batch)
        _, h, labels, weights = supervised_rows(batch, hidden, doc_weights)

        def per_chunk(logits: torch.Tensor, start: int, end: int):
            return token_nll(logits, labels[start:end]), {}

        total = chunked_head_loss(h, model.get_output_embeddings(), weights, per_chunk, chunk_tokens)
        return LossOut(total + anchor)

    return chunked_sft_loss


def prepare(config: Any, env) -> tuple[Any, list[Example], Any]:
    """(tokenizer, examples, data stats) of a recipe config: the data is read on every rank (a
    deterministic function of the config), so no rank waits on another."""
    tokenizer = load_tokenizer(config.model.tokenizer_path())
    examples, stats = tokenize_rows(read_rows(config.data), tokenizer, config.data)
    if env.is_main:
        log.info("data: %s", stats)
    return tokenizer, examples, stats


def train(config: Config, *, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Run SFT to the end (or `stop_after_steps`, checkpointing first: a preemption drill);
    return the final metrics."""
    env = init_distributed(config.distributed)
    tokenizer, examples, stats = prepare(config, env)
    model = build_model(config.model, tokenizer, env.device)
    model = shard_model(model, env, config.distributed)
    loss = make_sft_loss(config.loop.loss_chunk_tokens)
    result = fit(config, env, model, tokenizer, examples, loss, stop_after_steps=stop_after_steps)
    result["examples"] = stats.examples
    result["dropped_too_long"] = stats.dropped_too_long
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.sft CONFIG.yaml` (under torchrun for several processes)."""
    return run_main(argv, load_config, train, "trainer.sft")


def run_main(argv, load, run, name: str) -> int:
    """The shared `main` of the recipes: parse CONFIG.yaml, train, report; BadInput exits 2."""
    import argparse

    from storage.errors import BadInput

    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"Run the {name} recipe on a YAML config.")
    parser.add_argument("config", help="the recipe's YAML config")
    parser.add_argument("--stop-after-steps", type=int, default=None, help="stop (and checkpoint) after N steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
        result = run(config, stop_after_steps=args.stop_after_steps)
    except BadInput as exc:
        logging.getLogger(name).error("%s", exc)
        close_distributed()
        return 2
    close_distributed()
    log.info("done: %s", {k: v for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
