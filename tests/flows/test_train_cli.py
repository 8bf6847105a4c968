"""`factory train`: bad configs exit 2 before anything starts, --slurm writes a script, and a
tiny SFT run goes through the CLI end to end in a subprocess."""

import os

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app

from ..trainer.conftest import short_r1_rows, tiny_sft_config

runner = CliRunner()


def test_unknown_method_is_exit_2():
    result = runner.invoke(app, ["train", "ppo", "c.yaml"])
    assert result.exit_code == 2 and "METHOD 'ppo'" in result.output


def test_bad_config_is_exit_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  jsonl: r.jsonl\nloop:\n  batch_size: lots\n")
    result = runner.invoke(app, ["train", "sft", str(cfg)])
    assert result.exit_code == 2
    assert "loop.batch_size" in result.output and str(cfg) in result.output


def test_slurm_writes_an_sbatch_script_instead_of_running(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "r1"}, "kd": {"mode": "sequence"}}))
    out = tmp_path / "train.sh"
    result = runner.invoke(app, ["train", "distill", str(cfg), "--nproc-per-node", "8", "--nnodes", "2", "--slurm", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "#SBATCH --nodes=2" in text and "-m trainer.distill" in text and os.access(out, os.X_OK)


@pytest.mark.integration
def test_train_sft_runs_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tiny_sft_config(tmp_path, short_r1_rows(4), data__packing=False, loop={"batch_size": 2, "max_steps": 2})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", "sft", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sft finished" in result.output
    assert (tmp_path / "out" / "metrics.csv").read_text().count("\n") == 3  # header + 2 steps
