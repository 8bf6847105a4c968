"""Watching a run: readers of the default store while a writer commits as fast as it can.

    python benches/lake_watch.py [--seconds S] [--out results.json]

A writer process commits batches of 32 `samples` rows with ~3 KB of text each through
`storage.Lake.commit` for --seconds (default 60) on a fresh default store (a DuckDB catalog
file), twice: alone (the peer), then with a reader process that, in a loop with no pause, opens
the lake read-only (`Lake.open(..., read_only=True)`, as `factory sql`, `tables`, `runs` and
`report` do), runs a count, a GROUP BY, `Lake.tables()` and a confined `Lake.sql` count, and
closes it. Each round reads a fresh snapshot, so each pays the wait for the writer to let go of
the catalog file and the copy of it: the worst case of someone watching a run.

A third phase runs the same reader on the first phase's store (no writer there) while the
writer commits to a fresh one: it measures what the reader's CPU alone costs the writer, so
that the ratio "elsewhere/with" isolates what letting the reader in costs (the DETACH, the
wait for its copy, the ATTACH).

Printed: reader latency p50/p90/max per round and per first answer (open, copy and the first
query) against the 2 s goal (issue 18: p90 under 2 s), and the writer's commits/s alone (the
peer), next to a reader of another store, and next to a reader of its own store; the goal is at
most 1.5x from alone to a reader of its own store. On a machine with few cores that ratio
holds the reader's own CPU use too. Everything lives in a temp
dir (set TMPDIR to move it) deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)  # the repository, not benches/, so `import storage` finds the lake

import duckdb  # noqa: E402

from benches.lake_scale import ROWS_PER_COMMIT, make_batch, print_table, text_pool  # noqa: E402
from storage import Lake  # noqa: E402

LATENCY_GOAL_S = 2.0  # reader p90
SLOWDOWN_GOAL = 1.5  # writer commits/s alone over with the reader


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writer commits, each phase (default 60)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--role", choices=("writer", "reader"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    return args


# -- the two processes ------------------------------------------------------------------------


def write(store: str, seconds: float) -> dict:
    """Commit batches for `seconds`; return their count and latencies."""
    import random

    rng, pool = random.Random(0), text_pool(random.Random(1))
    latencies = []
    with Lake.open(store) as lake:
        lake.connection()
        print("ready", flush=True)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = make_batch(len(latencies), rng, pool)
            t0 = time.perf_counter()
            lake.commit("samples", batch, batch_key=f"watch:{len(latencies)}", run_id="bench-watch")
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    return {"commits": len(latencies), "seconds": elapsed, "latencies": latencies}


def read(store: str, stop: str) -> dict:
    """Rounds of reads until the file `stop` exists; return their latencies and row counts."""
    rounds, firsts, rows = [], [], []
    while not Path(stop).exists():
        t0 = time.perf_counter()
        with Lake.open(store, read_only=True) as lake:
            n = lake.query("SELECT count(*) FROM samples").column(0)[0].as_py()
            firsts.append(time.perf_counter() - t0)
            lake.query("SELECT problem_id, count(*) FROM samples GROUP BY 1")
            lake.tables()
            lake.sql("SELECT count(*) FROM samples")  # on the same copy: the snapshot of the count
        rounds.append(time.perf_counter() - t0)
        rows.append(n)
    return {"rounds": rounds, "firsts": firsts, "rows": rows}


def phase(work: Path, name: str, seconds: float, read: Path | None = None) -> dict:
    """The writer on the store `work/name` for `seconds`, with a reader of the store `read`
    (None: no reader); return the writer's figures and the reader's under "reader"."""
    store = work / name
    me = [sys.executable, str(Path(__file__).resolve())]
    writer = subprocess.Popen([*me, "--role", "writer", "--store", str(store), "--seconds", str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    reader = None
    stop = work / f"{name}.stop"
    if read is not None:
        reader = subprocess.Popen([*me, "--role", "reader", "--store", str(read), "--stop", str(stop)],
                                  stdout=subprocess.PIPE, text=True)
    out = json.loads(writer.communicate()[0].splitlines()[-1])
    if writer.returncode:
        raise SystemExit(f"the writer failed ({writer.returncode})")
    stop.touch()
    if reader is not None:
        out["reader"] = json.loads(reader.communicate()[0].splitlines()[-1])
        if reader.returncode:
            raise SystemExit(f"the reader failed ({reader.returncode})")
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    print(f"writer alone for {args.seconds:g} s (32-row commits, ~3 KB text per row)", flush=True)
    alone = phase(work, "alone", args.seconds)
    print(f"writer with a reader of another store (the CPU the reader takes) for {args.seconds:g} s", flush=True)
    elsewhere = phase(work, "elsewhere", args.seconds, read=work / "alone")
    print(f"writer with a reader of its own store for {args.seconds:g} s", flush=True)
    watched = phase(work, "watched", args.seconds, read=work / "watched")
    r = watched["reader"]
    rate = {k: v["commits"] / v["seconds"] for k, v in (("alone", alone), ("elsewhere", elsewhere), ("watched", watched))}

    def stats(xs: list[float]) -> dict:
        s = sorted(xs)
        return {"p50_s": s[len(s) // 2], "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))], "max_s": s[-1], "n": len(s)}

    return {
        "seconds": args.seconds,
        "reader": {"round": stats(r["rounds"]), "first": stats(r["firsts"]), "monotonic": r["rows"] == sorted(r["rows"]),
                   "whole_batches": all(n % ROWS_PER_COMMIT == 0 for n in r["rows"])},
        "writer": {
            "alone_commits_per_s": rate["alone"], "elsewhere_commits_per_s": rate["elsewhere"],
            "watched_commits_per_s": rate["watched"],
            "slowdown": rate["alone"] / rate["watched"], "slowdown_by_locking": rate["elsewhere"] / rate["watched"],
            "alone_p50_ms": 1000 * statistics.median(alone["latencies"]),
            "elsewhere_p50_ms": 1000 * statistics.median(elsewhere["latencies"]),
            "watched_p50_ms": 1000 * statistics.median(watched["latencies"]),
            "watched_max_ms": 1000 * max(watched["latencies"]),
        },
        "versions": {"duckdb": duckdb.__version__, "python": sys.version.split()[0]},
    }


# -- reporting --------------------------------------------------------------------------------


def print_report(r: dict) -> None:
    print()
    rd, w = r["reader"], r["writer"]
    print(f"{rd['round']['n']:,} reader rounds in {r['seconds']:g} s; counts monotonic: {rd['monotonic']}, "
          f"whole batches only: {rd['whole_batches']}; duckdb {r['versions']['duckdb']}, python {r['versions']['python']}")
    print()
    print_table(
        ("reader latency (s)", "p50", "p90", "max", "goal", "met?"),
        [(label, f"{s['p50_s']:.2f}", f"{s['p90_s']:.2f}", f"{s['max_s']:.2f}", f"p90 < {LATENCY_GOAL_S:g}",
          "yes" if s["p90_s"] < LATENCY_GOAL_S else "NO")
         for label, s in (("first answer (open + copy + count)", rd["first"]),
                          ("round (count, GROUP BY, tables, sql)", rd["round"]))],
    )
    print()
    print_table(
        ("writer", "alone (peer)", "reader elsewhere", "reader of its store", "ratio alone/with", "ratio elsewhere/with",
         "goal", "met?"),
        [("commits/s", f"{w['alone_commits_per_s']:.1f}", f"{w['elsewhere_commits_per_s']:.1f}", f"{w['watched_commits_per_s']:.1f}",
          f"{w['slowdown']:.2f}x", f"{w['slowdown_by_locking']:.2f}x",
          f"alone/with <= {SLOWDOWN_GOAL:g}x", "yes" if w["slowdown"] <= SLOWDOWN_GOAL else "NO"),
         ("commit p50 (ms)", f"{w['alone_p50_ms']:.1f}", f"{w['elsewhere_p50_ms']:.1f}", f"{w['watched_p50_ms']:.1f}", "", "", "", ""),
         ("commit max (ms)", "", "", f"{w['watched_max_ms']:.1f}", "", "", "", "")],
    )


def main() -> int:
    args = parse_args()
    if args.role:  # one of the two processes a phase starts: its figures as one JSON line
        print(json.dumps(write(args.store, args.seconds) if args.role == "writer" else read(args.store, args.stop)))
        return 0
    with tempfile.TemporaryDirectory(prefix="rf-bench-lake-watch-") as work:
        results = run(args, Path(work))
    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
