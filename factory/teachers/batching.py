"""Micro-batching for the teachers that run a model in this process (transformers, vLLM).

Concurrent `generate` calls (the sampler keeps `max_concurrency` in flight) are gathered into
batches of at most `batch_size` rows and run by one blocking function in a worker thread, so
the sampler's concurrency becomes real batches on the device. `BatchedTeacher` gives both
backends the same check/generate/aclose over it; a backend supplies `_ensure_loaded`,
`_encode`, `_release`, a `context_window` and the batch function.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .base import Completion, RequestGroup, TeacherConfigError, TeacherError

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.005  # how long a lone row waits for company before its batch starts


@dataclass(frozen=True)
class _Prompt:
    token_ids: list[int]


class BatchedTeacher:
    """check/generate/aclose for a backend that encodes prompts and batches rows itself."""

    _batcher: MicroBatcher

    async def check(self, longest_prompt: list[dict] | None = None, max_tokens: int | None = None) -> None:
        """Load the model (TeacherConfigError naming the teacher if it cannot be), then refuse
        a prompt that leaves no room in the context window for `max_tokens` (or one) new tokens."""
        await self._ensure_loaded()
        if longest_prompt:
            self._check_length(len(self._encode(longest_prompt)), max_tokens or 1)

    async def generate(self, group: RequestGroup) -> list[Completion]:
        if not group.sample_indices:
            return []
        await self._ensure_loaded()
        prompt = self._encode(group.messages)
        self._check_length(len(prompt), group.sampling.max_tokens)
        return await self._batcher.submit(group, _Prompt(prompt))

    async def aclose(self) -> None:
        """Stop batching and drop the model (a later call loads it again)."""
        await self._batcher.aclose()
        await asyncio.to_thread(self._release)  # the lock may be held by a load in progress

    def _check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        window = self.context_window
        if window and prompt_tokens + max_tokens > window:
            raise TeacherConfigError(
                f"teacher {self.config.name!r}: a prompt of {prompt_tokens} tokens plus max_tokens={max_tokens} "
                f"does not fit the context window of {window} tokens"
            )



class _Waiter:
    """Collects the completions of one `generate` call; resolves when all its rows are done."""

    def __init__(self, future: asyncio.Future, rows: int, teacher: str, problem_id: str):
        self.future, self.remaining, self.teacher, self.problem_id = future, rows, teacher, problem_id
        self.completions: list[Completion] = []
        self.errors: list[BaseException] = []

    @property
    def live(self) -> bool:
        return not self.future.done()

    def add(self, completion: Completion) -> None:
        self.completions.append(completion)
        self._tick()

    def fail(self, error: BaseException) -> None:
        self.errors.append(error)
        self._tick()

    def _tick(self) -> None:
        self.remaining -= 1
        if self.remaining > 0 or self.future.done():
            return
        if self.completions:  # partial results are kept; the ledger resends the missing keys
            if self.errors:
                log.warning("teacher %s: %d of the samples of %s failed: %s", self.teacher, len(self.errors),
                            self.problem_id, self.errors[0])
            self.future.set_result(sorted(self.completions, key=lambda c: c.sample_index))
        else:
            self.future.set_exception(self.errors[0])


@dataclass
class BatchRow:
    """One sample index of one group, waiting for (or in) a batch."""

    group: RequestGroup
    sample_index: int
    payload: Any  # what the backend prepared for the group (prompt token ids, ...)
    submitted: float  # time.monotonic() when generate() queued it
    waiter: _Waiter = field(repr=False)


class MicroBatcher:
    """Turns concurrent `submit` calls into batches of at most `max_rows` rows for a blocking
    `run_batch(rows) -> [a Completion, or the exception of a row that failed, per row]`, run
    in a worker thread one batch at a time.

    Rows go in arrival order; a batch holds only rows of equal `key(row)` (what one engine call
    cannot mix). A batch starts when `max_rows` rows wait or `wait_s` after its first row came.
    If `run_batch` raises, each of its rows fails with that error (a group keeps the rows that
    succeeded in other batches). Works across event loops: state is rebuilt on a new loop."""

    def __init__(
        self,
        run_batch: Callable[[list[BatchRow]], list[Completion | BaseException]],
        *,
        max_rows: int,
        name: str,
        key: Callable[[BatchRow], Hashable] = lambda row: None,
        wait_s: float = BATCH_WAIT_S,
    ):
        self.run_batch, self.max_rows, self.name, self.key, self.wait_s = run_batch, max(1, max_rows), name, key, wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._pending: collections.deque[BatchRow] = collections.deque()
        self._inflight: list[BatchRow] = []
        self._wakeup: asyncio.Event | None = None

    async def submit(self, group: RequestGroup, payload: Any = None) -> list[Completion]:
        if not group.sample_indices:
            return []
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        waiter = _Waiter(loop.create_future(), len(group.sample_indices), self.name, group.problem_id)
        now = time.monotonic()
        for index in group.sample_indices:
            self._pending.append(BatchRow(group, index, payload, now, waiter))
        self._wakeup.set()
        return await waiter.future  # a cancelled caller cancels this future: its rows are skipped

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:  # first use, or a new event loop (the old one took its futures along)
            self._loop, self._task, self._wakeup = loop, None, asyncio.Event()
            self._pending.clear()
            self._inflight = []
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work(), name=f"batcher:{self.name}")

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].submitted + self.wait_s
            while len(self._pending) < self.max_rows and (delay := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                except TimeoutError:
                    break
            rows = self._take()
            if not rows:
                continue
            self._inflight = rows
            try:
                completions = await asyncio.to_thread(self.run_batch, rows)
            except Exception as exc:
                for row in rows:
                    if row.waiter.live:
                        row.waiter.fail(exc)
            else:
                for row, completion in zip(rows, completions, strict=True):
                    if not row.waiter.live:
                        continue
                    if isinstance(completion, BaseException):  # this row alone failed
                        row.waiter.fail(completion)
                    else:
                        row.waiter.add(completion)
            finally:
                self._inflight = []

    def _take(self) -> list[BatchRow]:
        """The next batch: the oldest live row and the following live rows of the same key."""
        while self._pending and not self._pending[0].waiter.live:
            self._pending.popleft()
        if not self._pending:
            return []
        key = self.key(self._pending[0])
        batch, rest = [], collections.deque()
        for row in self._pending:
            if not row.waiter.live:
                continue
            if len(batch) < self.max_rows and self.key(row) == key:
                batch.append(row)
            else:
                rest.append(row)
        self._pending = rest
        return batch

    async def aclose(self) -> None:
        """Stop the worker; whoever still waits gets a retryable TeacherError."""
        task, self._task = self._task, None
        if self._loop is not asyncio.get_running_loop():  # the worker's loop is gone, and its waiters with it
            self._pending.clear()
            self._inflight = []
            return
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        closed = TeacherError(f"teacher {self.name}: closed while the request waited", retryable=True)
        for row in [*self._pending, *self._inflight]:
            if row.waiter.live:
                row.waiter.fail(closed)
        self._pending.clear()
        self._inflight = []
