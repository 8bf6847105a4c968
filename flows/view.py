"""`factory view`: a local web app to read the lake and review samples and contamination hits.

    factory view                                  # http://127.0.0.1:8765/ over ./factory-store
    factory view --store s3://bucket/lake --port 9000 --metrics out/ --open
    factory view --host 0.0.0.0                   # only when asked: anyone who reaches the port can read the lake

    from flows.view import build_app              # tests: Starlette's TestClient over build_app(lake)

Pages: runs (funnel per source, cost, time), a run, a dataset version, problems (pass rate,
contamination hits with the matched span beside the benchmark item), samples (filter by run,
source, verdict status, check, reason, length and text; keyset paging), a sample (prompt,
reasoning, answer, every verdict with its reason, its dedup cluster and the kept member, its
reviews and a review form), evals (per item and sample, with the completion), training curves
(metrics CSVs given by --metrics), a confined SQL box whose `sample_id`/`problem_id` cells link
to their pages, the review page (a seeded "sample for review" draw per source) and the report
(`factory report`'s page, served live, with the reviews section).

The app reads the lake with our own SQL (`Lake.query`) and runs the SQL box on `Lake.sql` (a
read-only engine confined to the lake, storage/sql.py). Its one write is a review: a row of the
`reviews` table (who, when, what, and the lake snapshot the page showed), committed like any
batch. A draw orders a source's samples by md5(seed:sample_id), a fixed random permutation, and
takes the first one without a drawn review under that seed: successive draws are a simple random
sample without replacement, so the share of drawn reviews marked wrong estimates the source's.

Why these libraries: Starlette (a small, well-kept ASGI toolkit: routing, forms, TestClient) with
Jinja2 server-side templates and uvicorn, all three already installed as Prefect dependencies,
plus markdown-it-py (rich's) and latex2mathml (pure Python) for text: users need no JavaScript
build step. Jinja2 autoescapes every
template (hostile text in samples stays text); pages are plain HTML forms with no script, and
nothing is fetched from the network (no CDN, fonts or images). Prompts, reasoning, answers and
problems are rendered (flows/markup.py: Markdown with raw HTML, links and images off; math as
MathML the browser typesets natively, rebuilt from an allowlist), each with its text as written
one click away; eval completions, matched spans and benchmark items stay as written.
Paging is keyset (`WHERE sample_id > last ORDER BY sample_id LIMIT n`), never
OFFSET, so page 10 000 costs what page 1 does.

Safety: uvicorn binds 127.0.0.1 unless --host says otherwise; requests whose Host header is not
the bound address or localhost are refused (DNS rebinding), and a review POST from another origin
is refused (a web page cannot write reviews through the reader's browser).

Watching a run: pages read through a read-only lake (`Lake.open(..., read_only=True)`), which for
a DuckDB catalog file reads a copy taken at a run's rest (storage/lake.py, "Watching a run"), one
snapshot for all its queries. Taking a copy and attaching it costs 0.3-0.6 s, more than a page, so
the app keeps one reader for all requests and replaces it (`_Readers`) only when the catalog file
or its WAL changed (mtime and size) and the reader is older than `REFRESH_S`, or after a review:
while a run commits, a page reads a snapshot at most `REFRESH_S` older than the request, and while
nothing changes the reader is kept. Measured (/tmp probe, GET /samples every 0.2 s for 10 s on the
test fixture lake, 2 busy cores): with a run attached but idle, 2 readers opened (the first, and
one after the run's first DETACH rewrote the file), median 31 ms; with a run committing back to
back, 4 readers, median 39 ms, slowest 1.1 s (a page that waits for the run's rest and takes a
copy). A SQLite or PostgreSQL catalog is attached directly, and each query of a reader already
reads the newest snapshot (measured: a reader open across another lake's commit sees it), so age
never replaces it. A review opens a writer lake for its one commit and closes it: it announces
itself as a waiting reader does, so a running `factory run` lets go at its next rest (otherwise
it would wait for the run's end), waits up to lock_timeout_s, else a 503 page says the lake is
busy; then the next page takes a fresh reader, so the review shows at once. Between requests the
app so holds no catalog for writing, and a run on the same store never waits for it.

Not covered: no authentication (the reviewer types a name, default $USER). The review announces
itself through storage's private `Lake._announced` (a writer that waits like a reader has no
public API yet). A run busy in one long call (a compaction) keeps a review, and a page that needs
a fresh reader, waiting up to lock_timeout_s. The readers and the review's writer share one
process, and POSIX drops a process's fcntl locks on a file when any of its descriptors of that
file closes: so a review and the opening or closing of a reader never overlap (`_Readers.files`);
while a review waits for a run, pages read the reader they have, stale or not. While a run keeps
committing, each new reader costs the run one DETACH and ATTACH (50-90 ms), at most one per
`REFRESH_S` of requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
import webbrowser
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer

from flows.options import Catalog, Store, err, run_job
from storage import BadInput, Lake, LakeBusy

DEFAULT_PORT = 8765
PAGE = 50  # rows per page unless ?n= says otherwise
MAX_PAGE = 500
SQL_ROWS = 500  # the SQL box shows this many rows
SQL_TIMEOUT_S = 30.0
SAMPLE_LABELS = ("right", "wrong", "hacked", "unreadable")
HIT_LABELS = ("true", "false")
BAD_SAMPLE_LABELS = ("wrong", "hacked", "unreadable")  # what `factory export --drop-reviewed-bad` drops
REVIEW_RUN = "review"
REFRESH_S = 2.0  # a page reads a snapshot at most this old once the catalog has changed (see _Readers)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BadParam(BadInput):
    """A query parameter or form field the page cannot use: a 400 naming it."""


@dataclass
class View:
    """What the app serves: the lake (reviews are committed through it, closed after each; pages
    read through read-only lakes of the same store), the metrics files for the training page, the
    reviewer name."""

    lake: Lake
    metrics: list[Path] = field(default_factory=list)
    reviewer: str = ""
    refresh_s: float = REFRESH_S  # pages read a snapshot at most this old once the catalog changed


# -- parameters ---------------------------------------------------------------------------


def _text(params: Any, name: str, limit: int = 500) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > limit:
        raise BadParam(f"parameter {name!r}: expected at most {limit} characters, got {len(value)}")
    return value


def _int(params: Any, name: str, *, lo: int = 0, hi: int | None = None, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadParam(f"parameter {name!r}: expected a whole number, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise BadParam(f"parameter {name!r}: expected a number from {lo} to {hi if hi is not None else 'any'}, got {n}")
    return n


def _choice(params: Any, name: str, allowed: Iterable[str]) -> str | None:
    value = _text(params, name)
    allowed = tuple(allowed)
    if value is not None and value not in allowed:
        raise BadParam(f"parameter {name!r}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _rows(lake: Lake, sql: str, params: Iterable[Any] = (), **kw: Any) -> list[dict[str, Any]]:
    return lake.query(sql, list(params), **kw).to_pylist()


def _ids(values: Iterable[str]) -> dict[str, pa.Table]:
    """A page's ids as a table to join on (the lake's queries then touch only those rows)."""
    return {"_page": pa.table({"id": pa.array(list(values), pa.string())})}


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# -- reading the lake: one function per page ------------------------------------------------

_RUNS_SQL = """
WITH r AS (SELECT run_id, status, started_at, finished_at, cost_usd, counts FROM runs
           QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY created_at DESC) = 1),
s AS (SELECT run_id, count(*) AS samples, sum(cost_usd) AS sample_cost, min(created_at) AS first_at, max(created_at) AS last_at
      FROM samples GROUP BY run_id)
SELECT coalesce(r.run_id, s.run_id) AS run_id, coalesce(r.status, 'ingest') AS status, coalesce(r.started_at, s.first_at) AS started_at,
       coalesce(r.finished_at, s.last_at) AS finished_at, coalesce(r.cost_usd, s.sample_cost) AS cost_usd, coalesce(s.samples, 0) AS samples,
       r.counts
FROM r FULL JOIN s USING (run_id)
ORDER BY started_at DESC NULLS LAST, run_id LIMIT 500"""


def _parse_counts(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_runs(lake: Lake) -> dict[str, Any]:
    runs = _rows(lake, _RUNS_SQL)
    for r in runs:
        counts = _parse_counts(r.pop("counts"))
        r["funnel"] = [(f.get("stage"), f.get("count")) for f in counts.get("funnel") or [] if isinstance(f, dict)]
        if r["started_at"] and r["finished_at"]:
            r["seconds"] = (r["finished_at"] - r["started_at"]).total_seconds()
    datasets = _rows(lake, "SELECT name, version, row_count, run_id, created_at FROM datasets ORDER BY name, version DESC")
    return {"runs": runs, "datasets": datasets}


def read_run(lake: Lake, run_id: str) -> dict[str, Any] | None:
    from flows.report import Scope, compute_counts

    rows = _rows(lake, "SELECT run_id, status, started_at, finished_at, cost_usd, counts, recipe, recipe_hash, code_version FROM runs "
                       "WHERE run_id = ? ORDER BY created_at DESC LIMIT 1", [run_id])
    if not rows and not any(lake.query(f"SELECT 1 FROM {t} WHERE run_id = ? LIMIT 1", [run_id]).num_rows for t in ("samples", "problems")):
        return None
    run = rows[0] if rows else {"run_id": run_id, "status": "ingest"}
    stored = _parse_counts(run.pop("counts", None))
    counts = stored if stored.get("by_source") else compute_counts(lake, Scope("run", f"run {run_id}", [run_id]))
    from factory import funnel

    stages = [s for s in funnel.ROWS if any(s in c for c in (counts.get("by_source") or {}).values())]
    return {
        "run": run, "counts": counts, "stages": stages, "counts_from": "runs.counts" if stored.get("by_source") else "the tables",
        "datasets": _rows(lake, "SELECT name, version, row_count FROM datasets WHERE run_id = ? ORDER BY name, version", [run_id]),
    }


def read_dataset(lake: Lake, name: str, version: int, n: int = PAGE) -> dict[str, Any] | None:
    rows = _rows(lake, "SELECT * FROM datasets WHERE name = ? AND version = ? LIMIT 1", [name, version])
    if not rows:
        return None
    reader = lake.dataset_reader(name, version, batch_size=n)
    first = next(iter(reader), None)
    head = pa.Table.from_batches([first]).to_pylist() if first is not None else []
    for r in head:  # long text columns are clipped in the table; the sample page has them whole
        for k, v in r.items():
            if not isinstance(v, (str, int, float, type(None))):
                v = json.dumps(v, default=str, ensure_ascii=False)
            r[k] = v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v
    return {"ds": rows[0], "columns": reader.schema.names, "head": head}


def read_problems(lake: Lake, *, run: str | None, source: str | None, q: str | None, contaminated: bool, after: str | None,
                  n: int) -> dict[str, Any]:
    where, params = ["TRUE"], []
    for cond, value in (("run_id = ?", run), ("source = ?", source), ("problem ILIKE ? ESCAPE '\\'", _like(q) if q else None),
                        ("problem_id > ?", after)):
        if value is not None:
            where.append(cond)
            params.append(value)
    if contaminated:
        where.append("len(coalesce(contamination, []::VARCHAR[])) > 0")
    rows = _rows(lake, f"""SELECT problem_id, any_value(source) AS source, any_value(difficulty) AS difficulty,
                                  left(any_value(problem), 160) AS problem, max(len(coalesce(contamination, []::VARCHAR[]))) AS hits
                           FROM problems WHERE {' AND '.join(where)} GROUP BY problem_id ORDER BY problem_id LIMIT {n + 1}""", params)
    more = len(rows) > n
    rows = rows[:n]
    if rows:
        rates = {r["problem_id"]: r for r in _rows(
            lake, "SELECT problem_id, arg_max(pass_rate, created_at) AS pass_rate, arg_max(n_samples, created_at) AS n_samples "
                  "FROM labels WHERE problem_id IN (SELECT id FROM _page) GROUP BY 1", tables=_ids(r["problem_id"] for r in rows))}
        for r in rows:
            r.update({k: v for k, v in rates.get(r["problem_id"], {}).items() if k != "problem_id"})
    sources = [r["source"] for r in _rows(lake, "SELECT DISTINCT source FROM problems WHERE source IS NOT NULL ORDER BY 1 LIMIT 200")]
    return {"rows": rows, "next": rows[-1]["problem_id"] if more else None, "sources": sources}


@cache
def _benchmark_items(name: str) -> dict[str, dict]:
    from factory.benchmarks import load

    return {item["id"]: item for item in load(name)}


def _hit(text: str) -> dict[str, Any]:
    """A contamination entry as problems.contamination holds it (the decontaminate stage's JSON,
    or a bare benchmark name), with the benchmark item it matched when the benchmark ships here."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    hit = value if isinstance(value, dict) else {"benchmark": str(text)}
    hit["raw"] = text
    item = None
    try:
        if hit.get("benchmark_id") is not None:
            item = _benchmark_items(str(hit["benchmark"])).get(str(hit["benchmark_id"]))
    except (BadInput, ValueError, OSError):
        item = None
    hit["item"] = item
    return hit


def read_problem(lake: Lake, problem_id: str) -> dict[str, Any] | None:
    rows = _rows(lake, "SELECT * FROM problems WHERE problem_id = ? ORDER BY created_at LIMIT 1", [problem_id])
    if not rows:
        return None
    problem = rows[0]
    labels = _rows(lake, "SELECT * FROM labels WHERE problem_id = ? ORDER BY created_at DESC LIMIT 1", [problem_id])
    samples = _rows(lake, """SELECT s.sample_id, s.teacher, s.sample_index, s.finish_reason, s.completion_tokens, left(s.answer, 80) AS answer,
                                    (SELECT string_agg(v."check" || ':' || v.status, ', ' ORDER BY v."check") FROM verdicts v
                                     WHERE v.sample_id = s.sample_id) AS verdicts
                             FROM samples s WHERE s.problem_id = ? ORDER BY s.sample_id LIMIT 200""", [problem_id])
    reviews = _rows(lake, "SELECT * FROM reviews WHERE item_kind = 'contamination' AND item_id = ? ORDER BY created_at DESC", [problem_id])
    return {"p": problem, "label": labels[0] if labels else None, "samples": samples, "reviews": reviews,
            "hits": [_hit(h) for h in problem.get("contamination") or []]}


_VERDICT_STATUSES = ("pass", "fail", "unverifiable", "error")


def read_samples(lake: Lake, f: dict[str, Any], n: int) -> dict[str, Any]:
    """A page of samples under the filters `f`, in sample_id order from `after` (or backwards from
    `before`): keyset paging, so a page costs the same wherever it is."""
    where, params = [], []

    def add(cond: str, *values: Any) -> None:
        where.append(cond)
        params.extend(values)

    if f["run"]:
        add("s.run_id = ?", f["run"])
    if f["problem"]:
        add("s.problem_id = ?", f["problem"])
    if f["source"]:
        add("s.problem_id IN (SELECT problem_id FROM problems WHERE source = ?)", f["source"])
    if f["status"] or f["check"] or f["reason"]:
        cond, vals = ["TRUE"], []
        for c, v in (("status = ?", f["status"]), ('"check" = ?', f["check"]), ("reason ILIKE ? ESCAPE '\\'", _like(f["reason"]) if f["reason"] else None)):
            if v is not None:
                cond.append(c)
                vals.append(v)
        add(f"s.sample_id IN (SELECT sample_id FROM verdicts WHERE {' AND '.join(cond)})", *vals)
    if f["min_tokens"] is not None:
        add("s.completion_tokens >= ?", f["min_tokens"])
    if f["max_tokens"] is not None:
        add("s.completion_tokens <= ?", f["max_tokens"])
    if f["q"]:
        like = _like(f["q"])
        add("(s.reasoning ILIKE ? ESCAPE '\\' OR s.answer ILIKE ? ESCAPE '\\' OR s.prompt ILIKE ? ESCAPE '\\')", like, like, like)
    backwards = f["before"] is not None and f["after"] is None
    if f["after"] is not None:
        add("s.sample_id > ?", f["after"])
    elif backwards:
        add("s.sample_id < ?", f["before"])
    order = "DESC" if backwards else "ASC"
    # One query (each costs a catalog round of its own): the page, then its verdicts looked up within
    # the page's id range, so row groups whose min/max miss it are skipped before the join.
    rows = _rows(lake, f"""WITH page AS (
    SELECT s.sample_id, s.run_id, s.problem_id, s.teacher, s.finish_reason, s.completion_tokens, left(s.answer, 80) AS answer
    FROM samples s WHERE {' AND '.join(where) or 'TRUE'} ORDER BY s.sample_id {order} LIMIT {n + 1}),
v AS (SELECT sample_id, string_agg(DISTINCT "check" || ':' || status, ', ' ORDER BY "check" || ':' || status) AS verdicts FROM verdicts
      WHERE sample_id BETWEEN (SELECT min(sample_id) FROM page) AND (SELECT max(sample_id) FROM page)
        AND sample_id IN (SELECT sample_id FROM page) GROUP BY sample_id)
SELECT page.*, coalesce(v.verdicts, '') AS verdicts FROM page LEFT JOIN v USING (sample_id) ORDER BY page.sample_id""", params)
    more = len(rows) > n
    if more:  # the extra row is the one beyond the page: the last going forwards, the first going back
        rows = rows[1:] if backwards else rows[:n]
    first, last = (rows[0]["sample_id"], rows[-1]["sample_id"]) if rows else (None, None)
    has_next = more if not backwards else True
    has_prev = (f["after"] is not None) or (backwards and more)
    return {"rows": rows, "next": last if has_next and rows else None, "prev": first if has_prev and rows else None}


_SAMPLE_SQL = """WITH s AS (SELECT * FROM samples WHERE sample_id = $1 ORDER BY created_at LIMIT 1)
SELECT (SELECT list(s) FROM s) AS sample,
  (SELECT list(p) FROM (SELECT problem_id, source, problem, reference_answer, difficulty, contamination FROM problems
                        WHERE problem_id = (SELECT problem_id FROM s) ORDER BY created_at LIMIT 1) p) AS problem,
  (SELECT list(v ORDER BY v.created_at DESC, v."check") FROM (
      SELECT "check", check_version, status, score, extracted_answer, reason, elapsed_s, run_id, created_at FROM verdicts WHERE sample_id = $1) v
  ) AS verdicts,
  (SELECT list(d ORDER BY d.created_at DESC) FROM (
      SELECT d.cluster_id, d.kept, d.method, d.similarity, d.run_id, d.created_at,
             (SELECT list(DISTINCT k.item_id ORDER BY k.item_id) FROM dedup k WHERE k.cluster_id = d.cluster_id AND k.kept) AS kept_members
      FROM dedup d WHERE d.item_kind = 'sample' AND d.item_id = $1) d) AS dedup,
  (SELECT list(r ORDER BY r.created_at DESC) FROM (SELECT * FROM reviews WHERE item_kind = 'sample' AND item_id = $1) r) AS reviews"""


def read_sample(lake: Lake, sample_id: str) -> dict[str, Any] | None:
    # One query for the whole page: each query costs a round of catalog lookups of its own.
    row = _rows(lake, _SAMPLE_SQL, [sample_id])[0]
    if not row["sample"]:
        return None
    s = row["sample"][0]
    return {"s": s, "problem": (row["problem"] or [None])[0], "verdicts": row["verdicts"] or [],
            "dedup": [{**d, "kept_members": d["kept_members"] or []} for d in row["dedup"] or []], "reviews": row["reviews"] or [],
            "chars": {k: len(s[k] or "") for k in ("prompt", "reasoning", "answer", "completion")}}


def read_evals(lake: Lake) -> list[dict[str, Any]]:
    return _rows(lake, """SELECT eval_id, any_value(model) AS model, any_value(benchmark) AS benchmark, count(*) AS n,
                                 count(DISTINCT item_id) AS items, avg(correct::INT) AS accuracy, max(created_at) AS created_at
                          FROM evals GROUP BY eval_id ORDER BY created_at DESC LIMIT 500""")


def read_eval(lake: Lake, eval_id: str, *, after: str | None, correct: bool | None, n: int) -> dict[str, Any] | None:
    head = _rows(lake, "SELECT eval_id, model, benchmark, prompt_format, sampling, backend FROM evals WHERE eval_id = ? LIMIT 1", [eval_id])
    if not head:
        return None
    cond, params = ["eval_id = ?"], [eval_id]
    if correct is not None:
        cond.append("correct = ?")
        params.append(correct)
    if after is not None:
        cond.append("item_id > ?")
        params.append(after)
    where = " AND ".join(cond)
    rows = _rows(lake, f"""SELECT item_id, sample_index, status, correct, extracted_answer, reference_answer, completion_tokens,
                                  finish_reason, completion
                           FROM evals WHERE {where} AND item_id IN (SELECT DISTINCT item_id FROM evals WHERE {where} ORDER BY item_id LIMIT {n + 1})
                           ORDER BY item_id, sample_index""", params + params)
    items: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        items.setdefault(r["item_id"], []).append(r)
    keys = list(items)
    more = len(keys) > n
    keys = keys[:n]
    return {"e": head[0], "items": [(k, items[k]) for k in keys], "next": keys[-1] if more else None}


def read_training(paths: list[Path]) -> list[dict[str, Any]]:
    from flows.report import _metric_files, read_metrics
    from flows.report_html import svg_lines

    out = []
    for path in _metric_files(paths):
        mf = read_metrics(path)
        out.append({"path": mf.path, "skipped": mf.skipped,
                    "charts": [(name, pts[-1][1], svg_lines({name: pts}, x_label="step")) for name, pts in mf.series.items()]})
    return out


def run_sql(lake: Lake, sql: str) -> dict[str, Any]:
    table = lake.sql(sql, timeout_s=SQL_TIMEOUT_S)
    rows = table.slice(0, SQL_ROWS).to_pylist()
    return {"columns": table.column_names, "rows": [[r[c] for c in table.column_names] for r in rows], "total": table.num_rows}


# -- reviews ------------------------------------------------------------------------------


def add_review(lake: Lake, *, kind: str, item_id: str, label: str, reviewer: str, note: str | None = None, hit: str | None = None,
               drawn: bool = False, seed: int | None = None, snapshot_id: int | None = None) -> dict[str, Any]:
    """Check a review and commit it as one row of `reviews`; BadInput names the bad field."""
    if kind == "sample":
        if label not in SAMPLE_LABELS:
            raise BadParam(f"field 'label': expected one of {', '.join(SAMPLE_LABELS)} for a sample, got {label!r}")
        if not lake.query("SELECT 1 FROM samples WHERE sample_id = ? LIMIT 1", [item_id]).num_rows:
            raise BadParam(f"field 'item_id': no sample {item_id!r} in the lake")
    elif kind == "contamination":
        if label not in HIT_LABELS:
            raise BadParam(f"field 'label': expected one of {', '.join(HIT_LABELS)} for a contamination hit, got {label!r}")
        found = lake.query("SELECT 1 FROM problems WHERE problem_id = ? AND list_contains(contamination, ?) LIMIT 1", [item_id, hit or ""])
        if not found.num_rows:
            raise BadParam(f"field 'hit': problem {item_id!r} has no such contamination hit")
    else:
        raise BadParam(f"field 'kind': expected sample or contamination, got {kind!r}")
    reviewer = (reviewer or "").strip()
    if not reviewer or len(reviewer) > 100:
        raise BadParam("field 'reviewer': expected a name of 1 to 100 characters")
    if note is not None and len(note) > 10_000:
        raise BadParam(f"field 'note': expected at most 10000 characters, got {len(note)}")
    row = {"review_id": uuid.uuid4().hex, "item_kind": kind, "item_id": item_id, "hit": hit if kind == "contamination" else None,
           "label": label, "note": note or None, "reviewer": reviewer, "drawn": drawn, "draw_seed": seed if drawn else None,
           "snapshot_id": snapshot_id if snapshot_id is not None else lake.snapshot_id()}
    lake.commit("reviews", [row], batch_key=f"review:{row['review_id']}", run_id=REVIEW_RUN)
    return row


_NEWEST_REVIEWS = """SELECT item_kind, item_id, label FROM reviews
QUALIFY row_number() OVER (PARTITION BY item_kind, item_id, coalesce(hit, '') ORDER BY created_at DESC, review_id) = 1"""


def reviewed_bad(lake: Lake) -> tuple[pa.Array, pa.Array]:
    """(sample ids, problem ids) that reviews rule out, by the newest review of each item: samples
    marked wrong, hacked or unreadable, or of a problem with a hit reviewed true; such problems."""
    labels = ", ".join(f"'{x}'" for x in BAD_SAMPLE_LABELS)
    problems = f"SELECT DISTINCT item_id FROM ({_NEWEST_REVIEWS}) WHERE item_kind = 'contamination' AND label = 'true'"
    samples = lake.query(f"""SELECT item_id AS id FROM ({_NEWEST_REVIEWS}) WHERE item_kind = 'sample' AND label IN ({labels})
                             UNION SELECT sample_id FROM samples WHERE problem_id IN ({problems})""").column(0)
    return samples.combine_chunks(), lake.query(problems).column(0).combine_chunks()


def drop_reviewed(lake: Lake, reader: pa.RecordBatchReader, what: str) -> tuple[pa.RecordBatchReader, list[int]]:
    """`reader` without the rows reviews rule out (matched on `sample_id`, else `problem_id`), and a
    one-item list that holds the number dropped once the reader is exhausted."""
    import pyarrow.compute as pc

    names = reader.schema.names
    key = "sample_id" if "sample_id" in names else "problem_id" if "problem_id" in names else None
    if key is None:
        raise BadInput(f"--drop-reviewed-bad: dataset {what} has neither a sample_id nor a problem_id column "
                       f"(columns: {names}); expected one of them to match reviews on")
    samples, problems = reviewed_bad(lake)
    bad = samples if key == "sample_id" else problems
    dropped = [0]

    def batches():
        for batch in reader:
            keep = pc.invert(pc.fill_null(pc.is_in(batch.column(key), value_set=bad), False))
            out = batch.filter(keep)
            dropped[0] += batch.num_rows - out.num_rows
            yield out

    return pa.RecordBatchReader.from_batches(reader.schema, batches()), dropped


def review_sources(lake: Lake) -> list[dict[str, Any]]:
    """Per source: samples, reviews drawn and their labels (newest drawn review of each sample)."""
    return _rows(lake, """
WITH src AS (SELECT problem_id, any_value(coalesce(source, '(no source)')) AS source FROM problems GROUP BY 1),
s AS (SELECT s.sample_id, coalesce(src.source, '(no source)') AS source FROM samples s LEFT JOIN src USING (problem_id)),
r AS (SELECT item_id, label FROM reviews WHERE item_kind = 'sample' AND drawn
      QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY created_at DESC) = 1)
SELECT s.source, count(DISTINCT s.sample_id) AS samples, count(DISTINCT r.item_id) AS drawn,
       count(DISTINCT r.item_id) FILTER (WHERE r.label = 'right') AS "right",
       count(DISTINCT r.item_id) FILTER (WHERE r.label <> 'right') AS bad
FROM s LEFT JOIN r ON r.item_id = s.sample_id GROUP BY 1 ORDER BY 1""")


def draw_sample(lake: Lake, source: str, seed: int) -> str | None:
    """The next sample of `source` in the seed's fixed random order that has no drawn review under
    that seed: the k-th draw is the k-th item of one random permutation, an unbiased sample."""
    rows = lake.query("""
SELECT s.sample_id FROM samples s
WHERE s.problem_id IN (SELECT problem_id FROM problems WHERE coalesce(source, '(no source)') = ?)
  AND s.sample_id NOT IN (SELECT item_id FROM reviews WHERE item_kind = 'sample' AND drawn AND draw_seed = ?)
ORDER BY md5(?::VARCHAR || ':' || s.sample_id), s.sample_id LIMIT 1""", [source, seed, seed])
    if not rows.num_rows and source == "(no source)":
        rows = lake.query("""
SELECT s.sample_id FROM samples s WHERE s.problem_id NOT IN (SELECT problem_id FROM problems)
  AND s.sample_id NOT IN (SELECT item_id FROM reviews WHERE item_kind = 'sample' AND drawn AND draw_seed = ?)
ORDER BY md5(?::VARCHAR || ':' || s.sample_id), s.sample_id LIMIT 1""", [seed, seed])
    return rows.column(0)[0].as_py() if rows.num_rows else None


# -- the app ------------------------------------------------------------------------------


def _templates():
    import jinja2
    from starlette.templating import Jinja2Templates

    from flows import markup

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("flows", "view_templates"),
        autoescape=True,  # every template, whatever its name: lake text is hostile until shown otherwise
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = lambda x: "—" if x is None else f"{100 * float(x):.1f}%"
    env.filters["secs"] = lambda x: "—" if x is None else f"{float(x):.1f} s" if x < 120 else f"{float(x) / 60:.1f} min"
    env.filters["rendered"] = markup.render
    env.filters["js"] = lambda v: json.dumps(v, ensure_ascii=False, indent=2, default=str)
    return Jinja2Templates(env=env)


def _num(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


@dataclass(eq=False)
class _Reader:
    lake: Lake
    epoch: int  # _Readers.epoch when it was opened: an older one is stale
    opened: float  # time.monotonic() when its copy was taken
    stamp: Any  # the catalog file's and WAL's (mtime, size) just before
    users: int = 0
    closed: bool = False


class _Readers:
    """The app's read-only lake, shared by all requests (`with readers.lease() as lake:`), and
    replaced by a fresh one when it is older than `refresh_s` and the DuckDB catalog file or its
    WAL has changed since it was opened, or at once after `refresh()` (a review). While one
    request opens the new reader, the others read the current one; a replaced reader is closed
    when its last request ends.

    `files` is held by whoever opens or closes a descriptor of the store's catalog files in this
    process: the opening and closing of readers here, and a review's writer for its whole life
    (closing any descriptor would drop that writer's fcntl locks, letting a run in beside it)."""

    def __init__(self, lake: Lake, refresh_s: float):
        self.config, self.refresh_s = lake.config, refresh_s
        self.files = threading.Lock()
        self._guard = threading.Lock()  # the fields below
        self._opener = threading.Lock()  # one request opens a reader at a time
        self._current: _Reader | None = None
        self._opening = False
        self._epoch = 0
        self._doomed: list[_Reader] = []  # replaced and unused, closed at the next hold of `files`

    def _stamp(self) -> Any:
        if self.config.catalog_kind != "duckdb":
            return None  # attached directly: every query reads the newest snapshot
        out = []
        for path in (self.config.catalog_file, f"{self.config.catalog_file}.wal"):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _usable(self, r: _Reader | None) -> bool:
        if r is None or r.epoch != self._epoch:
            return False
        return time.monotonic() - r.opened < self.refresh_s or r.stamp == self._stamp()

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lake]:
        r = self._take()
        try:
            yield r.lake
        finally:
            with self._guard:
                r.users -= 1
                if r is not self._current and r.users == 0 and not r.closed:
                    self._doomed.append(r)
            self._close_doomed(blocking=False)

    def _take(self) -> _Reader:
        with self._guard:
            r = self._current
            if self._usable(r) or (r is not None and self._opening and r.epoch == self._epoch):
                r.users += 1
                return r
        with self._opener:
            with self._guard:
                r = self._current
                if self._usable(r):
                    r.users += 1
                    return r
                epoch, stamp = self._epoch, self._stamp()
                # Only stale by age (no review since): read it rather than wait for a review
                # that holds the files while it waits for a run.
                fallback = r is not None and r.epoch == epoch
                if fallback and not self.files.acquire(blocking=False):
                    r.users += 1
                    return r
                self._opening = True
            if not fallback:
                self.files.acquire()  # not under _guard: whoever holds the files may want _guard
            try:
                self._close_doomed(blocking=True, held=True)
                lake = Lake(self.config, read_only=True)
                try:
                    lake.snapshot_id()  # attach now (take the copy), not in the middle of a page
                except BaseException:
                    lake.close()
                    raise
            finally:
                self.files.release()
                with self._guard:
                    self._opening = False
            new = _Reader(lake, epoch, time.monotonic(), stamp, users=1)
            with self._guard:
                old, self._current = self._current, new
                if old is not None and old.users == 0:
                    self._doomed.append(old)
        self._close_doomed(blocking=False)
        return new

    def _close_doomed(self, *, blocking: bool, held: bool = False) -> None:
        if not held and not self.files.acquire(blocking=blocking):
            return  # a review holds the files: the next opening of a reader closes them
        try:
            with self._guard:
                doomed, self._doomed = self._doomed, []
                for r in doomed:
                    r.closed = True
            for r in doomed:
                r.lake.close()
        finally:
            if not held:
                self.files.release()

    def refresh(self) -> None:
        """Make the next request read a reader opened after now (a review was committed)."""
        with self._guard:
            self._epoch += 1

    def close(self) -> None:
        with self._guard:
            if self._current is not None:
                self._doomed.append(self._current)
                self._current = None
        self._close_doomed(blocking=True)


def build_app(view: View | Lake, *, host: str = "127.0.0.1", port: int | None = None):
    """The Starlette app over `view` (or a bare Lake). Only Host headers naming `host` or the
    loopback names are served."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    if isinstance(view, Lake):
        view = View(view)
    readers = _Readers(view.lake, view.refresh_s)
    reviewing = threading.Lock()  # one review's writer at a time
    templates = _templates()

    def reads(endpoint):
        """A sync endpoint given the current reader lake as its second argument."""

        def with_reader(request: Request) -> Response:
            # DuckDB refuses a NUL in a string value with an error of its own: a 400 here, for every page.
            for name, value in [*request.path_params.items(), *request.query_params.items()]:
                if isinstance(value, str) and "\x00" in value:
                    raise BadParam(f"parameter {name!r}: expected text without NUL characters")
            with readers.lease() as lake:
                return endpoint(request, lake)  # a TemplateResponse renders here, while the lease holds

        return with_reader

    def page(request: Request, lake: Lake, name: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("title", name.removesuffix(".html"))
        return templates.TemplateResponse(request, name, {"snapshot": lake.snapshot_id(), **context}, status_code=status)

    def not_found(what: str) -> HTTPException:
        return HTTPException(404, f"{what} is not in the lake")

    def filters_url(request: Request, **change: Any) -> str:
        params = {k: v for k, v in request.query_params.items() if v != "" and k not in ("after", "before")}
        params.update({k: v for k, v in change.items() if v is not None})
        from urllib.parse import urlencode

        return request.url.path + ("?" + urlencode(params) if params else "")

    def runs(request: Request, lake: Lake) -> Response:
        return page(request, lake, "runs.html", title="runs", **read_runs(lake))

    def run(request: Request, lake: Lake) -> Response:
        data = read_run(lake, request.path_params["run_id"])
        if data is None:
            raise not_found(f"run {request.path_params['run_id']!r}")
        return page(request, lake, "run.html", title=f"run {data['run']['run_id']}", **data)

    def dataset(request: Request, lake: Lake) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        data = read_dataset(lake, name, version)
        if data is None:
            raise not_found(f"dataset {name}@{version}")
        return page(request, lake, "dataset.html", title=f"dataset {name}@{version}", **data)

    def problems(request: Request, lake: Lake) -> Response:
        q = request.query_params
        f = {"run": _text(q, "run"), "source": _text(q, "source"), "q": _text(q, "q"), "contaminated": _choice(q, "contaminated", ("1",)) == "1"}
        data = read_problems(lake, **f, after=_text(q, "after"), n=_int(q, "n", lo=1, hi=MAX_PAGE, default=PAGE))
        return page(request, lake, "problems.html", title="problems", f=f, next_url=data["next"] and filters_url(request, after=data["next"]), **data)

    def problem(request: Request, lake: Lake) -> Response:
        data = read_problem(lake, request.path_params["problem_id"])
        if data is None:
            raise not_found(f"problem {request.path_params['problem_id']!r}")
        return page(request, lake, "problem.html", title=f"problem {data['p']['problem_id']}", reviewer=view.reviewer, **data)

    def samples(request: Request, lake: Lake) -> Response:
        q = request.query_params
        f = {"run": _text(q, "run"), "problem": _text(q, "problem"), "source": _text(q, "source"),
             "status": _choice(q, "status", _VERDICT_STATUSES), "check": _text(q, "check"), "reason": _text(q, "reason"),
             "min_tokens": _int(q, "min_tokens"), "max_tokens": _int(q, "max_tokens"), "q": _text(q, "q"),
             "after": _text(q, "after"), "before": _text(q, "before")}
        if f["after"] is not None and f["before"] is not None:
            raise BadParam("parameters 'after' and 'before': expected one of them, not both")
        data = read_samples(lake, f, _int(q, "n", lo=1, hi=MAX_PAGE, default=PAGE))
        return page(request, lake, "samples.html", title="samples", f=f,
                    next_url=data["next"] and filters_url(request, after=data["next"]),
                    prev_url=data["prev"] and filters_url(request, before=data["prev"]),
                    first_url=filters_url(request), **data)

    def sample(request: Request, lake: Lake) -> Response:
        data = read_sample(lake, request.path_params["sample_id"])
        if data is None:
            raise not_found(f"sample {request.path_params['sample_id']!r}")
        q = request.query_params
        drawn = _choice(q, "drawn", ("1",)) == "1"
        seed = _int(q, "seed", default=0)
        return page(request, lake, "sample.html", title=f"sample {data['s']['sample_id']}", reviewer=view.reviewer, labels=SAMPLE_LABELS,
                    drawn=drawn, seed=seed, source=_text(q, "source"), **data)

    def evals(request: Request, lake: Lake) -> Response:
        return page(request, lake, "evals.html", title="evals", evals=read_evals(lake))

    def eval_(request: Request, lake: Lake) -> Response:
        q = request.query_params
        correct = _choice(q, "correct", ("true", "false"))
        data = read_eval(lake, request.path_params["eval_id"], after=_text(q, "after"), correct=None if correct is None else correct == "true",
                         n=_int(q, "n", lo=1, hi=MAX_PAGE, default=20))
        if data is None:
            raise not_found(f"eval {request.path_params['eval_id']!r}")
        return page(request, lake, "eval.html", title=f"eval {data['e']['model']} on {data['e']['benchmark']}", correct=correct,
                    next_url=data["next"] and filters_url(request, after=data["next"]), **data)

    def training(request: Request, lake: Lake) -> Response:
        return page(request, lake, "training.html", title="training runs", files=read_training(view.metrics), given=[str(p) for p in view.metrics])

    def sql(request: Request, lake: Lake) -> Response:
        text = _text(request.query_params, "q", limit=20_000)
        if text is None:
            return page(request, lake, "sql.html", title="SQL", q="", result=None, error=None)
        try:
            result = run_sql(lake, text)
        except BadInput as exc:
            return page(request, lake, "sql.html", 400, title="SQL", q=text, result=None, error=str(exc))
        return page(request, lake, "sql.html", title="SQL", q=text, result=result, error=None)

    def review_page(request: Request, lake: Lake) -> Response:
        return page(request, lake, "review.html", title="review", sources=review_sources(lake), seed=_int(request.query_params, "seed", default=0))

    def draw(request: Request, lake: Lake) -> Response:
        q = request.query_params
        source = _text(q, "source")
        if source is None:
            raise BadParam("parameter 'source': expected the source to draw a sample from")
        seed = _int(q, "seed", default=0)
        picked = draw_sample(lake, source, seed)
        if picked is None:
            raise HTTPException(404, f"every sample of source {source!r} has a drawn review under seed {seed} (or the source has none)")
        from urllib.parse import quote, urlencode

        return RedirectResponse(f"/samples/{quote(picked, safe='')}?" + urlencode({"drawn": 1, "seed": seed, "source": source}), 303)

    async def post_review(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin and origin not in (f"{request.url.scheme}://{request.url.netloc}",):
            raise HTTPException(403, f"a review must be sent from this app's own pages, not from {origin}")
        # Our forms are urlencoded (no uploads): parsed here, so no multipart parser is needed.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise BadParam("a review is a form post (application/x-www-form-urlencoded)")
        body = await request.body()
        if len(body) > 100_000:
            raise BadParam(f"the review form is {len(body)} bytes; expected at most 100000")
        from urllib.parse import parse_qsl

        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        from starlette.concurrency import run_in_threadpool

        def commit() -> dict[str, Any]:
            kind = _text(form, "kind") or ""
            item = _text(form, "item_id") or ""
            # A writer just for this commit (it waits for a run's rest), closed at once: between
            # requests the app holds no catalog for writing.
            with reviewing, readers.files:
                writer = view.lake if not view.lake.read_only else Lake(view.lake.config)
                try:
                    # A run holding a DuckDB catalog file lets go at its next rest only for a
                    # process announced as waiting (storage/lake.py, "Watching a run"): so announce
                    # while attaching, as a reader does, or the review would wait for the run's end.
                    with writer._announced() if writer.config.catalog_kind == "duckdb" else contextlib.nullcontext():
                        writer.connection()
                    row = add_review(writer, kind=kind, item_id=item, label=_text(form, "label") or "", reviewer=_text(form, "reviewer") or "",
                                     note=_text(form, "note", limit=10_000), hit=_text(form, "hit", limit=10_000),
                                     drawn=_choice(form, "drawn", ("1",)) == "1", seed=_int(form, "seed"),
                                     snapshot_id=_int(form, "snapshot"))
                finally:
                    writer.close()
            readers.refresh()  # the page the reviewer lands on shows the review
            return row

        row = await run_in_threadpool(commit)
        from urllib.parse import quote, urlencode

        if row["item_kind"] == "sample":
            target = f"/samples/{quote(row['item_id'], safe='')}"
            if row["drawn"]:  # straight on to the next draw of the same source and seed
                source = _text(form, "source")
                if source:
                    target = "/draw?" + urlencode({"source": source, "seed": row["draw_seed"]})
        else:
            target = f"/problems/{quote(row['item_id'], safe='')}"
        return RedirectResponse(target + ("&" if "?" in target else "?") + "reviewed=" + row["review_id"], 303)

    def report(request: Request, lake: Lake) -> Response:
        from flows.report import collect_report
        from flows.report_html import render_html

        return HTMLResponse(render_html(collect_report(lake, _text(request.query_params, "target"), view.metrics)))

    def error_page(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 503 if isinstance(exc, LakeBusy) else 400
        message = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if isinstance(exc, LakeBusy):
            message = f"The lake is busy: another process holds it; try again in a moment. ({message})"
        return templates.TemplateResponse(request, "error.html", {"title": f"error {status}", "message": message, "status": status,
                                                                   "snapshot": None}, status_code=status)

    routes = [
        Route("/", reads(runs)), Route("/runs/{run_id:path}", reads(run)), Route("/datasets/{name}/{version:int}", reads(dataset)),
        Route("/problems", reads(problems)), Route("/problems/{problem_id:path}", reads(problem)),
        Route("/samples", reads(samples)), Route("/samples/{sample_id:path}", reads(sample)),
        Route("/evals", reads(evals)), Route("/evals/{eval_id:path}", reads(eval_)), Route("/training", reads(training)), Route("/sql", reads(sql)),
        Route("/review", reads(review_page)), Route("/draw", reads(draw)), Route("/reviews", post_review, methods=["POST"]), Route("/report", reads(report)),
    ]
    hosts = sorted({host, *_LOOPBACK} - {"0.0.0.0", "::"}) if host not in ("0.0.0.0", "::") else ["*"]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts + (["testserver"] if port is None else []))]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        readers.close()

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: error_page, BadInput: error_page, LakeBusy: error_page})


def check_host(host: str | None) -> str:
    """The address to bind: 127.0.0.1 unless one is given explicitly."""
    if host is None or host == "":
        return "127.0.0.1"
    if any(c.isspace() for c in host) or "/" in host:
        raise BadInput(f"--host {host!r}: expected an IP address or host name to listen on")
    return host


def _check_port(host: str, port: int) -> None:
    """A port another program holds is the user's to change: one line and exit 2, before the lake opens."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BadInput(f"--port {port} on {host}: cannot listen there ({exc.strerror}); expected a free port, e.g. --port {port + 1}") from None


# -- the command --------------------------------------------------------------------------


def view(
    store: Store = None,
    catalog: Catalog = None,
    port: Annotated[int, typer.Option("--port", metavar="N", help="Port to listen on.", min=1, max=65535)] = DEFAULT_PORT,
    host: Annotated[str | None, typer.Option("--host", metavar="ADDRESS", help="Address to listen on [default: 127.0.0.1 only; "
                                                                                "another address lets anyone who reaches it read the lake].")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
    metrics: Annotated[list[Path], typer.Option("--metrics", metavar="PATH", help="A training metrics CSV, or a folder of them, "
                                                                                   "for the training page. Repeatable.")] = [],
    reviewer: Annotated[str | None, typer.Option("--reviewer", metavar="NAME", help="The name reviews are signed with [default: $USER].")] = None,
) -> None:
    """Browse the lake in a local web app (runs, samples, verdicts, evals, SQL) and review samples."""

    def job() -> None:
        import uvicorn

        bind = check_host(host)
        for p in metrics:
            if not Path(p).exists():
                raise BadInput(f"--metrics {p}: no such file or folder; expected a metrics CSV or a folder of them")
        _check_port(bind, port)
        with Lake.open(store, catalog, read_only=True) as probe:  # the lake opens (or fails with its one-line message) before we listen
            probe.query("SELECT 1 FROM samples LIMIT 0")
        lake = Lake.open(store, catalog, create=False)  # attached only while a review commits
        app = build_app(View(lake, list(metrics), reviewer or os.environ.get("USER") or "reviewer"), host=bind, port=port)
        url = f"http://{'[' + bind + ']' if ':' in bind else bind}:{port}/"
        err.print(f"factory view: {url} ({lake.config.describe()}); Ctrl-C stops it", markup=False)
        if bind not in _LOOPBACK:
            err.print(f"warning: listening on {bind}: anyone who can reach this address can read the lake and write reviews", markup=False)
        if open_browser:
            webbrowser.open(url)
        with lake:
            uvicorn.run(app, host=bind, port=port, log_level="warning")

    run_job(job)
