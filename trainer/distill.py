"""Distillation of a teacher into a student that shares its tokenizer: sequence-level (SFT on the
teacher's traces), logit-level (forward KL, reverse KL or generalized JSD against the teacher's
full distribution, with an on-policy fraction as in GKD) and offline sparse KD (the teacher's
top-k log-probs stored with the samples).

    torchrun --nproc-per-node 8 -m trainer.distill recipes/train/distill.yaml
    python -m trainer.distill recipes/train/distill_tiny.yaml
    factory train distill recipes/train/distill.yaml --nproc-per-node 8

Modes (`kd.mode`):
- sequence: the R1-Distill recipe; identical to trainer/sft.py on the teacher's traces.
- logits: the teacher (a frozen model, FSDP-sharded like the student) scores every supervised
  position; loss = (1 - ce_weight) * divergence + ce_weight * cross-entropy. With probability
  `on_policy_fraction` a step instead trains on completions the student samples from the
  prompts of that step (GKD, Agarwal et al. 2024): the teacher scores the student's own
  tokens, the divergence is taken there (no cross-entropy: there is no reference), and the
  loss is a per-micro-batch mean over the sampled tokens. The choice is a function of
  (seed, step), so every rank agrees and a resumed run makes the same choices.
- sparse: no teacher model at run time; the teacher's top-k log-probs come from the lake's
  `teacher_topk` table, which `factory run` fills when the recipe asks for them
  (`teacher.sampling.top_logprobs: k`; transformers, vLLM, or an OpenAI-compatible server that
  returns token ids). Each row is matched by its `sample_id` (or carries the table's
  `token_ids`, `top_ids`, `top_logprobs` columns, joined in its SELECT), and the teacher's
  generated token ids must equal the student's supervised tokens (same tokenizer, completion
  trained on as sampled): the first difference is a BadInput naming the sample. A completion cut
  at max_tokens has no teacher distribution for the end-of-turn token the template appends:
  that position gets no KD term (ce_weight can cover it). A row may instead carry, in its
  `metadata` JSON, `teacher_topk`: {"ids": [[k ids] per supervised token], "logprobs": [[k
  log-probs] ...]}, already in the order of the supervised tokens (the assistant turn through
  its end-of-turn token). Loss: cross-entropy against the (renormalised) top-k, which at k =
  vocabulary size is the logits mode's forward KL plus the teacher's entropy (a constant): the
  same gradients.

Memory: with `loop.loss_chunk_tokens` (default 4096) the student's and the teacher's LM heads
and the divergence run over that many supervised tokens at a time (trainer/losses.py
`chunked_head_loss`): the teacher's forward stops at its final hidden states, and each chunk's
teacher logits are made from them inside the teacher's forward (where FSDP2 holds its gathered
head), next to the student's chunk; neither [tokens, vocab] tensor exists whole.

Not covered: teachers with a different tokenizer (cross-tokenizer KD, ULD); caching teacher
logits to disk; speculative sampling for the on-policy part.
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator

from storage.errors import BadInput

from .config import ModelConfig, Section, load_yaml
from .data import IGNORE, Example
from .distributed import DistEnv, init_distributed, shard_model
from .loop import LossOut, fit
from .losses import chunked_head_loss, kd_divergence, sparse_kd, token_nll, weighted_sum
from .model import build_model
from .packing import Batch, collate
from .sft import Config as SFTConfig
from .sft import forward_hidden, forward_logits, make_sft_loss, prepare, run_main, supervised_positions, supervised_rows

log = logging.getLogger(__name__)


class KDConfig(Section):
    mode: Literal["sequence", "logits", "sparse"] = "logits"
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = 0.5  # generalized JSD: 0 is forward KL, 1 reverse KL
    temperature: float = 1.0  # softens both distributions
    ce_weight: float = 0.0  # logits/sparse: weight of cross-entropy on the data's tokens
    on_policy_fraction: float = 0.0  # logits: share of steps trained on the student's own samples
    max_new_tokens: int = 256  # on-policy sample length
    sample_temperature: float = 1.0
    topk_renormalize: bool = True  # sparse: renormalise the teacher's top-k to sum to one

    @model_validator(mode="after")
    def _ranges(self) -> KDConfig:
        for name in ("beta", "ce_weight", "on_policy_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} {v}: expected a number in [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"temperature {self.temperature}: expected > 0")
        if self.on_policy_fraction and self.mode != "logits":
            raise ValueError("on_policy_fraction needs mode: logits (a teacher to score the samples)")
        return self


class Config(SFTConfig):
    """A distillation run: the SFT sections plus the teacher and the KD settings."""

    output_dir: str = "runs/distill"
    teacher: ModelConfig | None = None
    kd: KDConfig = KDConfig()

    @model_validator(mode="after")
    def _teacher_needed(self) -> Config:
        if self.kd.mode == "logits" and self.teacher is None:
            raise ValueError("kd.mode logits needs a teacher: section (a local HF folder or tiny sizes)")
        return self


def load_config(path: str | Path) -> Config:
    """Read a distillation YAML config (BadInput names the file, the key path and what was expected)."""
    return load_yaml(path, Config)


def is_on_policy_step(seed: int, step: int, fraction: float) -> bool:
    return fraction > 0 and random.Random(seed * 7919 + step).random() < fraction


def sample_on_policy(model, rows: list[list[Example]], tokenizer, kd: KDConfig, env: DistEnv) -> tuple[Batch, list[Example]]:
    """The student's completions of the prompts in `rows` as a batch whose labels are the sampled
    tokens through the first end-of-turn token."""
    prompts = [ex.input_ids[: ex.prompt_len] for row in rows for ex in row]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: generation continues every prompt at the same column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(env.device),
            attention_mask=mask.to(env.device),
            do_sample=True,
            temperature=kd.sample_temperature,
            top_k=0,
            max_new_tokens=kd.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            # Every rank must run the same number of forwards under FSDP (each gathers weights).
            synced_gpus=env.distributed,
        )
    model.train(was_training)
    made: list[Example] = []
    for i, p in enumerate(prompts):
        gen = out[i, width:].tolist()
        if tokenizer.eos_token_id in gen:
            gen = gen[: gen.index(tokenizer.eos_token_id) + 1]
        if not gen:
            gen = [tokenizer.eos_token_id]
        made.append(Example(input_ids=p + gen, labels=[IGNORE] * len(p) + gen, prompt_len=len(p), row=-1))
    return collate([[e] for e in made], pad), made


def attach_topk(examples: list[Example], data, tokenizer) -> None:
    """Give every example without `teacher_topk` its sample's stored top-k, aligned with its
    supervised tokens (see the module docstring); BadInput for a row that has none or whose
    tokens differ from the teacher's."""
    need = [ex for ex in examples if "teacher_topk" not in ex.extra]
    lookup = sorted({ex.extra["sample_id"] for ex in need if "topk_record" not in ex.extra and ex.extra.get("sample_id")})
    stored = read_topk(data, lookup) if lookup else {}
    for ex in need:
        sid = ex.extra.get("sample_id")
        where = f"row {ex.row}" + (f" (sample_id {sid})" if sid else "")
        record = ex.extra.pop("topk_record", None) or stored.get(sid)
        if record is None:
            why = "no row in the lake's teacher_topk table" if sid else "no sample_id to find it in the lake's teacher_topk table"
            raise BadInput(f"{where}: kd.mode sparse needs the teacher's top-k log-probs: {why} "
                           "(sample with teacher.sampling.top_logprobs, or give metadata.teacher_topk)")
        ex.extra["teacher_topk"] = align_topk(ex, record, tokenizer, where)


def read_topk(data, sample_ids: list[str]) -> dict[str, dict]:
    """The `teacher_topk` rows of `sample_ids` from the configured lake (the newest per sample)."""
    import pyarrow as pa

    from storage import Lake

    with Lake.open(data.store, data.catalog, create=False) as lake:
        rows = lake.query(
            "SELECT t.sample_id, t.token_ids, t.top_ids, t.top_logprobs FROM teacher_topk t JOIN _ids USING (sample_id) ORDER BY t.created_at",
            tables={"_ids": pa.table({"sample_id": sample_ids})},
        ).to_pylist()
    return {r["sample_id"]: r for r in rows}


def align_topk(ex: Example, record: dict, tokenizer, where: str) -> dict:
    """A stored top-k record as {"ids", "logprobs"} per supervised token of `ex`: the teacher's
    generated ids must be the supervised tokens; one trailing end-of-turn token past a
    completion cut at max_tokens gets ids -1 (no KD term)."""
    generated, top_ids = record.get("token_ids"), record.get("top_ids")
    if generated is None or top_ids is None:
        raise BadInput(f"{where}: the stored top-k has token strings but no token ids; sparse KD needs ids "
                       "(openai backend on vLLM's server: teacher.logprob_token_ids: true; or the vllm or transformers backend)")
    supervised = [t for t in ex.labels if t != IGNORE]
    n = min(len(generated), len(supervised))
    bad = next((j for j in range(n) if generated[j] != supervised[j]), None)
    if bad is not None:
        raise BadInput(f"{where}: the student's token {bad} of the completion is {tokenizer.decode([supervised[bad]])!r}, the teacher "
                       f"generated {tokenizer.decode([generated[bad]])!r}: sparse KD needs the teacher's tokenizer and the completion "
                       "trained on as it was sampled")
    extra = len(supervised) - n
    if extra > 1 or (extra == 1 and supervised[-1] != tokenizer.eos_token_id):
        raise BadInput(f"{where}: {len(supervised)} supervised tokens, but the teacher's top-k covers {len(generated)}")
    neg = float("-inf")
    return {"ids": [list(r) for r in top_ids[:n]] + [[-1]] * extra, "logprobs": [list(r) for r in record["top_logprobs"][:n]] + [[neg]] * extra}


def check_topk_ids(examples: list[Example], vocab: int) -> None:
    """BadInput for a top-k id outside the student's vocabulary (-1 marks "none"): a teacher
    with a larger vocabulary, or a hand-written metadata.teacher_topk, would otherwise fail deep
    in torch with an index error."""
    for ex in examples:
        top = ex.extra.get("teacher_topk")
        for pos, ids in enumerate((top or {}).get("ids") or ()):
            bad = next((i for i in ids if not -1 <= i < vocab), None)
            if bad is not None:
                where = f"row {ex.row}" + (f" (sample_id {ex.extra['sample_id']})" if ex.extra.get("sample_id") else "")
                raise BadInput(f"{where}: teacher top-k id {bad} at supervised token {pos} is outside the student's vocabulary "
                               f"(0..{vocab - 1}): sparse KD needs a teacher that shares the student's tokenizer")


def topk_tensors(batch: Batch, rows: list[list[Example]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, T, K] teacher ids (-1 = none) and log-probs at the batch's supervised positions."""
    k = max((len(ids) for row in rows for ex in row for ids in ex.extra.get("teacher_topk", {}).get("ids") or ()), default=1)
    n, t = batch.labels.shape
    ids = torch.full((n, t, k), -1, dtype=torch.long)
    lps = torch.full((n, t, k), float("-inf"))
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            top = ex.extra.get("teacher_topk")
            where = f"row {ex.row}"
            if not top:
                raise BadInput(f"{where}: kd.mode sparse needs metadata.teacher_topk (ids and logprobs per supervised token)")
            positions = [at + j for j in range(len(ex) - 1) if ex.labels[j + 1] != IGNORE]
            if len(top["ids"]) < len(positions) or len(top["logprobs"]) < len(positions):
                raise BadInput(f"{where}: metadata.teacher_topk has {len(top['ids'])} positions; expected one per supervised token ({len(positions)})")
            for pos, tid, tlp in zip(positions, top["ids"], top["logprobs"]):
                ids[r, pos, : len(tid)] = torch.tensor(tid)
                lps[r, pos, : len(tlp)] = torch.tensor(tlp, dtype=torch.float32)
            at += len(ex)
    return ids, lps


def make_kd_loss(config: Config, teacher, tokenizer, env: DistEnv):
    kd = config.kd
    vocab = len(tokenizer)
    chunk_tokens = config.loop.loss_chunk_tokens

    def loss(model, batch: Batch, doc_weights: torch.Tensor, rows: list[list[Example]], step: int) -> LossOut:
        denominator = None
        ce_w = kd.ce_weight
        if kd.mode == "logits" and is_on_policy_step(config.loop.seed, step, kd.on_policy_fraction):
            batch, made = sample_on_policy(model, rows, tokenizer, kd, env)
            batch.to(env.device)
            if config.data.loss_weighting == "sequence":
                doc_weights = torch.tensor([1.0 / max(e.n_supervised, 1) for e in made], device=env.device)
                denominator = float(len(made))
            else:
                doc_weights = torch.ones(len(made), device=env.device)
                denominator = float(sum(e.n_supervised for e in made))
            ce_w = 0.0
        flags = {"on_policy": float(denominator is not None)} if kd.on_policy_fraction else {}
        if chunk_tokens:
            total, metrics = chunked_kd(model, batch, doc_weights, rows, ce_w)
            return LossOut(total, metrics, denominator, flags)
        keep = supervised_positions(batch)
        labels, doc_ids = batch.labels[:, keep], batch.doc_ids[:, keep]
        logits = forward_logits(model, batch, keep)[..., :vocab]
        sel = doc_ids >= 0
        div = torch.zeros(labels.shape, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
        if kd.mode == "logits":
            with torch.no_grad():
                t_logits = forward_logits(teacher, batch, keep)[..., :vocab]
            div[sel] = kd_divergence(logits[sel], t_logits[sel], kd.loss, kd.beta, kd.temperature)
        else:
            ids, lps = topk_tensors(batch, rows)
            ids, lps = ids[:, keep.cpu()].to(logits.device), lps[:, keep.cpu()].to(logits.device)
            div[sel] = sparse_kd(logits[sel], ids[sel], lps[sel], kd.temperature, kd.topk_renormalize)
        kd_sum = weighted_sum(div, doc_ids, doc_weights)
        total = (1.0 - ce_w) * kd_sum
        metrics = {"kd": float(kd_sum.detach())}
        if ce_w > 0:
            ce_sum = weighted_sum(token_nll(logits, labels), doc_ids, doc_weights)
            total = total + ce_w * ce_sum
            metrics["ce"] = float(ce_sum.detach())
        return LossOut(total, metrics, denominator, flags)

    def chunked_kd(model, batch: Batch, doc_weights: torch.Tensor, rows: list[list[Example]], ce_w: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The same weighted sum as the unchunked path, over `chunk_tokens` supervised tokens at a time."""
        hidden, anchor, _ = forward_hidden(model, batch)
        sel, h, labels, weights = supervised_rows(batch, hidden, doc_weights)
        head = model.get_output_embeddings()
        sums: dict[str, float] = {}

        def per_chunk_with(teacher_logits):
            def per_chunk(logits: torch.Tensor, start: int, end: int):
                logits = logits[..., :vocab]
                if kd.mode == "logits":
                    div = kd_divergence(logits, teacher_logits(start, end)[..., :vocab], kd.loss, kd.beta, kd.temperature)
                else:
                    div = sparse_kd(logits, ids[start:end], lps[start:end], kd.temperature, kd.topk_renormalize)
                objective, extra = (1.0 - ce_w) * div, {"kd": div}
                if ce_w > 0:
                    nll = token_nll(logits, labels[start:end])
                    objective, extra["ce"] = objective + ce_w * nll, nll
                return objective, extra

            return per_chunk

        if kd.mode == "logits":

            def run(t_hidden: torch.Tensor, t_head: torch.nn.Module) -> torch.Tensor:
                t_h = t_hidden[sel].detach()

                def teacher_logits(start: int, end: int) -> torch.Tensor:
                    with torch.no_grad():
                        return t_head(t_h[start:end])

                return chunked_head_loss(h, head, weights, per_chunk_with(teacher_logits), chunk_tokens, sums)

            with torch.no_grad():
                _, _, total = forward_hidden(teacher, batch, run=run)
        else:
            all_ids, all_lps = topk_tensors(batch, rows)
            ids, lps = all_ids[sel.cpu()].to(h.device), all_lps[sel.cpu()].to(h.device)
            total = chunked_head_loss(h, head, weights, per_chunk_with(None), chunk_tokens, sums)
        return total + anchor, sums

    return loss


def train(config: Config, *, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Run distillation to the end (or `stop_after_steps`); return the final metrics."""
    env = init_distributed(config.distributed)
    tokenizer, examples, stats = prepare(config, env)
    if config.kd.mode == "sparse":
        attach_topk(examples, config.data, tokenizer)
    model = build_model(config.model, tokenizer, env.device)
    if config.kd.mode == "sparse":
        check_topk_ids(examples, model.get_input_embeddings().weight.shape[0])
    model = shard_model(model, env, config.distributed)
    if config.kd.mode == "sequence":
        loss = make_sft_loss(config.loop.loss_chunk_tokens)
    else:
        teacher = None
        if config.kd.mode == "logits":
            teacher = build_model(config.teacher, tokenizer, env.device, field="teacher")
            teacher.requires_grad_(False)
            teacher.eval()
            teacher = shard_model(teacher, env, config.distributed, trainable=False)
        loss = make_kd_loss(config, teacher, tokenizer, env)
    result = fit(config, env, model, tokenizer, examples, loss, stop_after_steps=stop_after_steps)
    result["examples"] = stats.examples
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.distill CONFIG.yaml` (under torchrun for several processes)."""
    return run_main(argv, load_config, train, "trainer.distill")


if __name__ == "__main__":
    sys.exit(main())
