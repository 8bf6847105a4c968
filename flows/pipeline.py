"""The factory flow on Prefect 3: questions -> decontaminate -> sample -> verify + filter -> dedup -> dataset.

    factory run recipes/quickstart.yaml                 # the CLI (flows/run.py) runs this flow
    from flows.pipeline import factory_run
    summary = factory_run("recipes/quickstart.yaml", store="./factory-store", limit=20)

Without PREFECT_API_URL the flow runs on Prefect's ephemeral local server; with it, the run
shows in that server's UI. The flow body only orders calls: each stage is a function in
factory/ (see factory/stages.py) and each task here reads its batch from the lake, calls the
stage, and commits the result exactly once (storage.Lake.commit under a content key). A
`with stage(...)` block times a stage and shows its progress; the sampling rounds' bookkeeping
is factory/rounds.py's RoundState, and the summary's funnel is factory/funnel.py's SQL (the
same that the report and the dataset count with).

Resuming is the default: problems are keyed by their ids, samples by their request keys (the
ledger: a key already in `samples` is never sent again), verdicts, dedup decisions and the
dataset by the ids they cover. Rerunning after a crash (even SIGKILL) or a teacher failure
redoes only what is missing. A run that ends with request keys still missing (the teacher
failed for them) is recorded as `incomplete` and fails with the list; nothing received is lost.

Retries: only the lake commits retry, and only on transient errors (a busy catalog, an I/O
error); teacher retries live in the teacher backend. Concurrency: requests in flight per
teacher endpoint are capped by the backend (`max_concurrency`); code sandboxes across the run by
a Prefect global concurrency limit `factory-sandbox` (`sandbox_workers` in the recipe).
Verification batches run on the recipe's task runner: one after another in the flow's thread by
default (see in_flight), in parallel on Dask or Ray with prefect-dask / prefect-ray.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls home

import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from factory import funnel, stages
from factory.dedup import dedup_lake
from factory.preview import measure, preview_problems, project
from factory.recipe import CompactionSpec, Recipe, load_recipe, recipe_hash
from factory.rounds import RoundState
from factory.sampler import Budget, Escalation, SamplingStats, sample_teacher
from factory.teachers import RequestGroup, make_teacher
from factory.yaml_config import read_yaml_text
from storage import Lake, LakeBusy, schemas
from storage.errors import FactoryError
from storage.lake import Compaction

log = logging.getLogger(__name__)

SANDBOX_LIMIT = "factory-sandbox"


class RunIncomplete(FactoryError):
    """The run ended with request keys the teacher did not answer; a rerun resumes them."""


# -- progress: the CLI plugs a rich display in; tests and servers leave the no-op ----------


class Progress:
    """What the flow tells whoever watches: a stage starts with a total, advances, ends."""

    def start(self, stage: str, total: int | None = None) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def end(self, stage: str, note: str = "") -> None: ...


progress: Progress = Progress()


def set_progress(p: Progress | None) -> None:
    global progress
    progress = p or Progress()


# -- helpers -------------------------------------------------------------------------------


def _digest(ids: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(ids)).encode(), digest_size=12).hexdigest()


def _threaded() -> bool:
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    return ctx is None or isinstance(ctx.task_runner, ThreadPoolTaskRunner)


def _ids_table(values, name: str = "v") -> pa.Table:
    return pa.table({name: pa.array(list(values), pa.string())})


class _Loop:
    """One event loop in a thread for the whole run: the teacher's HTTP session and model live
    in it, so every sampling round (and the close) must run on the same loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="factory-sampler", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# -- tasks: read, call, write -----------------------------------------------------------------


def retry_transient(call: Callable[[], Any], what: str, *, tries: int = 4) -> Any:
    """Run a lake write; retry it only when the lake was busy or its storage I/O failed (the
    ledger makes a retried commit safe). Anything else fails at once."""
    for attempt in range(tries):
        try:
            return call()
        except (LakeBusy, OSError, TimeoutError) as exc:
            if attempt == tries - 1:
                raise
            log.warning("%s failed (%s); retrying", what, exc)
            time.sleep(min(10.0, 4.0**attempt))
    return None


def commit(lake: Lake, table: str, rows: list[dict] | pa.Table, batch_key: str, run_id: str) -> int:
    """Commit exactly once. A plain call, not a task: a task run costs API round trips per
    commit, and the lake's ledger already makes a retry safe."""
    if not len(rows):
        return 0
    return retry_transient(lambda: lake.commit(table, rows, batch_key=batch_key, run_id=run_id).rows, f"commit to {table}")


@task(name="questions", cache_policy=NO_CACHE)
def questions(recipe: Recipe, base_dir: Path, limit: int | None) -> list[dict]:
    rows = stages.collect_questions(recipe.questions, base_dir=base_dir, limit=limit)
    stages.require_sources(rows, f"recipe {recipe.name!r}")
    return rows


@task(name="questions-written", cache_policy=NO_CACHE)
def written(lake: Lake, loop: _Loop, teacher, source, seeds: list[dict], run_id: str, known: list[dict]) -> list[dict]:
    """Problems the teacher writes from seed rows (kept only when its own samples agree)."""
    from factory.questions import write_questions

    seen = {p["problem_id"] for p in known}
    rows = loop.run(write_questions(lake, teacher, seeds, run_id=run_id, **source.write_options()))
    return [r for r in rows if r["problem_id"] not in seen]


@task(name="decontaminate", cache_policy=NO_CACHE)
def decontaminate(lake: Lake, recipe: Recipe, new: list[dict], run_id: str) -> int:
    """Flag benchmark hits on the problems new to the lake, and commit them in batches."""
    for batch in stages.batches(new, recipe.batch_size * 4):
        checked = stages.mark_contamination(list(batch), recipe.decontaminate)
        commit(lake, "problems", checked, f"problems:{_digest([p['problem_id'] for p in batch])}", run_id)
        progress.advance("decontaminate", len(batch))
    return len(new)


@task(name="sample", cache_policy=NO_CACHE)
def sample(lake: Lake, loop: _Loop, teacher, groups: list[RequestGroup], run_id: str, budget: Budget | None,
           escalation: Escalation | None = None, compaction: CompactionSpec | None = None) -> SamplingStats:
    """One sampling round; with `compaction`, its check runs after each of the sampler's commits
    (in the commit thread), so a long round keeps the lake's file count bounded too."""
    seen = [0]

    def tick(stats: SamplingStats) -> None:
        progress.advance("sample", stats.received - seen[0])
        seen[0] = stats.received

    return loop.run(sample_teacher(lake, teacher, groups, run_id=run_id, budget=budget, escalation=escalation,
                                   on_progress=tick, spill_dir=_spill_dir(lake),
                                   after_commit=compaction and (lambda: compact_due(lake, compaction))))


# A verdicts row as verify_samples makes it (the lake adds run_id and created_at).
VERDICT_ROW = pa.schema([f for f in schemas.VERDICTS if f.name not in ("run_id", "created_at")])


def _verdict_table(samples: list[dict], problems: dict[str, dict], recipe: Recipe) -> pa.Table:
    """The verify stage on one batch, code sandboxes under the run-wide concurrency limit."""
    if "code" in recipe.verify and any((problems.get(s["problem_id"]) or {}).get("domain") == "code" for s in samples):
        from prefect.concurrency.sync import concurrency

        with concurrency(SANDBOX_LIMIT, occupy=1, strict=False):
            rows = stages.verify_samples(samples, problems, recipe)
    else:
        rows = stages.verify_samples(samples, problems, recipe)
    return pa.Table.from_pylist(rows, schema=VERDICT_ROW)


_KEY_COLUMNS = ["sample_id", "check", "status"]


def _commit_verdicts(lake: Lake, batch: Sequence[dict], table: pa.Table, run_id: str, done: list[pa.Table]) -> None:
    """Commit one batch's verdicts exactly once and keep their (sample_id, check, status)."""
    commit(lake, "verdicts", table, f"verdicts:{stages._VERSION}:{_digest([s['sample_id'] for s in batch])}", run_id)
    done.append(table.select(_KEY_COLUMNS))
    progress.advance("verify", len(batch))


def _joined(done: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(done) if done else VERDICT_ROW.empty_table().select(_KEY_COLUMNS)


@task(name="verify", cache_policy=NO_CACHE)
def verify(lake: Lake, todo: list[dict], problems: dict[str, dict], recipe: Recipe, run_id: str) -> pa.Table:
    """Verify and filter `todo` a batch at a time in this process, committing each batch's
    verdicts as it is done (a rerun skips the committed ones). Returns (sample_id, check,
    status) of every verdict, as one Arrow table: Prefect indexes a task's result one level
    deep for dependency tracking, and a list would cost it an entry per row."""
    done: list[pa.Table] = []
    for batch in stages.batches(todo, recipe.batch_size):
        _commit_verdicts(lake, batch, _verdict_table(list(batch), problems, recipe), run_id, done)
    return _joined(done)


@task(name="verify", cache_policy=NO_CACHE)
def verify_batch(samples: list[dict], problems: dict[str, dict], recipe: Recipe) -> pa.Table:
    """One batch's verdicts, for a parallel runner (Dask, Ray, threads): no lake in the task;
    the flow commits what comes back."""
    return _verdict_table(samples, problems, recipe)


def in_flight(recipe: Recipe) -> int:
    """Verification batches running at once: on threads `max_workers` (default 1: the
    verifiers already spread a batch over processes and sandboxes, and pure-Python checks in
    parallel threads only contend for the GIL); on Dask or Ray all of them (0)."""
    spec = recipe.task_runner
    return (spec.max_workers or 1) if spec.kind == "thread" else 0


def verify_round(lake: Lake, todo: list[dict], by_id: dict[str, dict], recipe: Recipe, run_id: str) -> pa.Table:
    """The round's verification. One at a time: a single `verify` task over all batches (a task
    run costs the Prefect server tens of ms of CPU, so not one per batch). In parallel:
    `verify_batch` tasks on the runner with at most `in_flight` pending, committed here in
    order. Returns (sample_id, check, status) of every verdict."""
    # quote(): Prefect would otherwise walk every record of every argument looking for futures.
    # (Dask's runner rebuilds its arguments itself and loses the quote: give it plain ones.)
    q = quote if _threaded() else (lambda x: x)
    window = in_flight(recipe)
    if window == 1:
        return verify(lake, q(todo), q(by_id), q(recipe), run_id)
    done: list[pa.Table] = []
    pending: deque = deque()
    for batch in stages.batches(todo, recipe.batch_size):
        pending.append((batch, verify_batch.submit(q(list(batch)), q(by_id), q(recipe))))
        if window and len(pending) >= window:
            oldest, fut = pending.popleft()
            _commit_verdicts(lake, oldest, fut.result(), run_id, done)
    for oldest, fut in pending:
        _commit_verdicts(lake, oldest, fut.result(), run_id, done)
    return _joined(done)


@task(name="dedup", cache_policy=NO_CACHE)
def dedup(lake: Lake, recipe: Recipe, run_id: str, table: str, where_ids: list[str] | None = None) -> dict:
    spec = recipe.dedup
    kw: dict[str, Any] = {}
    if where_ids is not None:
        kw["only"] = where_ids
    return dedup_lake(lake, table, run_id=run_id, threshold=spec.threshold, ngram=spec.ngram,
                      k=spec.per_problem if table == "samples" else 1, **kw)


@task(name="dataset", cache_policy=NO_CACHE)
def dataset(lake: Lake, recipe: Recipe, sql: str, run_id: str, rhash: str) -> dict:
    """A new dataset version when the accepted rows changed; the latest one otherwise."""
    name = recipe.dataset_name
    latest = lake.query("SELECT version, sql, row_count FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", [name]).to_pylist()
    if latest and latest[0]["sql"] == sql:
        rows = int(lake.query(f"SELECT count(*) AS n FROM ({sql})").column("n")[0].as_py())
        if latest[0]["row_count"] == rows:
            return {"name": name, "version": latest[0]["version"], "rows": rows, "new": False}
    v = retry_transient(lambda: lake.save_dataset(name, sql, recipe_hash=rhash, run_id=run_id,
                                                  description=recipe.dataset.description if recipe.dataset else None),
                        f"saving dataset {name}")
    return {"name": v.name, "version": v.version, "rows": v.row_count, "new": True}


# -- the run's record, its lake reads, and the stages' timing ---------------------------------


def _open_lake(store: str | None, catalog: str | None) -> Lake:
    return Lake.open(store, catalog, create=True)


def compact_due(lake: Lake, spec: CompactionSpec, *, stage_end: bool = False) -> Compaction | None:
    """The recipe's automatic compaction (Lake.compact_if; at a stage's end with the lower
    threshold, so a run ends compacted): cheap when nothing is due (one catalog count).
    Housekeeping: a failure is logged and the run goes on (`factory maintain --compact` does it
    later)."""
    try:
        done = lake.compact_if(spec.stage_end_files if stage_end else spec.max_files, older_than=dt.timedelta(seconds=spec.keep_s))
    except Exception:
        log.warning("automatic compaction failed; the run goes on", exc_info=True)
        return None
    if done is not None:
        log.info("compacted the lake: %d -> %d data files, %d snapshots expired", done.files_before, done.files_after, done.snapshots_expired)
    return done


def _spill_dir(lake: Lake) -> str:
    """Where samples that could not be committed are written (a local folder, even for S3 stores)."""
    return "factory-spill" if lake.config.is_s3 else str(Path(lake.config.store_root) / "spill")


def _run_id(lake: Lake, recipe: Recipe, rhash: str) -> str:
    """Resume the recipe's last run if it did not finish; else a new run id."""
    rows = lake.query(
        "SELECT run_id, arg_max(status, created_at) AS status FROM runs WHERE recipe_hash = ? GROUP BY run_id "
        "ORDER BY max(created_at) DESC LIMIT 1", [rhash]).to_pylist()
    if rows and rows[0]["status"] in ("started", "incomplete", "failed"):
        return rows[0]["run_id"]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{recipe.name}-{stamp}-{uuid.uuid4().hex[:6]}"


def _code_version() -> str:
    try:
        from importlib.metadata import version

        return version("reasoning-factory")
    except Exception:
        return "unknown"


def _record_run(lake: Lake, run_id: str, recipe_text: str, rhash: str, status: str, started: dt.datetime,
                counts: dict | None = None) -> None:
    row = {
        "run_id": run_id, "recipe": recipe_text, "recipe_hash": rhash, "code_version": _code_version(),
        "status": status, "started_at": started,
        "finished_at": dt.datetime.now(dt.UTC) if status != "started" else None,
        "counts": json.dumps(counts, sort_keys=True) if counts is not None else None,
        "cost_usd": (counts or {}).get("cost_usd"),
    }
    commit(lake, "runs", [row], f"runs:{run_id}:{status}:{uuid.uuid4().hex}", run_id)


@dataclass
class Run:
    """One run: the recipe as read (the file is read once: its text is what `runs` records), the
    lake it writes, its id, and the seconds each stage took."""

    path: Path
    text: str
    recipe: Recipe
    rhash: str
    lake: Lake
    run_id: str
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, status: str, counts: dict | None = None) -> None:
        """A `runs` row: started, incomplete, finished (with the summary) or failed."""
        _record_run(self.lake, self.run_id, self.text, self.rhash, status, self.started, counts)

    def record_failure(self, exc: BaseException) -> None:
        """Record a run that raised `exc` as failed (an incomplete one is recorded already)."""
        if isinstance(exc, RunIncomplete):
            return
        try:
            self.record("failed", {"seconds": self.seconds})
        except Exception:  # the lake itself may be what failed: the original error matters more
            log.exception("could not record the failed run")


def start_run(recipe_path: str, store: str | None, catalog: str | None) -> Run:
    """Read and check the recipe, open the lake, pick the run id (resuming an unfinished run of
    the same recipe) and record the start."""
    path = Path(recipe_path)
    text = read_yaml_text(path, what="recipe")
    recipe = load_recipe(path, text=text)
    rhash = recipe_hash(recipe)
    lake = _open_lake(store, catalog)
    run = Run(path, text, recipe, rhash, lake, _run_id(lake, recipe, rhash))
    run.record("started")
    if "code" in recipe.verify:
        ensure_sandbox_limit(recipe.sandbox_workers)
    log.info("run %s of recipe %s (%s)", run.run_id, recipe.name, rhash[:12])
    return run


class Stage:
    """A stage as its `with stage(...)` block sees it: `start(total)` when its size is only known
    inside the block, and `note`, the line shown when it ends."""

    def __init__(self, name: str) -> None:
        self.name, self.note = name, ""

    def start(self, total: int | None = None) -> None:
        progress.start(self.name, total)


@contextmanager
def stage(name: str, seconds: dict[str, float], total: int | None = None, *, start: bool = True) -> Iterator[Stage]:
    """Time a stage into `seconds[name]` (rounds add up) and show it: progress starts on entry
    (with start=False, at `s.start(total)`) and ends with `s.note`. A stage that raises is
    neither timed nor ended: the run's failure is what shows."""
    s = Stage(name)
    if start:
        s.start(total)
    t0 = time.perf_counter()
    yield s
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    progress.end(name, s.note)


def new_problems(lake: Lake, problems: list[dict]) -> list[dict]:
    """The problems the lake does not hold yet: only these are decontaminated and committed."""
    known = lake.existing("problems", "problem_id", [p["problem_id"] for p in problems])
    return [p for p in problems if p["problem_id"] not in known]


def eligible_problems(lake: Lake, problems: list[dict]) -> list[dict]:
    """The problems to sample: no benchmark hit, and kept by problem dedup."""
    got = lake.query(
        "SELECT p.problem_id, max(len(coalesce(p.contamination, []))) AS hits, "
        "bool_or(coalesce(d.kept, true)) AS kept "
        "FROM problems p JOIN _ids i ON p.problem_id = i.v "
        "LEFT JOIN dedup d ON d.item_id = p.problem_id AND d.item_kind = 'problem' GROUP BY 1",
        tables={"_ids": _ids_table(p["problem_id"] for p in problems)},
    ).to_pylist()
    state = {r["problem_id"]: r for r in got}
    return [p for p in problems if state.get(p["problem_id"], {}).get("hits", 0) == 0 and state.get(p["problem_id"], {}).get("kept", True)]


def verdicts_for(lake: Lake, keys: list[str]) -> list[dict]:
    """(sample_id, check, status) of the samples' verdicts of this code's check version."""
    if not keys:
        return []
    return lake.query(
        "SELECT v.sample_id, v.\"check\", v.status FROM verdicts v JOIN _k k ON v.sample_id = k.v WHERE v.check_version = ?",
        [stages._VERSION], tables={"_k": _ids_table(keys)},
    ).to_pylist()


def _verdict_keys(table: pa.Table) -> list[dict]:
    cols = [table.column(c).to_pylist() for c in ("sample_id", "check", "status")]
    return [{"sample_id": a, "check": b, "status": c} for a, b, c in zip(*cols)]


def unverified(lake: Lake, keys: list[str]) -> list[dict]:
    """The samples of these keys without verdicts of this code's check version (a bump redoes them)."""
    return lake.query(
        "SELECT s.sample_id, s.problem_id, s.reasoning, s.answer, s.completion, s.finish_reason, s.completion_tokens "
        "FROM samples s JOIN _k k ON s.sample_id = k.v "
        "WHERE s.sample_id NOT IN (SELECT sample_id FROM verdicts WHERE check_version = ?) ORDER BY s.sample_id",
        [stages._VERSION], tables={"_k": _ids_table(keys)},
    ).to_pylist()


def missing_keys(lake: Lake, rounds: RoundState) -> list[str]:
    """Planned keys without a sample. The sampler counts what it committed: only when it says
    keys are missing is the lake asked which (the failure message lists them)."""
    if not rounds.may_miss:
        return []
    return sorted(set(rounds.keys) - lake.existing("samples", "request_key", list(rounds.keys)))


def teacher_questions(run: Run, loop: _Loop, teacher, problems: list[dict]) -> list[dict]:
    """The problems each teacher-written source writes from its seed rows."""
    out: list[dict] = []
    for src, seeds in stages.teacher_written(run.recipe.questions, problems):
        out += written(run.lake, loop, teacher, src, quote(seeds), run.run_id, quote(problems + out))
    return out


def verify_planned(run: Run, s: Stage, rounds: RoundState) -> None:
    """Verify and filter the planned samples that have no verdicts of this code's version, then
    add the verdicts an earlier attempt stored for the others (read from the lake once)."""
    todo = unverified(run.lake, list(rounds.keys))
    s.start(len(todo))
    table = verify_round(run.lake, todo, rounds.problems, run.recipe, run.run_id)
    rounds.add_verdicts(_verdict_keys(table), covering=[t["sample_id"] for t in todo])
    earlier = rounds.unasked()
    rounds.add_verdicts(verdicts_for(run.lake, earlier), covering=earlier)


def summarize(lake: Lake, problems: list[dict], rounds: RoundState, seconds: dict[str, float], ds: dict | None = None) -> dict:
    """The run's summary (runs.counts, the Prefect artifact, the CLI's table): the funnel of
    factory/funnel.py over the run's problems and request keys, read back from the lake, plus
    the stages' time, what this attempt sent, and the dataset version."""
    return {
        **funnel.run_counts(lake, problems, rounds.keys, ds and ds["scope"]),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "sent_this_attempt": rounds.sent,
        "budget_reached": rounds.budget_reached,
        "dataset": ds and {k: ds[k] for k in ("name", "version", "rows", "new")},
    }


def projection(lake: Lake, eligible: list[dict], sampled: list[dict], rounds: RoundState, seconds: dict[str, float]) -> dict:
    """factory/preview.py's projection of the whole recipe (`eligible` problems) from the
    previewed ones (`sampled`), their samples in the lake and the rounds' timing."""
    source = {p["problem_id"]: p.get("source") or "" for p in eligible}
    population: dict[str, int] = {}
    for p in eligible:
        population[source[p["problem_id"]]] = population.get(source[p["problem_id"]], 0) + 1
    accepted: dict[str, int] = {}
    for sid in rounds.accepted:
        s = source[rounds.keys[sid]]
        accepted[s] = accepted.get(s, 0) + 1
    send_s = sum(st.send_s for st in rounds.stats)
    return project(measure(lake, rounds.keys, sampled), population, accepted, send_s=send_s, verify_s=seconds.get("verify", 0.0),
                   fixed_s=max(0.0, seconds.get("sample", 0.0) - send_s),
                   sent_completion_tokens=sum(st.completion_tokens for st in rounds.stats))


def _close(loop: _Loop, teacher, lake: Lake) -> None:
    if teacher is not None:
        try:
            loop.run(teacher.aclose())
        except Exception:
            log.exception("closing the teacher")
    loop.close()
    lake.close()


# -- the flow --------------------------------------------------------------------------------


@flow(name="factory-run", persist_result=False, log_prints=False)
def factory_run(recipe_path: str, store: str | None = None, catalog: str | None = None, limit: int | None = None,
                preview: int | None = None) -> dict:
    """Run a recipe end to end; returns the run's summary (also stored in `runs.counts`). With
    `preview`, sample and verify only that many problems (factory/preview.py picks them), record
    the run as `preview` and return its summary with `preview`: the whole recipe's projection."""
    run = start_run(recipe_path, store, catalog)
    lake, recipe, run_id, seconds = run.lake, run.recipe, run.run_id, run.seconds
    loop, teacher = _Loop(), None
    try:
        with stage("questions", seconds) as s:  # only problems new to the lake are checked and committed
            problems = questions(recipe, run.path.parent, limit)
            teacher = make_teacher(recipe.teacher.to_config())
            problems += teacher_questions(run, loop, teacher, problems)
            new = new_problems(lake, problems)
            s.note = f"{len(problems)} problems, {len(new)} new"
        with stage("decontaminate", seconds, len(new)) as s:
            decontaminate(lake, recipe, quote(new), run_id)
            if recipe.dedup.problems:
                dedup(lake, recipe, run_id, "problems")
            eligible = eligible_problems(lake, problems)
            s.note = f"{len(problems) - len(eligible)} dropped (benchmark hits or duplicates)"
        compact_due(lake, recipe.compaction, stage_end=True)  # at each stage's end: between stages nothing else writes
        sampled = preview_problems(eligible, preview) if preview else eligible
        rounds = RoundState(recipe, {p["problem_id"]: p for p in sampled}, teacher.config)
        seconds.update(sample=0.0, verify=0.0)  # shown even when no round runs
        while groups := rounds.plan():  # sample -> verify + filter, more rounds when adaptive sampling is on
            with stage("sample", seconds, sum(len(g.sample_indices) for g in groups)) as s:
                s.note = rounds.sampled(sample(lake, loop, teacher, quote(groups), run_id, rounds.budget(), rounds.escalation(),
                                               recipe.compaction))
            compact_due(lake, recipe.compaction, stage_end=True)
            with stage("verify", seconds, start=False) as s:
                verify_planned(run, s, rounds)
                s.note = rounds.close_round()
            compact_due(lake, recipe.compaction, stage_end=True)
        if rounds.incomplete(missing := missing_keys(lake, rounds)):
            run.record("incomplete", summarize(lake, sampled, rounds, seconds))
            raise RunIncomplete(rounds.missing_message(run_id, missing))
        if preview:  # no dedup, no dataset: the whole recipe's projection instead
            summary = {**summarize(lake, sampled, rounds, seconds), "run_id": run_id,
                       "preview": projection(lake, eligible, sampled, rounds, seconds)}
            run.record("preview", summary)
            return summary
        with stage("dedup", seconds) as s:  # the accepted samples, against every run's
            dd = dedup(lake, recipe, run_id, "samples", quote(sorted(rounds.accepted)))
            s.note = f"{dd.get('rows', 0)} decided, {dd.get('kept', 0)} kept"
        compact_due(lake, recipe.compaction, stage_end=True)
        with stage("dataset", seconds) as s:
            scope = {"teacher": teacher.config.name, "sources": sorted({p.get("source") or "" for p in problems})}
            sql = stages.dataset_sql(recipe, **scope)
            ds = {**dataset(lake, recipe, sql, run_id, run.rhash), "scope": stages.dataset_scope(**scope)}
            s.note = f"{ds['name']} v{ds['version']}: {ds['rows']} rows"
        compact_due(lake, recipe.compaction, stage_end=True)
        summary = {**summarize(lake, eligible, rounds, seconds, ds), "run_id": run_id, "problems_dropped": len(problems) - len(eligible)}
        run.record("finished", summary)
        _artifact(recipe, summary)
        return summary
    except BaseException as exc:
        run.record_failure(exc)
        raise
    finally:
        _close(loop, teacher, lake)


def _artifact(recipe: Recipe, summary: dict) -> None:
    """The funnel as a Prefect markdown artifact, so the UI shows it beside the run."""
    try:
        from prefect.artifacts import create_markdown_artifact

        from flows.report_html import funnel_markdown

        key = "funnel-" + "".join(c if c.isalnum() else "-" for c in recipe.name.lower())
        create_markdown_artifact(markdown=funnel_markdown(summary), key=key[:60], description=f"yield funnel of {recipe.name}")
    except Exception:  # an artifact is a view; the run's data is already committed
        log.warning("could not create the funnel artifact", exc_info=True)


def task_runner_for(recipe: Recipe):
    """The Prefect task runner the recipe asks for (verification and dedup batches run on it)."""
    from storage.errors import require

    spec = recipe.task_runner
    if spec.kind == "dask":
        mod = require("prefect_dask", "pip install 'reasoning-factory[dask]'")
        if spec.address:
            return mod.DaskTaskRunner(address=spec.address)
        # A local cluster: scheduler, workers and dashboard on loopback only.
        return mod.DaskTaskRunner(cluster_kwargs={"n_workers": spec.max_workers or 2, "threads_per_worker": 1,
                                                  "host": "127.0.0.1", "dashboard_address": None})
    if spec.kind == "ray":
        mod = require("prefect_ray", "pip install 'reasoning-factory[ray]'")
        return mod.RayTaskRunner(address=spec.address) if spec.address else mod.RayTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=spec.max_workers or 1)


def ensure_sandbox_limit(limit: int) -> None:
    """Create or resize the global concurrency limit that caps code sandboxes across the run."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(SANDBOX_LIMIT, limit)
    except Exception:  # without it the tasks run unlimited (strict=False): logged, not fatal
        log.warning("could not set the %s concurrency limit", SANDBOX_LIMIT, exc_info=True)


def run_recipe(recipe_path: str, store: str | None = None, catalog: str | None = None, limit: int | None = None,
               on_progress: Progress | None = None, preview: int | None = None) -> dict:
    """The CLI's entry: the flow with the recipe's task runner and the sandbox limit set up."""
    recipe = load_recipe(recipe_path)
    set_progress(on_progress)
    try:
        runner = task_runner_for(recipe)
        with flow_settings():
            return factory_run.with_options(task_runner=runner)(recipe_path, store=store, catalog=catalog, limit=limit, preview=preview)
    finally:
        set_progress(None)


def flow_settings():
    """Prefect settings for a run from the CLI. Without a Prefect server (ephemeral mode) the
    flow-run heartbeat is off: it exists so that a server can mark a dead run as crashed, the
    ephemeral server dies with the run anyway (the `runs` table is what resume reads), and the
    heartbeat thread costs up to a second at every flow's end (Prefect joins its 1 s sleep).
    A PREFECT_FLOWS_HEARTBEAT_FREQUENCY set by the user wins."""
    from contextlib import nullcontext

    from prefect.settings import get_current_settings, temporary_settings

    if get_current_settings().api.url:
        return nullcontext()
    return temporary_settings(set_defaults={"flows.heartbeat_frequency": None})
