"""Storage benchmark: the lake against plain pyarrow and DuckDB on the same sample rows.

    python benches/storage.py [--rows N] [--out results.json]

Defaults: 1,000,000 `samples` rows of ~4 KB text each (200,000 when the temp dir has less than
3x the data free; it says so), results in benches/results/storage.json. The data lives in a
fresh temp dir (set TMPDIR to move it) that is deleted at the end. One run measures:

- commit throughput: `Lake.commit` of 50k-row batches (DuckLake data inlining off) against
  `pyarrow.parquet.write_table` of the same, already conformed, batches with the Parquet codec
  and level the lake writes (goal: lake rows/s >= 0.9x pyarrow's);
- a GROUP BY over small columns through `Lake.query` (goal: <= 50 ms per million rows), with
  DuckDB's `read_parquet` over the same files shown for reference;
- a LIKE scan of the reasoning text through `Lake.query` against a plain DuckDB connection
  running the same predicate on `read_parquet` of the very same files (goal: >= 0.9x).

The lake is measured as `Lake.open` configures it; the codec is read back from its files and
the level from its DuckLake options, and pyarrow is given the same.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This script is named like the package it measures, and Python puts the script's folder first
# on sys.path: point that entry at the repository instead, so `import storage` finds the lake.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from storage import Lake, schemas  # noqa: E402

DEFAULT_ROWS = 1_000_000
SHORT_DISK_ROWS = 200_000
CHUNK_ROWS = 50_000
# Mean words per row; with the vocabulary below a word and its space average ~6.2 bytes, so a
# row carries ~4 KB of text: a reasoning trace plus the final part of the completion.
REASONING_WORDS = 520
COMPLETION_WORDS = 115
TEXT_BYTES_PER_ROW = 4_000  # for the disk-space check only
VOCABULARY_SIZE = 30_000
# The LIKE scan looks for this word; it is the vocabulary's rarest entry, so it turns up in a
# few rows in a thousand, like a rare term in real traces.
NEEDLE = "quixotically"
RUN_ID = "bench-storage"
# DuckDB's Parquet writer uses zstd level 3 when no level is set; pyarrow's default is 1, so the
# level is passed explicitly to compare like with like.
DUCKDB_DEFAULT_LEVEL = {"zstd": 3}

TEACHERS = {
    "deepseek-r1": "deepseek-ai/DeepSeek-R1",
    "qwq": "Qwen/QwQ-32B",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "o3-mini": "openai/o3-mini",
}
FINISH_REASONS = [("stop", 0.88), ("length", 0.10), ("error", 0.02)]

GROUP_BY_SQL = "SELECT teacher, finish_reason, count(*), avg(completion_tokens) FROM {src} GROUP BY 1, 2"
LIKE_SQL = f"SELECT count(*) FROM {{src}} WHERE reasoning LIKE '%{NEEDLE}%'"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help=f"sample rows (default {DEFAULT_ROWS:,})")
    parser.add_argument("--out", type=Path, default=_HERE / "results" / "storage.json", help="results JSON")
    args = parser.parse_args()
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be positive")
    return args


def choose_rows(requested: int | None, tmp: str) -> tuple[int, str | None]:
    """The row count to run, and a note when free disk forced a smaller one."""
    free_gib = shutil.disk_usage(tmp).free / 2**30
    # Two compressed copies plus the batch in flight fit in 3x the raw text with room to spare.
    need_gib = 3 * (requested or DEFAULT_ROWS) * TEXT_BYTES_PER_ROW / 2**30
    if requested is not None:
        if free_gib < need_gib:
            print(f"warning: {free_gib:.1f} GiB free in {tmp}; {requested:,} rows may need {need_gib:.1f} GiB")
        return requested, None
    if free_gib >= need_gib:
        return DEFAULT_ROWS, None
    note = (
        f"only {free_gib:.1f} GiB free in {tmp} (< {need_gib:.1f} GiB): "
        f"using {SHORT_DISK_ROWS:,} rows instead of {DEFAULT_ROWS:,}"
    )
    print(note)
    return SHORT_DISK_ROWS, note


# -- data -------------------------------------------------------------------------------------


def make_vocabulary(seed: int = 0) -> pa.StringArray:
    """Distinct made-up words with English letter frequencies, some with punctuation, plus a
    few numbers and symbols, ending with NEEDLE as the rarest entry."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
               2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]  # fmt: skip
    words = ["=", "+", "\n", "so", "the", "we", "is", "wait,", "therefore", "x", "2", "1"]
    seen = set(words) | {NEEDLE}
    while len(words) < VOCABULARY_SIZE - 1:
        word = "".join(rng.choices(letters, weights, k=min(1 + int(rng.expovariate(1 / 4.5)), 14)))
        if rng.random() < 0.08:
            word += rng.choice([".", ",", ":", "?"])
        elif rng.random() < 0.04:
            word = str(rng.randrange(10_000))
        if word not in seen and NEEDLE not in word:
            seen.add(word)
            words.append(word)
    return pa.array(words + [NEEDLE], pa.string())


def make_text(vocabulary: pa.StringArray, rows: int, mean_words: int, seed: int) -> pa.StringArray:
    """`rows` texts of Zipf-distributed vocabulary words (vectorised in Arrow, no Python strings)."""
    counts = pc.cast(pc.floor(pc.multiply(pc.add(pc.random(rows, initializer=seed), 0.5), mean_words)), pa.int32())
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(counts)])
    n_words = offsets[-1].as_py()
    # exp(u * ln(V + 1)) is log-uniform over [1, V + 1): word rank k is drawn with probability ~1/k.
    log_v = math.log(len(vocabulary) + 1)
    ranks = pc.cast(pc.floor(pc.exp(pc.multiply(pc.random(n_words, initializer=seed + 1), log_v))), pa.int64())
    words = vocabulary.take(pc.subtract(ranks, 1))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, words), " ")


def pick(choices: list, weights: list[float] | None, rows: int, seed: int) -> pa.Array:
    """A column of `rows` values drawn from `choices` (by cumulative weight when given)."""
    u = pc.random(rows, initializer=seed)
    cumulative = list(itertools.accumulate(weights or [1.0] * len(choices)))
    index = pa.array([0] * rows, pa.int32())
    for edge in cumulative[:-1]:
        index = pc.add(index, pc.cast(pc.greater_equal(u, edge / cumulative[-1]), pa.int32()))
    return pa.array(choices).take(index)


def make_chunk(index: int, rows: int, vocabulary: pa.StringArray) -> pa.Table:
    """One batch of sample rows as a stage would hand them to `Lake.commit` (no run_id or
    created_at: commit fills those), with the samples schema's types."""
    seed = 1_000 * (index + 1)
    rng = random.Random(seed)
    first = index * CHUNK_ROWS
    reasoning = make_text(vocabulary, rows, REASONING_WORDS, seed)
    completion = make_text(vocabulary, rows, COMPLETION_WORDS, seed + 10)
    teacher = pick(list(TEACHERS), None, rows, seed + 20)
    completion_tokens = pc.cast(pc.divide(pc.add(pc.utf8_length(reasoning), pc.utf8_length(completion)), 4), pa.int64())
    latency = pc.multiply(pc.divide(pc.cast(completion_tokens, pa.float64()), 60.0), pc.add(pc.random(rows, initializer=seed + 30), 0.5))
    columns = {
        "sample_id": pa.array([f"{rng.getrandbits(128):032x}" for _ in range(rows)]),
        "request_key": pa.array([f"{rng.getrandbits(128):032x}" for _ in range(rows)]),
        # Eight samples per problem, as a best-of-8 sampling recipe makes them.
        "problem_id": pa.array([f"{(first + i) // 8:016x}" for i in range(rows)]),
        "teacher": teacher,
        "model": pa.array(list(TEACHERS.values())).take(pc.index_in(teacher, pa.array(list(TEACHERS)))),
        "backend": pick(["vllm", "openai", "transformers"], [0.6, 0.3, 0.1], rows, seed + 40),
        "sampling": pa.array(['{"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}'] * rows),
        "sample_index": pa.array([(first + i) % 8 for i in range(rows)], pa.int32()),
        "reasoning": reasoning,
        "answer": pc.cast(pc.cast(pc.floor(pc.multiply(pc.random(rows, initializer=seed + 50), 1000)), pa.int32()), pa.string()),
        "completion": completion,
        "finish_reason": pick([r for r, _ in FINISH_REASONS], [w for _, w in FINISH_REASONS], rows, seed + 60),
        "prompt_tokens": pc.cast(pc.floor(pc.add(pc.multiply(pc.random(rows, initializer=seed + 70), 300), 40)), pa.int64()),
        "completion_tokens": completion_tokens,
        "latency_s": latency,
        "cost_usd": pc.multiply(pc.cast(completion_tokens, pa.float64()), 2.19e-6),
    }
    return pa.table({name: col.cast(schemas.SAMPLES.field(name).type) for name, col in columns.items()})


# -- measuring --------------------------------------------------------------------------------


def find_codec(lake: Lake, store: Path) -> tuple[str, int | None]:
    """The codec and level the lake's Parquet files get.

    The codec is read from the file the lake writes for a batch as big as the benchmark's (the
    lake may write small and big batches differently), committed to `problems` so `samples`
    stays untouched. Parquet does not record the level: that comes from the DuckLake option,
    else DuckDB's default for the codec."""
    probe = pa.table({"problem_id": [f"{i:016x}" for i in range(CHUNK_ROWS)], "problem": ["2 + 2 = ?"] * CHUNK_ROWS})
    lake.commit("problems", probe, batch_key="bench:probe", run_id=RUN_ID)
    probe_file = next((store / "data" / "main" / "problems").glob("*.parquet"))
    codec = pq.ParquetFile(probe_file).metadata.row_group(0).column(0).compression.lower()
    options = lake.query("SELECT option_name, value FROM ducklake_options('lake')").to_pylist()
    level = {o["option_name"]: o["value"] for o in options}.get("parquet_compression_level")
    return codec, int(level) if level is not None else DUCKDB_DEFAULT_LEVEL.get(codec)


def codec_label(codec: str, level: int | None) -> str:
    return codec if level is None else f"{codec} level {level}"


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_commits(lake: Lake, peer_dir: Path, rows: int, codec: str, level: int | None) -> dict:
    """Commit every batch to the lake and write it with pyarrow, timing each side."""
    vocabulary = make_vocabulary()
    created_at = dt.datetime.now(dt.UTC)
    lake_s = peer_s = 0.0
    text_bytes = needles = 0
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        chunk = make_chunk(index, min(CHUNK_ROWS, rows - start), vocabulary)
        # pyarrow gets the batch as commit would write it; the lake's own conform is timed.
        conformed = schemas.conform("samples", chunk, {"run_id": RUN_ID, "created_at": created_at})
        text_bytes += sum(pc.sum(pc.binary_length(chunk[c])).as_py() for c in ("reasoning", "completion"))
        needles += pc.sum(pc.match_substring(chunk["reasoning"], NEEDLE)).as_py()

        def commit(chunk: pa.Table = chunk, index: int = index) -> None:
            lake.commit("samples", chunk, batch_key=f"bench:samples:{index}", run_id=RUN_ID)

        def write(conformed: pa.Table = conformed, index: int = index) -> None:
            pq.write_table(conformed, peer_dir / f"part-{index:05d}.parquet", compression=codec, compression_level=level)

        # Alternate which side goes first, so neither always meets the other's dirty pages.
        for side in (commit, write) if index % 2 == 0 else (write, commit):
            seconds = timed(side)
            if side is commit:
                lake_s += seconds
            else:
                peer_s += seconds
        print(f"  batch {index + 1}: {start + chunk.num_rows:,} rows, lake {lake_s:.1f} s, pyarrow {peer_s:.1f} s", flush=True)
    return {"lake_s": lake_s, "peer_s": peer_s, "text_bytes": text_bytes, "needles": needles}


def measure_query(lake: Lake, peer: duckdb.DuckDBPyConnection, template: str, files: str, runs: int) -> dict:
    """Best-of-`runs` seconds of one query through the lake and through read_parquet, after a
    warm-up of each (which also fills the page cache for both: they read the same files)."""
    ours_sql = template.format(src="samples")
    peer_sql = template.format(src=f"read_parquet('{files}')")
    ours_rows = lake.query(ours_sql).to_pylist()
    peer_rows = peer.execute(peer_sql).to_arrow_table().to_pylist()

    def ours() -> None:
        lake.query(ours_sql)

    def theirs() -> None:
        peer.execute(peer_sql).to_arrow_table()

    best = {ours: float("inf"), theirs: float("inf")}
    # Take turns, and swap who goes first each round, so a burst of load on a shared machine
    # does not always land on the same side.
    for round_ in range(runs):
        for side in (ours, theirs) if round_ % 2 == 0 else (theirs, ours):
            best[side] = min(best[side], timed(side))
    return {"ours_s": best[ours], "peer_s": best[theirs], "ours_rows": ours_rows, "peer_rows": peer_rows}


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Equal up to row order and float rounding (parallel sums may add in another order)."""
    def canonical(rows: list[dict]) -> list[tuple]:
        return sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in rows)

    return canonical(a) == canonical(b)


def describe_files(files: list[Path], codec: str) -> dict:
    """Size, file and row-group counts of a set of Parquet files, checking they all use `codec`."""
    groups = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups += meta.num_row_groups
        found = {meta.row_group(0).column(i).compression.lower() for i in range(meta.num_columns)}
        if found != {codec}:
            raise SystemExit(f"{path} uses {sorted(found)}, not {codec}: the comparison would be unfair")
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files), "row_groups": groups}


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure_row(name: str, unit: str, ours: float, peer: float, peer_is: str, *, faster: str,
                min_ratio: float | None = None, max_ours: float | None = None) -> dict:
    """One line of the report. `faster` says which way is better ("higher" rows/s or "lower"
    ms); `ratio` is always our speed over the peer's (above 1: the lake is faster)."""
    ratio = ours / peer if faster == "higher" else peer / ours
    if min_ratio is not None:
        goal, met = f">= {min_ratio}x", ratio >= min_ratio
    else:
        goal, met = f"<= {max_ours:g}", ours <= max_ours
    return {"measure": name, "unit": unit, "ours": ours, "peer": peer, "peer_is": peer_is, "ratio": ratio, "goal": goal, "met": met}


def run(args: argparse.Namespace, work: Path) -> dict:
    """Build the lake and the pyarrow copy in `work`, measure both, and return the results."""
    rows, note = choose_rows(args.rows, str(work))
    store, peer_dir = work / "lake", work / "pyarrow"
    peer_dir.mkdir()
    lake = Lake.open(str(store), data_inlining_row_limit=0)
    peer = duckdb.connect()
    try:
        codec, level = find_codec(lake, store)
        print(f"{rows:,} rows in batches of {CHUNK_ROWS:,}; Parquet {codec_label(codec, level)} on both sides; in {work}")
        commits = measure_commits(lake, peer_dir, rows, codec, level)
        samples_dir = store / "data" / "main" / "samples"
        files = f"{samples_dir}/**/*.parquet"
        group_by = measure_query(lake, peer, GROUP_BY_SQL, files, runs=5)
        like = measure_query(lake, peer, LIKE_SQL, files, runs=3)
        disk = {
            "lake_samples": describe_files(sorted(samples_dir.rglob("*.parquet")), codec),
            "lake_store_bytes": tree_bytes(store),
            "pyarrow": describe_files(sorted(peer_dir.glob("*.parquet")), codec),
        }
    finally:
        peer.close()
        lake.close()

    problems = []
    if not same_rows(group_by["ours_rows"], group_by["peer_rows"]):
        problems.append(f"GROUP BY results differ: lake {group_by['ours_rows']} vs read_parquet {group_by['peer_rows']}")
    counts = {"lake": like["ours_rows"][0]["count_star()"], "read_parquet": like["peer_rows"][0]["count_star()"], "generated": commits["needles"]}
    if len(set(counts.values())) != 1:
        problems.append(f"LIKE counts differ: {counts}")

    millions = rows / 1e6
    measures = [
        measure_row("commit throughput", "rows/s", rows / commits["lake_s"], rows / commits["peer_s"],
                    "pyarrow write_table", faster="higher", min_ratio=0.9),
        measure_row("GROUP BY small columns", "ms per 1M rows", 1e3 * group_by["ours_s"] / millions,
                    1e3 * group_by["peer_s"] / millions, "duckdb read_parquet", faster="lower", max_ours=50),
        measure_row("LIKE text scan", "ms", 1e3 * like["ours_s"], 1e3 * like["peer_s"],
                    "duckdb read_parquet", faster="lower", min_ratio=0.9),
    ]
    return {
        "rows": rows,
        "batch_rows": CHUNK_ROWS,
        "note": note,
        "codec": codec,
        "level": level,
        "text_bytes": commits["text_bytes"],
        "like_matches": counts,
        "group_by_sql": GROUP_BY_SQL.format(src="samples"),
        "like_sql": LIKE_SQL.format(src="samples"),
        "disk": disk,
        "measures": measures,
        "problems": problems,
        "versions": {"duckdb": duckdb.__version__, "pyarrow": pa.__version__, "python": sys.version.split()[0]},
        "cpus": os.cpu_count(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# -- reporting --------------------------------------------------------------------------------


def print_report(results: dict) -> None:
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    disk = results["disk"]
    print()
    print(f"rows {results['rows']:,} ({results['batch_rows']:,} per commit), text {results['text_bytes'] / 2**30:.2f} GiB, "
          f"Parquet {codec_label(results['codec'], results['level'])} on both sides")
    if results["note"]:
        print(f"note: {results['note']}")
    for side, label in (("lake_samples", "lake samples"), ("pyarrow", "pyarrow")):
        d = disk[side]
        print(f"{label}: {mib(d['bytes'])} in {d['files']} files, {d['row_groups']} row groups")
    print(f"lake store in all (catalog, ledger): {mib(disk['lake_store_bytes'])}")
    print(f"LIKE matches: {results['like_matches']}")
    versions = results["versions"]
    print(f"duckdb {versions['duckdb']}, pyarrow {versions['pyarrow']}, python {versions['python']}, {results['cpus']} CPUs")
    print()
    header = ("measure", "ours", "peer", "ratio", "goal", "met?")
    lines = [
        (
            f"{m['measure']} ({m['unit']})",
            f"{m['ours']:,.1f}",
            f"{m['peer']:,.1f} ({m['peer_is']})",
            f"{m['ratio']:.2f}x",
            m["goal"],
            "yes" if m["met"] else "NO",
        )
        for m in results["measures"]
    ]
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]
    for line in (header, tuple("-" * w for w in widths), *lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    print("ratio: our speed / the peer's speed (above 1: the lake is faster)")
    for problem in results["problems"]:
        print(f"PROBLEM: {problem}")


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="rf-bench-storage-"))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
