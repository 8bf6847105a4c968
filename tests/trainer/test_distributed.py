"""A 2-process gloo run with FSDP2 on the CPU gives the same losses, gradient norms and final
weights as 1 process with gradient accumulation (same YAML: batch_size is global)."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from trainer.metrics import read_metrics

from .conftest import short_r1_rows, tiny_sft_config

pytestmark = pytest.mark.integration


def run(argv, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_gloo_processes_match_one_process(tmp_path):
    from safetensors.torch import load_file

    rows = short_r1_rows(16)
    outs = {}
    for name, nproc in (("one", 1), ("two", 2)):
        (tmp_path / name).mkdir()
        raw = tiny_sft_config(tmp_path / name, rows, data__packing=True, data__max_length=256,
                              loop={"batch_size": 2, "micro_batch_size": 1, "max_steps": 3},
                              checkpoint={"export_hf": True}, distributed={"strategy": "auto"})
        raw["data"]["loss_weighting"] = "sequence"  # the harder normalisation: per-document weights across ranks
        path = tmp_path / name / "cfg.yaml"
        path.write_text(yaml.safe_dump(raw))
        if nproc == 1:
            run(["-m", "trainer.sft", str(path)], tmp_path)
        else:
            proc = run(["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "-m", "trainer.sft", str(path)], tmp_path)
            assert "rank 1/2" in proc.stderr or "rank 1/2" in proc.stdout
        outs[name] = tmp_path / name / "out"

    one, two = read_metrics(outs["one"] / "metrics.csv"), read_metrics(outs["two"] / "metrics.csv")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["tokens"] == a["tokens"]
    w1 = load_file(str(outs["one"] / "hf" / "model.safetensors"))
    w2 = load_file(str(outs["two"] / "hf" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    # The run changed the weights (the comparison is not between two untouched inits).
    assert one[0]["grad_norm"] > 0
