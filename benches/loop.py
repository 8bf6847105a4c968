"""The loop benchmark (issue 17): does data from the factory make a student better, on a laptop?

    python benches/loop.py [--workdir DIR] [--json PATH] [--eval-limit 200] [--no-grpo]

Runs, each as the `factory` command a user types (a fresh process, timed), on the real
SmolLM2-135M-Instruct on the CPU, with the configs of recipes/loop/ (copied into the workdir with
its paths filled in):
1. `factory run recipes/loop/rft.yaml`: the training side of two-digit plus one-digit additions,
   sampled from the base model; the math verifier keeps the right answers -> dataset `loop-rft`;
2. `factory train sft recipes/loop/sft.yaml`: rejection-sampling fine-tuning (the R1 distillation
   stage) of the same base on that dataset -> an HF folder;
3. `factory train grpo recipes/loop/grpo.yaml`: GRPO from the same base (R1-Zero in miniature),
   the factory's math verifier as the reward, on the run's training problems -> an HF folder;
4. `factory eval` of the base, the RFT student and the GRPO student on the same held-out problems
   (the test side of the same family, written to heldout.jsonl), the recipe's prompt, greedy;
5. `factory report` of the lake: the funnel, the training curves, the three evals side by side.

Printed: one table (held-out pass@1 with a bootstrap 95% interval over problems, the gain over the
base with a paired bootstrap interval, accepted samples, training tokens, wall time per stage)
beside the issue's goals (RFT >= base + 10 points with its interval clear of the base's; GRPO >=
base + 5; the whole bench <= 40 minutes on 2 cores), then where the time went and, per model,
format vs accuracy (how many answers the verifier could read at all, and how many of those were
right), which says whether a gain is the format or the arithmetic. The peer is the base model,
measured in the same run on the same problems.

`--json PATH` also writes the table as one JSON object with the paths of the lake, the held-out
problems file and the three model folders, so anyone can re-score them:
    factory eval MODEL --problems heldout.jsonl --recipe recipes/loop/rft.yaml --temperature 0 --max-tokens 24
Nothing leaves the machine (HF_HUB_OFFLINE=1; Prefect's local server listens on 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOOP = ROOT / "recipes" / "loop"
EVAL_ARGS = ("--temperature", "0", "--max-tokens", "24", "--batch-size", "16")
GOALS = {"rft": 10.0, "grpo": 5.0, "minutes": 40.0}


def factory(workdir: Path, log: Path, *args: str) -> tuple[float, str]:
    """Run one `factory` command in `workdir` as a user would; (wall seconds, stdout). Its
    output goes to `log` as well; a failure stops the bench with the command's last lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "FACTORY_"))}
    env.update(PREFECT_HOME=str(workdir / "prefect-home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), COLUMNS="160",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=workdir, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    with log.open("a") as fh:
        fh.write(f"$ factory {' '.join(args)}\n# {seconds:.1f} s, exit {done.returncode}\n{done.stdout}\n{done.stderr}\n")
    if done.returncode != 0:
        sys.exit(f"factory {' '.join(args)} failed (exit {done.returncode}); see {log}:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def write_configs(workdir: Path, lake: Path) -> dict[str, Path]:
    """recipes/loop/ into the workdir: the recipe as it is, the trainer configs with their
    output folders and the lake filled in (the shipped files use ./factory-store and runs/)."""
    out = {"rft": workdir / "rft.yaml", "sft": workdir / "sft.yaml", "grpo": workdir / "grpo.yaml"}
    out["rft"].write_text((LOOP / "rft.yaml").read_text())
    sft = yaml.safe_load((LOOP / "sft.yaml").read_text())
    sft["output_dir"] = str(workdir / "sft")
    sft["data"]["store"] = str(lake)
    out["sft"].write_text(yaml.safe_dump(sft, sort_keys=False))
    grpo = yaml.safe_load((LOOP / "grpo.yaml").read_text())
    grpo["output_dir"] = str(workdir / "grpo")
    grpo["prompts"]["store"] = str(lake)
    out["grpo"].write_text(yaml.safe_dump(grpo, sort_keys=False))
    return out


def write_heldout(recipe: Path, path: Path, limit: int) -> int:
    """The recipe's held-out problems (the test side of its generator source) as a problems
    file, so the three evals, and anyone re-scoring them later, read the same items."""
    from factory.benchmarks.problem_sets import problem_sets

    [held] = problem_sets(recipe=str(recipe), limit=limit)
    with path.open("w") as fh:
        for it in held.items:
            fh.write(json.dumps({"problem_id": it["id"], "problem": it["problem"], "answer": it["answer"], "domain": it["domain"],
                                 "verifier": it.get("verifier", "math")}) + "\n")
    return len(held.items)


def bootstrap(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling problems."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def eval_rows(lake: Path, run_id: str) -> dict[str, dict]:
    """item_id -> the eval row of `run_id` (one sample per item: greedy)."""
    from storage import Lake

    with Lake.open(str(lake), create=False) as lk:
        rows = lk.query("SELECT item_id, status, correct, completion_tokens, finish_reason FROM evals WHERE run_id = ?", [run_id]).to_pylist()
    return {r["item_id"]: r for r in rows}


def score(rows: dict[str, dict], base: dict[str, dict] | None) -> dict:
    items = sorted(rows)
    right = [1.0 if rows[i]["correct"] else 0.0 for i in items]
    lo, hi = bootstrap(right)
    read = [rows[i] for i in items if rows[i]["status"] in ("pass", "fail")]
    out = {"n": len(items), "pass@1": 100 * sum(right) / len(items), "ci95": [100 * lo, 100 * hi],
           "readable": len(read), "right_when_readable": sum(1 for r in read if r["correct"]),
           "cut_at_max_tokens": sum(1 for i in items if rows[i]["finish_reason"] == "length")}
    if base is not None:
        common = [i for i in items if i in base]
        diff = [(1.0 if rows[i]["correct"] else 0.0) - (1.0 if base[i]["correct"] else 0.0) for i in common]
        dlo, dhi = bootstrap(diff, seed=1)
        out.update(gain=100 * sum(diff) / len(diff), gain_ci95=[100 * dlo, 100 * dhi])
    return out


def training(metrics: Path) -> dict:
    """Steps, tokens and the first and last loss (or reward) of a trainer's metrics.csv."""
    with metrics.open() as fh:
        rows = list(csv.DictReader(fh))
    key = "loss" if rows and "reward" not in rows[0] else "reward"

    def num(r: dict, k: str) -> float:
        try:
            return float(r.get(k) or 0)
        except ValueError:
            return 0.0

    if rows and "tokens" in rows[0]:
        tokens = sum(num(r, "tokens") for r in rows)
    else:  # GRPO logs completion tokens generated per second of the step: its rollout tokens
        tokens = sum(num(r, "tokens_per_s") * num(r, "step_s") for r in rows)
    return {"steps": len(rows), "tokens": int(round(tokens)), "curve": key,
            "first": num(rows[0], key) if rows else None, "last": num(rows[-1], key) if rows else None,
            "values": [num(r, key) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="where the lake, configs, models, report and log go [default: a new temporary folder]")
    ap.add_argument("--json", help="also write the table as one JSON object here")
    ap.add_argument("--eval-limit", type=int, default=200, help="held-out problems per eval (the issue asks at least 200)")
    ap.add_argument("--no-grpo", action="store_true", help="skip the GRPO student")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-loop-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    lake, log = workdir / "lake", workdir / "bench.log"
    configs = write_configs(workdir, lake)
    heldout = workdir / "heldout.jsonl"
    n_held = write_heldout(configs["rft"], heldout, args.eval_limit)
    print(f"loop benchmark in {workdir} (log: {log}); {n_held} held-out problems; load average {os.getloadavg()[0]:.1f}", flush=True)

    wall: dict[str, float] = {}
    started = time.perf_counter()
    wall["factory run"], out = factory(workdir, log, "run", str(configs["rft"]), "--store", str(lake), "--format", "json")
    summary = json.loads(out)
    funnel = {f["stage"]: f["count"] for f in summary["funnel"]}
    print(f"  factory run: {wall['factory run']:.0f} s; funnel {funnel}", flush=True)
    wall["train sft"], _ = factory(workdir, log, "train", "sft", str(configs["sft"]))
    print(f"  train sft: {wall['train sft']:.0f} s", flush=True)
    models = {"base": "smollm2", "rft": str(workdir / "sft" / "hf")}
    if not args.no_grpo:
        wall["train grpo"], _ = factory(workdir, log, "train", "grpo", str(configs["grpo"]))
        print(f"  train grpo: {wall['train grpo']:.0f} s", flush=True)
        models["grpo"] = str(workdir / "grpo" / "hf")
    for name, model in models.items():
        wall[f"eval {name}"], _ = factory(workdir, log, "eval", model, "--problems", str(heldout), "--recipe", str(configs["rft"]),
                                          *EVAL_ARGS, "--store", str(lake), "--run-id", f"loop-{name}", "--format", "json")
        print(f"  eval {name}: {wall[f'eval {name}']:.0f} s", flush=True)
    curves = [arg for m in ("sft", "grpo") if (workdir / m / "metrics.csv").is_file() for arg in ("--metrics", str(workdir / m / "metrics.csv"))]
    wall["report"], _ = factory(workdir, log, "report", "--store", str(lake), "--output", str(workdir / "report.html"), *curves)
    total = time.perf_counter() - started

    base = eval_rows(lake, "loop-base")
    scores = {name: score(eval_rows(lake, f"loop-{name}"), None if name == "base" else base) for name in models}
    train = {"rft": training(workdir / "sft" / "metrics.csv")}
    if "grpo" in models:
        train["grpo"] = training(workdir / "grpo" / "metrics.csv")
    table = report(scores, train, funnel, wall, total)
    print(table)
    result = {"table": scores, "training": train, "funnel": funnel, "wall_s": {k: round(v, 1) for k, v in wall.items()},
              "total_s": round(total, 1), "goals": GOALS, "load_average_end": os.getloadavg()[0],
              "paths": {"workdir": str(workdir), "lake": str(lake), "heldout": str(heldout), "report": str(workdir / "report.html"),
                        "recipe": str(configs["rft"]), "models": models},
              "rescore": f"factory eval MODEL --problems {heldout} --recipe {configs['rft']} {' '.join(EVAL_ARGS)}"}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def report(scores: dict, train: dict, funnel: dict, wall: dict, total: float) -> str:
    lines = ["", "| model | held-out pass@1 | 95% CI | gain vs base (paired 95% CI) | goal | met | accepted samples | training tokens | train wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = scores["base"]
    for name, s in scores.items():
        gain = "" if name == "base" else f"{s['gain']:+.1f} ({s['gain_ci95'][0]:+.1f} .. {s['gain_ci95'][1]:+.1f})"
        goal, met = "", ""
        if name in GOALS:
            goal = f">= +{GOALS[name]:.0f}" + (", CI clear of base's" if name == "rft" else "")
            ok = s["gain"] >= GOALS[name] and (name != "rft" or s["ci95"][0] > base["ci95"][1])
            met = "yes" if ok else "no"
        t = train.get(name, {})
        accepted = funnel.get("dataset", "") if name == "rft" else ""
        step = "train sft" if name == "rft" else "train grpo" if name == "grpo" else ""
        lines.append(f"| {name} | {s['pass@1']:.1f}% ({round(s['pass@1'] * s['n'] / 100)}/{s['n']}) | {s['ci95'][0]:.1f} - {s['ci95'][1]:.1f} | "
                     f"{gain} | {goal} | {met} | {accepted} | {t.get('tokens', '')} | {wall[step]:.0f} s |" if step else
                     f"| {name} | {s['pass@1']:.1f}% ({round(s['pass@1'] * s['n'] / 100)}/{s['n']}) | {s['ci95'][0]:.1f} - {s['ci95'][1]:.1f} | "
                     f"{gain} | {goal} | {met} | {accepted} | {t.get('tokens', '')} | |")
    lines += ["", "| stage | wall | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} s | {100 * v / total:.0f}% |" for k, v in wall.items()]
    met = "yes" if total <= GOALS["minutes"] * 60 else "no"
    lines += [f"| **total** | **{total / 60:.1f} min** (goal <= {GOALS['minutes']:.0f} min: {met}) | |", ""]
    lines += ["| model | answers the verifier could read | right of those | cut at 24 tokens |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['readable']}/{s['n']} | {s['right_when_readable']}/{s['readable']} | {s['cut_at_max_tokens']} |"
              for name, s in scores.items()]
    for name, t in train.items():
        shown = ", ".join(f"{v:.3f}" for v in t["values"][:40])
        lines.append(f"\n{name} {t['curve']} per step ({t['steps']} steps): {shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
