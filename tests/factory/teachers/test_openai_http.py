"""OpenAITeacher against a local OpenAI-compatible server scripted to misbehave.

Each misbehaviour of tests/teacher_server.py has a test with its expected outcome, checked
both on what the client returns or raises and on the server's own request log. Backoff is
configured to milliseconds so the file runs in a few seconds; only the Retry-After test waits
for real (1 s), because that wait is what it measures.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import time

import pytest

from factory.teachers.base import Endpoint, RequestGroup, Sampling, TeacherConfig, TeacherConfigError, TeacherError, split_reasoning
from factory.teachers.openai_http import OpenAITeacher, _parse_retry_after
from tests.data import TOKENIZER
from tests.teacher_server import EmptyChoices, Fewer, Garbage, Length, Reset, Slow, Stall, Status, TeacherServer

MODEL = "test-model"
FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05, breaker_cooldown_s=0.3)


@pytest.fixture(scope="module")
def shared_server():
    with TeacherServer(models=[MODEL, "other-model"]) as server:
        yield server


@pytest.fixture
def server(shared_server):
    shared_server.reset()
    shared_server.latency_s = 0.0
    yield shared_server
    shared_server.reset()


def teacher(*urls: str, tokenizer=None, settings: dict | None = None, **config) -> OpenAITeacher:
    endpoints = config.pop("endpoints", None) or [Endpoint(url=u) for u in urls]
    cfg = TeacherConfig(name="judge-r1", backend="openai", model=config.pop("model", MODEL), endpoints=endpoints, **config)
    return OpenAITeacher(cfg, tokenizer=tokenizer, **{**FAST, **(settings or {})})


def group(indices=(0,), *, seed: int | None = 7, prompt: str = "What is 6 times 7?", max_tokens: int = 256) -> RequestGroup:
    return RequestGroup(
        problem_id="p1",
        messages=[{"role": "user", "content": prompt}],
        sampling=Sampling(max_tokens=max_tokens, seed=seed),
        sample_indices=tuple(indices),
    )


def run(t: OpenAITeacher, *groups: RequestGroup):
    """Generate each group concurrently; one list of completions per group (or the exception)."""

    async def main():
        try:
            return await asyncio.gather(*(t.generate(g) for g in groups), return_exceptions=True)
        finally:
            await t.aclose()

    results = asyncio.run(main())
    return results[0] if len(results) == 1 else results


def generate_one(t: OpenAITeacher, g: RequestGroup | None = None):
    result = run(t, g or group())
    if isinstance(result, BaseException):
        raise result
    return result


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- misbehaviours ------------------------------------------------------------------------------


def test_429_with_retry_after_waits_that_long_then_succeeds(server):
    server.script(Status(429, retry_after="1"))
    t0 = time.monotonic()
    got = generate_one(teacher(server.url))
    elapsed = time.monotonic() - t0
    log = server.completion_requests()
    assert [e["status"] for e in log] == [429, 200]
    assert log[1]["time"] - log[0]["time"] >= 1.0, "the retry came before Retry-After"
    assert elapsed >= 1.0
    assert [c.sample_index for c in got] == [0] and got[0].extra["attempts"] == 2


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= _parse_retry_after(when) <= 30
    assert _parse_retry_after("2.5") == 2.5
    assert _parse_retry_after("soon") is None


def test_retry_after_past_the_deadline_fails_by_the_deadline(server):
    server.script(Status(429, retry_after="5"))
    t0 = time.monotonic()
    with pytest.raises(TeacherError) as err:
        generate_one(teacher(server.url, request_timeout_s=1.0))
    assert time.monotonic() - t0 < 1.0, "waited past the request deadline"
    assert err.value.retryable and err.value.status == 429
    assert "deadline" in str(err.value) and "judge-r1" in str(err.value)
    assert len(server.completion_requests()) == 1


def test_a_500_storm_is_retried_until_it_passes(server):
    server.script(Status(500, times=4))
    got = generate_one(teacher(server.url))
    assert [e["status"] for e in server.completion_requests()] == [500] * 4 + [200]
    assert got[0].finish_reason == "stop" and got[0].extra["attempts"] == 5


def test_a_500_storm_longer_than_the_retry_budget_fails_retryable(server):
    server.default = Status(500)
    t = teacher(server.url, request_timeout_s=3, settings=dict(retry_budget_floor=3, retry_budget_ratio=0.0, breaker_failures=100))
    with pytest.raises(TeacherError) as err:
        generate_one(t)
    assert err.value.retryable and err.value.status == 500
    assert "retry budget" in str(err.value)
    assert len(server.completion_requests()) == 4  # the request and the 3 retries the budget held


def test_a_stall_mid_stream_is_retried_after_the_stall_timeout(server):
    server.script(Stall(after_chunks=3, seconds=10))
    t0 = time.monotonic()
    got = generate_one(teacher(server.url, stream=True, stall_timeout_s=0.3), group((0, 1)))
    elapsed = time.monotonic() - t0
    log = server.completion_requests()
    assert [(e["behaviour"], e["completed"]) for e in log] == [("Stall", False), ("Normal", True)]
    assert 0.3 <= elapsed < 3
    assert sorted(c.sample_index for c in got) == [0, 1]
    assert all(c.text.startswith("<think>Thinking about:") and c.finish_reason == "stop" for c in got)


def test_a_slow_answer_past_the_deadline_is_a_retryable_timeout(server):
    server.script(Slow(seconds=5))
    t0 = time.monotonic()
    with pytest.raises(TeacherError) as err:
        generate_one(teacher(server.url, request_timeout_s=0.5))
    assert time.monotonic() - t0 < 1.5
    assert err.value.retryable and "deadline" in str(err.value)


def test_a_slow_answer_within_the_deadline_is_waited_for(server):
    server.script(Slow(seconds=0.3))
    got = generate_one(teacher(server.url, request_timeout_s=5))
    assert got[0].latency_s >= 0.3 and len(server.completion_requests()) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("bad", [Garbage, EmptyChoices, Reset], ids=["garbage-200", "empty-choices", "connection-reset"])
def test_garbage_empty_choices_and_resets_are_retried(server, bad, stream):
    server.script(bad())
    got = generate_one(teacher(server.url, stream=stream), group((0, 1)))
    log = server.completion_requests()
    assert [e["behaviour"] for e in log] == [bad.__name__, "Normal"]
    assert sorted(c.sample_index for c in got) == [0, 1]
    assert all("The answer is" in c.text for c in got), "a bad answer was taken as a sample"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_finish_reason_length_is_a_sample_not_a_retry(server, stream):
    server.script(Length())
    got = generate_one(teacher(server.url, stream=stream), group((0, 1)))
    assert len(server.completion_requests()) == 1
    assert [c.finish_reason for c in got] == ["length", "length"]
    reasoning, answer = split_reasoning(got[0].text)
    assert reasoning and answer is None  # cut inside the think block


def test_fewer_choices_than_asked_the_rest_are_asked_for_in_the_same_call(server):
    server.script(Fewer(k=2))
    got = generate_one(teacher(server.url), group((10, 11, 12, 13)))
    assert [c.sample_index for c in got] == [10, 11, 12, 13]
    # the missing two in one request of the n the server honoured, seeded from its first index
    assert [(e["body"].get("n", 1), e["body"]["seed"]) for e in server.completion_requests()] == [(4, 17), (2, 19)]
    assert "(seed 19, choice 1)" in got[3].text


def test_a_400_is_not_retried_and_says_why(server):
    server.script(Status(400, message="max_tokens is too large: 999999 > 4096"))
    with pytest.raises(TeacherError) as err:
        generate_one(teacher(server.url))
    assert not err.value.retryable and err.value.status == 400
    assert "max_tokens is too large: 999999 > 4096" in str(err.value)
    assert "400" in str(err.value) and "judge-r1" in str(err.value)
    assert len(server.completion_requests()) == 1


def test_an_unknown_model_at_request_time_is_not_retried(server):
    with pytest.raises(TeacherError) as err:
        generate_one(teacher(server.url, model="no-such-model"))
    assert not err.value.retryable and err.value.status == 404 and "does not exist" in str(err.value)


# -- endpoints, failover, breaker -------------------------------------------------------------------


def test_one_endpoint_down_all_requests_go_to_the_other_and_the_breaker_stops_the_dead_one(server):
    with TeacherServer(models=[MODEL]) as down:
        down.default = Status(503)
        t = teacher(down.url, server.url, settings=dict(breaker_failures=3, breaker_cooldown_s=30))

        async def main():
            try:
                return [await t.generate(group((i,))) for i in range(20)]
            finally:
                await t.aclose()

        results = asyncio.run(main())
        assert all(len(r) == 1 and r[0].endpoint == server.url for r in results)
        assert len(down.completion_requests()) == 3, "the open circuit let requests through"
        assert len(server.completion_requests()) == 20


def test_an_unreachable_endpoint_fails_over_to_a_live_one(server):
    got = generate_one(teacher(dead_url(), server.url), group((0, 1, 2)))
    assert sorted(c.sample_index for c in got) == [0, 1, 2] and got[0].endpoint == server.url
    assert got[0].extra["attempts"] == 2, "the retry did not move to the other endpoint at once"


def test_retry_after_on_one_endpoint_sends_the_retry_to_another_at_once(server):
    with TeacherServer(models=[MODEL]) as busy:
        busy.script(Status(429, retry_after="30"))
        t0 = time.monotonic()
        got = generate_one(teacher(busy.url, server.url))
        assert time.monotonic() - t0 < 1.0
        assert got[0].endpoint == server.url and len(busy.completion_requests()) == 1


def test_all_circuits_open_waits_for_the_half_open_probe(server):
    server.script(Status(500, times=2))
    t0 = time.monotonic()
    got = generate_one(teacher(server.url, settings=dict(breaker_failures=2, breaker_cooldown_s=0.4)))
    assert time.monotonic() - t0 >= 0.4, "did not wait for the cool-down"
    assert got[0].extra["attempts"] == 3


def test_all_circuits_open_past_the_deadline_fails_by_the_deadline(server):
    server.default = Status(500)
    t0 = time.monotonic()
    with pytest.raises(TeacherError) as err:
        generate_one(teacher(server.url, request_timeout_s=1.0, settings=dict(breaker_failures=2, breaker_cooldown_s=30)))
    assert time.monotonic() - t0 < 1.0, "waited for the cool-down past the deadline"
    assert err.value.retryable and len(server.completion_requests()) == 2


def test_the_concurrency_limit_per_endpoint_is_respected(server):
    server.latency_s = 0.05
    t = teacher(endpoints=[Endpoint(url=server.url, max_concurrency=3)], supports_n=False)
    results = run(t, *(group((2 * i, 2 * i + 1)) for i in range(8)))
    assert all(len(r) == 2 for r in results)
    assert len(server.completion_requests()) == 16
    assert server.max_in_flight == 3


# -- request shapes ----------------------------------------------------------------------------------


def test_n_per_request_split_by_max_n_with_seeds_offset_by_the_first_index(server):
    got = generate_one(teacher(server.url, supports_n=True, max_n=3), group(range(7), seed=100))
    bodies = sorted((e["body"] for e in server.completion_requests()), key=lambda b: b["seed"])
    assert [(b.get("n", 1), b["seed"]) for b in bodies] == [(3, 100), (3, 103), (1, 106)]
    assert sorted(c.sample_index for c in got) == list(range(7))
    assert len({c.text for c in got}) == 7, "two samples came out the same"
    # choice j of the request with seed 103 is sample 3 + j
    by_index = {c.sample_index: c for c in got}
    assert "(seed 103, choice 1)" in by_index[4].text


def test_fan_out_sends_one_request_per_sample_with_seed_plus_index(server):
    got = generate_one(teacher(server.url, supports_n=False), group((0, 1, 5), seed=100))
    bodies = [e["body"] for e in server.completion_requests()]
    assert all("n" not in b for b in bodies)
    assert sorted(b["seed"] for b in bodies) == [100, 101, 105]
    assert {c.sample_index: c.text.split("(seed ")[1].split(",")[0] for c in got} == {0: "100", 1: "101", 5: "105"}


def test_no_seed_is_sent_when_none_is_set(server):
    generate_one(teacher(server.url, supports_n=False), group((0, 1), seed=None))
    assert all("seed" not in e["body"] for e in server.completion_requests())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_and_completions_apis(server, stream):
    chat = generate_one(teacher(server.url, api="chat", stream=stream))
    comp = generate_one(teacher(server.url, api="completions", stream=stream))
    chat_req, comp_req = server.completion_requests()
    assert chat_req["path"] == "/v1/chat/completions" and chat_req["body"]["messages"][0]["content"] == "What is 6 times 7?"
    assert comp_req["path"] == "/v1/completions" and comp_req["body"]["prompt"] == "What is 6 times 7?"
    assert chat[0].text == comp[0].text  # same prompt, seed and choice: the same deterministic answer
    if stream:
        assert chat_req["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_from_a_separate_field_or_from_think_tags(server, field, stream):
    think = generate_one(teacher(server.url, stream=stream))[0]
    with TeacherServer(models=[MODEL], reasoning=field) as split:
        sep = generate_one(teacher(split.url, stream=stream))[0]
    assert think.reasoning_content is None and think.text.startswith("<think>")
    assert sep.reasoning_content and "<think>" not in sep.text
    assert split_reasoning(think.text) == split_reasoning(sep.text, sep.reasoning_content)
    assert split_reasoning(sep.text, sep.reasoning_content)[1].startswith("The answer is")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_usage_of_an_n_request_sums_to_what_the_server_billed(server, stream):
    prompt = "a prompt of exactly seven words here"  # the server counts whitespace words
    got = generate_one(teacher(server.url, stream=stream), group((0, 1, 2), prompt=prompt))
    assert sum(c.prompt_tokens for c in got) == 7  # billed once for the call
    assert [c.prompt_tokens for c in got] == [3, 2, 2]
    assert sum(c.completion_tokens for c in got) == sum(len(c.text.split()) for c in got)
    assert all(c.extra["usage_split"] for c in got)
    single = generate_one(teacher(server.url, stream=stream), group((0,), prompt=prompt))[0]
    assert single.prompt_tokens == 7 and single.completion_tokens == len(single.text.split())
    assert "usage_split" not in single.extra


# -- check() ----------------------------------------------------------------------------------------


def check(t: OpenAITeacher, prompt=None):
    async def main():
        try:
            await t.check(prompt)
        finally:
            await t.aclose()

    asyncio.run(main())


def test_check_passes_for_a_good_teacher(server):
    check(teacher(server.url, context_window=4096), [{"role": "user", "content": "hi"}])
    assert server.requests("/models") and not server.completion_requests()


def test_check_missing_api_key_names_the_variable_and_the_teacher(server, monkeypatch):
    monkeypatch.delenv("FACTORY_TEST_KEY", raising=False)
    with pytest.raises(TeacherConfigError) as err:
        check(teacher(endpoints=[Endpoint(url=server.url, api_key_env="FACTORY_TEST_KEY")]))
    assert "FACTORY_TEST_KEY" in str(err.value) and "judge-r1" in str(err.value)
    assert not server.log, "a request was sent without a key"


def test_check_a_rejected_api_key(monkeypatch):
    monkeypatch.setenv("FACTORY_TEST_KEY", "wrong")
    with TeacherServer(models=[MODEL], api_key="right") as keyed:
        with pytest.raises(TeacherConfigError) as err:
            check(teacher(endpoints=[Endpoint(url=keyed.url, api_key_env="FACTORY_TEST_KEY")]))
        assert "401" in str(err.value) and "FACTORY_TEST_KEY" in str(err.value)
        monkeypatch.setenv("FACTORY_TEST_KEY", "right")
        check(teacher(endpoints=[Endpoint(url=keyed.url, api_key_env="FACTORY_TEST_KEY")]))
        got = generate_one(teacher(endpoints=[Endpoint(url=keyed.url, api_key_env="FACTORY_TEST_KEY")]))
        assert got and keyed.completion_requests()[0]["authorization"] == "Bearer right"


def test_check_all_endpoints_unreachable_names_the_teacher_and_the_urls():
    urls = [dead_url(), dead_url()]
    with pytest.raises(TeacherConfigError) as err:
        check(teacher(*urls))
    assert "judge-r1" in str(err.value) and all(u in str(err.value) for u in urls)


def test_check_some_endpoints_unreachable_warns_and_skips_them(server, caplog):
    url = dead_url()
    t = teacher(url, server.url)
    caplog.set_level(logging.WARNING, logger="factory.teachers.openai_http")

    async def main():
        try:
            await t.check()
            return await t.generate(group((0, 1)))
        finally:
            await t.aclose()

    got = asyncio.run(main())
    assert any(url in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
    assert all(c.endpoint == server.url and c.extra["attempts"] == 1 for c in got)


def test_check_unknown_model_lists_the_served_ones(server):
    with pytest.raises(TeacherConfigError) as err:
        check(teacher(server.url, model="deepseek-r1"))
    msg = str(err.value)
    assert "judge-r1" in msg and "'deepseek-r1'" in msg and "'test-model'" in msg and "'other-model'" in msg


def test_check_a_prompt_longer_than_the_context_window(server):
    long_prompt = [{"role": "user", "content": "x" * 3000}]  # ~1000 tokens by the estimate
    with pytest.raises(TeacherConfigError) as err:
        check(teacher(server.url, context_window=512), long_prompt)
    assert "judge-r1" in str(err.value) and "1004 tokens" in str(err.value) and "512" in str(err.value)
    assert not server.log, "the length check should come before any request"
    check(teacher(server.url, context_window=2048), long_prompt)
    # with a tokenizer the count is exact: one token per word here
    words = [{"role": "user", "content": "word " * 600}]
    check(teacher(server.url, context_window=700, tokenizer=lambda text: len(text.split())), words)


def test_the_least_loaded_endpoint_gets_the_request(server):
    with TeacherServer(models=[MODEL], latency_s=0.05) as big:
        server.latency_s = 0.05
        t = teacher(endpoints=[Endpoint(url=server.url, max_concurrency=2), Endpoint(url=big.url, max_concurrency=6)])
        results = run(t, *(group((i,)) for i in range(16)))
        assert all(len(r) == 1 for r in results)
        small_n, big_n = len(server.completion_requests()), len(big.completion_requests())
        assert small_n + big_n == 16 and 2 <= small_n < big_n


def test_the_server_log_file_gets_a_line_per_finished_request(tmp_path):
    path = tmp_path / "requests.jsonl"
    with TeacherServer(models=[MODEL], log_path=path) as logged:
        logged.script(Status(500))
        generate_one(teacher(logged.url, supports_n=False), group((0, 1)))
        lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(e["status"] for e in lines) == [200, 200, 500]
    assert all(e["body"]["model"] == MODEL and e["time"] > 0 for e in lines)


def test_check_counts_with_a_real_tokenizer_and_renders_completions_prompts_with_it(server):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))
    messages = [{"role": "user", "content": "What is 6 times 7?"}]
    t = teacher(server.url, api="completions", context_window=64, tokenizer=tok)
    n = t.estimate_tokens(messages)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert n == len(tok.encode(text, add_special_tokens=False)) and 10 < n < 64
    check(t, messages)
    generate_one(t)
    assert server.completion_requests()[0]["body"]["prompt"] == text
    with pytest.raises(TeacherConfigError, match="counted by the tokenizer"):
        check(teacher(server.url, context_window=n - 1, tokenizer=tok), messages)
