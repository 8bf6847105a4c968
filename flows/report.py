"""`factory report`: a self-contained HTML page of a run, a dataset, evals and training curves.

    factory report                                   # the whole lake
    factory report 20261130T0100-gsm8k-r1 --output run.html
    factory report gsm8k-r1@2 --metrics out/metrics.csv --output ds.html

The page is one file with no external scripts, fonts or images: charts are inline SVG and the
style is inline CSS, so it opens offline, mails as one attachment and survives as a CI artifact.
flows/cli.py registers `report` as `factory report`.

Two halves, so the flow can reuse the rendering for its Prefect artifact:
- this module: `collect_report(lake, target, metrics)` reads the lake (SQL over `runs`,
  `problems`, `samples`, `verdicts`, `dedup`, `datasets`, `evals`) and the metrics CSVs into a
  `ReportData`; `write_report(data, output)` writes the page;
- flows/report_html.py: `render_html(data)` and `funnel_markdown(counts)`, pure: data in, text out.

The yield funnel comes from `runs.counts` (the JSON the flow stores) when the report is about
one run that has it; otherwise it is computed from the tables by the SQL the flow's summary and
every dataset use (factory/funnel.py, where the rule and its reasons are written): among a
sample's newest verdicts, *verified* when it has verifier verdicts and all pass, *filtered*
when also every `filter:*` verdict passed, *deduplicated* when also no `dedup` row dropped it.
Rejects are those verdicts that did not pass (fail, unverifiable, error), by check with the
`filter:` prefix dropped. Pass rates use the rule "all of a sample's newest verdicts are pass",
over the samples that have verdicts; the same rates per source and `finish_reason` show what
traces cut at max_tokens ('length') cost. Not covered:
evals are shown for the whole lake (an eval row does not name the data its model was trained
on), and a dataset's funnel is that of the runs its rows came from, not of the rows alone.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from factory import funnel
from flows.options import Catalog, Store, err
from flows.options import run_job as _run
from flows.report_html import MAX_REJECT_ROWS, _fmt, _nice_step, render_html
from storage import BadInput, Lake
from storage.files import atomic_output, check_output

# -- data ---------------------------------------------------------------------------------


@dataclass
class Scope:
    """What the report is about: the whole lake, one run, or one dataset version."""

    kind: str  # lake | run | dataset
    label: str
    run_ids: list[str] | None  # None: every run
    dataset: dict[str, Any] | None = None


@dataclass
class MetricsFile:
    """A training metrics CSV: `step` plus numeric columns, each a list of (step, value)."""

    path: str
    series: dict[str, list[tuple[float, float]]]
    skipped: list[str] = field(default_factory=list)  # columns that are not numeric


@dataclass
class ReportData:
    scope: Scope
    counts: dict[str, Any] | None = None  # the runs.counts shape (see funnel_markdown)
    counts_from: str = ""  # where the funnel came from, said on the page
    runs: list[dict[str, Any]] = field(default_factory=list)
    pass_by_source: list[dict[str, Any]] = field(default_factory=list)  # label, checked, passed
    pass_by_difficulty: list[dict[str, Any]] = field(default_factory=list)
    lengths: list[dict[str, Any]] = field(default_factory=list)  # lo, hi, passed, other
    finish_reasons: list[dict[str, Any]] = field(default_factory=list)  # source, finish_reason, samples, checked, passed
    length_unit: str = "tokens"
    rejects: list[dict[str, Any]] = field(default_factory=list)  # check, status, reason, count
    evals: list[dict[str, Any]] = field(default_factory=list)  # model, benchmark, n, items, accuracy
    eval_lengths: list[dict[str, Any]] = field(default_factory=list)  # model, lo, hi, n, accuracy
    metrics: list[MetricsFile] = field(default_factory=list)
    reviews: dict[str, Any] | None = None  # see _reviews; None when nobody reviewed anything in scope
    notes: list[str] = field(default_factory=list)
    generated_at: str = ""


# -- reading the lake -------------------------------------------------------------------


def _known(lake: Lake) -> tuple[list[str], list[str]]:
    runs = lake.query("SELECT run_id FROM runs GROUP BY 1 ORDER BY max(created_at) DESC").column(0).to_pylist()
    names = lake.query("SELECT DISTINCT name FROM datasets ORDER BY 1").column(0).to_pylist()
    return runs, names


def resolve_scope(lake: Lake, target: str | None) -> Scope:
    """Turn the command's argument into a scope: nothing (the lake), a run id from `runs`, a
    dataset `NAME` or `NAME@VERSION`, or a run id that only the data tables carry (an ingest)."""
    if not target:
        return Scope("lake", "the whole lake", None)
    if lake.query("SELECT 1 FROM runs WHERE run_id = ? LIMIT 1", [target]).num_rows:
        return Scope("run", f"run {target}", [target])
    name, _, version = target.partition("@")
    if version and not version.isdigit():
        raise BadInput(f"report target {target!r}: expected RUN_ID, NAME or NAME@VERSION (VERSION a number)")
    sql = "SELECT * FROM datasets WHERE name = ?" + (" AND version = ?" if version else "")
    rows = lake.query(sql + " ORDER BY version DESC LIMIT 1", [name, int(version)] if version else [name]).to_pylist()
    if rows:
        ds = rows[0]
        return Scope("dataset", f"dataset {ds['name']}@{ds['version']}", _dataset_run_ids(lake, ds), ds)
    for table in ("samples", "problems"):
        if lake.query(f"SELECT 1 FROM {table} WHERE run_id = ? LIMIT 1", [target]).num_rows:
            return Scope("run", f"run {target}", [target])
    runs, names = _known(lake)
    raise BadInput(
        f"report target {target!r} is neither a run nor a dataset; "
        f"runs: {runs[:20] or 'none yet'}{' ...' if len(runs) > 20 else ''}; datasets: {names or 'none yet'}"
    )


def _dataset_run_ids(lake: Lake, ds: dict[str, Any]) -> list[str]:
    """The runs a dataset's rows came from: its `run_id` column, else its samples' runs, else
    the run that saved it."""
    found: set[str] = set()
    reader = lake.dataset_reader(ds["name"], ds["version"])
    cols = reader.schema.names
    key = "run_id" if "run_id" in cols else "sample_id" if "sample_id" in cols else None
    values: set[str] = set()
    if key:
        for batch in reader:
            values.update(v for v in batch.column(cols.index(key)).to_pylist() if v is not None)
    if key == "run_id":
        found = values
    elif key == "sample_id" and values:
        found = set(
            lake.query(
                "SELECT DISTINCT run_id FROM samples WHERE list_contains(?::VARCHAR[], sample_id)", [sorted(values)]
            ).column(0).to_pylist()
        )
    if ds.get("run_id"):
        found.add(ds["run_id"])
    return sorted(found)


def _where(scope: Scope, column: str = "run_id") -> tuple[str, list[Any]]:
    if scope.run_ids is None:
        return "TRUE", []
    return f"list_contains(?::VARCHAR[], {column})", [scope.run_ids]


def _rows(lake: Lake, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    return lake.query(sql, list(params)).to_pylist()


def collect_report(lake: Lake, target: str | None = None, metrics: Iterable[Path] = ()) -> ReportData:
    """Everything the page shows, read from the lake and the metrics files."""
    scope = resolve_scope(lake, target)
    data = ReportData(scope=scope, generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    data.runs = _read_runs(lake, scope)
    stored = [r for r in data.runs if r.get("counts_parsed")]
    if scope.kind == "run" and stored:
        data.counts, data.counts_from = stored[0]["counts_parsed"], "runs.counts (stored by the flow)"
    else:
        data.counts, data.counts_from = compute_counts(lake, scope), "computed from the tables"
    for r in data.runs:
        if r.get("counts_error"):
            data.notes.append(f"run {r['run_id']}: runs.counts is not valid JSON ({r['counts_error']}); ignored")
    data.pass_by_source = _pass_rates(lake, scope, "coalesce(source, '(no source)')")
    data.pass_by_difficulty = _pass_by_difficulty(lake, scope)
    data.lengths, data.length_unit = _length_histogram(lake, scope)
    data.finish_reasons = _finish_reasons(lake, scope)
    data.rejects = _rejects(lake, scope)
    data.evals, data.eval_lengths = _evals(lake)
    data.reviews = _reviews(lake, scope)
    data.metrics = [read_metrics(Path(p)) for p in _metric_files(metrics)]
    return data


def _read_runs(lake: Lake, scope: Scope) -> list[dict[str, Any]]:
    where, params = _where(scope)
    rows = _rows(
        lake,
        f"SELECT run_id, status, started_at, finished_at, recipe_hash, code_version, cost_usd, counts "
        f"FROM runs WHERE {where} QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY created_at DESC) = 1 "
        f"ORDER BY coalesce(started_at, finished_at) DESC NULLS LAST LIMIT 200",
        params,
    )
    for r in rows:
        text = r.pop("counts")
        if text:
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                r["counts_error"] = str(exc)
                continue
            if isinstance(parsed, dict):
                r["counts_parsed"] = parsed
            else:
                r["counts_error"] = f"expected a JSON object, got {type(parsed).__name__}"
    return rows


def _samples_in(scope: Scope) -> tuple[str, list[Any]]:
    """The scope's samples with their problem's source and difficulty: the scope of
    factory.funnel.outcomes, whose relation `o` (one row per sample, with its outcome at each
    stage) and `vv` (the verdicts that count) the queries below read."""
    where, params = _where(scope, "s.run_id")
    return (
        "SELECT s.sample_id, s.created_at, s.problem_id, s.request_key, s.prompt_tokens, s.completion_tokens, s.cost_usd, s.finish_reason, "
        "length(s.reasoning) AS reasoning_chars, coalesce(p.source, '(no source)') AS source, p.difficulty FROM samples s "
        "LEFT JOIN (SELECT problem_id, any_value(source) AS source, any_value(difficulty) AS difficulty FROM problems GROUP BY 1) p "
        f"ON p.problem_id = s.problem_id WHERE {where}"
    ), params


def _outcomes(scope: Scope) -> tuple[str, list[Any]]:
    samples, params = _samples_in(scope)
    return funnel.outcomes(samples), params


def compute_counts(lake: Lake, scope: Scope) -> dict[str, Any]:
    """The funnel in the runs.counts shape, from the tables, for runs that did not store one."""
    pwhere, pparams = _where(scope)
    problems = _rows(
        lake,
        f"SELECT coalesce(source, '(no source)') AS source, count(DISTINCT problem_id) AS problems, "
        f"count(DISTINCT problem_id) FILTER (WHERE len(coalesce(contamination, []::VARCHAR[])) = 0) AS clean "
        f"FROM problems WHERE {pwhere} GROUP BY 1",
        pparams,
    )
    samples, params = _samples_in(scope)
    per_source = funnel.stage_counts(lake, samples, params)
    by_source: dict[str, dict[str, int]] = {}
    for r in problems:
        by_source.setdefault(r["source"], {}).update(problems=r["problems"], decontaminated=r["clean"])
    for r in per_source:
        row = by_source.setdefault(r["source"], {})
        # Samples of problems committed by an earlier run: count the problems they came from.
        row.setdefault("problems", r["sampled_problems"])
        row.setdefault("decontaminated", r["sampled_problems"])
        for k in ("requests", *funnel.SAMPLE_ROWS):
            row[k] = r[k]
    total = {k: sum(s.get(k, 0) for s in by_source.values()) for k in funnel.ROWS if k != "dataset"}
    total["dataset"] = _dataset_rows(lake, scope)
    return {
        "funnel": funnel.funnel_rows(total, funnel.ROWS),
        "by_source": by_source,
        "rejects": funnel.reject_counts(lake, samples, params),
        "tokens": {
            "prompt": sum(r["prompt_tokens"] for r in per_source),
            "completion": sum(r["completion_tokens"] for r in per_source),
        },
        "cost_usd": float(sum(r["cost_usd"] for r in per_source)),
        "seconds": {},
    }


def _dataset_rows(lake: Lake, scope: Scope) -> int:
    if scope.dataset is not None:
        return int(scope.dataset["row_count"])
    where, params = _where(scope)
    rows = _rows(
        lake,
        f"SELECT sum(row_count) AS n FROM (SELECT name, arg_max(row_count, version) AS row_count "
        f"FROM datasets WHERE {where} GROUP BY name)",
        params,
    )
    return int(rows[0]["n"] or 0)


def _pass_rates(lake: Lake, scope: Scope, label_sql: str, *, per_source: bool = False) -> list[dict[str, Any]]:
    head, params = _outcomes(scope)
    sql = head + (
        f"SELECT {'source, ' if per_source else ''}{label_sql} AS label, count(*) AS samples, "
        f"count(*) FILTER (WHERE checked) AS checked, count(*) FILTER (WHERE passed) AS passed FROM o GROUP BY ALL ORDER BY ALL"
    )
    return _rows(lake, sql, params)


def _pass_by_difficulty(lake: Lake, scope: Scope) -> list[dict[str, Any]]:
    """Few distinct difficulties (levels 1-5): one row each; many (a continuous score): five
    equal-width bins."""
    head, params = _outcomes(scope)
    stats = _rows(
        lake,
        head + "SELECT count(DISTINCT difficulty) AS k, min(difficulty) AS lo, max(difficulty) AS hi FROM o",
        params,
    )[0]
    if not stats["k"] or stats["k"] <= 12:
        rows = _pass_rates(lake, scope, "difficulty")
        rows.sort(key=lambda r: (r["label"] is None, r["label"] if r["label"] is not None else 0))
        for r in rows:
            r["label"] = "(none)" if r["label"] is None else _fmt(r["label"])
        return rows
    lo, hi = float(stats["lo"]), float(stats["hi"])
    width = (hi - lo) / 5
    rows = _pass_rates(lake, scope, f"least(floor((difficulty - {lo!r}) / {width!r}), 4)")
    rows.sort(key=lambda r: (r["label"] is None, r["label"] if r["label"] is not None else 0))
    for r in rows:
        if r["label"] is None:
            r["label"] = "(none)"
        else:
            i = int(r["label"])
            r["label"] = f"{_fmt(lo + i * width)}–{_fmt(lo + (i + 1) * width)}"
    return rows


def _length_histogram(lake: Lake, scope: Scope, bins: int = 24) -> tuple[list[dict[str, Any]], str]:
    """Reasoning lengths in equal-width bins, split by pass; completion tokens when the samples
    have them, else characters of the reasoning."""
    head, params = _outcomes(scope)
    has_tokens = _rows(lake, head + "SELECT count(completion_tokens) AS n FROM o", params)[0]["n"] > 0
    expr, unit = ("completion_tokens", "tokens") if has_tokens else ("reasoning_chars", "characters")
    stats = _rows(lake, head + f"SELECT min({expr}) AS lo, max({expr}) AS hi, count({expr}) AS n FROM o", params)[0]
    if not stats["n"]:
        return [], unit
    # A round bin width and a round start, so the axis reads 0, 500, 1,000 rather than 143, 1,167.
    width = _nice_step((float(stats["hi"]) - float(stats["lo"]) + 1) / bins)
    lo = math.floor(float(stats["lo"]) / width) * width
    rows = _rows(
        lake,
        head
        + f"""SELECT CAST(floor(({expr} - {lo!r}) / {width}) AS BIGINT) AS b,
                     count(*) FILTER (WHERE passed) AS passed, count(*) FILTER (WHERE NOT passed) AS other
              FROM o WHERE {expr} IS NOT NULL GROUP BY 1 ORDER BY 1""",
        params,
    )
    by_bin = {r["b"]: r for r in rows}
    n_bins = int(max(by_bin)) + 1
    return [
        {"lo": lo + i * width, "hi": lo + (i + 1) * width, "passed": by_bin.get(i, {}).get("passed", 0), "other": by_bin.get(i, {}).get("other", 0)}
        for i in range(n_bins)
    ], unit


def _finish_reasons(lake: Lake, scope: Scope) -> list[dict[str, Any]]:
    """Samples per source and finish reason, with how many passed: 'length' is a trace cut at
    max_tokens, which has no final answer and so rarely passes (the cost of a short budget)."""
    rows = _pass_rates(lake, scope, "coalesce(finish_reason, '(none)')", per_source=True)
    for r in rows:
        r["finish_reason"] = r.pop("label")
    return sorted(rows, key=lambda r: (r["source"], -r["samples"], r["finish_reason"]))


def _rejects(lake: Lake, scope: Scope) -> list[dict[str, Any]]:
    head, params = _outcomes(scope)
    return _rows(
        lake,
        head
        + f"""SELECT regexp_replace("check", '^filter:', '') AS "check", status, coalesce(reason, '') AS reason,
                     count(*) AS count
              FROM vv WHERE status <> 'pass'
              GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT {MAX_REJECT_ROWS}""",
        params,
    )


def _evals(lake: Lake) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    table = _rows(
        lake,
        """SELECT model, benchmark, coalesce(prompt_format, '') AS prompt_format, coalesce(sampling, '') AS sampling,
                  count(*) AS n, count(DISTINCT item_id) AS items,
                  avg(correct::INT) AS accuracy, avg(completion_tokens) AS mean_tokens
           FROM evals GROUP BY ALL ORDER BY 1, 2, 3, 4""",
    )
    if not table:
        return [], []
    _label_settings(table)
    # Power-of-two buckets: response lengths span orders of magnitude.
    by_length = _rows(
        lake,
        """SELECT model, CAST(floor(log2(greatest(completion_tokens, 1))) AS INT) AS k,
                  count(*) AS n, avg(correct::INT) AS accuracy
           FROM evals WHERE completion_tokens IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2""",
    )
    for r in by_length:
        r["lo"], r["hi"] = (0 if r["k"] == 0 else 2 ** r["k"]), 2 ** (r["k"] + 1)
    return table, by_length


# The newest review of each item counts (a reviewer may change their mind); `factory view` writes them.
_NEWEST_REVIEW = "QUALIFY row_number() OVER (PARTITION BY item_kind, item_id, coalesce(hit, '') ORDER BY created_at DESC, review_id) = 1"


def _reviews(lake: Lake, scope: Scope) -> dict[str, Any] | None:
    """What reviewers said against what the machines decided, for the scope's samples and problems:
    - `samples`: per verifier outcome (verified or not, by the funnel's rule) and review label, how
      many samples, all reviews and drawn ones (the seeded draw: an unbiased sample) apart;
    - `agreement`: over samples marked right, wrong or hacked that have verifier verdicts, how often
      "verified" equals "marked right" (a hacked sample the verifier passed is a disagreement);
    - `contamination`: per benchmark, hits reviewed true and false: precision = true / reviewed."""
    head, params = _outcomes(scope)
    samples = _rows(lake, head + f""", r AS (SELECT item_id, label, coalesce(drawn, FALSE) AS drawn FROM reviews
                                         WHERE item_kind = 'sample' {_NEWEST_REVIEW})
        SELECT o.checked, o.verified, r.label, r.drawn, count(*) AS n FROM o JOIN r ON r.item_id = o.sample_id
        GROUP BY ALL ORDER BY ALL""", params)
    where, pparams = _where(scope)
    hits = _rows(lake, f"""SELECT hit, label FROM reviews WHERE item_kind = 'contamination'
                           AND item_id IN (SELECT problem_id FROM problems WHERE {where}) {_NEWEST_REVIEW}""", pparams)
    if not samples and not hits:
        return None
    from factory.cards import _benchmark

    agreement = {"all": [0, 0], "drawn": [0, 0]}  # [agree, judged]
    for r in samples:
        if r["checked"] and r["label"] in ("right", "wrong", "hacked"):
            agree = bool(r["verified"]) == (r["label"] == "right")
            for key in ("all", "drawn") if r["drawn"] else ("all",):
                agreement[key][0] += r["n"] * agree
                agreement[key][1] += r["n"]
    contamination: dict[str, dict[str, int]] = {}
    for h in hits:
        row = contamination.setdefault(_benchmark(h["hit"]), {"true": 0, "false": 0})
        row[h["label"]] = row.get(h["label"], 0) + 1
    return {"samples": samples, "agreement": agreement, "contamination": contamination}


def _label_settings(table: list[dict[str, Any]]) -> None:
    """One column per benchmark and setting: scores under two prompts or two samplings of the
    same set are different measurements (base vs student must share one), so they are never
    averaged into one cell. A set evaluated under one setting keeps its plain name."""
    settings: dict[str, list[tuple[str, str]]] = {}
    for r in table:
        seen = settings.setdefault(r["benchmark"], [])
        if (r["prompt_format"], r["sampling"]) not in seen:
            seen.append((r["prompt_format"], r["sampling"]))
    for r in table:
        seen = settings[r["benchmark"]]
        if len(seen) > 1:
            r["benchmark"] = f'{r["benchmark"]} (setting {seen.index((r["prompt_format"], r["sampling"])) + 1} of {len(seen)})'


# -- metrics CSVs -------------------------------------------------------------------------


def _metric_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for the CSVs inside it (a trainer's output folder)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise BadInput(f"--metrics {p}: the folder holds no .csv file; expected a metrics CSV with a step column")
            out.extend(found)
        else:
            out.append(p)
    return out


def read_metrics(path: Path) -> MetricsFile:
    """A metrics CSV: a `step` column plus numeric columns (empty cells are gaps). Columns with
    any non-numeric value are listed as skipped, not plotted."""
    if not path.is_file():
        raise BadInput(f"--metrics {path}: no such file; expected a CSV with a step column")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = reader.fieldnames or []
        if "step" not in names:
            raise BadInput(f"--metrics {path}: line 1 has no 'step' column (found {names}); expected step plus numeric columns")
        columns = [c for c in names if c != "step"]
        series: dict[str, list[tuple[float, float]]] = {c: [] for c in columns}
        bad: set[str] = set()
        for line, row in enumerate(reader, start=2):
            step_text = (row.get("step") or "").strip()
            try:
                step = float(step_text)
            except ValueError:
                raise BadInput(f"--metrics {path}:{line}: step {step_text!r}: expected a number") from None
            for c in columns:
                text = (row.get(c) or "").strip()
                if not text or c in bad:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    bad.add(c)
                    continue
                if math.isfinite(value):
                    series[c].append((step, value))
    return MetricsFile(str(path), {c: v for c, v in series.items() if c not in bad and v}, sorted(bad))


def write_report(data: ReportData, output: Path) -> None:
    """Write the page atomically: a reader never sees half a report."""
    with atomic_output(output) as tmp:
        tmp.write_text(render_html(data), encoding="utf-8")


# -- the command --------------------------------------------------------------------------

def report(
    target: Annotated[str | None, typer.Argument(metavar="RUN_ID|DATASET", help="A run id, a dataset NAME or NAME@VERSION, "
                                                                                         "or nothing for the whole lake.")] = None,
    output: Annotated[Path, typer.Option("--output", metavar="PATH", help="HTML file to write.")] = Path("report.html"),
    metrics: Annotated[list[Path], typer.Option("--metrics", metavar="PATH", help="A training metrics CSV (step plus numeric columns), "
                                                                                   "or a folder of them, plotted per column. Repeatable.")] = [],
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Write a self-contained HTML report: yield funnel, pass rates, lengths, rejects, evals, training curves."""

    def job() -> None:
        check_output(output)  # before the lake is read
        try:
            lake = Lake.open(store, catalog, read_only=True)  # one snapshot, while a run writes
        except BadInput:
            if target or not metrics:
                raise
            # Training curves alone (a GPU node without a lake): no lake sections.
            data = ReportData(scope=Scope("lake", "training metrics", None), generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
            data.metrics = [read_metrics(p) for p in _metric_files(metrics)]
            data.notes.append("No lake found at the store: only the training curves are shown.")
        else:
            with lake, err.status("reading the lake"):
                data = collect_report(lake, target, metrics)
        write_report(data, output)
        err.print(f"wrote {output} ({data.scope.label})", markup=False)

    _run(job)
