"""Sample a teacher through the request ledger, so that no request key is paid for twice.

    groups = plan_requests(teacher.config, problems, Sampling(max_tokens=2048), samples_per_problem=4)
    stats = asyncio.run(sample_teacher(lake, teacher, groups, run_id="r1", budget=Budget(max_usd=5.0)))
    stats = asyncio.run(sample_teacher(lake, teacher, groups, run_id="r1", escalation=Escalation(factor=2, cap=8192)))

The ledger is the `samples` table itself: a request key is done once a sample with that
`request_key` is committed. Before sending, the keys already in the lake are dropped, so a
rerun after a crash sends only what is missing. Samples are committed as they arrive, in
group commits (`commit_every` samples or `commit_interval_s` seconds after the first waiting
one, whichever first: see `Committer`), so a SIGKILL loses at most the requests in flight and
one window of received samples; the buffer is flushed on the way out of any failure or
cancellation. `after_commit` (the flow's compaction check, Lake.compact_if) runs after each
commit, off the event loop. Partial results of an `n`-request are kept (the teacher
asks again for indices a server left out, a bounded number of times: see openai_http); what is
still missing after that is sent on the next run. `finish_reason=length` is stored as data, and retried
only when asked (`escalation`, below). With `Sampling.top_logprobs`, each sample's top-k
log-probs (`Completion.topk`) go to the `teacher_topk` table in the same lake transaction as
the sample.

Truncation escalation (`escalation=Escalation(factor=2, cap=32768)`): after the groups are sent,
a second pass asks once more for each of their samples that the lake holds cut at max_tokens,
with the same prompt and sample index and max_tokens times `factor` (at most `cap`). A second
pass rather than re-queueing from the first one's callback: it reads the cut samples from the
lake, so it also escalates those of an earlier run (a rerun after a crash sends exactly the
missing escalations, since the larger max_tokens gives each its own request key), and the first
pass stays as it was. Both samples are kept; the retry's `metadata` holds `retry_of` (the cut
sample's id). A retry is not escalated again. The budget counts both passes.

A `Budget` in tokens or dollars stops new requests once spent reaches it; requests in flight
finish and are committed. Teachers are checked (`Teacher.check`) before the first request, so
a missing key, an unknown model or a prompt over the context window fails before any spend.

The worker pool (`send_groups`: failure counting, halting on an auth error or a run of
failures) and the `Committer` (exactly-once batches, flushed on the way out) serve student
evaluation too (factory/evaluation.py), with its own rows and batch keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from storage import Lake

from .records import content_hash
from .teachers.base import Completion, RequestGroup, Sampling, Teacher, TeacherConfig, TeacherError, TeacherUnavailable, split_reasoning

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Budget:
    """Stop sending new requests once either limit is reached (None: no limit)."""

    max_tokens: int | None = None  # prompt + completion tokens
    max_usd: float | None = None

    def reached(self, tokens: int, usd: float) -> bool:
        return (self.max_tokens is not None and tokens >= self.max_tokens) or (
            self.max_usd is not None and usd >= self.max_usd
        )


@dataclass(frozen=True)
class Escalation:
    """Ask once more for a sample cut at max_tokens, with max_tokens times `factor`, at most `cap`."""

    factor: float = 2.0
    cap: int = 32768

    def max_tokens(self, was: int) -> int | None:
        """The retry's max_tokens, or None when the cap leaves no room for a longer one."""
        new = min(self.cap, int(was * self.factor))
        return new if new > was else None


@dataclass
class SamplingStats:
    """What one sampling pass did: the per-run counts the report shows."""

    keys: int = 0  # request keys planned
    already_done: int = 0  # found in the lake, not sent
    sent_groups: int = 0
    received: int = 0  # completions received
    committed: int = 0  # samples committed
    length_cut: int = 0  # finish_reason == "length"
    failed_groups: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    spilled: int = 0  # received but not committable: written to a spill file
    stopped_by_budget: bool = False
    errors: Counter = field(default_factory=Counter)
    escalations: dict[str, str] = field(default_factory=dict)  # retry request key -> problem id (planned; in `keys` too)
    send_s: float = 0.0  # from the first request sent to the last answer (the teacher check and model load excluded)

    @property
    def missing(self) -> int:
        """Keys still without a sample after this pass."""
        return self.keys - self.already_done - self.committed


def plan_requests(
    config: TeacherConfig,
    problems: Iterable[dict],
    sampling: Sampling,
    samples_per_problem: int = 1,
    prompt: Callable[[dict], list[dict]] | None = None,
) -> list[RequestGroup]:
    """One group per problem with sample indices 0..samples_per_problem-1.

    Each problem is a dict with `problem_id` and either `messages` or `problem` (then the
    messages are `prompt(problem)`, by default a single user turn with the problem text)."""
    if samples_per_problem < 1:
        raise ValueError("samples_per_problem must be at least 1")
    make = prompt or (lambda p: [{"role": "user", "content": p["problem"]}])
    groups = []
    for p in problems:
        messages = p.get("messages") or make(p)
        groups.append(RequestGroup(p["problem_id"], tuple(dict(m) for m in messages), sampling, tuple(range(samples_per_problem))))
    return groups


def sample_row(config: TeacherConfig, group: RequestGroup, completion: Completion, key: str) -> dict:
    """A `samples` row for one completion (sample_id is the request key: one sample per key)."""
    reasoning, answer = split_reasoning(completion.text, completion.reasoning_content)
    return {
        "sample_id": key,
        "request_key": key,
        "problem_id": group.problem_id,
        "teacher": config.name,
        "model": config.model,
        "model_revision": config.revision,
        "backend": config.backend,
        "sampling": json.dumps(group.sampling.model_dump(), sort_keys=True),
        "sample_index": completion.sample_index,
        "messages": [{"role": m["role"], "content": m["content"]} for m in group.messages],
        "reasoning": reasoning,
        "answer": answer,
        "completion": completion.text,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": completion.latency_s,
        "cost_usd": config.price.cost(completion.prompt_tokens, completion.completion_tokens),
        "metadata": json.dumps({"endpoint": completion.endpoint, **completion.extra}) if completion.endpoint or completion.extra else None,
    }


async def sample_teacher(
    lake: Lake,
    teacher: Teacher,
    groups: list[RequestGroup],
    *,
    run_id: str,
    budget: Budget | None = None,
    escalation: Escalation | None = None,
    commit_every: int = 1024,
    commit_interval_s: float = 2.0,
    after_commit: Callable[[], object] | None = None,
    max_consecutive_failures: int = 50,
    spill_dir: str = "factory-spill",
    on_progress: Callable[[SamplingStats], None] | None = None,
) -> SamplingStats:
    """Send every group's missing keys to the teacher and commit the samples as they come; with
    `escalation`, then ask again with more max_tokens for the groups' samples cut at the limit."""
    config = teacher.config
    stats = SamplingStats()
    committer = Committer(lake, "samples", run_id, stats, batch_key=_samples_batch_key,
                          every=commit_every, interval_s=commit_interval_s, spill_dir=spill_dir, after_commit=after_commit)
    retry_of: dict[str, str] = {}  # retry request key -> the cut sample's id
    checked: list[bool] = []

    def spent() -> bool:
        if budget and budget.reached(stats.prompt_tokens + stats.completion_tokens, stats.cost_usd):
            stats.stopped_by_budget = True
            return True
        return False

    async def receive(entry: tuple[RequestGroup, dict[int, str]], completions: list[Completion]) -> None:
        group, keys = entry
        pairs = requested(config, keys, completions)
        rows = [sample_row(config, group, c, key) for c, key in pairs]
        for r in rows:
            if r["request_key"] in retry_of:
                r["metadata"] = json.dumps({**json.loads(r["metadata"] or "{}"), "retry_of": retry_of[r["request_key"]]})
        count_received(stats, rows)
        # Top-k log-probs go to their own table in the same commit as their samples: a crash
        # between two commits could otherwise keep one without the other.
        await committer.add(rows, also={"teacher_topk": [c.topk.row(key) for c, key in pairs if c.topk]}, nbytes=_row_bytes(pairs))
        if on_progress:
            on_progress(stats)

    def sent() -> None:
        stats.sent_groups += 1

    async def send(todo: list[tuple[RequestGroup, dict[int, str]]]) -> None:
        if not todo:
            return
        if not checked:
            await check_teacher(teacher, [g for g, _ in todo])
            checked.append(True)
        t0 = time.perf_counter()
        try:
            await send_groups(teacher, todo, lambda e: e[0], receive, stats, committer,
                              max_consecutive_failures=max_consecutive_failures, stop=spent, on_send=sent)
        finally:
            stats.send_s += time.perf_counter() - t0

    await send(await missing_requests(lake, config, groups, stats))
    if escalation is not None and not spent():
        retries = await cut_retries(lake, config, groups, escalation)
        for group, cut in retries:
            keys = group.keys(config)
            retry_of.update({keys[i]: cut[i] for i in keys})
            stats.escalations.update(dict.fromkeys(keys.values(), group.problem_id))
        await send(await missing_requests(lake, config, [g for g, _ in retries], stats))
    return stats


async def cut_retries(lake: Lake, config: TeacherConfig, groups: list[RequestGroup],
                      escalation: Escalation) -> list[tuple[RequestGroup, dict[int, str]]]:
    """For each group with samples in the lake cut at max_tokens (finish_reason `length`): the
    retry group (the same prompt and indices, the escalated max_tokens) and, per index, the cut
    sample's id. Groups whose max_tokens is at the cap already get none."""
    keyed = [(g, g.keys(config)) for g in groups if escalation.max_tokens(g.sampling.max_tokens)]
    wanted = [k for _, ks in keyed for k in ks.values()]
    if not wanted:
        return []
    got = await asyncio.to_thread(
        lake.query, "SELECT s.request_key FROM samples s JOIN _k k ON s.request_key = k.v WHERE s.finish_reason = 'length'",
        tables={"_k": pa.table({"v": pa.array(wanted, pa.string())})})
    cut_keys = set(got.column("request_key").to_pylist())
    out = []
    for group, keys in keyed:
        cut = {i: k for i, k in keys.items() if k in cut_keys}
        if cut:
            longer = group.sampling.model_copy(update={"max_tokens": escalation.max_tokens(group.sampling.max_tokens)})
            out.append((RequestGroup(group.problem_id, group.messages, longer, tuple(cut)), cut))
    return out


async def missing_requests(lake: Lake, config: TeacherConfig, groups: list[RequestGroup],
                           stats: SamplingStats) -> list[tuple[RequestGroup, dict[int, str]]]:
    """Each group cut down to its keys that have no sample in the lake yet, with those keys
    (sample index -> request key); adds the planned and the already done keys to `stats`."""
    keyed = [(g, g.keys(config)) for g in groups]
    stats.keys += sum(len(k) for _, k in keyed)
    done = await asyncio.to_thread(lake.existing, "samples", "request_key", [k for _, ks in keyed for k in ks.values()])
    stats.already_done += len(done)
    todo: list[tuple[RequestGroup, dict[int, str]]] = []
    for group, keys in keyed:
        missing = {i: k for i, k in keys.items() if k not in done}
        if missing:
            todo.append((RequestGroup(group.problem_id, group.messages, group.sampling, tuple(missing)), missing))
    return todo


async def check_teacher(teacher: Teacher, groups: Sequence[RequestGroup]) -> None:
    """`Teacher.check` with the longest prompt and the largest max_tokens of `groups`: a missing
    key, an unknown model or a prompt over the context window fails before any spend."""
    longest = max(groups, key=lambda g: sum(len(m["content"]) for m in g.messages))
    await teacher.check(list(longest.messages), max_tokens=max(g.sampling.max_tokens for g in groups))


def requested(config: TeacherConfig, keys: dict[int, str], completions: list[Completion]) -> list[tuple[Completion, str]]:
    """The completions of requested sample indices, each with its request key (a backend that
    answers an index nobody asked for is logged, and its answer dropped)."""
    out = []
    for c in completions:
        key = keys.get(c.sample_index)
        if key is None:
            log.warning("teacher %s returned an unrequested sample index %s", config.name, c.sample_index)
            continue
        out.append((c, key))
    return out


def count_received(stats: SamplingStats, rows: list[dict]) -> None:
    for r in rows:
        stats.received += 1
        stats.length_cut += r["finish_reason"] == "length"
        stats.prompt_tokens += r["prompt_tokens"] or 0
        stats.completion_tokens += r["completion_tokens"] or 0
        stats.cost_usd += r["cost_usd"]


# -- the worker pool and the committer, shared with student evaluation (factory/evaluation.py) --


class GroupCounts(Protocol):
    failed_groups: int
    errors: Counter


async def send_groups(
    teacher: Teacher,
    todo: Sequence[T],
    group_of: Callable[[T], RequestGroup],
    receive: Callable[[T, list[Completion]], Awaitable[None]],
    counts: GroupCounts,
    committer: Committer,
    *,
    max_consecutive_failures: int,
    stop: Callable[[], bool] | None = None,
    on_send: Callable[[], None] | None = None,
) -> None:
    """Send each entry's request group to the teacher from up to `teacher.max_concurrency`
    tasks and hand what comes back to `receive` (which adds rows to `committer`).

    A failed group is counted in `counts` (by error label) and left for the next run. A
    401/403/404 that no retry fixes, or `max_consecutive_failures` failures in a row, stops
    every worker (each further request would fail alike) and is raised. `stop()`, asked before
    each group, ends the workers cleanly (a spent budget). Whatever happens (an error, a
    cancel), what was received is paid for: the committer is flushed on the way out."""
    pending: asyncio.Queue = asyncio.Queue()
    for entry in todo:
        pending.put_nowait(entry)
    halt: list[BaseException] = []
    consecutive_failures = 0

    async def worker() -> None:
        nonlocal consecutive_failures
        while not halt:
            if stop and stop():
                return
            try:
                entry = pending.get_nowait()
            except asyncio.QueueEmpty:
                return
            if on_send:
                on_send()
            group = group_of(entry)
            try:
                completions = await teacher.generate(group)
            except TeacherError as exc:
                counts.failed_groups += 1
                counts.errors[_error_label(exc)] += 1
                consecutive_failures += 1
                log.warning("teacher %s: group %s failed: %s", teacher.config.name, group.problem_id, exc)
                if _halts(exc) or consecutive_failures >= max_consecutive_failures:
                    halt.append(exc)
                continue
            consecutive_failures = 0
            await receive(entry, completions)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(teacher.max_concurrency, len(todo))))]
    ticker = asyncio.create_task(committer.tick())
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        ticker.cancel()
        await asyncio.gather(*workers, ticker, return_exceptions=True)
        await committer.flush()
    if halt:
        raise halt[0]


def _halts(exc: TeacherError) -> bool:
    """An error every further request would meet too (a bad key, an unknown model or path, a
    teacher that has not answered for `give_up_after_s`)."""
    return isinstance(exc, TeacherUnavailable) or (not exc.retryable and getattr(exc, "status", None) in (401, 403, 404))


def _error_label(exc: TeacherError) -> str:
    status = getattr(exc, "status", None)
    return f"http {status}" if status else type(exc).__name__


def _row_bytes(pairs: list[tuple[Completion, str]]) -> int:
    """A rough size of the rows these completions make (text twice: the completion and its
    split; top-k: k ids and log-probs per position), for the Committer's byte bound."""
    return sum(2 * len(c.text) + (c.topk.k * len(c.topk.top_logprobs) * 16 if c.topk else 0) for c, _ in pairs)


def _samples_batch_key(rows: list[dict]) -> str:
    # The set of request keys: committing the same samples twice is a no-op.
    return "samples:" + content_hash(sorted(r["request_key"] for r in rows))


class Committer:
    """Buffers rows of one lake table and commits them in exactly-once batches (group commit).

    A batch is due once `every` rows or `max_bytes` (the callers' estimate, `add(nbytes=)`) wait,
    or `interval_s` after its first row arrived (`tick`; None: no time bound), whichever first.
    Why big batches: a DuckLake commit costs ~40-60 ms whatever its size (catalog transaction,
    one Parquet file per table); at 32 rows per commit the zero-latency teacher of
    benches/flow.py spent ~8 of its 10 s of sampling in 180 commits, at 1,024 rows 6 commits
    took 1.5 s of wall and 0.3 s of CPU. Taking all that arrived while the last commit ran is
    most of the gain (every=32 then gave 760 samples/s in that bench, 1,024 gave 833).
    The time bound keeps what a SIGKILL can lose to one window (a slow teacher's rows wait at
    most `interval_s`), and fewer commits make fewer files (see Lake.compact).

    Commits run off the event loop, one at a time and in arrival order, while workers go on
    receiving; a worker waits only when four batches' worth of rows are queued behind a commit
    (memory stays bounded). `batch_key(rows)` names a batch by its contents, so committing the
    same rows twice writes nothing. Commits advance `counts.committed`. `after_commit`, when
    given, runs in the commit's thread after each commit (the sampler's compaction check), so
    it never stalls receiving either. With a `spill_dir`, rows that cannot be committed (the
    lake is down) are written to a JSONL spill file there rather than lost (`factory ingest
    SPILL --table TABLE` loads them later) and counted in `counts.spilled`; the failure is
    raised by the next `add` and by `flush`. Rows of other tables given with
    `add(rows, also=...)` are committed in the same batch. `flush()` (send_groups calls it on
    every way out) waits for the commit in flight and commits the rest."""

    def __init__(self, lake: Lake, table: str, run_id: str, counts: Any, *, batch_key: Callable[[list[dict]], str],
                 every: int = 1024, interval_s: float | None = 2.0, max_bytes: int = 64 << 20, spill_dir: str | None = None,
                 after_commit: Callable[[], object] | None = None):
        self.lake, self.table, self.run_id, self.counts = lake, table, run_id, counts
        self.batch_key, self.spill_dir, self.after_commit = batch_key, spill_dir, after_commit
        self.every, self.interval_s, self.max_bytes = max(1, every), interval_s, max_bytes
        self.rows: list[dict] = []
        self.also: dict[str, list[dict]] = {}
        self.nbytes = 0
        self.first: float | None = None  # when the oldest waiting row arrived (monotonic)
        self.inflight: asyncio.Task | None = None  # the one commit task (it drains what is due)
        self.failed: BaseException | None = None

    async def add(self, rows: list[dict], also: dict[str, list[dict]] | None = None, nbytes: int = 0) -> None:
        if rows and self.first is None:
            self.first = time.monotonic()
        self.rows.extend(rows)
        self.nbytes += nbytes
        for table, extra in (also or {}).items():
            self.also.setdefault(table, []).extend(extra)
        if self.failed is not None:  # the rows stay: flush() tries once more, then spills them
            raise self.failed
        if self._due():
            self._start()
            if len(self.rows) >= 4 * self.every or self.nbytes >= 4 * self.max_bytes:  # back-pressure
                await asyncio.shield(self.inflight)  # type: ignore[arg-type]

    async def tick(self) -> None:
        """Start the commit of rows that waited `interval_s` (send_groups runs this beside its workers)."""
        if self.interval_s is None:
            return
        while True:
            await asyncio.sleep(self.interval_s / 4)
            if self._due():
                self._start()

    async def flush(self) -> None:
        """Commit everything received: wait for the commit in flight, then commit the rest;
        raise the first commit failure (its rows are spilled, when a spill dir is set)."""
        while self.inflight is not None and not self.inflight.done():
            await asyncio.shield(self.inflight)
        if self.rows:
            self.inflight = asyncio.create_task(self._drain(force=True))  # still the only commit in flight
            await asyncio.shield(self.inflight)
        if self.failed is not None:
            raise self.failed

    def _due(self) -> bool:
        if not self.rows:
            return False
        if len(self.rows) >= self.every or self.nbytes >= self.max_bytes:
            return True
        return self.interval_s is not None and self.first is not None and time.monotonic() - self.first >= self.interval_s

    def _start(self) -> None:
        if self.inflight is None or self.inflight.done():
            self.inflight = asyncio.create_task(self._drain())

    async def _drain(self, force: bool = False) -> None:
        # A task of its own, so that cancelling a worker or the ticker never cancels a commit
        # half-way (its rows would be spilled although the commit thread still lands them).
        # A CancelledError is not caught: the commit thread may still land the batch, so its
        # rows must not be spilled too.
        while (self.failed is None and self._due()) or (force and self.rows):
            rows, self.rows = self.rows, []
            also, self.also = {t: r for t, r in self.also.items() if r}, {}
            self.nbytes, self.first = 0, None
            try:
                result = await asyncio.to_thread(self._commit, rows, also)
            except Exception as exc:
                self.failed = self.failed or exc
                if self.spill_dir is not None:
                    self._spill(self.table, rows)
                    for table, extra in also.items():
                        self._spill(table, extra, count=False)
                continue
            self.counts.committed += result.rows

    def _commit(self, rows: list[dict], also: dict[str, list[dict]]):
        result = self.lake.commit(self.table, rows, batch_key=self.batch_key(rows), run_id=self.run_id, also=also or None)
        if self.after_commit is not None:
            try:
                self.after_commit()
            except Exception:  # housekeeping: the batch is committed, the run goes on
                log.warning("after a commit to %s", self.table, exc_info=True)
        return result

    def _spill(self, table: str, rows: list[dict], count: bool = True) -> None:
        os.makedirs(self.spill_dir, exist_ok=True)  # type: ignore[arg-type]
        # A suffix: two spills within a millisecond (a failed commit, then the flush) must not overwrite.
        path = os.path.join(self.spill_dir, f"{table}-{self.run_id}-{int(time.time() * 1000)}-{os.urandom(3).hex()}.jsonl")  # type: ignore[arg-type]
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, default=str) + "\n")
        self.counts.spilled += len(rows) if count else 0
        log.error("could not commit %d row(s) of %s; kept them in %s", len(rows), table, path)
