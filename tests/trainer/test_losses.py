"""KD losses against values computed by hand (plain Python math over small distributions), and
the token- vs sequence-weighted cross-entropy."""

import math

import pytest
import torch

from trainer.data import IGNORE
from trainer.losses import (
    forward_kl,
    generalized_jsd,
    kd_divergence,
    reverse_kl,
    sparse_kd,
    token_nll,
    weighted_sum,
)

S_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T_LOGITS = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def softmax(xs, temp=1.0):
    ex = [math.exp(x / temp) for x in xs]
    z = sum(ex)
    return [e / z for e in ex]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def jsd(p_t, p_s, beta):
    m = [beta * t + (1 - beta) * s for t, s in zip(p_t, p_s)]
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def tensors():
    return torch.tensor(S_LOGITS), torch.tensor(T_LOGITS)


def test_forward_and_reverse_kl_equal_hand_computed_values():
    s, t = tensors()
    want_fwd = [kl(softmax(tl), softmax(sl)) for sl, tl in zip(S_LOGITS, T_LOGITS)]
    want_rev = [kl(softmax(sl), softmax(tl)) for sl, tl in zip(S_LOGITS, T_LOGITS)]
    assert forward_kl(s, t).tolist() == pytest.approx(want_fwd, abs=1e-6)
    assert reverse_kl(s, t).tolist() == pytest.approx(want_rev, abs=1e-6)
    # The first row by hand, digit by digit, so the helper above is checked too.
    p_t, p_s = softmax(T_LOGITS[0]), softmax(S_LOGITS[0])
    assert want_fwd[0] == pytest.approx(sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s)))
    assert want_fwd[0] != pytest.approx(want_rev[0], abs=1e-3)  # the two directions really differ here


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.1])
def test_generalized_jsd_equals_hand_computed_values(beta):
    s, t = tensors()
    got = generalized_jsd(s, t, beta).tolist()
    for row, (sl, tl) in enumerate(zip(S_LOGITS, T_LOGITS)):
        p_s, p_t = softmax(sl), softmax(tl)
        if beta == 0.0:
            want = kl(p_t, p_s)  # forward KL, as TRL's GKD defines the end point
        elif beta == 1.0:
            want = kl(p_s, p_t)  # reverse KL
        else:
            want = jsd(p_t, p_s, beta)
        assert got[row] == pytest.approx(want, abs=1e-6)


def test_jsd_at_half_is_the_symmetric_jensen_shannon_divergence_bounded_by_log2():
    s, t = tensors()
    a = generalized_jsd(s, t, 0.5)
    b = generalized_jsd(t, s, 0.5)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a <= math.log(2) + 1e-6).all() and (a > 0).all()


def test_temperature_softens_both_distributions():
    s, t = tensors()
    want = kl(softmax(T_LOGITS[1], 2.0), softmax(S_LOGITS[1], 2.0))
    assert forward_kl(s, t, temperature=2.0)[1].item() == pytest.approx(want, abs=1e-6)


def test_divergences_are_zero_for_identical_distributions_and_have_gradients():
    s = torch.tensor(S_LOGITS, requires_grad=True)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert kd_divergence(s, s.detach(), kind).abs().max().item() < 1e-6
    loss = kd_divergence(s, torch.tensor(T_LOGITS), "jsd", beta=0.3).sum()
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="forward_kl, reverse_kl or jsd"):
        kd_divergence(s, s, "kl")


def test_sparse_kd_is_cross_entropy_against_the_renormalised_top_k():
    s = torch.tensor([S_LOGITS[0]])
    ids = torch.tensor([[0, 2]])
    lps = torch.tensor([[math.log(0.6), math.log(0.2)]])  # the teacher's top-2 of a 3-token vocab
    p_s = softmax(S_LOGITS[0])
    q = [0.6 / 0.8, 0.2 / 0.8]
    want = -(q[0] * math.log(p_s[0]) + q[1] * math.log(p_s[2]))
    assert sparse_kd(s, ids, lps).item() == pytest.approx(want, abs=1e-6)
    raw = -(0.6 * math.log(p_s[0]) + 0.2 * math.log(p_s[2]))
    assert sparse_kd(s, ids, lps, renormalize=False).item() == pytest.approx(raw, abs=1e-6)
    # Padding ids (-1) count for nothing.
    padded = sparse_kd(s, torch.tensor([[0, 2, -1]]), torch.tensor([[math.log(0.6), math.log(0.2), 0.0]]))
    assert padded.item() == pytest.approx(want, abs=1e-6)


def test_sparse_kd_with_the_full_vocab_equals_forward_kl_plus_teacher_entropy():
    s, t = tensors()
    p_t = torch.log_softmax(t, -1)
    ids = torch.arange(3).expand(2, 3)
    ce = sparse_kd(s, ids, p_t)
    entropy = -(p_t.exp() * p_t).sum(-1)
    assert torch.allclose(ce, forward_kl(s, t) + entropy, atol=1e-6)


def test_token_and_sequence_weighting():
    # Two documents: doc 0 has 1 supervised token, doc 1 has 3.
    logits = torch.zeros(1, 5, 4)  # uniform: nll = log 4 everywhere
    labels = torch.tensor([[1, IGNORE, 2, 3, 0]])
    doc_ids = torch.tensor([[0, -1, 1, 1, 1]])
    nll = token_nll(logits, labels)
    assert nll[0, 1].item() == 0.0
    token = weighted_sum(nll, doc_ids, torch.tensor([1.0, 1.0])) / 4  # denominator: 4 tokens
    seq = weighted_sum(nll, doc_ids, torch.tensor([1.0, 1 / 3])) / 2  # denominator: 2 documents
    assert token.item() == pytest.approx(math.log(4))
    assert seq.item() == pytest.approx(math.log(4))
    # With unequal per-token losses the two weightings differ as computed by hand.
    logits[0, 0, 1] = 5.0  # doc 0's token becomes easy
    nll = token_nll(logits, labels)
    easy = -math.log(math.exp(5) / (math.exp(5) + 3))
    token = weighted_sum(nll, doc_ids, torch.tensor([1.0, 1.0])) / 4
    seq = weighted_sum(nll, doc_ids, torch.tensor([1.0, 1 / 3])) / 2
    assert token.item() == pytest.approx((easy + 3 * math.log(4)) / 4, abs=1e-6)
    assert seq.item() == pytest.approx((easy + math.log(4)) / 2, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 100])
def test_chunked_head_loss_equals_the_whole_head_sum_and_its_gradients(chunk):
    """A small linear head with a bias over 5 tokens: the chunked weighted sum, its metrics and
    the gradients of the hidden states, the weight and the bias equal plain autograd's."""
    from trainer.losses import chunked_head_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 7)
    hidden = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([1, 0, 6, 3, 2])
    teacher = torch.randn(5, 7)
    weights = torch.tensor([1.0, 0.5, 0.5, 2.0, 1.0])

    def per_chunk(logits, s, e):
        div = forward_kl(logits, teacher[s:e])
        nll = token_nll(logits, labels[s:e])
        return 0.7 * div + 0.3 * nll, {"kd": div}

    want = (per_chunk(head(hidden), 0, 5)[0] * weights).sum()
    want_kd = float((forward_kl(head(hidden), teacher) * weights).sum().detach())
    want_grads = torch.autograd.grad(want, [hidden, head.weight, head.bias])
    metrics: dict = {}
    got = chunked_head_loss(hidden, head, weights, per_chunk, chunk, metrics)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert metrics["kd"] == pytest.approx(want_kd, rel=1e-6)
    (2.5 * got).backward()  # the incoming gradient scales the stored ones
    for g, w in zip([hidden.grad, head.weight.grad, head.bias.grad], want_grads):
        assert torch.allclose(g, 2.5 * w, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation: the same value, no gradients taken
        assert chunked_head_loss(hidden, head, weights, per_chunk, chunk).item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="chunk_tokens 0: expected >= 1"):
        chunked_head_loss(hidden, head, weights, per_chunk, 0)
