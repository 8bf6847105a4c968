"""Launch commands: one process, torchrun on one node or several, the Slurm script."""

import sys

import pytest

from storage.errors import BadInput
from trainer.launch import launch_command, recipe_module, slurm_script


def test_one_process_is_a_plain_module_run():
    assert launch_command("sft", "c.yaml") == [sys.executable, "-m", "trainer.sft", "c.yaml"]


def test_several_processes_use_torchrun_standalone_on_one_node():
    cmd = launch_command("distill", "c.yaml", nproc_per_node=8, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "8", "-m", "trainer.distill", "c.yaml"]


def test_several_nodes_need_a_rendezvous():
    with pytest.raises(BadInput, match="--rdzv-endpoint HOST:PORT"):
        launch_command("sft", "c.yaml", nproc_per_node=8, nnodes=2)
    cmd = launch_command("sft", "c.yaml", nproc_per_node=8, nnodes=2, rdzv_endpoint="node0:29500", python="py")
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "node0:29500" and cmd[cmd.index("--nnodes") + 1] == "2"
    assert "--standalone" not in cmd


def test_unknown_method_and_bad_counts_are_bad_input():
    with pytest.raises(BadInput, match="METHOD 'ppo': expected one of sft, distill, grpo"):
        recipe_module("ppo")
    with pytest.raises(BadInput, match="expected positive counts"):
        launch_command("sft", "c.yaml", nproc_per_node=0)


def test_slurm_script_runs_one_torchrun_per_node(tmp_path):
    cfg = tmp_path / "c.yaml"
    script = slurm_script("sft", cfg, nproc_per_node=8, nnodes=4, partition="gpu", time_limit="12:00:00", python="py", workdir=tmp_path)
    assert script.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00"):
        assert line in script
    run = [x for x in script.splitlines() if x.startswith("srun ")][0]
    assert "-m torch.distributed.run --nnodes 4 --nproc-per-node 8" in run
    assert '--rdzv-endpoint "$head_node:29500"' in run and f"-m trainer.sft {cfg}" in run
    assert f"cd {tmp_path}" in script
