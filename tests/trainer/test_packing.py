"""Best-fit-decreasing packing, the step plan, and packed == unpacked loss (fp32) on tiny
Llama and Qwen2 models with real R1-style rows."""

import random

import pytest
import torch

from trainer.config import DataConfig, ModelConfig
from trainer.data import IGNORE, tokenize_rows
from trainer.losses import token_nll, weighted_sum
from trainer.model import build_model
from trainer.packing import best_fit_decreasing, collate, plan_steps, step_weights
from trainer.sft import forward_logits

from .conftest import r1_rows


def test_best_fit_decreasing_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Within BFD's 11/9 OPT + 6/9 bound of the trivial lower bound.
    lower = -(-sum(lengths) // 128)
    assert len(bins) <= 11 / 9 * lower + 1


def test_best_fit_picks_the_tightest_bin():
    # Decreasing: 6 -> bin0 (room 4), 5 -> bin1 (room 5), 4 -> bin0 (tightest that fits, room 0), 5 -> bin1
    assert best_fit_decreasing([5, 6, 4, 5], 10) == [[1, 2], [0, 3]]
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([11], 10)


def test_plan_is_deterministic_and_drops_only_a_partial_last_step(tokenizer):
    examples, _ = tokenize_rows(r1_rows(12), tokenizer, DataConfig(jsonl="x", max_length=512))
    a = plan_steps(examples, capacity=512, packing=True, batch_size=2, seed=3, epochs=2)
    b = plan_steps(examples, capacity=512, packing=True, batch_size=2, seed=3, epochs=2)
    assert a == b and all(len(step) == 2 for step in a)
    per_epoch = len(best_fit_decreasing([len(e) for e in examples], 512))
    assert len(a) == 2 * (per_epoch // 2)
    unpacked = plan_steps(examples, capacity=512, packing=False, batch_size=4, seed=3, epochs=1)
    assert len(unpacked) == 3 and sorted(i for s in unpacked for r in s for i in r) == list(range(12))


def test_collate_restarts_positions_and_shifts_labels_inside_documents(tokenizer):
    examples, _ = tokenize_rows(r1_rows(3), tokenizer, DataConfig(jsonl="x", max_length=1024))
    batch = collate([[examples[0], examples[1]], [examples[2]]], tokenizer.pad_token_id)
    n0, n1 = len(examples[0]), len(examples[1])
    assert batch.position_ids[0, :n0].tolist() == list(range(n0))
    assert batch.position_ids[0, n0 : n0 + n1].tolist() == list(range(n1))
    # The last token of a document predicts nothing (not the next document's first token).
    assert batch.labels[0, n0 - 1].item() == IGNORE
    assert batch.labels[0, : n0 - 1].tolist() == examples[0].labels[1:]
    assert batch.n_docs == 3 and batch.n_tokens == n0 + n1 + len(examples[2])
    assert batch.input_ids.shape[1] % 8 == 0
    assert set(batch.doc_ids[0].tolist()) <= {-1, 0, 1} and set(batch.doc_ids[1].tolist()) <= {-1, 2}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_packed_loss_equals_unpacked_loss(tokenizer, arch, weighting):
    examples, _ = tokenize_rows(r1_rows(5), tokenizer, DataConfig(jsonl="x", max_length=1024))
    model = build_model(ModelConfig(arch=arch, hidden_size=32, intermediate_size=64), tokenizer).eval()
    denom, weights = step_weights([examples], weighting)
    w = torch.tensor(weights)

    def loss_of(rows):
        batch = collate(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            return weighted_sum(token_nll(forward_logits(model, batch), batch.labels), batch.doc_ids, w).item() / denom

    packed = loss_of([examples[:3], examples[3:]])  # 2 rows, several documents each
    alone = loss_of([[e] for e in examples])  # one document per row, padded
    # Each example alone through an ordinary forward (no packing, no padding), weighted by hand.
    if weighting == "token":
        one_by_one = sum(_single(model, e) for e in examples) / denom
    else:
        one_by_one = sum(_single(model, e) / e.n_supervised for e in examples) / denom
    assert packed == pytest.approx(alone, abs=1e-5)
    assert packed == pytest.approx(one_by_one, abs=1e-5)
    assert packed > 5.0  # a random model on a 49k vocabulary: the comparison is not vacuous


def _single(model, ex):
    """Summed NLL of one example through a plain, unpacked forward with an ordinary attention mask."""
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    labels = torch.tensor([ex.labels[1:] + [IGNORE]])
    return token_nll(logits, labels).sum().item()


def test_cross_document_attention_would_change_the_loss(tokenizer):
    """Guard that the equality above is meaningful: with positions not restarting (one long
    causal sequence), the second document sees the first and its loss changes."""
    examples, _ = tokenize_rows(r1_rows(2), tokenizer, DataConfig(jsonl="x", max_length=1024))
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64), tokenizer).eval()
    batch = collate([examples], tokenizer.pad_token_id)
    with torch.no_grad():
        packed = token_nll(forward_logits(model, batch), batch.labels).sum().item()
        flat = model(input_ids=batch.input_ids, use_cache=False).logits  # positions 0..T-1, full causal
        leaky = token_nll(flat, batch.labels).sum().item()
    assert abs(packed - leaky) > 1e-3


def test_packing_wastes_little_padding(tokenizer):
    """Micro-batches of 2 packed rows (as the loop collates them): padding < 5% of the slots,
    against > 10% for the same examples unpacked, two to a micro-batch."""
    examples, _ = tokenize_rows(r1_rows(96), tokenizer, DataConfig(jsonl="x", max_length=512))

    def waste(packing):
        steps = plan_steps(examples, capacity=512, packing=packing, batch_size=2, seed=0, epochs=1)
        pads = slots = 0
        for step in steps:
            batch = collate([[examples[i] for i in r] for r in step], tokenizer.pad_token_id, pad_to_multiple=1)
            pads += batch.n_slots - batch.n_tokens
            slots += batch.n_slots
        return pads / slots

    assert waste(True) < 0.05
    assert waste(False) > 0.10
