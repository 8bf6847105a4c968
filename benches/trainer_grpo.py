"""GRPO step time: our recipe (trainer/grpo.py) against TRL's GRPOTrainer, same tiny model,
prompts, group size, reward and CPU threads.

    python benches/trainer_grpo.py [--steps 4] [--prompts 4] [--group 8] [--max-tokens 32] [--threads 2]
        [--hidden 64] [--layers 2] [--out benches/results/trainer_grpo.json]

Both sides: a random-weight Llama (hidden `--hidden`, `--layers` layers, SmolLM2's tokenizer and
chat template, the same init seed), GSM8K prompts from recipes/seeds, `--prompts` prompts x
`--group` completions of up to `--max-tokens` tokens per step at temperature 1, one policy update
per generation batch, no reference model (beta 0), loss `dapo` with epsilon 0.2 / 0.28, AdamW
lr 1e-6, no gradient checkpointing, fp32, `--threads` torch threads. The reward is the same
function on both sides: our math accuracy (factory.verifiers.math through trainer.rewards).
The first step of each side is a warm-up and is not counted; the rest are timed per step, with
the split generation / scoring / training (TRL's split: its `model.generate` and reward calls
are wrapped with timers; training is the rest of its step). Goal: ours >= 1.0x TRL's steps/s.

TRL is a test-and-bench-only dependency, imported here and in tests only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

GOAL = 1.0
SEEDS = _HERE.parent / "recipes" / "seeds" / "gsm8k_test.jsonl"


def prompts_file(n: int, folder: Path) -> Path:
    rows = []
    with SEEDS.open() as fh:
        for line in fh:
            r = json.loads(line)
            rows.append({"problem": r["question"], "reference_answer": r["answer"].split("####")[-1].strip(), "domain": "math"})
            if len(rows) >= n:
                break
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model_section(args) -> dict:
    return {"hidden_size": args.hidden, "intermediate_size": 2 * args.hidden, "num_layers": args.layers, "num_heads": 4,
            "num_kv_heads": 2, "max_position_embeddings": 1024, "init_seed": 0, "tie_word_embeddings": True}


def run_ours(args, folder: Path) -> dict:
    from trainer.grpo import Config, train

    cfg = Config.model_validate({
        "model": model_section(args),
        "prompts": {"jsonl": str(prompts_file(args.prompts, folder))},
        "grpo": {"group_size": args.group, "prompts_per_step": args.prompts, "micro_batch_size": args.prompts * args.group,
                 "loss_type": "dapo", "epsilon_low": 0.2, "epsilon_high": 0.28, "beta": 0.0, "max_steps": args.steps + 1,
                 "dynamic_sampling": False, "seed": 0},
        "rollout": {"max_completion_length": args.max_tokens, "temperature": 1.0, "batch_size": args.prompts * args.group},
        "rewards": {"functions": [{"name": "accuracy"}]},
        "optim": {"lr": 1e-6, "schedule": "constant", "max_grad_norm": 1.0},
        "metrics": {"tensorboard": False},
        "output_dir": str(folder / "ours"),
        "export_hf": False,
    })
    hist = train(cfg)["history"][1:]  # the first step warms up
    n = len(hist)
    return {
        "step_s": sum(h["step_s"] for h in hist) / n,
        "generation_s": sum(h["time/generation_s"] for h in hist) / n,
        "scoring_s": sum(h["time/scoring_s"] for h in hist) / n,
        "training_s": sum(h["time/training_s"] for h in hist) / n,
        "completion_length": sum(h["completion_length"] for h in hist) / n,
    }


def run_trl(args, folder: Path) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trainer.config import ModelConfig
    from trainer.model import build_model, load_tokenizer
    from trainer.rewards import RewardConfig, RewardSpec, Scorer

    mc = ModelConfig(**model_section(args))
    tok = load_tokenizer(mc.tokenizer_path())
    model = build_model(mc, tok)
    model.config.use_cache = True
    rows = [json.loads(x) for x in prompts_file(args.prompts, folder).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["problem"]}], "reference_answer": r["reference_answer"]}
                            for r in rows] * (args.steps + 2))
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="accuracy")], cache_size=0))
    timers = {"generation_s": 0.0, "scoring_s": 0.0}

    def accuracy(completions, reference_answer, **kw):
        t0 = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = scorer.score([{"completion": t, "reference_answer": g, "domain": "math"} for t, g in zip(texts, reference_answer)]).total
        timers["scoring_s"] += time.perf_counter() - t0
        return out

    cfg = GRPOConfig(
        output_dir=str(folder / "trl"), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group, gradient_accumulation_steps=1,
        max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0, learning_rate=1e-6, max_grad_norm=1.0,
        lr_scheduler_type="constant", beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, max_steps=args.steps + 1,
        gradient_checkpointing=False, bf16=False, dataloader_num_workers=0, disable_tqdm=True, shuffle_dataset=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy], args=cfg, train_dataset=ds, processing_class=tok)
    real_generate = trainer.model.generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real_generate(*a, **kw)
        finally:
            timers["generation_s"] += time.perf_counter() - t0

    trainer.model.generate = timed_generate
    steps: list[dict] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()
            timers["generation_s"] = timers["scoring_s"] = 0.0

        def on_step_end(self, *a, **kw):
            steps.append({"step_s": time.perf_counter() - self.t0, **timers})

    trainer.add_callback(Clock())
    trainer.train()
    hist = steps[1:]
    n = len(hist)
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h][1:]
    out = {k: sum(h[k] for h in hist) / n for k in ("step_s", "generation_s", "scoring_s")}
    out["training_s"] = out["step_s"] - out["generation_s"] - out["scoring_s"]
    out["completion_length"] = sum(lengths) / max(len(lengths), 1)
    del torch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", default=str(_HERE / "results" / "trainer_grpo.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_ours(args, Path(tmp))
        trl = run_trl(args, Path(tmp))
    ratio = trl["step_s"] / ours["step_s"]
    header = f"{'':10} {'step s':>8} {'gen s':>8} {'score s':>8} {'train s':>8} {'len':>6}"
    lines = [header]
    for name, r in (("ours", ours), ("TRL", trl)):
        lines.append(f"{name:10} {r['step_s']:8.3f} {r['generation_s']:8.3f} {r['scoring_s']:8.3f} {r['training_s']:8.3f} "
                     f"{r['completion_length']:6.1f}")
    lines.append(f"speed ratio ours/TRL (steps/s): {ratio:.2f}x   goal >= {GOAL:.1f}x   "
                 f"({args.prompts} prompts x {args.group}, <= {args.max_tokens} tokens, hidden {args.hidden}, "
                 f"{args.layers} layers, {args.threads} threads, {args.steps} timed steps)")
    sys.stdout.write("\n".join(lines) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"ours": ours, "trl": trl, "ratio": ratio, "goal": GOAL, "args": vars(args),
                                          "machine": platform.platform(), "torch_threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()
