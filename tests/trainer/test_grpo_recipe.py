"""The GRPO recipe around the loss: configs (the shipped YAMLs, BadInput on bad ones), prompts
pre-selected from the lake by stored pass rate, dynamic sampling, and a run's metrics."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from storage.errors import BadInput
from trainer.grpo import Config, PromptsConfig, load_config, read_prompts, train

from .test_grpo_learning import tiny_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes" / "train").glob("grpo*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_name_their_launch_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# python -m trainer.grpo ", "# factory train grpo ", "# torchrun ")) and path.name in first


def test_bad_config_names_file_key_and_form(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: {jsonl: x.jsonl}\ngrpo:\n  loss_type: ppo\n")
    with pytest.raises(BadInput) as exc:
        load_config(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "grpo.loss_type" in msg and "dapo" in msg
    bad.write_text("grpo: {group_size: 8}\n")
    with pytest.raises(BadInput, match="prompts"):
        load_config(bad)
    bad.write_text("prompts: {jsonl: x.jsonl, pass_rate: [0.9, 0.1]}\n")
    with pytest.raises(BadInput, match=r"prompts: .*expected \[low, high\]"):
        load_config(bad)


def test_prompts_from_the_lake_by_pass_rate(tmp_path):
    from storage import Lake

    store = str(tmp_path / "store")
    problems = [{"problem_id": f"p{i}", "problem": f"What is {i}+{i}?", "reference_answer": str(2 * i), "domain": "math",
                 "source": "t"} for i in range(4)]
    labels = [{"problem_id": f"p{i}", "method": "gold", "label": str(2 * i), "pass_rate": rate, "n_samples": 8}
              for i, rate in enumerate([0.0, 0.25, 0.75, 1.0])]
    stale = [{"problem_id": "p0", "method": "gold", "label": "0", "pass_rate": 0.5, "n_samples": 8,
              "created_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}]  # an older label: the newer one counts
    contaminated = [{"problem_id": "p9", "problem": "What is 9+9?", "reference_answer": "18", "domain": "math", "source": "t",
                     "contamination": ["gsm8k"]}]
    with Lake.open(store) as lake:
        lake.commit("problems", problems, batch_key="p", run_id="r")
        lake.commit("problems", contaminated, batch_key="p9", run_id="r")
        lake.commit("labels", stale, batch_key="l0", run_id="r")
        lake.commit("labels", labels + [{"problem_id": "p9", "method": "gold", "label": "18", "pass_rate": 0.5}],
                    batch_key="l", run_id="r")
    rows = read_prompts(PromptsConfig(store=store))
    assert sorted(r["problem_id"] for r in rows) == ["p1", "p2"]  # 0 and 1 are open-interval ends: no signal
    assert {r["reference_answer"] for r in rows} == {"2", "4"}
    assert [r["problem_id"] for r in read_prompts(PromptsConfig(store=store, pass_rate=(0.5, 1.0)))] == ["p2"]
    with pytest.raises(BadInput, match="no problems"):
        read_prompts(PromptsConfig(store=store, pass_rate=(0.8, 0.9)))


def test_jsonl_prompts_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\nnot json\n')
    with pytest.raises(BadInput, match=r"p.jsonl line 2: not JSON"):
        read_prompts(PromptsConfig(jsonl=str(f)))
    f.write_text('{"problem": "1+1", "answer": "2", "pass_rate": 0.5}\n{"problem": "2+2", "answer": "4", "pass_rate": 1.0}\n')
    rows = read_prompts(PromptsConfig(jsonl=str(f)))
    assert [r["reference_answer"] for r in rows] == ["2"] and rows[0]["problem_id"]


def test_train_split_keeps_held_out_problems_out_of_the_prompts(tmp_path):
    """`split: train` drops every problem on the test side of the factory's hash split, the
    side `factory eval --recipe` scores: a policy never trains on a held-out problem."""
    from factory.questions.splits import split_of

    problems = [f"What is {a} + {b}?" for a in range(10, 40) for b in range(1, 10)]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"problem": p, "answer": "0"}) + "\n" for p in problems))
    kept = [r["problem"] for r in read_prompts(PromptsConfig(jsonl=str(f), split="train", test_share=0.3))]
    want = [p for p in problems if split_of(p, 0.3) == "train"]
    assert kept == want and 0 < len(want) < len(problems)
    assert len(read_prompts(PromptsConfig(jsonl=str(f)))) == len(problems)  # split: all keeps every one
    f.write_text(json.dumps({"problem": next(p for p in problems if split_of(p, 0.3) == "test"), "answer": "0"}) + "\n")
    with pytest.raises(BadInput, match="on the train side"):
        read_prompts(PromptsConfig(jsonl=str(f), split="train", test_share=0.3))


def test_prompts_render_as_a_recipe_prompt_does():
    """The GRPO messages and the recipe's (what `factory eval --recipe` shows) are one text,
    doubled braces included; a stray placeholder is refused when the config loads."""
    from factory.recipe import PromptSpec
    from trainer.prompts import messages_for

    system, template = "Answer in one sentence.", "Q: {problem} Put it in \\boxed{{}}."
    row = {"problem": "What is 2 + 3?"}
    assert list(messages_for(row, PromptsConfig(jsonl="x", system_prompt=system, template=template))) == \
        PromptSpec(system=system, template=template).messages(row)
    with pytest.raises(ValueError, match="only {problem} may be a placeholder"):
        PromptsConfig(jsonl="x", template="{problem} and {answer}")


def test_dynamic_sampling_refills_zero_variance_groups(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, max_refills=20)
    # Half the prompts can never be answered in one token (gold "55"): always reward 0, zero std.
    extra = "".join(json.dumps({"problem": d, "reference_answer": d * 2}) + "\n" for d in "0123456789")
    Path(cfg.prompts.jsonl).write_text(Path(cfg.prompts.jsonl).read_text() + extra)
    hist = train(cfg)["history"]
    assert all(h["frac_zero_std_groups"] > 0 for h in hist)
    assert all(h["frac_zero_std_groups_kept"] == 0 for h in hist)  # refilled up to the quota
    assert all(h["generation_rounds"] >= 2 for h in hist)
    off = train(tiny_config(tmp_path / "off", max_steps=1, dynamic_sampling=False))["history"][0]
    assert off["generation_rounds"] == 1 and off["frac_zero_std_groups_kept"] == off["frac_zero_std_groups"]


def test_metrics_of_a_run(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, num_iterations=2, beta=0.04)
    cfg.rewards.functions.append(type(cfg.rewards.functions[0])(name="overlong", max_length=1, buffer=0))
    result = train(cfg)
    row = result["history"][-1]
    for key in ("reward", "reward_std", "reward/accuracy", "reward/overlong", "completion_length", "completion_length_max",
                "clipped_ratio", "kl", "entropy", "clip_ratio/low", "clip_ratio/high", "frac_zero_std_groups", "tokens_per_s",
                "time/generation_s", "time/scoring_s", "time/training_s"):
        assert key in row, key
    assert row["kl"] > 0  # beta > 0: a reference model, and the policy moved away from it
    assert row["entropy"] > 0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "step" and "reward/accuracy" in header


@pytest.mark.integration
def test_factory_train_grpo_on_two_processes_with_fsdp(tmp_path):
    """`factory train grpo CFG --nproc-per-node 2`: torchrun, gloo, FSDP2, generation in lockstep."""
    import os
    import subprocess
    import sys

    import yaml

    cfg = tiny_config(tmp_path, max_steps=3, micro_batch_size=8).model_dump(mode="json")
    cfg["distributed"]["strategy"] = "fsdp"
    cfg["export_hf"] = True
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    factory = Path(sys.executable).with_name("factory")
    proc = subprocess.run([str(factory), "train", "grpo", str(path), "--nproc-per-node", "2", "--stop-after-steps", "2"],
                          capture_output=True, text=True, timeout=400, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + the 2 steps before the stop
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "hf"), local_files_only=True)


@pytest.mark.parametrize("path", ["smollm2", "/models/base.gguf"])
def test_vllm_rollouts_refuse_a_gguf_base_naming_the_fields(tmp_path, path):
    """vLLM loads its own copy of the initial weights from model.path: a GGUF base (what the CPU
    loop starts from) is refused before any model loads, not deep inside the engine."""
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(f"model: {{path: {path}}}\nprompts: {{jsonl: p.jsonl}}\nrollout: {{engine: vllm}}\n")
    with pytest.raises(BadInput, match=r"rollout.engine vllm with model.path .*expected a Hugging Face folder"):
        load_config(cfg)
