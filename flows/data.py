"""`factory ingest|sql|tables|snapshot|export|maintain`, over the lake, and `factory
verify|dedup|decontaminate`, over files of rows: thin commands over `storage` and `factory`.

    factory ingest recipes/seeds/gsm8k_train_200.jsonl --table problems --map problem=question
    factory sql "SELECT source, count(*) FROM problems GROUP BY 1"
    factory export my-dataset@2 --format parquet --output train.parquet

Plain functions: flows/cli.py registers them on `app`. Every output file is written through
`storage.files.atomic_output`: beside the target first, then renamed over it; an output path
that is a device, a folder or a symlink, or in a folder that does not exist, is bad input.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

from factory import ingest as ingest_mod
from flows.options import Catalog, Store, err, run_job
from storage import BadInput, Lake
from storage.errors import bad_rows
from storage.files import atomic_output, check_output

# -- ingest ---------------------------------------------------------------------------


def ingest(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="A .jsonl/.json (JSON lines), .parquet, .csv or .tsv file, optionally .gz.")],
    table: Annotated[str, typer.Option("--table", metavar="problems|samples", help="Target table: problems or samples.")],
    map_: Annotated[
        list[str],
        typer.Option(
            "--map",
            metavar="FIELD=COLUMN",
            help="FIELD=COLUMN: fill a table field from an input column (dotted paths reach into objects). Repeatable.",
        ),
    ] = [],
    set_: Annotated[
        list[str],
        typer.Option("--set", metavar="FIELD=VALUE", help="FIELD=VALUE: the same value for every row, e.g. model=deepseek-r1. Repeatable."),
    ] = [],
    source: Annotated[str | None, typer.Option(metavar="NAME", help="Source name for problems [default: the file name].")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", metavar="ID", help="Run id stored on every row [default: ingest-<time>].")] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option("--skip-bad-rows", help="Commit the good rows and write the bad ones to a rejects file, instead of committing nothing."),
    ] = False,
    rejects: Annotated[Path | None, typer.Option(metavar="PATH", help="Where bad rows go with --skip-bad-rows [default: INPUT.rejects.jsonl].")] = None,
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Load JSONL, Parquet or CSV rows into the problems or samples table (once per file and options).

    A table keeps one row per problem_id (problems) or sample_id (samples): a row whose id is
    already in the table, or earlier in the file, is skipped, and the count is reported.
    """

    def job() -> None:
        mapping = ingest_mod.parse_assignments(map_, "--map")
        constants = ingest_mod.parse_assignments(set_, "--set")
        if skip_bad_rows and rejects is not None:
            check_output(rejects)  # before reading: a bad --rejects path fails at once
        with err.status(f"reading {input}"):
            data, bad = ingest_mod.read_table(input, table, mapping, constants, source)
        unit = ingest_mod.position_unit(input)
        if bad and not skip_bad_rows:
            raise bad_rows(
                [r.describe(str(input), unit) for r in bad],
                "nothing ingested (use --skip-bad-rows to keep the good ones)",
            )
        if bad:  # written before the commit: a rejects file that cannot be written stops the ingest
            out = rejects or input.with_name(input.name + ".rejects.jsonl")
            ingest_mod.write_rejects(bad, out)
            err.print(f"{len(bad)} bad row(s) skipped, written to {out}", markup=False)
        key = ingest_mod.ingest_key(input, table, mapping, constants, source)
        run = run_id or "ingest-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        id_column = ingest_mod.ID_COLUMN[table]
        with Lake.open(store, catalog) as lake, err.status(f"committing {data.num_rows} row(s) to {table}"):
            known = lake.existing(table, id_column, set(data.column(id_column).to_pylist()))
            data, repeats, already = ingest_mod.drop_duplicates(data, table, known)
            result = lake.commit(table, data, batch_key=key, run_id=run)
        if not result.committed:
            err.print(f"already ingested: {input} with these options is in {table}; nothing written", markup=False)
            return
        if repeats or already:
            err.print(f"skipped {repeats + already} duplicate {id_column}(s): {repeats} repeated in {input}, "
                      f"{already} already in {table}", markup=False)
        err.print(f"ingested {result.rows} row(s) into {table} (run {run})", markup=False)

    run_job(job)


# -- sql ------------------------------------------------------------------------------

FORMATS = ("table", "csv", "json", "jsonl", "parquet")


def sql(
    query: Annotated[str, typer.Argument(metavar="SQL", help="One SELECT over the lake's tables.")],
    format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="table, csv, json (an array), jsonl or parquet.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", metavar="PATH", help="Write to this file instead of stdout (required for parquet).")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Time limit in seconds.")] = 60.0,
    memory_limit: Annotated[str, typer.Option("--memory-limit", metavar="SIZE", help="Memory limit of the query, e.g. 2GB.")] = "2GB",
    max_rows: Annotated[int, typer.Option("--max-rows", metavar="N", help="Rows shown by --format table.")] = 50,
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Run read-only SQL over the lake (one SELECT; no files, network or settings)."""

    def job() -> None:
        if format not in FORMATS:
            raise BadInput(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
        if format == "parquet" and output is None:
            raise BadInput("--format parquet needs --output PATH")
        if output is not None:
            check_output(output)  # a device, link or missing folder fails before the query runs
        _check_limits(timeout)
        with Lake.open(store, catalog, read_only=True) as lake:  # answers while a run writes
            result = lake.sql(query, timeout_s=timeout, memory_limit=memory_limit)
        write_table(result, format, output, max_rows)

    run_job(job)


def _check_limits(timeout: float) -> None:
    if not timeout > 0:
        raise BadInput(f"--timeout {timeout}: expected a positive number of seconds")


def write_table(data: pa.Table, format: str, output: Path | None, max_rows: int = 50) -> None:
    """Write an Arrow table in one of FORMATS to a file or stdout."""
    if format == "parquet":
        import pyarrow.parquet as pq

        with atomic_output(output) as tmp:
            pq.write_table(data, tmp, compression="zstd")
    elif format == "table":
        with _open_out(output) as fh:
            _print_table(data, max_rows, fh, wide=output is not None)
    else:
        with _open_out(output) as fh:
            if format == "csv":
                _write_csv(data, fh)
            elif format == "json":
                # Batch by batch, so the rows are never all Python objects at once.
                fh.write("[")
                for i, row in enumerate(r for b in data.to_batches() for r in b.to_pylist()):
                    fh.write((", " if i else "") + json.dumps(row, default=str, ensure_ascii=False))
                fh.write("]\n")
            else:
                _write_jsonl(data.to_batches(), fh)
    if output is not None:
        err.print(f"wrote {data.num_rows} row(s) to {output}", markup=False)


def _write_csv(data: pa.Table, fh) -> None:
    """CSV, batch by batch; a list, struct or map cell is written as its JSON text."""
    import pyarrow.csv as pcsv

    header = True
    for batch in data.to_batches() or [pa.RecordBatch.from_pylist([], schema=data.schema)]:
        batch = pa.RecordBatch.from_arrays([_csv_column(c) for c in batch.columns], names=batch.schema.names)
        buf = pa.BufferOutputStream()
        pcsv.write_csv(batch, buf, pcsv.WriteOptions(include_header=header))
        fh.write(buf.getvalue().to_pybytes().decode())
        header = False


def _csv_column(column: pa.Array) -> pa.Array:
    t = column.type
    if not (pa.types.is_nested(t)):
        return column
    return pa.array(
        [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in column.to_pylist()], pa.string()
    )


def _write_jsonl(batches, fh) -> int:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            fh.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def _open_out(output: Path | None):
    """stdout, or a text file written through `atomic_output` (a device, link or folder as
    --output is refused; the file appears whole or not at all)."""
    if output is None:
        yield sys.stdout
        return
    with atomic_output(output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yield fh


def _print_table(data: pa.Table, max_rows: int, fh, wide: bool = False) -> None:
    console = Console(file=fh, highlight=False, width=200 if wide else None)
    view = Table(show_lines=False)
    for name in data.column_names:
        view.add_column(name, overflow="fold")
    for row in data.slice(0, max_rows).to_pylist():
        view.add_row(*("" if v is None else _short(v) for v in row.values()))
    console.print(view)
    if data.num_rows > max_rows:
        err.print(f"{data.num_rows} rows; showing {max_rows} (--max-rows, or --format csv/jsonl for all)", markup=False)


def _short(v: object, limit: int = 200) -> str:
    text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- tables, datasets, export ---------------------------------------------------------


def tables(store: Store = None, catalog: Catalog = None) -> None:
    """List the tables with row and batch counts, and the dataset versions."""

    def job() -> None:
        with Lake.open(store, catalog, read_only=True) as lake:  # one snapshot, while a run writes
            counts = lake.tables()
            snapshot = lake.snapshot_id()
            datasets = lake.list_datasets().to_pylist()
            where = lake.config.describe()
        out = Console(highlight=False, soft_wrap=True)
        out.print(f"{where}, snapshot {snapshot}")
        view = Table()
        for col in ("table", "rows", "batches"):
            view.add_column(col, justify="right" if col != "table" else "left")
        for row in counts:
            view.add_row(row["table"], f"{row['rows']:,}", f"{row['batches']:,}")
        out.print(view)
        if datasets:
            ds = Table()
            for col in ("name", "version", "rows", "snapshot", "created"):
                ds.add_column(col)
            for d in datasets:
                ds.add_row(d["name"], str(d["version"]), f"{d['row_count']:,}", str(d["snapshot_id"]), str(d["created_at"])[:19])
            out.print(ds)

    run_job(job)


def snapshot(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name (letters, digits, '-', '_', '.').")],
    query: Annotated[str, typer.Argument(metavar="SQL", help="The SELECT that defines the dataset: the same confined, read-only SQL as `factory sql`.")],
    description: Annotated[str | None, typer.Option(metavar="TEXT", help="A note stored with the version.")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Time limit for checking and counting the SELECT.")] = 60.0,
    memory_limit: Annotated[str, typer.Option("--memory-limit", metavar="SIZE", help="Memory limit of the SELECT, e.g. 2GB.")] = "2GB",
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Save a SELECT as the next version of a named dataset, pinned to the current lake snapshot.

    The SELECT is checked and counted like `factory sql`: read-only, on its own engine, with no
    side-effect functions (enable_profiling, checkpoint, nextval, ...), no table functions but
    range/unnest/json_each and the read-only ducklake_*/duckdb_* views, no files or network, and
    within the time and memory limits, holding no lock a writer waits on. Only the dataset's row
    is then written. A refused SELECT exits 2 with a one-line reason and writes nothing.
    """

    def job() -> None:
        _check_limits(timeout)
        with Lake.open(store, catalog, create=False) as lake:
            ds = lake.save_dataset(name, query, description=description, timeout_s=timeout, memory_limit=memory_limit)
        err.print(f"dataset {ds.name} version {ds.version}: {ds.row_count} row(s) at lake snapshot {ds.snapshot_id}", markup=False)

    run_job(job)


_DATASET_REF = re.compile(r"^(?P<name>[A-Za-z0-9._-]+?)(?:@(?P<version>\d+))?$")


def export(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="NAME or NAME@VERSION [default version: the newest].")],
    format: Annotated[
        str,
        typer.Option("--format", metavar="FORMAT", help="jsonl, parquet, or hf: a Hugging Face dataset folder (Parquet shards and a "
                     "README.md card written from the lake) that datasets.load_dataset(DIR) loads."),
    ] = "jsonl",
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            metavar="PATH",
            help="File to write, in an existing folder; a regular file there is replaced whole when done, a device, folder or symlink "
            "is refused. With --format hf: a new or empty folder.",
        ),
    ] = ...,
    license: Annotated[
        str | None,
        typer.Option("--license", metavar="ID", help="The card's licence (a Hub id such as mit or cc-by-4.0) [default: the recipe's "
                     "seed sets' license key when they agree, else other]. --format hf only."),
    ] = None,
    push: Annotated[
        str | None,
        typer.Option("--push", metavar="REPO", help="After writing the folder, upload it to the Hugging Face Hub as dataset USER/NAME "
                     "(one commit; the token from HF_TOKEN or `hf auth login`, the endpoint from HF_ENDPOINT). --format hf only."),
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the --push repository as private.")] = False,
    drop_reviewed_bad: Annotated[
        bool,
        typer.Option("--drop-reviewed-bad", help="Leave out rows whose sample reviewers marked wrong, hacked or unreadable, or whose "
                     "problem has a contamination hit reviewed as true (`factory view`; the newest review of each counts). "
                     "--format jsonl or parquet."),
    ] = False,
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Write a dataset version, exactly as it was saved, to JSONL, Parquet or a Hugging Face dataset folder with its card."""

    def job() -> None:
        if format not in ("jsonl", "parquet", "hf"):
            raise BadInput(f"--format {format!r}: expected jsonl, parquet or hf")
        if format != "hf":
            for flag, given in (("--license", license is not None), ("--push", push is not None), ("--private", private)):
                if given:
                    raise BadInput(f"{flag}: only with --format hf (it is about the dataset folder and its card)")
        token = None
        if push is not None:
            from factory.hub import preflight

            token = preflight(push)  # before anything is written
        m = _DATASET_REF.match(dataset)
        if not m:
            raise BadInput(f"dataset {dataset!r}: expected NAME or NAME@VERSION")
        version = int(m["version"]) if m["version"] else None
        if drop_reviewed_bad and format == "hf":
            raise BadInput("--drop-reviewed-bad: only with --format jsonl or parquet (the hf folder's card describes the saved version)")
        if format == "hf":
            from factory.cards import check_output_folder, write_hf_folder

            check_output_folder(output)  # before the lake is read
            with Lake.open(store, catalog, read_only=True) as lake:
                with err.status(f"writing {m['name']} to {output}"):
                    info = write_hf_folder(lake, m["name"], version, output, license=license)
            err.print(f"wrote {info['rows']} row(s) of {info['name']}@{info['version']} to {output} "
                      f"({info['shards']} Parquet shard(s) and README.md); load it with datasets.load_dataset({str(output)!r})", markup=False)
            if push is not None:
                from factory.hub import push_folder

                with err.status(f"uploading {output} to {push}"):
                    url = push_folder(output, push, message=f"factory export {info['name']}@{info['version']}", private=private, token=token)
                err.print(f"pushed to {push}: {url}", markup=False)
            return
        check_output(output)  # a device, link or missing folder fails before the lake is read
        with Lake.open(store, catalog, read_only=True) as lake:
            ds = lake.dataset(m["name"], version)
            reader = lake.dataset_reader(ds.name, ds.version)
            dropped = None
            if drop_reviewed_bad:
                from flows.view import drop_reviewed

                reader, dropped = drop_reviewed(lake, reader, f"{ds.name}@{ds.version}")
            with err.status(f"writing {ds.name}@{ds.version} ({ds.row_count} rows) to {output}"):
                rows = _write_stream(reader, format, output)
        extra = f"; dropped {dropped[0]} row(s) reviewers marked bad" if dropped is not None else ""
        err.print(f"wrote {rows} row(s) of {ds.name}@{ds.version} to {output}{extra}", markup=False)

    run_job(job)


def _write_stream(reader: pa.RecordBatchReader, format: str, output: Path) -> int:
    """Stream batches to a file; a failure leaves no half-written file behind."""
    with atomic_output(output) as tmp:
        if format == "parquet":
            import pyarrow.parquet as pq

            rows = 0
            with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                rows = _write_jsonl(reader, fh)
    return rows


# -- verify ---------------------------------------------------------------------------


def verify(
    input: Annotated[
        Path,
        typer.Argument(metavar="INPUT", help="JSON lines: id, completion, and reference_answer (math, choice, exact), pattern (regex) or tests (code)."),
    ],
    verifier: Annotated[str, typer.Option("--verifier", metavar="NAME", help="math, code, choice, exact or regex.")],
    output: Annotated[Path | None, typer.Option("--output", metavar="PATH", help="Write the verdicts here (JSON lines) instead of stdout.")] = None,
    timeout: Annotated[float | None, typer.Option(metavar="SECONDS", help="Time limit per check (math: 5, code: 10 per program).")] = None,
) -> None:
    """Check given completions with a verifier; one verdict per input row, in input order."""

    def job() -> None:
        from factory.verification import read_verify_rows, run_verifier

        if output is not None:
            check_output(output)  # before the checks run, not after
        rows = read_verify_rows(input, verifier)
        with err.status(f"verifying {len(rows)} row(s) with {verifier}"):
            if timeout is not None and timeout <= 0:
                raise BadInput(f"--timeout {timeout}: expected a positive number of seconds")
            results = run_verifier(rows, verifier, timeout_s=timeout)
        if output is not None:
            _write_rows(results, output)
        else:
            for r in results:
                sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts: dict[str, int] = {}
        for r in results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        err.print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no rows", markup=False)

    run_job(job)


# -- dedup and decontamination over files ----------------------------------------------


def _read_rows(input: Path, column: str) -> list[dict]:
    """Every row of a JSONL/Parquet/CSV file; a row without a text `column` is bad input."""
    rows, problems = [], []
    for pos, record, error in ingest_mod.iter_records(input):
        where = f"{input}:{pos}" if ingest_mod.position_unit(input) == "line" else f"{input} row {pos}"
        if record is None:
            problems.append(f"{where}: {error}")
        elif not isinstance(record.get(column), str):
            problems.append(f"{where}: field {column!r}: expected text")
        else:
            rows.append(record)
    if problems:
        raise bad_rows(problems, "nothing written")
    return rows


def _write_rows(rows: list[dict], output: Path) -> None:
    """JSONL, or Parquet when the output ends in .parquet; atomically."""
    with atomic_output(output) as tmp:
        if output.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, default=str, ensure_ascii=False) + "\n")


def dedup(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="A .jsonl, .parquet or .csv file.")],
    column: Annotated[str, typer.Option("--column", metavar="NAME", help="The text column to deduplicate on.")],
    output: Annotated[Path, typer.Option("--output", metavar="PATH", help="Every input row plus cluster_id, kept, similarity, method (.jsonl or .parquet).")],
    threshold: Annotated[float, typer.Option(metavar="J", help="Jaccard similarity of word shingles at which two texts are duplicates.")] = 0.8,
    ngram: Annotated[int, typer.Option(metavar="N", help="Words per shingle.")] = 5,
    kind: Annotated[str, typer.Option(metavar="KIND", help="problem (one kept per cluster) or response (at most --keep per cluster).")] = "problem",
    keep: Annotated[int, typer.Option("--keep", metavar="K", help="Responses kept per cluster (kind response).")] = 1,
) -> None:
    """Mark exact and near duplicates (MinHash-LSH, confirmed by exact Jaccard) in a file."""

    def job() -> None:
        if not 0 < threshold <= 1:
            raise BadInput(f"--threshold {threshold}: expected a number in (0, 1]")
        if kind not in ("problem", "response"):
            raise BadInput(f"--kind {kind!r}: expected problem or response")
        if ngram < 1 or keep < 1:
            raise BadInput("--ngram and --keep must be at least 1")
        from factory.dedup import dedup_records

        check_output(output)
        rows = _read_rows(input, column)
        with err.status(f"deduplicating {len(rows)} row(s)"):
            try:
                out = dedup_records(rows, column, threshold=threshold, ngram=ngram, kind=kind, k=keep)
            except ValueError as exc:  # e.g. ids that are not unique
                raise BadInput(f"{input}: {exc}") from exc
        _write_rows(out, output)
        kept = sum(1 for r in out if r["kept"])
        err.print(f"kept {kept} of {len(out)} row(s); wrote {output}", markup=False)

    run_job(job)


def decontaminate(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="A .jsonl, .parquet or .csv file.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            metavar="PATH",
            help="Every input row plus contaminated, benchmark, benchmark_id, score, matched, match_method, contamination (.jsonl or .parquet).",
        ),
    ],
    column: Annotated[str, typer.Option("--column", metavar="NAME", help="The text column to check.")] = "problem",
    benchmarks: Annotated[str, typer.Option("--benchmarks", metavar="LIST", help="Comma-separated registry names (math500, aime2024, ...), or all.")] = "all",
    kind: Annotated[str, typer.Option(metavar="KIND", help="problem, or response (the reasoning and the answer are checked apart).")] = "problem",
    ngram: Annotated[int, typer.Option(metavar="N", help="Words per n-gram for the overlap check (at least 2).")] = 13,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", metavar="S", help="Least share of a benchmark item's n-grams matched to count as a hit."),
    ] = None,
) -> None:
    """Flag rows that overlap the shipped benchmarks (n-gram overlap and MinHash similarity)."""

    def job() -> None:
        from factory.benchmarks import parse_names
        from factory.decontaminate import decontaminate_records, summary

        names = parse_names(None if benchmarks == "all" else benchmarks)
        if kind not in ("problem", "response"):
            raise BadInput(f"--kind {kind!r}: expected problem or response")
        if ngram < 2:
            raise BadInput(f"--ngram {ngram}: expected at least 2")
        check_output(output)
        rows = _read_rows(input, column)
        extra = {"min_score": min_score} if min_score is not None else {}
        with err.status(f"checking {len(rows)} row(s) against {len(names)} benchmark(s)"):
            out = decontaminate_records(rows, column, benchmarks=names, ngram=ngram, kind=kind, **extra)
        _write_rows(out, output)
        for name, s in summary(out, names)["benchmarks"].items():
            err.print(f"{name}: {s['hits']} of {s['rows_checked']} row(s) ({s['share']:.2%})", markup=False)
        hits = sum(1 for r in out if r["contaminated"])
        err.print(f"{hits} of {len(out)} row(s) contaminated; wrote {output}", markup=False)

    run_job(job)


# -- maintenance ----------------------------------------------------------------------

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|h|d)$")


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise BadInput(f"--older-than {text!r}: expected a duration such as 30s, 15m, 1h or 2d")
    seconds = float(m["n"]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m["unit"]]
    return dt.timedelta(seconds=seconds)


def maintain(
    older_than: Annotated[
        str,
        typer.Option("--older-than", metavar="AGE", help="Only files older than this (30s, 15m, 1h, 2d); keep it above your longest commit."),
    ] = "1h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files without deleting them.")] = False,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Also merge small data files and expire snapshots older than --older-than, except those a dataset version pins.",
        ),
    ] = False,
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Delete data files that no snapshot references (left by killed writers).

    With --compact, first merge the small files that many small commits leave (every query
    reads fewer files), expire old snapshots that no saved dataset version pins, and delete the
    files only they read; `factory export NAME@V` returns exactly what it returned before."""

    def job() -> None:
        age = parse_duration(older_than)
        if compact and dry_run:
            raise BadInput("--compact cannot be combined with --dry-run: merging files has no dry run")
        with Lake.open(store, catalog, create=False) as lake:
            done = lake.compact(older_than=age) if compact else None
            files = lake.maintain(older_than=age, dry_run=dry_run)
        for f in files:
            typer.echo(f)
        if done is not None:
            err.print(
                f"compacted: {done.files_before} -> {done.files_after} data file(s); expired {done.snapshots_expired} "
                f"snapshot(s), kept {done.snapshots_pinned} pinned by datasets; deleted {done.files_deleted} old file(s)",
                markup=False,
            )
        verb = "would delete" if dry_run else "deleted"
        err.print(f"{verb} {len(files)} orphaned file(s)", markup=False)

    run_job(job)
