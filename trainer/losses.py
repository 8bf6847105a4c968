"""Loss functions: weighted cross-entropy for SFT, the distillation divergences, and GRPO's
policy loss and advantages.

    nll = token_nll(logits, labels)                         # [rows, T], 0 where label is IGNORE
    kd = kd_divergence(student_logits, teacher_logits, "jsd", beta=0.5)   # [rows, T]
    sparse = sparse_kd(student_logits, topk_ids, topk_logprobs)         # [rows, T]
    adv = group_advantages(rewards, group_size)                         # GRPO, [completions]
    loss, stats = grpo_loss(logps, adv, mask, loss_type="dapo")         # this micro-batch's share

Every function returns per-token values; the recipe weights and sums them and divides by the
step's global denominator (packing.step_weights), so gradient accumulation and any number of
ranks give the same gradient as one big batch.

Divergences (p_t teacher, p_s student, over the vocabulary, at temperature `temperature`):
- forward KL  KL(p_t || p_s) = sum p_t (log p_t - log p_s)       mode-covering (the classic KD)
- reverse KL  KL(p_s || p_t) = sum p_s (log p_s - log p_t)       mode-seeking (MiniLLM)
- generalized JSD (GKD, Agarwal et al. 2024; TRL's `generalized_jsd_loss`):
  m = beta p_t + (1 - beta) p_s,  JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m);
  beta = 0 is taken as forward KL and beta = 1 as reverse KL, as TRL does (the formula itself
  vanishes at both ends).
- sparse top-k KD: cross-entropy of the student against the teacher's top-k distribution
  (renormalised over the k ids), i.e. forward KL on the teacher's support up to a constant.

GRPO (trainer/grpo.py runs it; TRL's GRPOTrainer and the DAPO paper), per completion token t of
completion i:

    ratio    = exp(logp - logp_old)                   logp at temperature T: log_softmax(logits / T)
    clipped  = clamp(ratio, 1 - eps_low, 1 + eps_high)   (eps_high defaults to eps_low)
    loss_it  = -min(ratio * A_i, clipped * A_i) + beta * k3(logp, logp_ref)
    k3       = exp(ref - logp) - (ref - logp) - 1     (beta = 0: no reference model is loaded)

and the per-token losses are aggregated by `loss_type`:
- `grpo`: mean over completions of each completion's token mean (the original GRPO);
- `bnpo`: token mean over each micro-batch, then mean over micro-batches (TRL's bnpo: it
  depends on how the batch is cut, by definition; the others do not);
- `dr_grpo`: token sum / (completions x max_completion_length) (Dr. GRPO: no length bias);
- `dapo`: token sum / tokens of the whole generation batch, all ranks (DAPO's token-level loss).
Advantages: (r - mean_group) / (std + 1e-4), std the Bessel-corrected std of the group.

Chunked LM head (`chunked_head_loss`): for 150k-vocab students at 16-32k tokens the
[tokens, vocab] logits are the memory peak (~10 GB per sequence in fp32, twice that and more for
KD), so the recipes (`loop.loss_chunk_tokens`) take the final hidden states of the supervised
tokens, and run the LM head + loss over `chunk_tokens` of them at a time. The gradients of each
chunk (w.r.t. the hidden states and the head's parameters) are taken in the forward pass, right
after the chunk's loss, and the chunk's logits are freed; the backward only scales the stored
gradients by the incoming one. So neither pass holds more than one chunk's logits (plus the
head's [vocab, hidden] gradient, which any backward makes), the head runs once per token (no
recomputation), and the teacher's logits are needed only during the forward. It is exact:
the same per-token values and weights, summed in a different order.

    total = chunked_head_loss(hidden, head, token_weights, per_chunk, chunk_tokens=4096)
    # hidden [N, H]; per_chunk(logits [n, V], start, end) -> (per-token objective [n], {name: [n]})

Not covered: teacher/student vocabularies that differ; double backward through the chunked
head (its backward is not itself differentiable); models that change the logits after the LM
head (Gemma-2 soft-capping, Granite's logit scaling: the head module is called as it is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from .data import IGNORE


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 logits are upcast for the softmax; float64 stays float64, which
    the exactness tests use to see past fp32 rounding)."""
    return x if x.dtype == torch.float64 else x.float()


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (fp32), 0 where labels == IGNORE."""
    flat = F.cross_entropy(upcast(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    return flat.view(labels.shape)


def weighted_sum(per_token: torch.Tensor, doc_ids: torch.Tensor, doc_weights: torch.Tensor) -> torch.Tensor:
    """sum over supervised tokens of per_token * weight of its document (doc_ids -1: not counted)."""
    mask = doc_ids >= 0
    w = torch.zeros_like(per_token)
    w[mask] = doc_weights.to(per_token.device, per_token.dtype)[doc_ids[mask]]
    return (per_token * w).sum()


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_t || p_s) per position."""
    s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_s || p_t) per position."""
    s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    return (s.exp() * (s - t)).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per position (see the module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta {beta}: expected 0 <= beta <= 1")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    t = F.log_softmax(upcast(teacher_logits) / temperature, dim=-1)
    m = torch.logaddexp(t + math.log(beta), s + math.log(1.0 - beta))  # log of the mixture, stably
    kl_t = (t.exp() * (t - m)).sum(-1)
    kl_s = (s.exp() * (s - m)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """One of forward_kl | reverse_kl | jsd per position."""
    if kind == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature)
    if kind == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature)
    if kind == "jsd":
        return generalized_jsd(student_logits, teacher_logits, beta, temperature)
    raise ValueError(f"kd kind {kind!r}: expected forward_kl, reverse_kl or jsd")


def sparse_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, temperature: float = 1.0,
              renormalize: bool = True) -> torch.Tensor:
    """-sum_k q_k log p_s(id_k) per position, q = the teacher's top-k probabilities (renormalised
    to sum to 1 unless `renormalize` is False). Positions whose ids are all -1 give 0."""
    s = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    valid = topk_ids >= 0
    q = upcast(topk_logprobs).masked_fill(~valid, float("-inf"))
    if renormalize:
        q = torch.log_softmax(q, dim=-1)
    q = torch.nan_to_num(q.exp(), nan=0.0)
    picked = torch.gather(s, -1, topk_ids.clamp(min=0))
    return -(q * picked.masked_fill(~valid, 0.0)).sum(-1)


# per_chunk(logits of rows start:end, start, end) -> (per-token objective, {metric: per-token values})
ChunkFn = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class _ChunkedHead(torch.autograd.Function):
    """sum_i w_i * objective_i over rows of `hidden`, chunk by chunk, gradients taken in forward."""

    @staticmethod
    def forward(ctx, hidden, token_weights, head, per_chunk, chunk, metrics, need_grad, *params):
        n = hidden.shape[0]
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32 sums, float64 kept
        total = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_grad else None
        grad_p = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in params] if need_grad else []
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            with torch.set_grad_enabled(need_grad):
                h = hidden[start:end].detach().requires_grad_(need_grad)
                objective, extra = per_chunk(head(h), start, end)
                w = token_weights[start:end]
                part = (objective * w).sum()
            if need_grad:
                grads = torch.autograd.grad(part, [h, *params], allow_unused=True)
                grad_h[start:end] = grads[0]
                for acc, g in zip(grad_p, grads[1:]):
                    if g is not None:
                        acc += g
            total += part.detach().to(acc_dtype)
            for name, values in extra.items():
                metrics[name] = metrics.get(name, 0.0) + float((values.detach() * w).sum())
            del h, objective, extra, part  # the chunk's logits go with them
        ctx.grads = (grad_h, grad_p)
        ctx.param_dtypes = [p.dtype for p in params]
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_p = ctx.grads
        ctx.grads = None  # once: the stored gradients are consumed in place
        if grad_h is None:
            return (None,) * (7 + len(ctx.param_dtypes))
        g = grad_out.to(grad_h.dtype)
        out_p = [acc.mul_(grad_out).to(dt) for acc, dt in zip(grad_p, ctx.param_dtypes)]
        return (grad_h.mul_(g), None, None, None, None, None, None, *out_p)


def chunked_head_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    token_weights: torch.Tensor,
    per_chunk: ChunkFn,
    chunk_tokens: int,
    metrics: dict[str, float] | None = None,
) -> torch.Tensor:
    """sum_i token_weights[i] * objective_i, objective = per_chunk(head(hidden[s:e]), s, e)[0],
    with head(...) run on at most `chunk_tokens` rows at a time in forward and none in backward
    (see the module docstring). hidden: [N, H] (the supervised tokens' final hidden states);
    token_weights: [N] (a document's weight per token). `metrics` (if given) receives the
    weighted sums of per_chunk's extra per-token values. Gradients flow to `hidden` and to the
    head's trainable parameters."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens {chunk_tokens}: expected >= 1")
    params = [p for p in head.parameters() if p.requires_grad]
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or bool(params))
    weights = token_weights.to(hidden.device, torch.float32)
    return _ChunkedHead.apply(hidden, weights, head, per_chunk, chunk_tokens, metrics if metrics is not None else {}, need_grad, *params)


# --- GRPO -------------------------------------------------------------------------------------

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
ADV_EPS = 1e-4  # TRL's and the GRPO paper's guard against a zero std



def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = ADV_EPS) -> torch.Tensor:
    """Group-normalised advantages of rewards laid out group after group ([g0 s0, g0 s1, ..., g1 s0, ...]).

    scale: `group` divides by each group's std (Bessel-corrected), `batch` by the std of all
    rewards, `none` only centres. [1, 0, 0, 1] in a group of 4 gives +/-0.865875.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    elif scale == "none":
        return centred
    else:
        raise ValueError(f"scale {scale!r}: expected group, batch or none")
    return centred / (std + eps)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A bool per group: its rewards are all equal (no learning signal; dynamic sampling drops it)."""
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < 1e-12


def token_logps(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of `ids` under `logits / temperature` (same leading shape), and the
    entropy of each position's distribution. Computed in fp32; the logits are multiplied by 1/T
    (as TRL's fused head and vLLM do), which rounds differently from dividing by T."""
    logp_all = torch.log_softmax(logits.float() * (1.0 / temperature), dim=-1)
    logps = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps, entropy) of the last `completion_len` tokens of each row of `input_ids` (prompt then
    completion), from one forward pass that keeps only the logits it needs."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=completion_len + 1, use_cache=False)
    logits = out.logits[:, :-1]  # the logit at position p predicts token p + 1
    return token_logps(logits, input_ids[:, -completion_len:], temperature)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || ref) per token: exp(d) - d - 1, d = ref - logp (>= 0)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def clipped_ratio(logps: torch.Tensor, old_logps: torch.Tensor, epsilon_low: float, epsilon_high: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio, clamped ratio): exp(logp - logp_old), and it clamped to [1 - eps_low, 1 + eps_high]."""
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    return ratio, torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high)


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    num_chunks: int = 1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the GRPO loss, and sums for the metrics.

    logps, old_logps, ref_logps, mask: (B, T) over completion tokens; advantages: (B,).
    `old_logps` None: the rollout policy is the current one (one update per generation), ratio 1
    in value but with the gradient of logp. `num_sequences` / `num_tokens`: the completions and
    completion tokens of the whole optimizer step (all micro-batches, all ranks); None: this
    micro-batch's own (the batch is processed whole). `num_chunks`: micro-batches x ranks in the
    step (only `bnpo` uses it). Summing the returned losses over the step's micro-batches and
    ranks gives the loss of the whole batch.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: expected one of {LOSS_TYPES}")
    mask = mask.to(logps.dtype)
    if old_logps is None:
        old_logps = logps.detach()
    adv = advantages.to(logps.dtype).unsqueeze(1)
    ratio, clipped = clipped_ratio(logps, old_logps, epsilon_low, epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps (the reference model's log-probs)")
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + beta * kl
    n_seq = logps.size(0) if num_sequences is None else num_sequences
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / n_seq
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0) / num_chunks
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (n_seq * max_completion_length)
    else:  # dapo
        n_tok = mask.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
        loss = (per_token * mask).sum() / n_tok
    with torch.no_grad():
        eps_high = epsilon_low if epsilon_high is None else epsilon_high
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype) * mask
        stats = {
            "tokens": float(mask.sum()),
            "clip_low": float(low.sum()),
            "clip_high": float(high.sum()),
            "kl": float((kl * mask).sum()) if kl is not None else 0.0,
        }
    return loss, stats
