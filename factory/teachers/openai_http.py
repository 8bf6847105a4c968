"""A teacher behind any OpenAI-compatible server: `vllm serve`, SGLang, DeepSeek's API and others.

    from factory.teachers.base import Endpoint, RequestGroup, Sampling, TeacherConfig
    from factory.teachers.openai_http import OpenAITeacher

    config = TeacherConfig(name="r1", backend="openai", model="deepseek-reasoner",
                           endpoints=[Endpoint(url="https://api.deepseek.com/v1", api_key_env="DEEPSEEK_API_KEY")])
    teacher = OpenAITeacher(config)
    await teacher.check(longest_prompt)      # missing key, unreachable server, unknown model, too-long prompt
    completions = await teacher.generate(group)
    await teacher.aclose()

What one `generate` call does:

- Builds one request per chunk of the group's sample indices: with `config.supports_n` a chunk
  holds up to `config.max_n` indices and is asked for with `n`; otherwise every index is its own
  request (fan-out). Choice i of a response is sample `chunk[i]`. With a seed, each request is
  sent `seed + chunk[0]`, so fanned-out samples differ and a request for the missing indices of a
  partial `n`-request does not draw the samples it already has again.
- Servers that ignore or cap `n`: a response with fewer choices than asked teaches the client
  that endpoint's cap (the number it returned), and the indices it left out are asked for again
  in the same call, in chunks of that cap. Chunks are sized for the most limited endpoint, so
  later groups go out at the cap at once, and a chunk cut before the cap was learned is cut
  again before it is sent. A 400 to a request with n > 1 is retried as one request per index;
  when such a request then succeeds there, that endpoint is asked one sample per request from
  then on (a 400 to one index as well was not about `n`, and is raised). An index left out of
  `max_reasks` + 1 answers in a row is given up for this call (the ledger asks again next run).
- `config.api` picks `/chat/completions` (messages) or `/completions` (a prompt: the messages'
  contents joined by blank lines, or the given tokenizer's chat template).
- Reasoning comes from `message.reasoning_content` (DeepSeek, vLLM reasoning parsers) or
  `message.reasoning`; otherwise it stays in the text for `split_reasoning` to cut at `<think>`.
- Usage: with n > 1 the server bills the call, not the choices. Prompt tokens are split evenly
  over the returned choices (the remainder goes to the first ones), and completion tokens in
  proportion to each choice's characters (largest remainder), so the sum over a call is
  exactly what the server billed and each sample carries its share of the cost. Such
  completions have `extra["usage_split"] = True`: their per-sample token counts are estimates.
- `config.stream`: server-sent events, deltas assembled per choice, usage from the final chunk
  (`stream_options.include_usage`); no bytes for `config.stall_timeout_s` is a retryable stall.
- `Sampling.top_logprobs = k` sends `logprobs: true, top_logprobs: k` (chat) or `logprobs: k`
  (completions), and `return_tokens_as_token_ids: true` with `config.logprob_token_ids` (vLLM's
  server: tokens come back as `token_id:N`, so ids are known). Each choice's `logprobs` (streamed
  or not) becomes `Completion.topk`: token ids when every token came as `token_id:N`, else the
  token strings; `k` is the most alternatives the server gave at one position.
- `latency_s` is the successful attempt's time (queueing for a slot and failed attempts left
  out); `extra["attempts"]` counts the attempts, `extra["model"]` is the model the server named.

How it survives real endpoints:

- Each endpoint has up to `max_concurrency` requests in flight, fewer under rate limits
  (AIMD): a 429 halves that endpoint's limit, once per congestion event (429s of requests sent
  before the cut do not cut again), down to 1, and each success adds one back. Requests holding
  a slot finish; no new one starts until the count is under the limit, so the load the server
  sees falls at once. A request goes to the least-loaded healthy endpoint (in flight / limit),
  and a retry prefers an endpoint it has not tried yet.
- Retried: 408, 409, 429, 5xx, connection errors, timeouts, stalls, malformed JSON (a garbage
  200) and a response without choices. Waits are full-jitter exponential backoff
  (`backoff_base_s` * 2^k, capped at `backoff_cap_s`); a `Retry-After` (seconds or HTTP date)
  keeps that endpoint idle until then. Nothing waits past the request's deadline
  (`config.request_timeout_s` from its first attempt): a wait that would is given up at once.
- A retry budget per teacher (a token bucket: `retry_budget_floor` tokens to start with, each
  request adds `retry_budget_ratio`, each retry costs one) keeps a 500 storm from multiplying
  the load: with the budget spent, failures are raised instead of retried. Retries of a 429
  cost nothing: the AIMD limit already bounds that load.
- Giving up: when attempts keep failing (any retryable failure) and none succeeds for
  `config.give_up_after_s` (time with no request in progress not counted), the teacher raises
  `TeacherUnavailable` ("no request succeeded for N s ... the last: HTTP 429 ...") from that
  request and from every request queued, backing off or waiting for an endpoint, and refuses
  new ones in this event loop; the sampler stops its workers on it (samples received are
  committed) instead of cycling with nothing arriving.
- A circuit breaker per endpoint opens after `breaker_failures` consecutive failures; after
  `breaker_cooldown_s` one probe request is let through (half-open) and its success closes it.
  While every endpoint is open, requests wait for the earliest probe, within their deadline.
- Other 4xx are not retried: `TeacherError(retryable=False)` with the status and the server's
  message (a 400 to n > 1 aside, above). `finish_reason="length"` is a normal completion.

One teacher object lives in one event loop: `generate` and `aclose` must run in the same one
(`check` opens and closes its own session, so it may run in another). Not covered: a stream
cut mid-way is retried whole (its partial text is not kept); a Retry-After is taken per
endpoint, not per API key, and so is the AIMD limit; servers that reject `stream_options` need
`stream: false`; a server that returns fewer choices for a passing reason (not a cap) still
lowers that endpoint's cap for the rest of the run.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from storage.errors import require

from .base import Completion, RequestGroup, TeacherConfig, TeacherConfigError, TeacherError, TeacherUnavailable, TopK

try:  # orjson is several times faster on large responses; the standard library is the fallback
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    _loads = json.loads

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx
MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators a chat template adds per message


class _AttemptFailed(Exception):
    """One attempt failed in a way a retry may fix (or not: `retryable`)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        endpoint_fault: bool = True,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        # False when the endpoint answered properly (a 4xx, a 429): the breaker counts it alive.
        self.endpoint_fault = endpoint_fault


class _Resend(Exception):
    """A chunk was not answered as sent and goes back to `generate` to be cut again: the endpoint
    is now known to take fewer choices per request (`single`: it answered 400 to `n` > 1)."""

    def __init__(self, *, single: bool):
        super().__init__("resend")
        self.single = single


@dataclass(eq=False)
class _EndpointState:
    url: str
    api_key_env: str | None
    max_concurrency: int
    headers: dict | None = None
    in_flight: int = 0  # holding or waiting for a slot: the load the picker balances
    # AIMD: the slots a request may hold now (halved on a 429, one back per success) and the
    # requests holding one; waiters queue in order. `epoch` counts the halvings, so the 429s of
    # requests sent before a halving do not halve again (one cut per congestion event).
    limit: int = 1
    active: int = 0
    waiters: collections.deque = field(default_factory=collections.deque)
    epoch: int = 0
    # `n`: the most choices this endpoint returned for one request, once it returned fewer than
    # asked (None: it has given all it was asked for); `n_suspect`: it answered 400 to n > 1,
    # confirmed (n_cap = 1) when a one-choice request then succeeds there.
    n_cap: int | None = None
    n_suspect: bool = False
    failures: int = 0  # consecutive; the breaker is open while >= breaker_failures
    open_until: float = 0.0  # monotonic time the breaker half-opens
    probing: bool = False  # a half-open probe is in flight
    not_before: float = 0.0  # Retry-After: idle until this monotonic time


class OpenAITeacher:
    """The `Teacher` protocol over HTTP; see the module docstring."""

    # Class-level so tests (and users with unusual servers) can change them; each can also be
    # given to the constructor for one teacher.
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    retry_budget_ratio: float = 0.2  # retries may be at most this share of requests...
    retry_budget_floor: float = 10.0  # ...plus this many, so a lone request can still retry
    retry_budget_max: float = 100.0  # tokens saved up in calm times, so a storm meets a bounded burst
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    check_timeout_s: float = 5.0
    chars_per_token: float = 3.0  # prompt-length estimate without a tokenizer; see estimate_tokens
    max_reasks: int = 3  # times an index a server left out of an answered request is asked for again

    def __init__(self, config: TeacherConfig, *, tokenizer: Any = None, **overrides: float):
        if config.backend != "openai":
            raise TeacherConfigError(f"teacher {config.name!r}: backend is {config.backend!r}; OpenAITeacher serves backend 'openai'")
        if not config.endpoints:
            raise TeacherConfigError(
                f"teacher {config.name!r}: no endpoints; give at least one, e.g. endpoints: [{{url: 'http://127.0.0.1:8000/v1'}}]"
            )
        for key, value in overrides.items():
            if not hasattr(type(self), key) or key.startswith("_"):
                raise TypeError(f"OpenAITeacher: unknown setting {key!r}")
            setattr(self, key, value)
        self.aiohttp = require("aiohttp", "pip install aiohttp")
        self.config = config
        self.tokenizer = tokenizer
        self._endpoints = [_EndpointState(e.url, e.api_key_env, e.max_concurrency, limit=e.max_concurrency) for e in config.endpoints]
        self._path = "/chat/completions" if config.api == "chat" else "/completions"
        self._session = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set when a breaker changes state
        self._budget = float(self.retry_budget_floor)
        self._budget_warned = False
        # The give-up clock: failing since (monotonic; None after a success), and the time with no
        # request in progress, which does not count (an idle teacher is not a failing one).
        self._failing_since: float | None = None
        self._calls = 0
        self._idle_since: float | None = None
        self._gave_up: TeacherUnavailable | None = None  # latched for this event loop
        self._stop: asyncio.Event | None = None  # set on giving up: wakes requests sleeping in backoff

    # -- the protocol ----------------------------------------------------------------------

    @property
    def max_concurrency(self) -> int:
        # Requests beyond this queue for a slot; queueing does not count against the deadline.
        return sum(e.max_concurrency for e in self._endpoints)

    async def generate(self, group: RequestGroup) -> list[Completion]:
        self._ensure_session()
        if self._gave_up is not None:
            raise self._gave_up
        got: dict[int, Completion] = {}
        errors: list[TeacherError] = []
        left_out: collections.Counter = collections.Counter()  # index -> answered requests that left it out
        single = False  # an endpoint answered 400 to n > 1: this group asks one index per request
        todo = tuple(group.sample_indices)
        while todo:
            chunks = self._chunks(todo, 1 if single else None)
            results = await asyncio.gather(*(self._call(group, c) for c in chunks), return_exceptions=True)
            again: list[int] = []
            for chunk, result in zip(chunks, results):
                if isinstance(result, _Resend):  # not answered as sent: cut again, no ask spent
                    single = single or result.single
                    again.extend(chunk)
                elif isinstance(result, TeacherError):
                    errors.append(result)
                elif isinstance(result, BaseException):
                    raise result  # a bug, or a cancellation: not a partial result
                else:
                    for c in result:
                        got.setdefault(c.sample_index, c)
                    for i in chunk:
                        if i not in got:
                            left_out[i] += 1
                            if left_out[i] <= self.max_reasks:
                                again.append(i)
            todo = tuple(again)
        if errors and not got:
            # A permanent error says more than a transient one about what to fix.
            raise next((e for e in errors if not e.retryable), errors[0])
        if errors:  # the completions already paid for are kept; the ledger resends the rest
            log.warning(
                "teacher %r: %d requests for problem %s failed; keeping the %d samples received: %s",
                self.config.name, len(errors), group.problem_id, len(got), errors[0],
            )
        given_up = [i for i, k in left_out.items() if k > self.max_reasks]
        if given_up:
            log.warning(
                "teacher %r: problem %s: sample indices %s were left out of %d answers in a row; the next run asks again",
                self.config.name, group.problem_id, given_up, self.max_reasks + 1,
            )
        return [got[i] for i in group.sample_indices if i in got]

    async def check(self, longest_prompt: list[dict] | None = None, max_tokens: int | None = None) -> None:
        name = self.config.name
        for ep in self._endpoints:
            if ep.api_key_env and not os.environ.get(ep.api_key_env):
                raise TeacherConfigError(
                    f"teacher {name!r}: the API key environment variable {ep.api_key_env} is not set (endpoint {ep.url})"
                )
        if longest_prompt is not None and self.config.context_window:
            tokens = self.estimate_tokens(longest_prompt)
            if tokens > self.config.context_window:
                how = "counted by the tokenizer" if self.tokenizer is not None else f"estimated at {self.chars_per_token:g} characters a token"
                raise TeacherConfigError(
                    f"teacher {name!r}: the longest prompt is {tokens} tokens ({how}), longer than the "
                    f"context window of {self.config.context_window}; shorten it or raise context_window"
                )
            if max_tokens and tokens + max_tokens > self.config.context_window:
                # Only a warning: without a tokenizer the count is a deliberate overestimate, and
                # servers cap max_tokens themselves or answer 400, which fails that request alone.
                log.warning(
                    "teacher %r: the longest prompt (~%d tokens) plus max_tokens %d exceeds the context window %d",
                    name, tokens, max_tokens, self.config.context_window,
                )
        # A session of its own, closed here: check() may run in another event loop than generate().
        async with self.aiohttp.ClientSession(timeout=self.aiohttp.ClientTimeout(total=self.check_timeout_s)) as session:
            results = await asyncio.gather(*(self._list_models(session, ep) for ep in self._endpoints))
        down = [(ep, why) for ep, (ok, why) in zip(self._endpoints, results) if not ok]
        if len(down) == len(self._endpoints):
            where = "; ".join(f"{ep.url}: {why}" for ep, why in down)
            raise TeacherConfigError(f"teacher {name!r}: no endpoint is reachable ({where})")
        for ep, why in down:
            log.warning("teacher %r: endpoint %s is unreachable (%s); sending to the others", name, ep.url, why)
            # Start with its breaker open so no request waits on it; a probe will find it if it comes up.
            ep.failures = max(ep.failures, self.breaker_failures)
            ep.open_until = time.monotonic() + self.breaker_cooldown_s

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        if self._loop is not asyncio.get_running_loop():
            # Its connections belong to another (closed) loop and cannot be closed from this one.
            log.warning("teacher %r: aclose() called from another event loop than generate(); its connections leak", self.config.name)
            session.detach()
            return
        await session.close()

    async def __aenter__(self) -> OpenAITeacher:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- helpers callers may use ------------------------------------------------------------

    def estimate_tokens(self, messages: list[dict]) -> int:
        """Prompt tokens: exact with a tokenizer (an object with `apply_chat_template` or
        `encode`, or a callable str -> count), else ceil(characters / 3) plus 4 per message.
        Three characters a token is deliberately pessimistic for English (about four), close
        for code, maths and non-Latin scripts: the check may refuse a prompt that would just
        fit, but does not let through one that cannot."""
        tok = self.tokenizer
        if tok is not None and hasattr(tok, "apply_chat_template"):
            # Render then encode: tokenize=True returns a dict in newer transformers, ids in older.
            text = tok.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
            return len(tok.encode(text, add_special_tokens=False))
        texts = [str(m.get("content") or "") for m in messages]
        if tok is not None and hasattr(tok, "encode"):
            return sum(len(tok.encode(t)) for t in texts) + MESSAGE_OVERHEAD_TOKENS * len(texts)
        if callable(tok):
            return sum(int(tok(t)) for t in texts) + MESSAGE_OVERHEAD_TOKENS * len(texts)
        return math.ceil(sum(len(t) for t in texts) / self.chars_per_token) + MESSAGE_OVERHEAD_TOKENS * len(texts)

    # -- session and endpoints ----------------------------------------------------------------

    def _ensure_session(self) -> None:
        """One ClientSession per teacher, made inside the running loop (aiohttp binds it there)."""
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is loop and not self._session.closed:
            return
        headers = [self._headers(ep) for ep in self._endpoints]  # a missing key fails before any connection
        if self._session is not None and not self._session.closed:
            # Its connections belong to a loop that is gone; they cannot be closed from here.
            log.warning("teacher %r: used from a new event loop without aclose() in the old one; its connections leak", self.config.name)
            self._session.detach()
        aiohttp = self.aiohttp
        # Every endpoint's slots: more connections than requests in flight would only idle.
        connector = aiohttp.TCPConnector(limit=sum(e.max_concurrency for e in self._endpoints), limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        self._loop = loop
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._gave_up = None
        self._failing_since = None
        self._calls = 0
        for ep, h in zip(self._endpoints, headers):
            # What was learned of the endpoint (its n cap, its AIMD limit) stays; the slots and
            # their waiters belonged to the old loop.
            ep.active = 0
            ep.waiters = collections.deque()
            ep.in_flight = 0
            ep.probing = False
            ep.headers = h

    def _headers(self, ep: _EndpointState) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
            if not key:
                raise TeacherConfigError(
                    f"teacher {self.config.name!r}: the API key environment variable {ep.api_key_env} is not set (endpoint {ep.url})"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _notify(self) -> None:
        """Wake requests waiting for an endpoint to become usable."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _pick(self, tried: set, give_up_at: float) -> _EndpointState:
        """The least-loaded usable endpoint, preferring untried ones; waits while none is usable."""
        while True:
            if self._gave_up is not None:
                raise self._gave_up
            now = time.monotonic()
            usable = []
            ready_at = math.inf
            for ep in self._endpoints:
                if ep.failures >= self.breaker_failures:
                    if ep.probing:
                        continue  # woken when the probe ends
                    if now < ep.open_until:
                        ready_at = min(ready_at, ep.open_until)
                        continue
                if now < ep.not_before:
                    ready_at = min(ready_at, ep.not_before)
                    continue
                usable.append(ep)
            if usable:
                fresh = [ep for ep in usable if ep not in tried] or usable
                ep = min(fresh, key=lambda e: e.in_flight / e.limit)
                if ep.failures >= self.breaker_failures:
                    ep.probing = True  # half-open: this request is the probe
                    log.info("teacher %r: probing %s after its circuit cool-down", self.config.name, ep.url)
                return ep
            if ready_at >= give_up_at:
                raise _AttemptFailed(
                    "no endpoint is usable before the request deadline (circuits open or Retry-After in force)",
                    retryable=True,
                    endpoint_fault=False,
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=max(0.0, min(ready_at, give_up_at) - now))
            except TimeoutError:
                pass

    def _succeeded(self, ep: _EndpointState) -> None:
        if ep.failures >= self.breaker_failures:
            log.warning("teacher %r: endpoint %s answers again; circuit closed", self.config.name, ep.url)
            ep.failures = 0
            ep.probing = False
            self._notify()
        else:
            ep.failures = 0

    def _failed(self, ep: _EndpointState) -> None:
        now = time.monotonic()
        was_open = ep.failures >= self.breaker_failures and now < ep.open_until and not ep.probing
        ep.failures += 1
        if ep.failures >= self.breaker_failures and not was_open:
            # Opening from closed, or a failed probe / straggler after the cool-down: (re)open.
            ep.open_until = now + self.breaker_cooldown_s
            if ep.probing or ep.failures == self.breaker_failures:
                log.warning(
                    "teacher %r: endpoint %s failed %d times in a row; circuit open for %gs",
                    self.config.name, ep.url, ep.failures, self.breaker_cooldown_s,
                )
            ep.probing = False
            self._notify()

    def _spend_retry(self) -> bool:
        if self._budget >= 1.0:
            self._budget -= 1.0
            self._budget_warned = False
            return True
        if not self._budget_warned:
            self._budget_warned = True
            log.warning("teacher %r: retry budget spent; failing requests instead of retrying them", self.config.name)
        return False

    # -- AIMD slots and the give-up clock ----------------------------------------------------------

    async def _acquire(self, ep: _EndpointState) -> int:
        """A slot of `ep` under its current AIMD limit, in arrival order; returns the epoch the
        request is sent in. Raises TeacherUnavailable once the teacher has given up."""
        if self._gave_up is not None:
            raise self._gave_up
        if ep.active < ep.limit and not ep.waiters:
            ep.active += 1
            return ep.epoch
        fut = asyncio.get_running_loop().create_future()
        ep.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(ep)  # granted, then cancelled before it could be used
            elif fut in ep.waiters:
                ep.waiters.remove(fut)  # a dead waiter must not keep the next request off the fast path
            raise
        return ep.epoch

    def _release(self, ep: _EndpointState) -> None:
        ep.active -= 1
        self._grant(ep)

    def _grant(self, ep: _EndpointState) -> None:
        while ep.waiters and ep.active < ep.limit:
            fut = ep.waiters.popleft()
            if not fut.done():  # a waiter cancelled meanwhile is skipped
                ep.active += 1
                fut.set_result(None)

    def _rate_limited(self, ep: _EndpointState, epoch: int) -> None:
        """A 429: halve the endpoint's slots, once per congestion event (the 429s of requests
        sent before the cut say nothing new). Requests holding slots finish; no new one starts
        until the count is under the new limit, so the load the server sees really falls."""
        if epoch != ep.epoch:
            return
        ep.epoch += 1
        if ep.limit > 1:
            ep.limit = max(1, ep.limit // 2)
            log.warning("teacher %r: %s is rate-limiting (429); at most %d requests in flight there now", self.config.name, ep.url, ep.limit)

    def _answered(self, ep: _EndpointState) -> None:
        """A success: one more slot (up to max_concurrency), and the give-up clock stops."""
        self._failing_since = None
        if ep.limit < ep.max_concurrency:
            ep.limit += 1
            if ep.limit == ep.max_concurrency:
                log.info("teacher %r: %s is back to %d requests in flight", self.config.name, ep.url, ep.limit)
            self._grant(ep)

    def _failing(self, last: str, status: int | None) -> None:
        """A failed attempt (one a retry may fix): starts the give-up clock, or gives up when it
        has run `give_up_after_s` with no success since."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elapsed = now - self._failing_since
        if elapsed < self.config.give_up_after_s:
            return
        err = TeacherUnavailable(
            f"teacher {self.config.name!r}: no request succeeded for {elapsed:.0f} s of failures "
            f"(give_up_after_s: {self.config.give_up_after_s:g}); the last: {last}",
            status=status,
        )
        log.error("%s", err)
        self._gave_up = err
        for ep in self._endpoints:  # requests queued for a slot, asleep in backoff or waiting for an endpoint
            while ep.waiters:
                fut = ep.waiters.popleft()
                if not fut.done():
                    fut.set_exception(err)
        if self._stop is not None:
            self._stop.set()
        self._notify()
        raise err

    def _enter(self) -> None:
        if self._calls == 0 and self._idle_since is not None and self._failing_since is not None:
            self._failing_since += time.monotonic() - self._idle_since  # idle time is not failing time
        self._calls += 1

    def _leave(self) -> None:
        self._calls -= 1
        if self._calls == 0:
            self._idle_since = time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        """Backoff that ends early, raising, when the teacher gives up meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
        if self._gave_up is not None:
            raise self._gave_up

    # -- one call (a chunk of sample indices) ---------------------------------------------------

    def _chunks(self, indices: tuple[int, ...], size: int | None = None) -> list[tuple[int, ...]]:
        """Requests of at most `size` indices; by default the most `n` every endpoint takes (a
        chunk must fit whichever endpoint it goes to)."""
        if not indices:
            return []
        if size is None:
            size = self.config.max_n if self.config.supports_n else 1
            size = min([size, *(ep.n_cap for ep in self._endpoints if ep.n_cap is not None)])
        return [tuple(indices[i : i + size]) for i in range(0, len(indices), size)]

    def _learn_n(self, ep: _EndpointState, asked: int, answered: int) -> None:
        if ep.n_cap is None or answered < ep.n_cap:
            ep.n_cap = answered
            log.warning(
                "teacher %r: %s answered n=%d with %d choice(s); asking it for at most %d per request from now on",
                self.config.name, ep.url, asked, answered, answered,
            )

    def _body(self, group: RequestGroup, chunk: tuple[int, ...]) -> bytes:
        s = group.sampling
        body: dict[str, Any] = {"model": self.config.model}
        if self.config.api == "chat":
            body["messages"] = [dict(m) for m in group.messages]
        else:
            body["prompt"] = self._prompt_text(group.messages)
        body["max_tokens"] = s.max_tokens
        body["temperature"] = s.temperature
        body["top_p"] = s.top_p
        if len(chunk) > 1:
            body["n"] = len(chunk)  # omitted for 1: some hosted APIs reject the field
        if s.seed is not None:
            body["seed"] = s.seed + chunk[0]
        if s.stop:
            body["stop"] = list(s.stop)
        if s.top_logprobs:
            body.update({"logprobs": True, "top_logprobs": s.top_logprobs} if self.config.api == "chat" else {"logprobs": s.top_logprobs})
            if self.config.logprob_token_ids:
                body["return_tokens_as_token_ids"] = True
        if self.config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return _dumps(body)

    def _prompt_text(self, messages) -> str:
        tok = self.tokenizer
        if tok is not None and hasattr(tok, "apply_chat_template"):
            return tok.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        return "\n\n".join(str(m.get("content") or "") for m in messages)

    async def _call(self, group: RequestGroup, chunk: tuple[int, ...]) -> list[Completion]:
        self._enter()
        try:
            return await self._send(group, chunk)
        finally:
            self._leave()

    async def _send(self, group: RequestGroup, chunk: tuple[int, ...]) -> list[Completion]:
        """One request for `chunk`, retried; raises `_Resend` when the chunk must be cut smaller."""
        name = self.config.name
        body = self._body(group, chunk)
        self._budget = min(self._budget + self.retry_budget_ratio, max(self.retry_budget_max, self.retry_budget_floor))
        started = time.monotonic()
        deadline: float | None = None  # set when the first attempt gets a slot: local queueing is free
        tried: set = set()
        attempt = 0
        last = ""
        while True:
            give_up_at = deadline if deadline is not None else started + self.config.request_timeout_s
            try:
                ep = await self._pick(tried, give_up_at)
            except _AttemptFailed as exc:
                where = f"teacher {name!r}: {exc}; after {attempt} attempts, the last: {last}"
                self._failing(str(exc), None)
                raise TeacherError(where, retryable=True) from None
            probe = ep.probing
            tried.add(ep)
            ep.in_flight += 1
            error: _AttemptFailed | None = None
            sent = finished = False
            try:
                epoch = await self._acquire(ep)
                try:
                    # The endpoint may have shown a smaller n cap while this chunk queued: no request
                    # that is known to come back short is sent; the chunk is cut again instead.
                    if ep.n_cap is None or len(chunk) <= ep.n_cap:
                        sent = True
                        t0 = time.monotonic()
                        if deadline is None:
                            deadline = t0 + self.config.request_timeout_s
                        attempt += 1
                        try:
                            completions = await self._attempt(ep, body, chunk, deadline - t0)
                        except _AttemptFailed as exc:
                            error = exc
                finally:
                    self._release(ep)
                finished = True
            finally:
                ep.in_flight -= 1
                if probe and not (finished and sent):  # cancelled or not sent while probing: let another request probe
                    ep.probing = False
                    self._notify()
            if not sent:
                raise _Resend(single=False)
            if error is None:
                self._succeeded(ep)
                self._answered(ep)
                if len(completions) < len(chunk):
                    self._learn_n(ep, len(chunk), len(completions))
                elif len(chunk) == 1 and ep.n_suspect:
                    ep.n_suspect = False
                    ep.n_cap = 1
                    log.warning("teacher %r: %s refuses n > 1 (HTTP 400); asking it for one sample per request from now on", name, ep.url)
                latency = time.monotonic() - t0
                for c in completions:
                    c.latency_s = latency
                    c.endpoint = ep.url
                    c.extra["attempts"] = attempt
                return completions
            if error.endpoint_fault:
                self._failed(ep)
            else:
                self._succeeded(ep)  # it answered properly: alive, whatever it said
            if error.status == 429:
                self._rate_limited(ep, epoch)
            if error.retry_after is not None:
                ep.not_before = max(ep.not_before, time.monotonic() + error.retry_after)
            where = f"teacher {name!r}: {ep.url}: {error}"
            last = f"{ep.url}: {error}"
            if error.status == 400 and len(chunk) > 1:
                # Many servers and gateways refuse `n`; the same indices one per request tell
                # whether that was the reason (a 400 then too: it was not, and is raised).
                ep.n_suspect = True
                log.info("%s; asking for the %d samples one per request", where, len(chunk))
                raise _Resend(single=True)
            if not error.retryable:
                if error.status == 400:
                    ep.n_suspect = False  # a one-sample request was refused too: not about n
                raise TeacherError(where, retryable=False, status=error.status)
            self._failing(last, error.status)
            now = time.monotonic()
            if now >= deadline:
                raise TeacherError(
                    f"{where}; the request deadline ({self.config.request_timeout_s:g}s from the first attempt) passed after {attempt} attempts",
                    retryable=True,
                    status=error.status,
                )
            if min(self._ready_at(ep2, now) for ep2 in self._endpoints) >= deadline:
                # Every endpoint is closed (Retry-After, open circuit) until past the deadline: no
                # point waiting for a retry that cannot be sent.
                raise TeacherError(
                    f"{where}; no endpoint may be retried before the request deadline "
                    f"({self.config.request_timeout_s:g}s from the first attempt)",
                    retryable=True,
                    status=error.status,
                )
            # A 429 is paced by the AIMD limit (and the give-up clock), not the retry budget,
            # which is there to keep a 5xx storm from multiplying the load.
            if error.status != 429 and not self._spend_retry():
                raise TeacherError(f"{where}; not retried: the teacher's retry budget is spent", retryable=True, status=error.status)
            wait = random.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))
            if now + wait >= deadline:
                raise TeacherError(
                    f"{where}; the next backoff would pass the request deadline after {attempt} attempts",
                    retryable=True,
                    status=error.status,
                )
            log.debug("%s; attempt %d, retrying in %.2fs", where, attempt, wait)
            await self._sleep(wait)

    def _ready_at(self, ep: _EndpointState, now: float) -> float:
        """When `ep` may next be sent a request (now, or the end of its cool-down or Retry-After)."""
        t = max(now, ep.not_before)
        if ep.failures >= self.breaker_failures and not ep.probing:
            t = max(t, ep.open_until)
        return t

    async def _attempt(self, ep: _EndpointState, body: bytes, chunk: tuple[int, ...], remaining: float) -> list[Completion]:
        aiohttp = self.aiohttp
        stream = self.config.stream
        # A stream must keep talking: sock_read bounds the silence between reads. A plain request
        # may think in silence for minutes, so only the deadline bounds it.
        timeout = aiohttp.ClientTimeout(total=remaining, sock_read=self.config.stall_timeout_s if stream else None)
        try:
            async with self._session.post(ep.url + self._path, data=body, headers=ep.headers, timeout=timeout) as resp:
                status = resp.status
                if status != 200:
                    raise self._http_error(status, await resp.read(), resp.headers.get("Retry-After"))
                if stream:
                    return await self._read_stream(resp, chunk)
                raw = await resp.read()
        except _AttemptFailed:
            raise
        except aiohttp.SocketTimeoutError:  # must come before the general timeout below
            raise _AttemptFailed(f"stream stalled: no bytes for {self.config.stall_timeout_s:g}s", retryable=True) from None
        except TimeoutError:
            raise _AttemptFailed(f"no complete answer within the request deadline ({remaining:.1f}s left)", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _AttemptFailed(f"connection error: {type(exc).__name__}: {exc}", retryable=True) from None
        return self._parse(raw, chunk)

    def _http_error(self, status: int, raw: bytes, retry_after: str | None) -> _AttemptFailed:
        message = _server_message(raw)
        retryable = status in RETRYABLE_STATUS or status >= 500
        return _AttemptFailed(
            f"HTTP {status}: {message}",
            retryable=retryable,
            status=status,
            retry_after=_parse_retry_after(retry_after) if retryable else None,
            endpoint_fault=status >= 500,
        )

    def _parse(self, raw: bytes, chunk: tuple[int, ...]) -> list[Completion]:
        try:
            data = _loads(raw)
        except ValueError:
            raise _AttemptFailed(f"malformed JSON in a 200 response: {raw[:200]!r}", retryable=True) from None
        if not isinstance(data, dict):
            raise _AttemptFailed(f"a 200 response that is not a JSON object: {raw[:200]!r}", retryable=True)
        choices = data.get("choices")
        if not choices or not isinstance(choices, list):
            err = data.get("error")
            why = f"error in a 200 response: {_error_text(err)}" if err else "a 200 response without choices"
            raise _AttemptFailed(why, retryable=True)
        chat = self.config.api == "chat"
        seen: dict[int, tuple[str, str | None, str | None]] = {}
        logprobs: dict[int, Any] = {}
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            i = choice.get("index", pos)
            if not isinstance(i, int) or not 0 <= i < len(chunk) or i in seen:
                log.warning("teacher %r: ignoring a choice with index %r (asked for %d)", self.config.name, i, len(chunk))
                continue
            if chat:
                msg = choice.get("message") or {}
                text = msg.get("content") or ""
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            else:
                text = choice.get("text") or ""
                reasoning = None
            seen[i] = (text, reasoning, choice.get("finish_reason"))
            logprobs[i] = choice.get("logprobs")
        if not seen:
            raise _AttemptFailed("a 200 response without usable choices", retryable=True)
        return self._completions(chunk, seen, data.get("usage"), data.get("model"), logprobs)

    async def _read_stream(self, resp, chunk: tuple[int, ...]) -> list[Completion]:
        chat = self.config.api == "chat"
        texts: dict[int, list[str]] = {}
        reasonings: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        logprobs: dict[int, dict] = {}
        usage = None
        model = None
        done = False
        data: list[bytes] = []

        def handle(payload: bytes) -> bool:
            nonlocal usage, model
            if payload == b"[DONE]":
                return True
            try:
                obj = _loads(payload)
            except ValueError:
                raise _AttemptFailed(f"malformed JSON in a stream event: {payload[:200]!r}", retryable=True) from None
            if not isinstance(obj, dict):
                raise _AttemptFailed(f"a stream event that is not a JSON object: {payload[:200]!r}", retryable=True)
            if obj.get("error"):
                raise _stream_error(obj["error"])
            model = obj.get("model") or model
            if obj.get("usage"):
                usage = obj["usage"]
            for pos, ch in enumerate(obj.get("choices") or ()):
                i = ch.get("index", pos)
                if not isinstance(i, int) or not 0 <= i < len(chunk):
                    continue
                if chat:
                    delta = ch.get("delta") or {}
                    piece = delta.get("content")
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                else:
                    piece = ch.get("text")
                    thought = None
                texts.setdefault(i, [])
                if piece:
                    texts[i].append(piece)
                if thought:
                    reasonings.setdefault(i, []).append(thought)
                if ch.get("finish_reason"):
                    finish[i] = ch["finish_reason"]
                if isinstance(ch.get("logprobs"), dict):  # each event carries its tokens' entries: concatenate
                    for name, part in ch["logprobs"].items():
                        if isinstance(part, list):
                            logprobs.setdefault(i, {}).setdefault(name, []).extend(part)
            return False

        # Lines are split here rather than with readline, whose 128 KiB limit a big event can pass.
        rest = b""
        async for piece in resp.content.iter_any():
            *lines, rest = (rest + piece).split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if not line:  # an event ends at a blank line
                    if data:
                        done = handle(b"\n".join(data))
                        data = []
                        if done:
                            break
                elif line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                # comments (":") and event:/id:/retry: fields carry nothing we use
            if done:
                break
        if not done and rest.startswith(b"data:"):
            data.append(rest[6:] if rest[5:6] == b" " else rest[5:])
        if not done and data:
            done = handle(b"\n".join(data))
        if not texts:
            raise _AttemptFailed("a stream without choices", retryable=True)
        if not done and any(i not in finish for i in texts):
            raise _AttemptFailed("the stream ended before [DONE] with unfinished choices", retryable=True)
        seen = {
            i: ("".join(parts), "".join(reasonings[i]) if i in reasonings else None, finish.get(i))
            for i, parts in sorted(texts.items())
        }
        return self._completions(chunk, seen, usage, model, logprobs)

    def _completions(self, chunk, seen: dict, usage, model, logprobs: dict | None = None) -> list[Completion]:
        indices = sorted(seen)
        prompt_total = completion_total = None
        if isinstance(usage, dict):
            prompt_total = usage.get("prompt_tokens")
            completion_total = usage.get("completion_tokens")
        k = len(indices)
        prompts = _split_even(prompt_total, k)
        weights = [len(seen[i][0]) + len(seen[i][1] or "") for i in indices]
        completions_tokens = _split_weighted(completion_total, weights)
        out = []
        for j, i in enumerate(indices):
            text, reasoning, finish_reason = seen[i]
            extra: dict = {}
            if model:
                extra["model"] = model
            if k > 1:
                extra["usage_split"] = True
            out.append(
                Completion(
                    sample_index=chunk[i],
                    text=text,
                    finish_reason=finish_reason,
                    reasoning_content=reasoning,
                    prompt_tokens=prompts[j],
                    completion_tokens=completions_tokens[j],
                    extra=extra,
                    topk=_topk((logprobs or {}).get(i)),
                )
            )
        return out

    async def _list_models(self, session, ep: _EndpointState) -> tuple[bool, str]:
        """(reachable, why not); raises TeacherConfigError for a bad key or an unknown model."""
        aiohttp = self.aiohttp
        name = self.config.name
        try:
            async with session.get(ep.url + "/models", headers=self._headers(ep)) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            return False, f"no answer within {self.check_timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if status in (401, 403):
            raise TeacherConfigError(
                f"teacher {name!r}: {ep.url} refused the API key from {ep.api_key_env or '(no key configured)'}: HTTP {status}: {_server_message(raw)}"
            )
        if status >= 500:
            return False, f"HTTP {status}: {_server_message(raw)}"
        if status != 200:
            log.warning("teacher %r: %s/models answered HTTP %d; cannot check the model name there", name, ep.url, status)
            return True, ""
        try:
            served = [m["id"] for m in _loads(raw)["data"]]
        except (ValueError, KeyError, TypeError):
            log.warning("teacher %r: %s/models sent an unexpected list; cannot check the model name there", name, ep.url)
            return True, ""
        if self.config.model not in served:
            raise TeacherConfigError(
                f"teacher {name!r}: model {self.config.model!r} is not served at {ep.url}; it serves: {', '.join(map(repr, served)) or '(nothing)'}"
            )
        return True, ""


def _topk(lp: Any) -> TopK | None:
    """A choice's `logprobs` as TopK: the chat form (`content`: [{token, logprob, top_logprobs:
    [{token, logprob}, ...]}, ...]) or the completions form (`tokens`, `token_logprobs`,
    `top_logprobs`: [{token: logprob}, ...]); None without either."""
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):
        entries = [e for e in lp["content"] if isinstance(e, dict)]
        tokens = [str(e.get("token")) for e in entries]
        chosen = [e.get("logprob") for e in entries]
        tops = [[(str(t.get("token")), t.get("logprob")) for t in e.get("top_logprobs") or () if isinstance(t, dict)] for e in entries]
    elif isinstance(lp.get("tokens"), list):
        tokens = [str(t) for t in lp["tokens"]]
        chosen = list(lp.get("token_logprobs") or [None] * len(tokens))
        tops = [[(str(t), v) for t, v in (d or {}).items()] for d in (lp.get("top_logprobs") or [None] * len(tokens))]
    else:
        return None
    if not tokens:
        return None
    ids = [_token_id(t) for t in tokens]
    top_ids = [[_token_id(t) for t, _ in row] for row in tops]
    has_ids = None not in ids and all(None not in row for row in top_ids)

    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) else -math.inf

    return TopK(
        k=max((len(row) for row in tops), default=0),
        top_logprobs=[[num(v) for _, v in row] for row in tops],
        top_ids=top_ids if has_ids else None,
        top_tokens=None if has_ids else [[t for t, _ in row] for row in tops],
        token_ids=ids if has_ids else None,  # type: ignore[arg-type]
        tokens=None if has_ids else tokens,
        token_logprobs=[num(v) for v in chosen],
    )


def _token_id(token: str) -> int | None:
    """The id in vLLM's `token_id:N` form (return_tokens_as_token_ids), else None."""
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return None


def _split_even(total: int | None, k: int) -> list[int | None]:
    if not isinstance(total, int) or k == 0:
        return [None] * k
    base, rest = divmod(total, k)
    return [base + (1 if j < rest else 0) for j in range(k)]


def _split_weighted(total: int | None, weights: list[int]) -> list[int | None]:
    """Split `total` in proportion to `weights`, largest remainder first, summing to `total`."""
    k = len(weights)
    if not isinstance(total, int) or k == 0:
        return [None] * k
    if k == 1:
        return [total]
    w = sum(weights)
    if w == 0:
        return _split_even(total, k)
    exact = [total * x / w for x in weights]
    parts = [int(e) for e in exact]
    for j in sorted(range(k), key=lambda j: exact[j] - parts[j], reverse=True)[: total - sum(parts)]:
        parts[j] += 1
    return parts


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def _server_message(raw: bytes) -> str:
    """The server's own words: `error.message` of an OpenAI-style body, else the body's start."""
    try:
        data = _loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if "error" in data:
            return _error_text(data["error"])
        if "message" in data:
            return str(data["message"])
        if "detail" in data:  # FastAPI-style servers
            return str(data["detail"])
    text = raw[:500].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _stream_error(err: Any) -> _AttemptFailed:
    """An error event inside a 200 stream: its code decides, as for a status."""
    code = err.get("code") if isinstance(err, dict) else None
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = None
    permanent = code is not None and 400 <= code < 500 and code not in RETRYABLE_STATUS
    return _AttemptFailed(f"error in the stream: {_error_text(err)}", retryable=not permanent, status=code, endpoint_fault=not permanent)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
