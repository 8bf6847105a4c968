"""The loop of issue 17 at toy size, through the commands a user runs, each a fresh process on
the real SmolLM2-135M on the CPU: `factory run` on the train side of a procedural family ->
`factory train sft` from the embedded GGUF on that dataset (exported as an HF folder), and
`factory train grpo` from the same base on the lake's train-side problems ->
`factory eval` of the base and of the SFT student on the test side, in the recipe's prompt ->
`factory report` with both evals and both training curves. It checks the plumbing, not the
gain: a few problems and a few steps teach nothing measurable (benches/loop.py measures it)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage import Lake
from tests.flows.test_run_cli import _needs_smollm2

ROOT = Path(__file__).resolve().parents[2]

RECIPE = """\
name: loop-toy
questions:
  - {source: generator, generator: addition, count: 8, difficulty: 1, seed: 0, split: train}
prompt:
  system: |-
    Answer every question with one sentence, like these examples.
    What is 2 + 2? 2 plus 2 is 4, so the final answer is 4.
    What is 5 + 3? 5 plus 3 is 8, so the final answer is 8.
  template: "{problem}"
teacher:
  backend: transformers
  model: smollm2
  samples_per_problem: 2
  batch_size: 16
  sampling: {temperature: 0.3, top_p: 0.95, max_tokens: 24, seed: 0}
verify: [math]
filters: [language, repetition]
dedup: {threshold: 0.8}
dataset: {name: loop-toy}
"""

SFT = """\
output_dir: student
model: {path: smollm2}
data: {dataset: loop-toy, limit: 2, max_length: 128, packing: false, shuffle: false, empty_reasoning: answer_only}
optim: {lr: 1.0e-4, schedule: constant, warmup_steps: 0, max_grad_norm: 1.0}
loop: {batch_size: 2, micro_batch_size: 2, epochs: 2}  # both steps see the same two rows
checkpoint: {export_hf: true, keep_last: 1}
metrics: {tensorboard: false}
"""


GRPO = """\
output_dir: grpo
model: {path: smollm2}
prompts:
  sql: "SELECT problem_id, problem, reference_answer, domain FROM problems ORDER BY problem_id"
  split: train
  pass_rate: null
  limit: 2
  system_prompt: |-
    Answer every question with one sentence, like these examples.
    What is 2 + 2? 2 plus 2 is 4, so the final answer is 4.
    What is 5 + 3? 5 plus 3 is 8, so the final answer is 8.
grpo: {group_size: 2, prompts_per_step: 2, micro_batch_size: 4, max_steps: 1, dynamic_sampling: false}
rollout: {engine: transformers, max_completion_length: 12, temperature: 1.0}
rewards: {functions: [{name: accuracy, checker: math, unverifiable: -0.5}]}
optim: {lr: 1.0e-5}
checkpoint: {export_hf: true, keep_last: 1}
metrics: {tensorboard: false}
"""


def factory(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "FACTORY_"))}
    env.update(PREFECT_HOME=str(folder / "prefect-home"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", COLUMNS="200")
    done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"factory {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@pytest.mark.integration
def test_the_loop_at_toy_size_runs_end_to_end(tmp_path):
    _needs_smollm2()
    (tmp_path / "loop.yaml").write_text(RECIPE)
    (tmp_path / "sft.yaml").write_text(SFT)
    (tmp_path / "grpo.yaml").write_text(GRPO)

    factory(tmp_path, "run", "loop.yaml")
    with Lake.open(str(tmp_path / "factory-store"), create=False) as lake:  # the CLI's default store, in its cwd
        rows = lake.read_dataset("loop-toy").to_pylist()
    assert len(rows) >= 2, "too few accepted samples to train on"

    factory(tmp_path, "train", "sft", "sft.yaml")
    with open(tmp_path / "student" / "metrics.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 2 and losses[1] < losses[0], losses  # the same rows twice: the loss falls
    student = tmp_path / "student" / "hf"
    assert (student / "config.json").is_file()

    # GRPO from the same base on the lake's train-side problems, the math verifier as the reward.
    factory(tmp_path, "train", "grpo", "grpo.yaml")
    with open(tmp_path / "grpo" / "metrics.csv") as fh:
        [step] = list(csv.DictReader(fh))
    assert -0.5 <= float(step["reward"]) <= 1.0 and float(step["completion_length"]) > 0, step
    grpo_student = tmp_path / "grpo" / "hf"
    assert (grpo_student / "config.json").is_file()

    scores = {}
    # The GRPO export is written by the same export_hf as SFT's (loaded by `factory eval` below);
    # not evaluating it too keeps this test a minute shorter in CI.
    for model in ("smollm2", str(student)):
        out = factory(tmp_path, "eval", model, "--recipe", "loop.yaml", "--limit", "4", "--temperature", "0",
                      "--max-tokens", "24", "--format", "json")
        scores[model] = json.loads(out.stdout)
    for model, result in scores.items():
        text = json.dumps(result)
        assert "pass@1" in text and "addition" in text, (model, text[:500])

    factory(tmp_path, "report", "--output", "report.html", "--metrics", "student/metrics.csv", "--metrics", "grpo/metrics.csv")
    page = (tmp_path / "report.html").read_text()
    assert 'id="evals"' in page and "smollm2" in page and str(student) in page
    assert 'id="training"' in page and "grpo/metrics.csv" in page and "reward" in page


def test_loop_configs_load_and_agree_on_prompt_and_split():
    """recipes/loop/: each file loads, names its launch command first, and the three agree on
    what the loop's claim rests on: GRPO shows the recipe's prompt (the one the eval uses),
    trains only on the train side at the recipe's test_share, SFT reads the recipe's dataset."""
    from factory.recipe import load_recipe
    from trainer import grpo, sft

    loop = ROOT / "recipes" / "loop"
    recipe = load_recipe(loop / "rft.yaml")
    sft_cfg = sft.load_config(loop / "sft.yaml")
    grpo_cfg = grpo.load_config(loop / "grpo.yaml")
    for name, command in (("rft.yaml", "run"), ("sft.yaml", "train sft"), ("grpo.yaml", "train grpo")):
        assert (loop / name).read_text().splitlines()[0] == f"# factory {command} recipes/loop/{name}"
    [source] = recipe.questions
    assert source.split == "train" and grpo_cfg.prompts.split == "train"
    assert grpo_cfg.prompts.test_share == source.test_share
    assert (grpo_cfg.prompts.system_prompt, grpo_cfg.prompts.template) == (recipe.prompt.system, recipe.prompt.template)
    assert sft_cfg.data.dataset == recipe.dataset.name and sft_cfg.model.path == grpo_cfg.model.path == "smollm2"
