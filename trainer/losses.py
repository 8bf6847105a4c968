"""Loss functions: weighted cross-entropy for SFT, and the distillation divergences.

    nll = token_nll(logits, labels)                         # [rows, T], 0 where label is IGNORE
    kd = kd_divergence(student_logits, teacher_logits, "jsd", beta=0.5)   # [rows, T]
    sparse = sparse_kd(student_logits, topk_ids, topk_logprobs)         # [rows, T]

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

Not covered: chunked logits (the [tokens, vocab] logits are materialised; for 150k-vocab
students at long context, micro-batch smaller); teacher/student vocabularies that differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import IGNORE


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (fp32), 0 where labels == IGNORE."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    return flat.view(labels.shape)


def weighted_sum(per_token: torch.Tensor, doc_ids: torch.Tensor, doc_weights: torch.Tensor) -> torch.Tensor:
    """sum over supervised tokens of per_token * weight of its document (doc_ids -1: not counted)."""
    mask = doc_ids >= 0
    w = torch.zeros_like(per_token)
    w[mask] = doc_weights.to(per_token.device, per_token.dtype)[doc_ids[mask]]
    return (per_token * w).sum()


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_t || p_s) per position."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_s || p_t) per position."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (s.exp() * (s - t)).sum(-1)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence per position (see the module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta {beta}: expected 0 <= beta <= 1")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
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


def sparse_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, temperature: float = 1.0, renormalize: bool = True) -> torch.Tensor:
    """-sum_k q_k log p_s(id_k) per position, q = the teacher's top-k probabilities (renormalised
    to sum to 1 unless `renormalize` is False). Positions whose ids are all -1 give 0."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    valid = topk_ids >= 0
    q = topk_logprobs.float().masked_fill(~valid, float("-inf"))
    if renormalize:
        q = torch.log_softmax(q, dim=-1)
    q = torch.nan_to_num(q.exp(), nan=0.0)
    picked = torch.gather(s, -1, topk_ids.clamp(min=0))
    return -(q * picked.masked_fill(~valid, 0.0)).sum(-1)
