"""Hugging Face dataset folders with a card written from the lake: what `factory export NAME
--format hf --output DIR` writes.

    from factory.cards import write_hf_folder
    with Lake.open("./factory-store", create=False) as lake:
        info = write_hf_folder(lake, "quickstart", None, Path("quickstart-hf"))   # newest version
    datasets.load_dataset("quickstart-hf")["train"]                               # loads as is

The folder: `data/train-0000K-of-0000N.parquet` (the dataset version's rows exactly as saved, in
shards of at most SHARD_ROWS rows: `messages` ready for SFT with the reasoning inside <think>,
plus the raw columns) and `README.md`, a dataset card whose YAML header follows the Hub's
conventions (license, language, size_categories, task_categories, tags, configs with the
data files) and whose body is written from the lake, never typed by hand: the dataset version
(rows, snapshot, its SQL), the run that saved it and its recipe (hash, teacher model and
sampling, prompt, verifiers and filters with the check versions the rows' verdicts carry, dedup
threshold), the run's funnel per source, decontamination (which benchmarks, how many problems
hit each and were left out) and the seed sets used with their licences (a seed source's
`license:` key in the recipe). A dataset some of whose source problems matched a benchmark says
so at the top.

Nothing here uploads (factory/hub.py does, when asked); the folder is written beside its final
place and renamed into it, so a failure leaves no half-written export.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from storage.errors import BadInput

SHARD_ROWS = 100_000  # rows per Parquet shard: R1-style rows are ~10-50 KB, so shards stay ~1-5 GB at most


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for `rows`."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((label for bound, label in bounds if rows < bound), "n>1T" if rows >= 10**12 else "1B<n<10B")


def check_output_folder(out: Path) -> None:
    """BadInput unless `out` can become the export: absent (its parent a folder) or an empty folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BadInput(f"--output {out}: exists and is not a folder; expected a new or empty folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        raise BadInput(f"--output {out}: the folder is not empty; expected a new or empty folder (nothing is overwritten)")
    if not out.parent.is_dir():
        raise BadInput(f"--output {out}: no folder {out.parent}; expected its parent to exist")


def write_hf_folder(lake: Any, name: str, version: int | None, out: Path, *, license: str | None = None,
                    shard_rows: int = SHARD_ROWS) -> dict:
    """Write dataset `name` (version `version`, default the newest) as a Hugging Face dataset
    folder at `out` (new or empty); returns {"name", "version", "rows", "shards", "path"}."""
    check_output_folder(out)
    ds = lake.dataset(name, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shards, ids, sources = _write_shards(lake.dataset_reader(ds.name, ds.version), tmp / "data", ds.row_count, shard_rows)
        facts = card_facts(lake, ds, ids, sources)
        facts["license"] = license or facts["seed_license"] or "other"
        (tmp / "README.md").write_text(render_card(facts, shards), encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"name": ds.name, "version": ds.version, "rows": facts["rows"], "shards": len(shards), "path": str(out)}


def _write_shards(reader: pa.RecordBatchReader, folder: Path, total: int, shard_rows: int) -> tuple[list[str], list[str], dict[str, int]]:
    """Stream the rows into shards named train-K-of-N; (shard names, sample ids, rows per source)."""
    folder.mkdir()
    count = max(1, -(-total // shard_rows))
    names = [f"train-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    ids: list[str] = []
    sources: dict[str, int] = {}
    writer, k, in_shard = None, 0, 0
    try:
        for batch in reader:
            cols = set(batch.schema.names)
            if "sample_id" in cols:
                ids += [i for i in batch.column("sample_id").to_pylist() if i is not None]
            if "source" in cols:
                for s in batch.column("source").to_pylist():
                    sources[s or "?"] = sources.get(s or "?", 0) + 1
            start = 0
            while start < batch.num_rows:
                if writer is None:
                    if k >= count:  # the version holds more rows than it says: never lose one
                        names.append(f"train-{k:05d}-of-{count:05d}.parquet")
                    writer = pq.ParquetWriter(folder / names[k], batch.schema, compression="zstd")
                take = min(shard_rows - in_shard, batch.num_rows - start)
                writer.write_batch(batch.slice(start, take))
                start, in_shard = start + take, in_shard + take
                if in_shard == shard_rows:
                    writer.close()
                    writer, k, in_shard = None, k + 1, 0
        if writer is None and k == 0:  # an empty dataset is still one (empty) shard with the schema
            pq.write_table(reader.schema.empty_table(), folder / names[0])
            k = 1
    finally:
        if writer is not None:
            writer.close()
            k += 1
    return names[: max(k, 1)], ids, sources


def card_facts(lake: Any, ds: Any, sample_ids: list[str], sources: dict[str, int]) -> dict:
    """What the card says, read from the lake: the dataset version, its run and recipe, the
    check versions of its rows' verdicts, decontamination and dedup."""
    [saved] = lake.query("SELECT run_id, recipe_hash, description, created_at FROM datasets WHERE name = ? AND version = ?",
                         [ds.name, ds.version]).to_pylist()
    runs = lake.query("SELECT run_id, recipe, recipe_hash, code_version, status, counts, started_at, finished_at FROM runs "
                      "WHERE run_id = ? ORDER BY created_at DESC LIMIT 1", [saved["run_id"]]).to_pylist()
    run = runs[0] if runs else {}
    recipe = _recipe(run.get("recipe"))
    ids = pa.table({"sample_id": pa.array(sample_ids, pa.string())})
    checks = lake.query(
        'SELECT "check", check_version, status, count(DISTINCT sample_id) AS n FROM verdicts '
        'WHERE sample_id IN (SELECT sample_id FROM _ids) GROUP BY ALL ORDER BY ALL', tables={"_ids": ids}).to_pylist()
    teachers = lake.query("SELECT teacher, model, count(*) AS n FROM samples WHERE sample_id IN (SELECT sample_id FROM _ids) "
                          "GROUP BY ALL ORDER BY n DESC", tables={"_ids": ids}).to_pylist()
    src = sorted(sources)
    flagged = lake.query(
        "SELECT DISTINCT problem_id, source, contamination FROM problems WHERE source IN (SELECT s FROM _src) AND len(contamination) > 0",
        tables={"_src": pa.table({"s": pa.array(src, pa.string())})}).to_pylist() if src else []
    matched: dict[tuple[str, str], set[str]] = {}
    for p in flagged:
        for hit in p["contamination"] or []:
            matched.setdefault((p["source"], _benchmark(hit)), set()).add(p["problem_id"])
    hits = [{"source": s, "benchmark": b, "n": len(ids)} for (s, b), ids in sorted(matched.items())]
    seeds = [q for q in recipe.get("questions", []) if isinstance(q, dict) and q.get("source") in ("jsonl", "parquet", "csv", "hf")]
    licenses = sorted({str(q["license"]) for q in seeds if q.get("license")})
    return {"name": ds.name, "version": ds.version, "rows": len(sample_ids) if sample_ids else ds.row_count, "saved_rows": ds.row_count,
            "snapshot_id": ds.snapshot_id, "sql": ds.sql, "saved_at": saved["created_at"], "description": saved["description"],
            "run": run, "recipe": recipe, "counts": _json(run.get("counts")), "checks": checks, "teachers": teachers,
            "sources": sources, "contamination": hits, "seeds": seeds,
            "seed_license": licenses[0] if len(licenses) == 1 else ("other" if licenses else None)}


def _benchmark(hit: str) -> str:
    """The benchmark a contamination entry names: a JSON object with `benchmark` (the
    decontaminate stage's), or a bare name."""
    try:
        value = json.loads(hit)
    except (TypeError, json.JSONDecodeError):
        return str(hit)
    return str(value.get("benchmark", hit)) if isinstance(value, dict) else str(hit)


def _recipe(text: str | None) -> dict:
    return _mapping(text, yaml.safe_load, yaml.YAMLError)


def _json(text: str | None) -> dict:
    return _mapping(text, json.loads, json.JSONDecodeError)


def _mapping(text: str | None, load: Any, error: type[Exception]) -> dict:
    """The object `text` holds, or {} when it holds none (an old or hand-edited row: the card
    says "?" rather than failing the export)."""
    try:
        value = load(text) if text else {}
    except error:
        return {}
    return value if isinstance(value, dict) else {}


def render_card(f: dict, shards: list[str]) -> str:
    """The README.md: the Hub's YAML header, then the body from `card_facts`."""
    recipe, run, counts = f["recipe"], f["run"], f["counts"]
    header = {
        "license": f["license"],
        "language": ["en"],
        "size_categories": [size_category(f["rows"])],
        "task_categories": ["text-generation"],
        "tags": ["reasoning", "synthetic", "chain-of-thought", "reasoning-factory"],
        "pretty_name": f"{f['name']} v{f['version']}",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
    }
    out = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {f['name']} (version {f['version']})", ""]
    hit_total = sum(h["n"] for h in f["contamination"])
    if hit_total:
        out += [f"> **Contaminated sources.** {hit_total} problem(s) of this dataset's sources matched a benchmark "
                "(below) and were left out of it: do not evaluate a model trained on it on those benchmarks' problems "
                "without checking.", ""]
    teacher = recipe.get("teacher") or {}
    sampling = teacher.get("sampling") or {}
    out += [f"{f['rows']} rows of verified reasoning made by Reasoning Factory (`factory run`), saved as dataset "
            f"`{f['name']}` version {f['version']} at lake snapshot {f['snapshot_id']}"
            + (f" on {_date(f['saved_at'])}" if f.get("saved_at") else "") + ".", ""]
    if f.get("description"):
        out += [str(f["description"]), ""]
    out += ["## Columns", "",
            "- `messages`: the chat for SFT: the prompt turns, then the assistant turn with the reasoning inside `<think>...</think>` and the answer;",
            "- `reasoning`, `answer`: the teacher's reasoning and final answer as sampled; `problem`, `reference_answer`, `source`, `domain`: the problem;",
            "- `sample_id`, `problem_id`, `teacher`, `model`, `sample_index`, `finish_reason`, `completion_tokens`: provenance.", "",
            "## How it was made", ""]
    rows = [("run", f"`{run.get('run_id', '?')}` ({run.get('status', 'unknown')})"),
            ("recipe", f"`{recipe.get('name', '?')}`, hash `{run.get('recipe_hash') or '?'}`"),
            ("code version", f"`{run.get('code_version') or '?'}`"),
            ("teacher", ", ".join(f"`{t['teacher']}` ({t['model']}): {t['n']} rows" for t in f["teachers"]) or "?"),
            ("teacher backend", f"`{teacher.get('backend', 'transformers')}`, model `{teacher.get('model', 'smollm2')}`"),
            ("sampling", ", ".join(f"{k} {v}" for k, v in sampling.items()) or "the defaults"),
            ("samples per problem", str(teacher.get("samples_per_problem", 4))),
            ("verifiers", ", ".join(f"`{v}`" for v in recipe.get("verify", ["math"]))),
            ("filters", ", ".join(f"`{v}`" for v in recipe.get("filters", [])) or "none"),
            ("dedup", _dedup(recipe.get("dedup") or {})),
            ("decontamination", _decontam(recipe.get("decontaminate") or {}))]
    out += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if recipe.get("prompt"):
        shown = yaml.dump({"prompt": recipe["prompt"]}, Dumper=_Blocks, sort_keys=False, allow_unicode=True).strip()
        out += ["Prompt (the recipe's `prompt:`):", "", "```yaml", shown, "```", ""]
    out += ["## Checks on these rows", "", "Every row passed every verifier and filter below, at these check versions "
            "(count: rows with that verdict).", "", "| check | version | status | rows |", "|---|---|---|---|"]
    out += [f"| {c['check']} | {c['check_version'] or ''} | {c['status']} | {c['n']} |" for c in f["checks"]] + [""]
    by_source = counts.get("by_source") or {}
    if by_source:
        cols = ["problems", "requests", "samples", "verified", "filtered", "deduplicated", "dataset"]
        out += ["## Funnel of the run that saved it", "", "| source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        out += [f"| {s} | " + " | ".join(str(c.get(k, "")) for k in cols) + " |" for s, c in by_source.items()] + [""]
    out += ["Rows per source in this version: " + (", ".join(f"{s} {n}" for s, n in sorted(f["sources"].items())) or "none") + ".", "",
            "## Decontamination", ""]
    if f["contamination"]:
        out += ["| source | benchmark | problems that matched (left out) |", "|---|---|---|"]
        out += [f"| {h['source']} | {h['benchmark']} | {h['n']} |" for h in f["contamination"]] + [""]
    else:
        out += ["No problem of this dataset's sources matched a benchmark the run checked against.", ""]
    out += ["## Seed sets and licences", ""]
    if f["seeds"]:
        out += [f"- `{q.get('path')}` ({q.get('source')}): licence {q.get('license') or 'not stated in the recipe: check it before sharing'}"
                for q in f["seeds"]]
    else:
        out += ["No seed set: the problems are procedural (generators) or written by the teacher."]
    out += ["", f"Dataset licence: `{f['license']}`.", "", "## The SQL that defines this version", "",
            "Pinned to the lake snapshot above, so it reads the same rows forever:", "", "```sql", f["sql"].strip(), "```", "",
            f"Files: {', '.join(f'`data/{s}`' for s in shards)}.", ""]
    return "\n".join(out)


class _Blocks(yaml.SafeDumper):
    """Multi-line strings as literal blocks (`|-`), as a recipe is written by hand."""


_Blocks.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def _date(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if isinstance(value, dt.datetime) else str(value)[:10]


def _dedup(spec: dict) -> str:
    # The recipe's defaults (factory/recipe.py DedupSpec) where the stored YAML leaves a key out.
    text = f"MinHash-LSH over {spec.get('ngram', 5)}-grams, Jaccard threshold {spec.get('threshold', 0.8)}, "
    text += f"{spec.get('per_problem', 1)} kept per cluster within a problem"
    return text + ("; near-duplicate problems dropped before sampling" if spec.get("problems", True) else "")


def _decontam(spec: dict) -> str:
    # DecontaminateSpec's defaults: every shipped benchmark, 13-grams, on.
    if spec.get("enabled") is False:
        return "off"
    benches = spec.get("benchmarks", "all")
    named = "every shipped benchmark" if benches == "all" else ", ".join(f"`{b}`" for b in ([benches] if isinstance(benches, str) else benches))
    return f"{named}, {spec.get('ngram', 13)}-gram overlap"
