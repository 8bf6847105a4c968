"""Verifier benchmarks in one run: math pairs/s per core vs math-verify, sandboxed code tests/s
vs a fresh `python -I` per test.

    python benches/verifiers.py [--limit N] [--workers 2] [--repeat 1]

It runs benches/verifiers_math.py and benches/verifiers_code.py (each can run alone too) and
prints their rows as one table: measure, ours, peer, ratio, goal, met?. Results also go to
benches/results/verifiers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="math pairs per set (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="code sandboxes side by side")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the code tests")
    parser.add_argument("--out", default=str(HERE / "results" / "verifiers.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import verifiers_code
    import verifiers_math

    rows = verifiers_math.run(args) + verifiers_code.run(args)
    cols = ("measure", "ours", "peer", "ratio", "goal", "met")
    text = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    sys.stdout.write("\n" + "  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
    for t in text:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(t, widths)) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
