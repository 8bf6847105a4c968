"""OpenAITeacher against servers as they really are: ones that ignore or refuse `n`, and
rate-limit storms that end or do not.

Each test serves over real HTTP on 127.0.0.1 (tests/teacher_server.py, with a rule that picks
the behaviour from the request or the clock) and checks the outcome on the server's own request
log: how many requests, with which `n` and seed, and how many were in flight at once. The
storms run through `factory.sampler.sample_teacher` into a real lake, so "the run completes" and
"nothing paid is lost" are read back from the `samples` table. Backoff is in milliseconds; each
test takes a second or two.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from factory.sampler import plan_requests, sample_teacher
from factory.teachers.base import Endpoint, RequestGroup, Sampling, TeacherConfig, TeacherError, TeacherUnavailable
from factory.teachers.openai_http import OpenAITeacher
from storage import Lake
from tests.teacher_server import Fewer, Status, TeacherServer

MODEL = "test-model"
FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05, breaker_cooldown_s=0.3)


class RuleServer(TeacherServer):
    """A TeacherServer whose `rule(body)` may pick the behaviour of a request (None: the script
    or the default as usual): a cap on `n`, a storm that starts at the Nth request."""

    rule = None

    async def _behave(self, request, body, b, entry):
        chosen = self.rule(body) if self.rule is not None else None
        return await super()._behave(request, body, chosen or b, entry)


@pytest.fixture
def server():
    with RuleServer(models=[MODEL]) as s:
        yield s


def config(url: str, *, concurrency: int = 64, **kw) -> TeacherConfig:
    return TeacherConfig(name="judge-r1", backend="openai", model=MODEL, endpoints=[Endpoint(url=url, max_concurrency=concurrency)], **kw)


def group(indices, prompt: str = "What is 6 times 7?", seed: int | None = 100) -> RequestGroup:
    return RequestGroup("p1", ({"role": "user", "content": prompt},), Sampling(max_tokens=256, seed=seed), tuple(indices))


def generate_all(t: OpenAITeacher, *groups: RequestGroup) -> list:
    """The groups one after the other in one event loop (what the teacher learns carries over)."""

    async def main():
        try:
            out = []
            for g in groups:
                try:
                    out.append(await t.generate(g))
                except TeacherError as exc:
                    out.append(exc)
            return out
        finally:
            await t.aclose()

    return asyncio.run(main())


def shape(entries) -> list[tuple[int, int | None, int]]:
    """(n, seed, status) of each request, in arrival order."""
    return [(e["body"].get("n", 1), e["body"].get("seed"), e["status"]) for e in entries]


def in_flight_at(entries, t: float) -> int:
    """Requests the server was working on at time t (its own arrival and finish times)."""
    return sum(1 for e in entries if e["time"] <= t < e["time"] + e["elapsed_s"])


def peak(entries, start: float, end: float) -> int:
    """The most requests in flight at once, server side, between start and end."""
    return max((in_flight_at(entries, e["time"]) for e in entries if start <= e["time"] < end), default=0)


def sample(lake: Lake, t: OpenAITeacher, problems: int, per_problem: int = 1, **kw):
    cfg = t.config
    groups = plan_requests(cfg, [{"problem_id": f"p{i}", "problem": f"problem number {i}?"} for i in range(problems)],
                           Sampling(max_tokens=64, seed=7), samples_per_problem=per_problem)

    async def main():
        try:
            return await sample_teacher(lake, t, groups, run_id="r", **kw)
        finally:
            await t.aclose()

    return asyncio.run(main())


# -- servers that ignore or refuse n ------------------------------------------------------------


def test_a_server_that_ignores_n_is_asked_for_the_rest_at_once_and_later_groups_fan_out(server, caplog):
    server.default = Fewer(k=1)  # every answer has one choice, whatever n asked
    t = OpenAITeacher(config(server.url, max_n=16), **FAST)
    with caplog.at_level(logging.WARNING, logger="factory.teachers.openai_http"):
        first, second = generate_all(t, group(range(4)), group(range(4), prompt="What is 5 times 8?"))
    assert [c.sample_index for c in first] == [0, 1, 2, 3] and [c.sample_index for c in second] == [0, 1, 2, 3]
    assert len({c.text for c in first + second}) == 8, "two samples came out the same"
    # sample i of the first group is choice 0 of seed 100 + i: the re-ask did not redraw sample 0
    assert all(f"(seed {100 + c.sample_index}, choice 0)" in c.text for c in first + second)
    log = server.completion_requests()
    assert shape(log[:1]) == [(4, 100, 200)]
    assert sorted(shape(log[1:4])) == [(1, 101, 200), (1, 102, 200), (1, 103, 200)]
    # the second group went out one per request at once: no n=4 round-trip wasted
    assert sorted(shape(log[4:])) == [(1, 100, 200), (1, 101, 200), (1, 102, 200), (1, 103, 200)]
    assert "answered n=4 with 1 choice" in caplog.text


def test_a_server_that_refuses_n_with_a_400_is_asked_one_per_request_and_that_is_remembered(server, caplog):
    server.rule = lambda body: Status(400, message="n must be 1") if body.get("n", 1) > 1 else None
    t = OpenAITeacher(config(server.url), **FAST)
    with caplog.at_level(logging.WARNING, logger="factory.teachers.openai_http"):
        first, second = generate_all(t, group((0, 1, 2)), group((0, 1, 2), prompt="What is 5 times 8?"))
    assert [c.sample_index for c in first] == [0, 1, 2] and [c.sample_index for c in second] == [0, 1, 2]
    log = server.completion_requests()
    assert shape(log[:1]) == [(3, 100, 400)]
    assert sorted(shape(log[1:4])) == [(1, 100, 200), (1, 101, 200), (1, 102, 200)]
    assert sorted(shape(log[4:])) == [(1, 100, 200), (1, 101, 200), (1, 102, 200)], "the 400 to n > 1 was not remembered"
    assert "refuses n > 1" in caplog.text


def test_a_400_that_is_not_about_n_is_raised_and_n_is_not_given_up(server):
    server.default = Status(400, message="max_tokens is too large")
    t = OpenAITeacher(config(server.url), **FAST)
    first, second = generate_all(t, group((0, 1)), group((0, 1), prompt="What is 5 times 8?"))
    for err in (first, second):
        assert isinstance(err, TeacherError) and not err.retryable and err.status == 400
        assert "max_tokens is too large" in str(err)
    # each group: its n=2 request, then one per index (also refused); n stays allowed
    assert [n for n, _, _ in shape(server.completion_requests())] == [2, 1, 1, 2, 1, 1]


def test_a_server_that_keeps_leaving_indices_out_is_asked_a_bounded_number_of_times(server):
    server.rule = lambda body: Fewer(k=max(1, body.get("n", 1) // 2))  # half of what is asked, every time
    t = OpenAITeacher(config(server.url), **FAST, max_reasks=1)
    [got] = generate_all(t, group(range(8)))
    # 8 asked: 4 came; the 4 left out asked again once (n=4): 2 came; the last 2 wait for the next run
    assert shape(server.completion_requests()) == [(8, 100, 200), (4, 104, 200)]
    assert [c.sample_index for c in got] == [0, 1, 2, 3, 4, 5]


def test_through_the_sampler_a_server_that_ignores_n_misses_nothing_after_one_pass(server, tmp_path):
    server.default = Fewer(k=1)
    t = OpenAITeacher(config(server.url, concurrency=2), **FAST)
    with Lake.open(str(tmp_path / "store")) as lake:
        stats = sample(lake, t, problems=6, per_problem=4)
        rows = lake.query("SELECT problem_id, sample_index, completion FROM samples").to_pylist()
    assert (stats.keys, stats.committed, stats.missing, stats.failed_groups) == (24, 24, 0, 0)
    assert len({r["completion"] for r in rows}) == 24
    log = server.completion_requests()
    # one request per sample, but for the n=4 requests sent before the cap was learned (at most
    # one per worker); each of those still brought a sample
    assert len(log) == 24 and sum(e["body"].get("n", 1) > 1 for e in log) <= 2


# -- rate-limit storms -------------------------------------------------------------------------------


class Storm:
    """429 for every request from the `after`-th on, for `seconds` (None: for ever)."""

    def __init__(self, after: int, seconds: float | None):
        self.after, self.seconds = after, seconds
        self.count = 0
        self.started: float | None = None
        self.lock = threading.Lock()

    def __call__(self, body):
        with self.lock:
            self.count += 1
            if self.count == self.after:
                self.started = time.time()
            if self.started is None or (self.seconds is not None and time.time() >= self.started + self.seconds):
                return None
            return Status(429, message="Rate limit reached for requests")

    @property
    def ended(self) -> float:
        return self.started + self.seconds


def test_a_429_storm_lowers_concurrency_then_it_rises_again_and_the_run_completes(server, tmp_path):
    server.latency_s = 0.04
    server.rule = storm = Storm(after=17, seconds=0.8)
    t = OpenAITeacher(config(server.url, concurrency=8), **FAST)
    with Lake.open(str(tmp_path / "store")) as lake:
        stats = sample(lake, t, problems=100)
        stored = lake.query("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
    assert (stats.committed, stats.missing, stats.failed_groups, stored) == (100, 0, 0, 100)
    log = server.completion_requests()
    assert sum(e["status"] == 429 for e in log) >= 8, "the storm did not happen"
    before = peak(log, 0, storm.started)
    late_storm = peak(log, storm.started + 0.4, storm.ended)
    after = peak(log, storm.ended + 0.15, float("inf"))
    assert before == 8, f"the full concurrency was not used before the storm ({before})"
    assert late_storm <= 2, f"the requests in flight did not fall under the storm ({late_storm})"
    assert after >= 6, f"the concurrency did not rise again after the storm ({after})"


def test_a_429_storm_that_does_not_end_stops_the_run_with_a_named_failure_and_keeps_what_was_paid(server, tmp_path):
    server.latency_s = 0.02
    server.rule = storm = Storm(after=11, seconds=None)
    t = OpenAITeacher(config(server.url, concurrency=4, give_up_after_s=1.0), **FAST)
    with Lake.open(str(tmp_path / "store")) as lake:
        with pytest.raises(TeacherUnavailable) as err:
            # Commits only on the way out (every 1000 rows, or a minute): the flush must keep them.
            sample(lake, t, problems=60, commit_every=1000, commit_interval_s=60)
        stopped = time.time()
        stored = lake.query("SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
    message = str(err.value)
    assert "judge-r1" in message and "no request succeeded for" in message and "HTTP 429" in message
    assert not err.value.retryable and err.value.status == 429
    assert 1.0 <= stopped - storm.started < 2.5, f"gave up {stopped - storm.started:.2f}s into the storm"
    log = server.completion_requests()
    assert stored == sum(e["status"] == 200 for e in log) == 10, "a sample the server answered was lost"
    assert len(log) < 60 + 40, "the workers did not stop"
    time.sleep(0.2)
    assert len(server.completion_requests()) == len(log), "requests went on after the failure"


def test_a_request_cancelled_while_queued_for_a_slot_does_not_hold_one(server):
    server.latency_s = 0.2
    t = OpenAITeacher(config(server.url, concurrency=1), **FAST)

    async def main():
        try:
            first = asyncio.create_task(t.generate(group((0,))))
            queued = asyncio.create_task(t.generate(group((1,))))
            await asyncio.sleep(0.05)
            queued.cancel()  # waiting behind `first` for the endpoint's one slot
            await asyncio.wait_for(first, 2)
            return await asyncio.wait_for(t.generate(group((2,))), 2)
        finally:
            await t.aclose()

    [got] = asyncio.run(main())
    assert got.sample_index == 2
    assert [e["body"]["seed"] for e in server.completion_requests()] == [100, 102]
    assert server.max_in_flight == 1
