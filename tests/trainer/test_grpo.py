"""The GRPO loss functions: hand-computed values, and parity with TRL's GRPOTrainer loss.

TRL (pinned in the venv, a test-only dependency) is imported here only. Its loss is the real
`GRPOTrainer._compute_loss` and `_get_per_token_logps_and_entropies`, run on a stand-in for the
trainer object that carries just the attributes those two methods read (building a whole
GRPOTrainer needs a dataset, reward functions and a tokenizer, none of which touch the loss), with
TRL's own fused LM head (`add_fused_lm_head`, which applies the temperature) on a tiny random model.
"""

from __future__ import annotations

import copy
import itertools
import math
import types
from collections import defaultdict
from contextlib import nullcontext

import pytest
import torch

from trainer.grpo import (
    clipped_ratio,
    completion_logps,
    group_advantages,
    grpo_loss,
    kl_k3,
    zero_std_groups,
)


def test_advantages_hand_computed():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    # mean 0.5, Bessel std sqrt(1/3) = 0.577350; 0.5 / (0.577350 + 1e-4) = 0.865875
    assert torch.allclose(adv, torch.tensor([0.865875, -0.865875, -0.865875, 0.865875]), atol=1e-6)


def test_advantages_scales_and_zero_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    assert torch.equal(group_advantages(r, 4)[4:], torch.zeros(4))  # a zero-std group has no signal
    assert torch.allclose(group_advantages(r, 4, scale="none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    by_batch = group_advantages(r, 4, scale="batch")
    assert torch.allclose(by_batch[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (r.std() + 1e-4))
    assert zero_std_groups(r, 4).tolist() == [False, True]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def test_ratio_and_clipping_hand_computed():
    ratio, clipped = clipped_ratio(torch.tensor([-0.9]), torch.tensor([-1.2]), 0.2, 0.28)
    assert ratio.item() == pytest.approx(1.349859, abs=1e-6)  # exp(0.3)
    assert clipped.item() == pytest.approx(1.28, abs=1e-7)
    _, symmetric = clipped_ratio(torch.tensor([-0.9]), torch.tensor([-1.2]), 0.2, None)
    assert symmetric.item() == pytest.approx(1.2, abs=1e-7)
    # A positive advantage takes the clipped ratio (no gain past 1 + eps_high) ...
    loss, stats = grpo_loss(torch.tensor([[-0.9]]), torch.tensor([1.0]), torch.ones(1, 1), old_logps=torch.tensor([[-1.2]]),
                            loss_type="grpo", epsilon_high=0.28)
    assert loss.item() == pytest.approx(-1.28, abs=1e-6) and stats["clip_high"] == 1.0
    # ... a negative one the unclipped ratio (the pessimistic side).
    loss, stats = grpo_loss(torch.tensor([[-0.9]]), torch.tensor([-1.0]), torch.ones(1, 1), old_logps=torch.tensor([[-1.2]]),
                            loss_type="grpo", epsilon_high=0.28)
    assert loss.item() == pytest.approx(1.349859, abs=1e-6) and stats["clip_high"] == 0.0


def test_k3_kl_hand_computed():
    # d = ref - logp = 0.2: exp(0.2) - 0.2 - 1 = 0.0214028
    assert kl_k3(torch.tensor(-1.2), torch.tensor(-1.0)).item() == pytest.approx(0.0214028, abs=1e-7)
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-1.0)).item() == 0.0


def test_aggregations_hand_computed():
    # Two completions of 1 and 3 tokens, per-token loss -A (ratio 1), A = [1, 2].
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    logps = torch.zeros(2, 3)
    adv = torch.tensor([1.0, 2.0])
    got = {t: grpo_loss(logps, adv, mask, loss_type=t, max_completion_length=4)[0].item() for t in ("grpo", "bnpo", "dr_grpo", "dapo")}
    assert got["grpo"] == pytest.approx(-(1 + 2) / 2)  # mean of per-completion means
    assert got["bnpo"] == pytest.approx(-(1 + 6) / 4)  # token mean
    assert got["dapo"] == pytest.approx(-(1 + 6) / 4)
    assert got["dr_grpo"] == pytest.approx(-(1 + 6) / (2 * 4))  # completions x max length
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, adv, mask, beta=0.04)


# --- parity with TRL --------------------------------------------------------------------------


def tiny_model(seed: int = 0, vocab: int = 48):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # a random init has a nearly flat head: widen it so ratios and clips vary
        model.lm_head.weight.mul_(20)
    return model


def fixed_inputs(seed: int = 1):
    """Left-padded prompts and right-padded completions of ragged lengths, advantages of both signs,
    old and ref log-probs off the current ones by up to +/-0.4 so both clip sides and the KL matter."""
    g = torch.Generator().manual_seed(seed)
    B, P, C = 6, 5, 7
    prompt_ids = torch.randint(3, 48, (B, P), generator=g)
    completion_ids = torch.randint(3, 48, (B, C), generator=g)
    prompt_len = torch.tensor([5, 3, 4, 5, 2, 4])
    completion_len = torch.tensor([7, 2, 5, 1, 6, 3])
    prompt_mask = (torch.arange(P) >= P - prompt_len.unsqueeze(1)).long()
    completion_mask = (torch.arange(C) < completion_len.unsqueeze(1)).long()
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 0)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    advantages = torch.tensor([0.9, -1.1, 0.3, -0.2, 1.4, -0.7])
    old_shift = (torch.rand(B, C, generator=g) - 0.5) * 0.8
    ref_shift = (torch.rand(B, C, generator=g) - 0.5) * 0.8
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages}
    return inputs, old_shift, ref_shift


def trl_stand_in(model, loss_type, epsilon_high, beta, temperature, max_completion_length):
    """The object GRPOTrainer's `_compute_loss` and `_get_per_token_logps_and_entropies` run on."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy"))
    acc = types.SimpleNamespace(num_processes=1, is_main_process=True, autocast=nullcontext, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                reduce=lambda x, reduction="sum": x)
    me = types.SimpleNamespace(
        model=model, accelerator=acc, loss_type=loss_type, beta=beta, epsilon_low=0.2,
        epsilon_high=0.2 if epsilon_high is None else epsilon_high,  # GRPOTrainer's default: epsilon_high = epsilon
        importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
    )
    me._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, me)
    me.compute_loss = lambda inputs: GRPOTrainer._compute_loss(me, model, inputs)
    return me


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


# The parity is checked in two halves, each with a tolerance that follows from its arithmetic, so
# it holds on any thread count and transformers version (a single fp32 end-to-end comparison
# with a flat 1e-6 tolerance failed on 5 of 32 cases elsewhere, at 2e-6: a loss whose advantages
# have both signs cancels, which multiplies fp32 rounding). By the chain rule the two halves fix
# the gradient of the whole loss with respect to the weights.
# 1. The loss, given the log-probs: TRL's `_compute_loss` and ours on the same float64 log-probs.
#    A few float64 element-wise ops and sums of at most 42 terms agree to ~1e-15 in any order;
#    1e-12 leaves room for that, while a wrong clip bound or KL term is off by more than 1e-3.
# 2. The log-probs, given the model: TRL's fused LM head and our `completion_logps`, on one float64
#    model. Both round the logits to fp32 and take the log-softmax in fp32 (on purpose: so do
#    vLLM and TRL), in different orders; the bounds below count those roundings.
U32 = 2.0**-24  # fp32 unit roundoff
LOSS_CASES = list(itertools.product(("grpo", "bnpo", "dr_grpo", "dapo"), (None, 0.28), (0.0, 0.04)))


@pytest.mark.parametrize("loss_type,epsilon_high,beta", LOSS_CASES, ids=[f"{a}-eh{b}-beta{c}" for a, b, c in LOSS_CASES])
def test_loss_parity_with_trl(loss_type, epsilon_high, beta):
    pytest.importorskip("trl")
    inputs, old_shift, ref_shift = fixed_inputs()
    inputs["advantages"] = inputs["advantages"].double()
    mask = inputs["completion_mask"].double()
    g = torch.Generator().manual_seed(2)
    current = torch.log(torch.rand(mask.shape, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    old, ref = (current + old_shift.double()) * mask, (current + ref_shift.double()) * mask
    max_len = 8

    ours_logps = current.clone().requires_grad_()
    ours, stats = grpo_loss(ours_logps, inputs["advantages"], mask, old_logps=old, ref_logps=ref, loss_type=loss_type,
                            epsilon_high=epsilon_high, beta=beta, max_completion_length=max_len)
    ours.backward()

    trl_logps = current.clone().requires_grad_()
    me = trl_stand_in(tiny_model(), loss_type, epsilon_high, beta, 1.0, max_len)
    me._get_per_token_logps_and_entropies = lambda *a, **k: (trl_logps, torch.zeros_like(trl_logps), None)
    theirs = me.compute_loss({**inputs, "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()})
    theirs.backward()

    assert stats["clip_low"] > 0 and stats["clip_high"] > 0, "the inputs should exercise both clip sides"
    assert theirs.dtype == torch.float64 and trl_logps.grad.abs().sum() > 0
    assert math.isclose(ours.item(), theirs.item(), rel_tol=1e-12), (ours.item(), theirs.item())
    assert rel_err(ours_logps.grad, trl_logps.grad) <= 1e-12, rel_err(ours_logps.grad, trl_logps.grad)


@pytest.fixture(scope="module")
def base_model():
    pytest.importorskip("trl")
    return tiny_model()


@pytest.mark.parametrize("temperature", (1.0, 0.7))
def test_logps_parity_with_trl(base_model, temperature):
    inputs, _, _ = fixed_inputs()
    ours_model, trl_model = copy.deepcopy(base_model).double().train(), copy.deepcopy(base_model).double().train()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    C = inputs["completion_ids"].size(1)
    mask = inputs["completion_mask"].bool()

    ours, _ = completion_logps(ours_model, ids, att, C, temperature)
    me = trl_stand_in(trl_model, "dapo", None, 0.0, temperature, C)
    theirs, _, _ = me._get_per_token_logps_and_entropies(trl_model, ids, att, C, compute_entropy=True)
    # A fixed weighting of the tokens: the gradient of any loss of the log-probs is one of these.
    cotangent = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5) * mask
    (ours.double() * cotangent).sum().backward()
    (theirs * cotangent).sum().backward()

    with torch.no_grad():
        h = ours_model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, -C - 1:-1]
        y = (h @ ours_model.lm_head.weight.T).float() * (1.0 / temperature)  # what both take the fp32 log-softmax of
        # Each side: y_j - max (<= spread), exp, a sum of V terms (V - 1 roundings), log, two
        # subtractions; each rounding is <= U32 times its value; two sides, first order.
        spread = y.max(-1).values - y.min(-1).values
        delta = 2 * U32 * (3 * spread + 2 * ours.detach().abs() + y.size(-1) + 2)
        err = (ours.detach().double() - theirs.detach()).abs()
        assert (err[mask] <= delta[mask]).all(), (err[mask].max().item(), delta[mask].min().item())
        assert err[mask].max() > 0, "two fp32 log-softmaxes in different orders should not agree to the bit"
        # The lm_head gradient is sum_t a_t/T (e_t - p_t) h_t: p_t is off by <= |p_t| (delta_t + 2 U32)
        # on the two sides, and TRL rounds h to fp32 and adds the N token terms up in fp32.
        p = torch.softmax(y.double(), -1)
        e_minus_p = torch.nn.functional.one_hot(inputs["completion_ids"], y.size(-1)).double() - p
        n = int(mask.sum())
        per_token = (cotangent.abs() / temperature * h.norm(dim=-1)
                     * (p.norm(dim=-1) * (delta + 2 * U32) + (n + 2) * U32 * e_minus_p.norm(dim=-1)))
        bound = 2 * float(per_token[mask].sum())  # 2: slack for the second-order terms
    g_ours, g_trl = ours_model.lm_head.weight.grad, trl_model.lm_head.weight.grad
    assert g_trl.abs().sum() > 0
    assert float((g_ours - g_trl).norm()) <= bound, (float((g_ours - g_trl).norm()), bound)
