"""How a recipe is started: one process, torchrun on one node or several, or a Slurm script.

    from trainer.launch import launch_command, slurm_script
    launch_command("sft", "cfg.yaml", nproc_per_node=8)
    # [python, -m, torch.distributed.run, --standalone, --nnodes, 1, --nproc-per-node, 8, -m, trainer.sft, cfg.yaml]
    open("train.sh", "w").write(slurm_script("distill", "cfg.yaml", nproc_per_node=8, nnodes=4))

One process is a plain `python -m trainer.<method> CONFIG` (same code path as under torchrun);
several use `python -m torch.distributed.run` (torchrun), `--standalone` on one node and a c10d
rendezvous at `--rdzv-endpoint HOST:PORT` across nodes (run the same command on every node).
The Slurm script runs one torchrun per node through `srun`, the first node of the allocation
being the rendezvous host.

This module imports neither torch nor the recipes, so the CLI's --help stays fast.

Not covered: elastic restarts (--max-restarts) and other schedulers (Kubernetes, SkyPilot).
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

from storage.errors import BadInput, FactoryError

METHODS = {"sft": "trainer.sft", "distill": "trainer.distill", "grpo": "trainer.grpo"}
RDZV_PORT = 29500


def recipe_module(method: str) -> str:
    """The module of a method, checked to exist."""
    if method not in METHODS:
        raise BadInput(f"METHOD {method!r}: expected one of {', '.join(METHODS)}")
    module = METHODS[method]
    if importlib.util.find_spec(module) is None:
        raise FactoryError(f"{module} is not part of this installation yet: `factory train {method}` has no recipe to run")
    return module


def launch_command(
    method: str,
    config: str | Path,
    *,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    python: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The argv that runs `method` on `config` with the given world shape."""
    module = recipe_module(method)
    if nproc_per_node < 1 or nnodes < 1:
        raise BadInput(f"--nproc-per-node {nproc_per_node} --nnodes {nnodes}: expected positive counts")
    python = python or sys.executable
    tail = ["-m", module, str(config), *(extra or [])]
    if nproc_per_node == 1 and nnodes == 1:
        return [python, *tail]
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise BadInput(f"--nnodes {nnodes}: several nodes need --rdzv-endpoint HOST:PORT (the same on every node), or --slurm OUT.sh")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", f"factory-{method}"]
    return cmd + ["--nproc-per-node", str(nproc_per_node), *tail]


def slurm_script(
    method: str,
    config: str | Path,
    *,
    nproc_per_node: int = 8,
    nnodes: int = 1,
    job_name: str | None = None,
    partition: str | None = None,
    time_limit: str | None = None,
    python: str | None = None,
    workdir: str | Path | None = None,
) -> str:
    """An sbatch script: one task per node, each a torchrun of `nproc_per_node` GPU workers."""
    module = recipe_module(method)
    python = python or sys.executable
    config = Path(config).resolve()
    workdir = Path(workdir or Path.cwd()).resolve()
    lines = [
        "#!/bin/bash",
        f"# Launch: sbatch {{this file}}   ({method} on {nnodes} node(s) x {nproc_per_node} GPU(s); written by `factory train --slurm`)",
        f"#SBATCH --job-name={job_name or 'factory-' + method}",
        f"#SBATCH --nodes={nnodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={nproc_per_node}",
        "#SBATCH --exclusive",
        "#SBATCH --output=%x-%j.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
        "srun --kill-on-bad-exit=1 "
        + " ".join(
            [
                shlex.quote(python), "-m", "torch.distributed.run",
                "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node),
                "--rdzv-backend", "c10d", f'--rdzv-endpoint "$head_node:{RDZV_PORT}"', '--rdzv-id "$SLURM_JOB_ID"',
                "-m", module, shlex.quote(str(config)),
            ]
        ),
        "",
    ]
    return "\n".join(lines)
