"""GRPO resumes exactly: a run stopped (or SIGKILLed) half-way and started again gives the same
per-step loss, rewards and final weights as the run that was never interrupted.

The tiny digit-echo task of test_grpo_learning (a 2-layer hidden-32 Llama, fp32, CPU, one
thread), with everything that carries state across steps switched on: a reference model
(beta > 0), two policy updates per generation batch, gradient accumulation, dynamic sampling
with refills (half the prompts can never be answered, so each step consumes a varying number of
prompts from the stream), a warmup + cosine schedule, the log-prob probe every 2 syncs, and an
lr large enough that a lost optimizer state or a shifted prompt stream changes the curve.
Tolerance: none. The same ops run in the same order on the same data, so the metrics are
compared with == and the final weights with torch.equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.checkpoint import list_checkpoints
from trainer.grpo import Config, train
from trainer.metrics import read_metrics

from .test_grpo_learning import tiny_config

ROOT = Path(__file__).resolve().parents[2]
K = 4  # steps; the interrupted runs stop after K/2 (or are killed during step K/2 + 1)
# Everything but the timings (which differ from run to run).
COMPARED = ("loss", "reward", "reward_std", "reward/accuracy", "completion_length", "clipped_ratio", "kl", "entropy",
            "clip_ratio/low", "clip_ratio/high", "frac_zero_std_groups", "frac_zero_std_groups_kept", "generation_rounds",
            "grad_norm", "lr")


def config(tmp: Path, **checkpoint) -> Config:
    tmp.mkdir(parents=True, exist_ok=True)
    base = tiny_config(tmp, max_steps=K, num_iterations=2, beta=0.04, micro_batch_size=24, max_refills=3)
    # Prompts that one token can never answer (gold "00".."99"): always reward 0, dropped and refilled.
    prompts = Path(base.prompts.jsonl)
    prompts.write_text(prompts.read_text() + "".join(json.dumps({"problem": d, "reference_answer": d * 2}) + "\n"
                                                     for d in "0123456789"))
    raw = base.model_dump(mode="json")
    raw["optim"].update(lr=0.02, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    raw["rollout"]["probe_every"] = 2
    raw["checkpoint"] = {"export_hf": True, **checkpoint}
    raw["export_hf"] = True
    return Config.model_validate(raw)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "hf" / "model.safetensors"))


def assert_same_run(want_dir: Path, want_hist: list[dict], got_dir: Path, got_hist: list[dict]) -> None:
    for step, (a, b) in enumerate(zip(want_hist, got_hist, strict=True), 1):
        for key in COMPARED:
            assert b[key] == a[key], f"step {step} {key}: {b[key]} resumed vs {a[key]} uninterrupted"
    want_csv, got_csv = read_metrics(want_dir / "metrics.csv"), read_metrics(got_dir / "metrics.csv")
    assert [int(m["step"]) for m in got_csv] == list(range(1, K + 1))  # continued, no step twice
    for a, b in zip(want_csv, got_csv):
        assert {k: b[k] for k in COMPARED} == {k: a[k] for k in COMPARED}
    w1, w2 = weights(want_dir), weights(got_dir)
    assert w1.keys() == w2.keys()
    import torch

    for name in w1:
        assert torch.equal(w1[name], w2[name]), name


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    result = train(config(tmp))
    assert result["step"] == K and result["resumed_from"] is None
    # The curve must move, or equal curves would prove nothing.
    assert len({h["loss"] for h in result["history"]}) == K and any(h["generation_rounds"] > 1 for h in result["history"])
    return tmp / "run", result["history"]


def test_stopped_then_resumed_from_the_store_equals_the_uninterrupted_run(tmp_path, straight):
    cfg = config(tmp_path, every_steps=1, keep_last=2, store=str(tmp_path / "lake"))
    first = train(cfg, stop_after_steps=K // 2)
    assert first["step"] == K // 2 and first["stopped_early"]
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-1", "step-2"]
    # Lose the local checkpoints: resume must come from the artifact store (uploaded after each save).
    shutil.rmtree(run / "checkpoints")
    second = train(cfg)
    assert second["resumed_from"].endswith("step-2") and second["step"] == K and len(second["history"]) == K // 2
    # The probe runs every 2 weight syncs: the resumed engine's sync count continues.
    assert [h.get("sync_probe_logp_diff") is not None for h in first["history"] + second["history"]] == [False, True, False, True]
    assert_same_run(*straight, run, first["history"] + second["history"])
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-3", "step-4"]
    import torch

    assert {"python", "torch", "numpy"} <= set(torch.load(run / "checkpoints" / "step-4" / "rng-rank0.pt", weights_only=False))
    # Run again: the newest checkpoint is the last step, nothing is trained twice.
    again = train(cfg)
    assert again["history"] == [] and again["step"] == K
    assert [int(m["step"]) for m in read_metrics(run / "metrics.csv")] == list(range(1, K + 1))


def test_a_changed_reference_model_is_refused(tmp_path):
    from storage.errors import BadInput

    cfg = config(tmp_path, every_steps=1)
    train(cfg, stop_after_steps=1)
    cfg.model.init_seed = 1
    with pytest.raises(BadInput, match="reference model"):
        train(cfg)


@pytest.mark.integration
def test_sigkilled_during_a_step_then_resumed_equals_the_uninterrupted_run(tmp_path, straight):
    """A real SIGKILL of `python -m trainer.grpo` after step 3's metrics row is written and while
    its checkpoint is half-written: the rerun ignores the partial step-3, resumes from step-2,
    drops the orphan CSV row and continues."""
    cfg = config(tmp_path, every_steps=1)
    path = tmp_path / "cfg.json"  # JSON is YAML
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    killer = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads(1)
        import trainer.grpo as grpo
        real = grpo.save_checkpoint
        def save(root, step, *args, **kwargs):
            if step == {K // 2 + 1}:
                os.makedirs(os.path.join(root, f"step-{{step}}"), exist_ok=True)
                open(os.path.join(root, f"step-{{step}}", "rng-rank0.pt"), "wb").write(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(root, step, *args, **kwargs)
        grpo.save_checkpoint = save
        sys.exit(grpo.main([{str(path)!r}]))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", killer], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert [int(m["step"]) for m in read_metrics(run / "metrics.csv")] == [1, 2, 3]  # step 3 ran, its checkpoint did not finish
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-1", "step-2"]
    assert (run / "checkpoints" / "step-3").is_dir()
    # The steps the killed process ran, from its CSV (history lives in the process that died).
    before = read_metrics(run / "metrics.csv")[:2]
    second = train(cfg)
    assert second["resumed_from"].endswith("step-2")
    assert [h.get("sync_probe_logp_diff") is not None for h in second["history"]] == [False, True]
    assert_same_run(*straight, run, before + second["history"])
