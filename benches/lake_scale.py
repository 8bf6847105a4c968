"""Lake at R1 scale: many small commits, the queries a run makes over them, and compaction.

    python benches/lake_scale.py [--commits N] [--max-minutes M] [--max-files F] [--repeats R] [--out results.json]

Commits N batches (default 20,000) of 32 `samples` rows with ~3 KB of text each through
`storage.Lake.commit`, as the default store is configured (DuckLake's data inlining included),
stopping early when --max-minutes (default 10) of committing is spent and saying how many were
done. After each commit it applies the run's automatic compaction policy, `Lake.compact_if(F)`
(`--max-files`, default 512 as a recipe's `compaction.max_files`; 0: no compaction while
committing, which shows what an uncompacted lake costs); a commit's latency does not include a
compaction it triggered, which is timed apart. Then it times, each as the median of --repeats
runs through `Lake.query`/`Lake.existing`:

- the flow's bookkeeping: `existing()` for 1,000 request keys (the sampler's `missing_requests`,
  half of them present), the ledger lookup every commit makes (`batches` by key), the sample
  rows of 1,000 ids (the verify stage's `unverified`) and the per-table counts of `Lake.tables()`
  (`factory tables`, the run summary);
- a GROUP BY problem_id and a LIKE scan over the reasoning text;

on the lake as committed (compacted automatically along the way unless --max-files 0: a lake in
the middle of a run), at the run's end (the flow's stage-end policy, `compact_if(F / 8)`, which
compacts when the lake reads more than that many files; with --max-files 0, a final
`Lake.compact()` as `factory maintain --compact` does), and on the same rows written as ONE file
in a second lake (the peer). Goals (issue 18): with compaction on, every query at the end within
2x of one file;
commit p50 over the last thousand commits within 1.5x of the first thousand. Everything lives
in a temp dir (set TMPDIR to move it) deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)  # the repository, not benches/, so `import storage` finds the lake

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from factory.recipe import CompactionSpec  # noqa: E402
from storage import Lake  # noqa: E402

ROWS_PER_COMMIT = 32
TEXT_BYTES = 3_000
NEEDLE = "quixotically"  # in one row in ~500, for the LIKE scan
RUN_ID = "bench-lake-scale"
WINDOW = 1_000  # commits in the first/last latency window
KEYS = 1_000
QUERY_GOAL = 2.0
COMMIT_GOAL = 1.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20_000, help="batches to commit (default 20,000)")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop committing after this long (default 10)")
    parser.add_argument("--max-files", type=int, default=512,
                        help="compact while committing when the snapshot reads more data files than this (default 512; 0: never)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per query; the median is shown (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.commits < 1 or args.repeats < 1 or args.max_minutes <= 0 or args.max_files < 0:
        parser.error("--commits and --repeats must be positive, --max-minutes above 0, --max-files at least 0")
    return args


# -- data -------------------------------------------------------------------------------------


def text_pool(rng: random.Random, n: int = 256) -> list[str]:
    words = ["so", "the", "we", "is", "wait,", "therefore", "x", "=", "+", "2", "1", "let", "check", "sum", "hence"]
    words += ["".join(rng.choices("etaoinshrdlcumwfgypbvk", k=rng.randint(3, 9))) for _ in range(2_000)]
    out = []
    for _ in range(n):
        parts, size = [], 0
        while size < TEXT_BYTES:
            w = rng.choice(words)
            parts.append(w)
            size += len(w) + 1
        out.append(" ".join(parts))
    return out


def make_batch(b: int, rng: random.Random, pool: list[str]) -> list[dict]:
    rows = []
    for i in range(ROWS_PER_COMMIT):
        n = b * ROWS_PER_COMMIT + i
        text = rng.choice(pool)
        if rng.random() < 0.002:
            text = f"{text[:1500]} {NEEDLE} {text[1500:]}"
        rows.append({
            "sample_id": f"s{n:09d}", "request_key": f"rk{n:09d}", "problem_id": f"p{n // 8:08d}",
            "teacher": "bench", "model": "bench/model", "sample_index": n % 8,
            "reasoning": f"{n} {text}", "answer": str(n % 97), "finish_reason": "stop",
            "completion_tokens": 750, "latency_s": 1.0,
        })
    return rows


# -- measuring --------------------------------------------------------------------------------


def commit_all(lake: Lake, commits: int, budget_s: float, max_files: int) -> tuple[list[float], list[float], list[dict]]:
    """Commit up to `commits` batches within `budget_s`, compacting as a run does (`max_files`);
    return each commit's seconds, each automatic compaction's seconds and the ledger rows (for
    the one-file peer)."""
    rng, pool = random.Random(0), text_pool(random.Random(1))
    latencies: list[float] = []
    compactions: list[float] = []
    start = time.perf_counter()
    for b in range(commits):
        batch = make_batch(b, rng, pool)
        t0 = time.perf_counter()
        lake.commit("samples", batch, batch_key=f"bench:{b}", run_id=RUN_ID)
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        if lake.compact_if(max_files) is not None:
            compactions.append(time.perf_counter() - t1)
        if (b + 1) % 500 == 0:
            print(f"  {b + 1:,} commits, {time.perf_counter() - start:,.0f} s, {len(compactions)} compaction(s)", flush=True)
        if time.perf_counter() - start > budget_s:
            break
    return latencies, compactions, lake.query("SELECT * FROM batches ORDER BY batch_key")


def one_file_peer(source: Lake, folder: Path, ledger: pa.Table) -> Lake:
    """The same samples as one Parquet file (one commit, written by pyarrow) and the same
    ledger rows as one insert, in a fresh lake."""
    peer = Lake.open(str(folder))
    rows = source.query("SELECT * FROM samples")
    peer.commit("samples", rows, batch_key="one-file", run_id=RUN_ID)
    con = peer.connection()
    con.register("_ledger", ledger)
    con.execute("DELETE FROM lake.batches")
    con.execute("INSERT INTO lake.batches SELECT * FROM _ledger")
    con.unregister("_ledger")
    con.execute("CALL ducklake_flush_inlined_data('lake')")
    return peer


def queries(n_rows: int) -> dict[str, Callable[[Lake], object]]:
    rng = random.Random(2)
    present = [f"rk{rng.randrange(n_rows):09d}" for _ in range(KEYS // 2)]
    keys = present + [f"rk-absent-{i}" for i in range(KEYS - len(present))]
    ids = pa.table({"v": [f"s{rng.randrange(n_rows):09d}" for _ in range(KEYS)]})
    n_commits = n_rows // ROWS_PER_COMMIT
    ledger_keys = [f"bench:{rng.randrange(n_commits)}" for _ in range(20)]
    return {
        "existing() 1,000 request keys": lambda lk: lk.existing("samples", "request_key", keys),
        "ledger lookup x20 (is_committed)": lambda lk: [lk.is_committed(k) for k in ledger_keys],
        "samples of 1,000 ids (unverified)": lambda lk: lk.query(
            "SELECT s.sample_id, s.problem_id, s.reasoning, s.answer FROM samples s JOIN _k k ON s.sample_id = k.v "
            "WHERE s.sample_id NOT IN (SELECT sample_id FROM verdicts) ORDER BY s.sample_id", tables={"_k": ids}),
        "tables() counts": lambda lk: lk.tables(),
        "GROUP BY problem_id": lambda lk: lk.query("SELECT problem_id, count(*) FROM samples GROUP BY 1"),
        "LIKE scan of reasoning": lambda lk: lk.query(f"SELECT count(*) FROM samples WHERE reasoning LIKE '%{NEEDLE}%'"),
    }


def time_query(fn: Callable[[Lake], object], lake: Lake, repeats: int) -> float:
    fn(lake)  # warm: the first call attaches and reads the catalog
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(lake)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1000


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def data_files(lake: Lake) -> int:
    return int(lake.connection().execute(
        "SELECT count(*) FROM __ducklake_metadata_lake.ducklake_data_file WHERE end_snapshot IS NULL").fetchone()[0])


def run(args: argparse.Namespace, work: Path) -> dict:
    lake = Lake.open(str(work / "lake"))
    print(f"committing up to {args.commits:,} batches of {ROWS_PER_COMMIT} samples (~{TEXT_BYTES:,} B text each), "
          f"for at most {args.max_minutes:g} min, in {work}", flush=True)
    t0 = time.perf_counter()
    latencies, compactions, ledger = commit_all(lake, args.commits, args.max_minutes * 60, args.max_files)
    commit_s = time.perf_counter() - t0
    done = len(latencies)
    n_rows = done * ROWS_PER_COMMIT
    qs = queries(n_rows)
    files_committed = data_files(lake)
    print(f"{done:,} commits in {commit_s:,.0f} s; timing queries", flush=True)
    before = {name: time_query(fn, lake, args.repeats) for name, fn in qs.items()}
    t0 = time.perf_counter()
    if args.max_files:  # what the flow does at a stage's end (flows/pipeline.py compact_due)
        compaction = lake.compact_if(CompactionSpec(max_files=args.max_files).stage_end_files)
    else:
        compaction = lake.compact(older_than=dt.timedelta(0))
    compact_s = time.perf_counter() - t0
    files_end = data_files(lake)
    after = {name: time_query(fn, lake, args.repeats) for name, fn in qs.items()}
    peer = one_file_peer(lake, work / "peer", ledger)
    try:
        one = {name: time_query(fn, peer, args.repeats) for name, fn in qs.items()}
        peer_files = data_files(peer)
    finally:
        peer.close()
        lake.close()
    window = min(WINDOW, max(1, done // 3))
    first, last = latencies[:window], latencies[-window:]
    measures = [
        {"measure": name, "before_ms": before[name], "after_ms": after[name], "one_file_ms": one[name],
         "ratio_committed": before[name] / one[name], "ratio": after[name] / one[name], "goal": f"<= {QUERY_GOAL:g}x",
         "met": after[name] <= QUERY_GOAL * one[name]}
        for name in qs
    ]
    commit = {
        "window": window,
        "first_p50_ms": percentile(first, 0.5), "first_p90_ms": percentile(first, 0.9),
        "last_p50_ms": percentile(last, 0.5), "last_p90_ms": percentile(last, 0.9),
    }
    commit["ratio"] = commit["last_p50_ms"] / commit["first_p50_ms"]
    commit["met"] = commit["ratio"] <= COMMIT_GOAL
    return {
        "commits_asked": args.commits, "commits_done": done, "rows": n_rows, "commit_s": commit_s,
        "stopped_early": done < args.commits, "max_minutes": args.max_minutes, "max_files": args.max_files,
        "auto_compactions": {"count": len(compactions), "total_s": sum(compactions), "max_s": max(compactions, default=0.0)},
        "files": {"committed": files_committed, "compacted": files_end, "one_file_lake": peer_files},
        "compaction": {"seconds": compact_s, "ran": compaction is not None,
                       "snapshots_expired": compaction.snapshots_expired if compaction else 0,
                       "files_deleted": compaction.files_deleted if compaction else 0},
        "measures": measures, "commit": commit, "repeats": args.repeats,
        "versions": {"duckdb": duckdb.__version__, "pyarrow": pa.__version__, "python": sys.version.split()[0]},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# -- reporting --------------------------------------------------------------------------------


def print_table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def print_report(r: dict) -> None:
    print()
    note = f" (stopped at the {r['max_minutes']:g}-minute budget; {r['commits_asked']:,} asked)" if r["stopped_early"] else ""
    if r["commits_done"] < 20_000 and not note:
        note = " (shortened run: the issue's size is 20,000)"
    print(f"{r['commits_done']:,} commits of {ROWS_PER_COMMIT} samples{note}: {r['rows']:,} rows in {r['commit_s']:,.0f} s")
    f, c, a = r["files"], r["compaction"], r["auto_compactions"]
    policy = (f"compact_if({r['max_files']}) after each commit: {a['count']} compaction(s), {a['total_s']:.1f} s in all, "
              f"the longest {a['max_s']:.1f} s" if r["max_files"] else "no compaction while committing (--max-files 0)")
    print(policy)
    end = (f"the stage-end policy compacted in {c['seconds']:.1f} s, {c['snapshots_expired']:,} snapshots expired, "
           f"{c['files_deleted']:,} files deleted" if c["ran"] else "the stage-end policy found nothing due")
    print(f"data files: {f['committed']:,} as committed, {f['compacted']:,} at the end ({end}), {f['one_file_lake']:,} in the one-file lake")
    v = r["versions"]
    print(f"duckdb {v['duckdb']}, pyarrow {v['pyarrow']}, python {v['python']}; median of {r['repeats']} runs per query")
    print()
    print_table(
        ("query (ms)", "as committed (mid-run)", "at the end", "one file (peer)", "ratio mid-run/peer", "ratio end/peer",
         "goal", "met?"),
        [(m["measure"], f"{m['before_ms']:,.1f}", f"{m['after_ms']:,.1f}", f"{m['one_file_ms']:,.1f}", f"{m['ratio_committed']:.2f}x",
          f"{m['ratio']:.2f}x", m["goal"], "yes" if m["met"] else "NO") for m in r["measures"]],
    )
    cm = r["commit"]
    print()
    print_table(
        ("commit latency (ms)", f"first {cm['window']:,}", f"last {cm['window']:,}", "ratio last/first", "goal", "met?"),
        [("p50", f"{cm['first_p50_ms']:,.1f}", f"{cm['last_p50_ms']:,.1f}", f"{cm['ratio']:.2f}x", f"<= {COMMIT_GOAL:g}x",
          "yes" if cm["met"] else "NO"),
         ("p90", f"{cm['first_p90_ms']:,.1f}", f"{cm['last_p90_ms']:,.1f}",
          f"{cm['last_p90_ms'] / cm['first_p90_ms']:.2f}x", "", "")],
    )


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="rf-bench-lake-scale-"))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
