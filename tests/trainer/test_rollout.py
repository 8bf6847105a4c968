"""GRPO rollouts through the teacher interface: the in-process transformers engine (token ids,
EOS kept, seeded per row), the post-sync log-prob probe, and the deadlines on weight syncs and
collectives. The vLLM engines need CUDA and vllm (marked gpu, skipped here)."""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import pytest
import torch

from factory.teachers.base import RequestGroup, Teacher
from trainer.rollout import (
    PolicyTeacher,
    RolloutConfig,
    RolloutEngine,
    SyncError,
    make_rollout_engine,
    run_with_timeout,
)

from .test_grpo_learning import digit_tokenizer


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from trainer.config import ModelConfig
    from trainer.model import build_model, load_tokenizer

    tok = load_tokenizer(digit_tokenizer(tmp_path_factory.mktemp("tok")))
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                    max_position_embeddings=64), tok)
    return model, tok


def groups(engine, seed=0, n=4):
    return [RequestGroup(problem_id=f"p{d}", messages=({"role": "user", "content": str(d)},), sampling=engine.sampling(seed=seed),
                         sample_indices=tuple(range(n))) for d in range(3)]


def test_transformers_engine_returns_token_ids(policy):
    model, tok = policy
    engine = make_rollout_engine(RolloutConfig(max_completion_length=6), model, tok)
    assert isinstance(engine.teacher, Teacher)  # the factory's teacher protocol
    out = engine.generate(groups(engine))
    assert [len(g) for g in out] == [4, 4, 4]
    for d, comps in enumerate(out):
        assert [c.sample_index for c in comps] == [0, 1, 2, 3]
        for c in comps:
            assert c.extra["prompt_ids"] == tok(f"{d}=", add_special_tokens=False)["input_ids"]
            ids = c.extra["completion_ids"]
            assert 1 <= len(ids) <= 6 and c.completion_tokens == len(ids)
            if c.finish_reason == "stop":
                assert ids[-1] == tok.eos_token_id  # the EOS is trained on
                assert c.text == tok.decode(ids[:-1], skip_special_tokens=True)
            else:
                assert len(ids) == 6 and tok.eos_token_id not in ids and c.text == tok.decode(ids, skip_special_tokens=True)
    engine.close()


def test_rows_are_seeded_independently_of_batching(policy):
    model, tok = policy
    big = make_rollout_engine(RolloutConfig(max_completion_length=5, batch_size=64), model, tok)
    small = make_rollout_engine(RolloutConfig(max_completion_length=5, batch_size=1), model, tok)

    def ids(out):
        return [[c.extra["completion_ids"] for c in g] for g in out]

    a = ids(big.generate(groups(big, seed=7)))
    assert a == ids(small.generate(groups(small, seed=7)))  # same rows, whatever shares the batch
    assert a != ids(big.generate(groups(big, seed=8)))
    assert len({tuple(x) for g in a for x in g}) > 1  # samples of a group differ


def test_probe_passes_on_shared_weights_and_catches_a_stale_engine(policy):
    model, tok = policy
    cfg = RolloutConfig(probe_every=1, probe_tolerance=1e-4)
    engine = make_rollout_engine(cfg, model, tok)
    assert engine.after_step(model) == pytest.approx(0.0, abs=1e-6)
    stale = copy.deepcopy(model)
    with torch.no_grad():  # the trainer moved on; the engine kept the old weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    try:
        wrong = RolloutEngine(PolicyTeacher(stale, tok, cfg), cfg, tok)
        with pytest.raises(SyncError, match="not running the trained weights"):
            wrong.after_step(model)
    finally:
        with torch.no_grad():
            for p, q in zip(model.parameters(), stale.parameters()):
                p.copy_(q)


def test_a_hung_sync_fails_with_a_clear_error():
    t0 = time.monotonic()
    with pytest.raises(SyncError, match=r"weight sync did not finish within 0s"):
        run_with_timeout(lambda: time.sleep(3), 0.2, "weight sync")
    assert time.monotonic() - t0 < 2
    with pytest.raises(SyncError, match="weight sync failed: ValueError: bad name"):
        run_with_timeout(lambda: (_ for _ in ()).throw(ValueError("bad name")), 1.0, "weight sync")
    assert run_with_timeout(lambda: 42, 1.0, "x") == 42


def _lonely_rank(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from trainer.distributed import DistEnv
    from trainer.grpo import _reduce

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 1:
        time.sleep(4)  # never joins the all-reduce
        return
    try:
        _reduce(torch.ones(2), DistEnv(rank=0, world_size=2), 1.0, "batch sizes")
    except SyncError as exc:
        Path(out_file).write_text(str(exc))


@pytest.mark.integration
def test_a_collective_with_a_missing_peer_times_out(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "err.txt"
    mp.start_processes(_lonely_rank, args=(str(tmp_path / "pg"), str(out)), nprocs=2, join=True, start_method="fork")
    assert "all-reduce of batch sizes did not finish within 1s" in out.read_text()


def _cuda() -> bool:
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_colocated_sync_and_probe(policy, tmp_path):
    """vLLM with sleep mode: rollouts, a weight sync after a change, and the probe agreeing."""
    model, tok = policy
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    engine = make_rollout_engine(RolloutConfig(engine="vllm", max_completion_length=4, gpu_memory_utilization=0.2), model, tok,
                                 model_path=str(tmp_path / "m"))
    out = engine.generate(groups(engine))
    assert [len(g) for g in out] == [4, 4, 4]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert engine.after_step(model) < 0.05
