"""Code-verifier benchmark: sandboxed tests/s against a fresh `python -I` per test with rlimits only.

    python benches/verifiers_code.py [--workers N] [--repeat R] [--out results.json]

Both sides run the HumanEvalPack-Python canonical solutions (tests/data/
humanevalpack_python.jsonl, 164 problems, each repeated R times) with the same number of
workers (default 2):
- ours: `verify_code_batch` — cgroup + bubblewrap + seccomp + unprivileged uid, two long-lived
  sandboxes per worker (candidate and judge) whose zygotes fork ONE fresh process per run; the
  judge records the calls, the candidate box computes them, the judge replays the tests on the
  returned data (three runs per test for most tests);
- v1 (info): the design this replaced (commit c2aee3f), loaded from git when the history is
  there: one run per test, the verdict decided in the candidate's own process by a nonce;
- peer: the usual evaluation harness: for each test a fresh `python -I prog.py` (prompt +
  solution + test + `check(entry_point)`), rlimits set in the child (CPU, address space, file
  size, open files, no core), no namespaces, no cgroup; pass = exit status 0.
Sandbox start-up (probe + one bwrap per worker) is counted in ours. Goal: ours >= 3x the peer's
tests/s. Both sides must pass all 164. Results go to benches/results/verifiers_code.json.
A benchmark never fails for being slow on a noisy machine: it reports "met?" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

from factory.verifiers.code import verify_code_batch  # noqa: E402
from factory.verifiers.sandbox import SandboxConfig  # noqa: E402
from tests.data import HUMANEVALPACK as DATA  # noqa: E402

GOAL = 3.0


def _rlimits(cfg: SandboxConfig):
    def set_limits() -> None:
        cpu = cfg.cpu_limit()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (cfg.memory_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.file_size_mb << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg.open_files,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return set_limits


def peer(rows: list[dict], cfg: SandboxConfig, workers: int) -> tuple[float, int]:
    """A fresh `python -I` per test, rlimits only. Returns (seconds, passed)."""
    py = cfg.interpreter()
    limits = _rlimits(cfg)
    with tempfile.TemporaryDirectory(prefix="rf-bench-peer-") as tmp:

        def one(i_row) -> bool:
            i, r = i_row
            path = Path(tmp) / f"t{i}.py"
            path.write_text(r["prompt"] + r["canonical_solution"] + "\n" + r["test"] + "\n"
                            + (f"check({r['entry_point']})\n" if "\ncheck(" not in r["test"] else ""))
            p = subprocess.run([py, "-I", str(path)], capture_output=True, timeout=cfg.timeout_s,
                               env={}, cwd=tmp, preexec_fn=limits)
            return p.returncode == 0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as ex:
            ok = sum(ex.map(one, enumerate(rows)))
        return time.perf_counter() - t0, ok


def ours(rows: list[dict], cfg: SandboxConfig, workers: int) -> tuple[float, int]:
    items = [(r["canonical_solution"], {"style": "asserts", "entry_point": r["entry_point"],
                                        "test": r["test"], "prompt": r["prompt"]}) for r in rows]
    t0 = time.perf_counter()
    verdicts = verify_code_batch(items, cfg, workers=workers)
    return time.perf_counter() - t0, sum(v.status == "pass" for v in verdicts)


V1_COMMIT = "c2aee3f"


def v1_batch():
    """verify_code_batch of the in-process harness (commit c2aee3f), or None without git."""
    import types

    try:
        src = subprocess.run(["git", "show", f"{V1_COMMIT}:factory/verifiers/code.py"], cwd=_HERE,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("factory.verifiers._code_v1")
    mod.__package__ = "factory.verifiers"
    exec(compile(src, "code_v1.py", "exec"), mod.__dict__)
    return mod.verify_code_batch


def timed(batch, rows: list[dict], cfg: SandboxConfig, workers: int) -> tuple[float, int]:
    items = [(r["canonical_solution"], {"style": "asserts", "entry_point": r["entry_point"],
                                        "test": r["test"], "prompt": r["prompt"]}) for r in rows]
    t0 = time.perf_counter()
    verdicts = batch(items, cfg, workers=workers)
    return time.perf_counter() - t0, sum(v.status == "pass" for v in verdicts)


def run(args) -> list[dict]:
    base = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = base * args.repeat
    cfg = SandboxConfig(timeout_s=10)
    ours(base[:4], cfg, 1)  # warm the probe cache and the page cache of both interpreters
    peer(base[:4], cfg, 1)
    t_ours, ok_ours = ours(rows, cfg, args.workers)
    t_peer, ok_peer = peer(rows, cfg, args.workers)
    old = v1_batch()
    t_v1, ok_v1 = timed(old, rows, cfg, args.workers) if old else (float("nan"), 0)
    n = len(rows)
    r_ours, r_peer = n / t_ours, n / t_peer
    ms = lambda t: round(1000 * t * args.workers / n, 1)  # noqa: E731 - CPU-slot ms per test
    return [
        {"measure": "ms per test per worker", "ours": ms(t_ours), "peer": ms(t_peer),
         "ratio": round(t_ours / t_peer, 2), "goal": f"v1 ({V1_COMMIT}): {ms(t_v1)} ms, {ok_v1}/{n} passed",
         "met": ""},
        {"measure": f"HumanEvalPack canonical tests/s ({args.workers} workers, {n} tests)",
         "ours": round(r_ours, 1), "peer": round(r_peer, 1), "ratio": round(r_ours / r_peer, 2),
         "goal": f">= {GOAL}x", "met": r_ours / r_peer >= GOAL},
        {"measure": "tests passed", "ours": ok_ours, "peer": ok_peer,
         "ratio": round(ok_ours / max(ok_peer, 1), 3), "goal": f"{n}/{n} both",
         "met": ok_ours == ok_peer == n},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="times each of the 164 problems runs")
    ap.add_argument("--out", type=Path, default=_HERE / "results" / "verifiers_code.json")
    args = ap.parse_args(argv)
    results = run(args)
    cols = ["measure", "ours", "peer", "ratio", "goal", "met"]
    widths = [max(len(str(r[c])) for r in results + [dict(zip(cols, cols))]) for c in cols]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "-" * len(line)]
    for r in results:
        out.append("  ".join(str(r[c] if c != "met" or r[c] == "" else ("yes" if r[c] else "no")).ljust(w)
                             for c, w in zip(cols, widths)))
    sys.stdout.write("\n".join(out) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "verifiers_code", "cpus": os.cpu_count(),
                                    "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
