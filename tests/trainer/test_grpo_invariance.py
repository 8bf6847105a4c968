"""The GRPO loss and gradients do not depend on how a generation batch is cut: whole, in
micro-batches with gradient accumulation, or split across 2 gloo processes (gradients summed),
for the loss types whose normaliser is the whole step's (grpo, dr_grpo, dapo). `bnpo` normalises
per micro-batch by definition (TRL's semantics), which the last test pins down.

"Identical" is up to float summation order: within 1e-6 relative (norm of the difference over
the norm) on every parameter's gradient, in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.grpo import GRPOSection, RolloutBatch, accumulate_gradients, grpo_loss

from .test_grpo import fixed_inputs, rel_err, tiny_model

MAX_LEN = 8
TEMPERATURE = 0.7


def make(loss_type: str):
    inputs, old_shift, ref_shift = fixed_inputs(seed=3)
    model = tiny_model(seed=2).train()
    batch = RolloutBatch(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"],
                         inputs["advantages"])
    from trainer.grpo import score_logps

    current = score_logps(model, batch, TEMPERATURE, 64)
    mask = batch.completion_mask.float()
    batch.old_logps = (current + old_shift) * mask
    batch.ref_logps = (current + ref_shift) * mask
    g = GRPOSection(loss_type=loss_type, beta=0.04, epsilon_high=0.28)
    return model, batch, g


def grads_of(model, batch, g, micro: int, num_sequences: int, num_tokens: float, num_chunks: int):
    model = copy.deepcopy(model)
    totals = accumulate_gradients(model, batch, g, temperature=TEMPERATURE, max_completion_length=MAX_LEN, micro_batch_size=micro,
                                  num_sequences=num_sequences, num_tokens=num_tokens, num_chunks=num_chunks)
    return totals["loss"], {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_same(a, b):
    (loss_a, ga), (loss_b, gb) = a, b
    assert abs(loss_a - loss_b) <= 1e-6 * abs(loss_b), (loss_a, loss_b)
    for name in gb:
        assert rel_err(ga[name], gb[name]) <= 1e-6, (name, rel_err(ga[name], gb[name]))


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_equal_the_whole_batch(loss_type):
    model, batch, g = make(loss_type)
    n_seq, n_tok = len(batch), float(batch.completion_mask.sum())
    whole = grads_of(model, batch, g, micro=len(batch), num_sequences=n_seq, num_tokens=n_tok, num_chunks=1)
    for micro in (1, 4, 5):  # 5: uneven micro-batches (5 + 1 rows)
        assert_same(grads_of(model, batch, g, micro=micro, num_sequences=n_seq, num_tokens=n_tok,
                             num_chunks=-(-len(batch) // micro)), whole)


LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for loss_type in LOSS_TYPES:
            model, batch, g = make(loss_type)
            n_seq, n_tok = len(batch), float(batch.completion_mask.sum())  # the whole step's, as train() all-reduces them
            half = len(batch) // world
            mine = batch.rows(rank * half, (rank + 1) * half if rank < world - 1 else len(batch))
            loss, grads = grads_of(model, mine, g, micro=2, num_sequences=n_seq, num_tokens=n_tok, num_chunks=world * 2)
            flat = torch.cat([grads[n].flatten() for n in sorted(grads)] + [torch.tensor([loss], dtype=torch.float32)])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if rank == 0:
                torch.save(flat, f"{out_dir}/{loss_type}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_two_gloo_processes_equal_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit the imported torch/transformers (spawn re-imports them, ~20 s each here)
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for loss_type in LOSS_TYPES:
        flat = torch.load(tmp_path / f"{loss_type}.pt")
        model, batch, g = make(loss_type)
        loss, grads = grads_of(model, batch, g, micro=len(batch), num_sequences=len(batch),
                               num_tokens=float(batch.completion_mask.sum()), num_chunks=1)
        offset = 0
        for name in sorted(grads):
            n = grads[name].numel()
            assert rel_err(flat[offset:offset + n].view_as(grads[name]), grads[name]) <= 1e-6, (loss_type, name)
            offset += n
        assert abs(float(flat[-1]) - loss) <= 1e-6 * abs(loss), loss_type


def test_bnpo_normalises_per_micro_batch():
    """bnpo = mean over micro-batches of each micro-batch's token mean (TRL's definition)."""
    logps = torch.zeros(4, 3)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, 2.0, -1.0, 3.0])
    halves = [grpo_loss(logps[s:s + 2], adv[s:s + 2], mask[s:s + 2], loss_type="bnpo", num_chunks=2)[0].item() for s in (0, 2)]
    assert sum(halves) == pytest.approx(0.5 * (-(1 + 6) / 4) + 0.5 * (-(-2 + 3) / 3))
    whole = grpo_loss(logps, adv, mask, loss_type="bnpo")[0].item()
    assert whole == pytest.approx(-(1 + 6 - 2 + 3) / 7)
    assert sum(halves) != pytest.approx(whole)  # the dependence on the cut, by definition
