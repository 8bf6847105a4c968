"""`factory train sft|distill|grpo`: launch the trainer's recipes (torchrun when asked).

    factory train sft recipes/train/sft_tiny.yaml
    factory train distill recipes/train/distill.yaml --nproc-per-node 8
    factory train sft recipes/train/sft.yaml --nproc-per-node 8 --nnodes 4 --slurm train.sh

A plain function: flows/cli.py registers it on `app`. torch and the recipes are imported
inside the command body, so `factory --help` stays fast. The config is validated here first,
so a bad YAML is exit code 2 before any process starts.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from flows.options import err, run_job
from storage import BadInput, FactoryError
from storage.files import atomic_output


def train(
    method: Annotated[str, typer.Argument(metavar="METHOD", help="sft, distill or grpo.")],
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="The recipe's YAML config (its header comment is the launch command).")],
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", metavar="N", help="Processes (GPUs) per node; more than 1 runs torchrun with FSDP2.")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", metavar="M", help="Nodes; more than 1 needs --rdzv-endpoint or --slurm.")] = 1,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option("--rdzv-endpoint", metavar="HOST:PORT", help="Rendezvous of a multi-node run (run the same command on every node)."),
    ] = None,
    slurm: Annotated[Path | None, typer.Option("--slurm", metavar="OUT.sh", help="Write an sbatch script for this launch instead of running it.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", metavar="NAME", help="Slurm partition (with --slurm).")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", metavar="HH:MM:SS", help="Slurm time limit (with --slurm).")] = None,
    stop_after_steps: Annotated[
        int | None,
        typer.Option("--stop-after-steps", metavar="N", help="Stop and checkpoint after N steps (a preemption drill; resume by running again)."),
    ] = None,
) -> None:
    """Train a student: SFT, distillation or GRPO from a YAML config, on one process or torchrun."""

    def job() -> None:
        from trainer import launch

        module = launch.recipe_module(method)
        recipe = importlib.import_module(module)
        recipe.load_config(config)  # BadInput (exit 2) before anything starts
        if slurm is not None:
            script = launch.slurm_script(method, config, nproc_per_node=nproc_per_node, nnodes=nnodes, partition=partition, time_limit=time_limit)
            with atomic_output(slurm) as tmp:  # a device, link or folder is refused, not replaced
                tmp.write_text(script)
            slurm.chmod(0o755)
            err.print(f"wrote {slurm}: submit it with `sbatch {slurm}`", markup=False)
            return
        extra = ["--stop-after-steps", str(stop_after_steps)] if stop_after_steps else []
        cmd = launch.launch_command(method, config, nproc_per_node=nproc_per_node, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, extra=extra)
        err.print("running: " + " ".join(cmd), markup=False)
        code = subprocess.run(cmd).returncode
        if code == 2:
            raise BadInput(f"{method} rejected {config} (see the log above)")
        if code != 0:
            raise FactoryError(f"{method} on {config} exited with code {code} (see the log above)")
        err.print(f"{method} finished: {config}", markup=False)

    run_job(job)
