"""Top-k log-probs from an OpenAI-compatible server over real HTTP, stored by `sample_teacher` in
the lake's `teacher_topk` table next to their samples.

The server is tests/teacher_server.py's, taught to answer `logprobs` as OpenAI and vLLM do: the
chat form (`choices[i].logprobs.content[*]` with `top_logprobs`), the completions form (`tokens`,
`token_logprobs`, `top_logprobs` as {token: logprob}), streamed per token, and vLLM's
`token_id:N` tokens when asked with `return_tokens_as_token_ids`. Its tokens are the pieces of
the completion text (a word and its space); alternative i of a position is `alt{i}`.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from factory.sampler import plan_requests, sample_teacher
from factory.teachers.base import Endpoint, Sampling, TeacherConfig
from factory.teachers.openai_http import OpenAITeacher
from storage import Lake
from tests.teacher_server import TeacherServer, _pieces

MODEL = "test-model"


def token_id(token: str) -> int:
    return sum(token.encode()) % 997  # any stable id for the test's tokens


class LogprobServer(TeacherServer):
    """Adds `logprobs` to every choice of a request that asks for them."""

    def _answer(self, body, chat, n, b):
        choices, usage = super()._answer(body, chat, n, b)
        k = body.get("top_logprobs") if chat else body.get("logprobs")
        if k:
            ids = bool(body.get("return_tokens_as_token_ids"))
            for c in choices:
                c["logprobs"] = self.logprobs(c["message"]["content"] if chat else c["text"], int(k), chat, ids)
        return choices, usage

    @staticmethod
    def logprobs(text: str, k: int, chat: bool, ids: bool) -> dict:
        def name(tok: str) -> str:
            return f"token_id:{token_id(tok)}" if ids else tok

        entries = []
        for pos, tok in enumerate(_pieces(text)):
            top = [(name(tok), -0.25)] + [(name(f"alt{i}"), -1.0 - i - pos / 10) for i in range(1, k)]
            entries.append({"token": name(tok), "logprob": -0.25, "bytes": list(tok.encode()),
                            "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in top]})
        if chat:
            return {"content": entries}
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries], "text_offset": []}

    async def _stream(self, request, body, chat, choices, usage, b, entry):
        """One event per token, each with that token's logprobs entry (as vLLM streams them)."""
        from aiohttp import web

        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in choices:
            lp = c.get("logprobs") or {"content": []}
            for pos, piece in enumerate(_pieces(c["message"]["content"])):
                event = {"index": c["index"], "delta": {"content": piece}, "logprobs": {"content": lp["content"][pos : pos + 1]}}
                await resp.write(b"data: " + json.dumps({"model": MODEL, "choices": [event]}).encode() + b"\n\n")
            done = {"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}
            await resp.write(b"data: " + json.dumps({"model": MODEL, "choices": [done]}).encode() + b"\n\n")
        await resp.write(b"data: " + json.dumps({"model": MODEL, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._finish(entry, 200, True)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return 200, True, resp


@pytest.fixture(scope="module")
def server():
    with LogprobServer(models=[MODEL]) as s:
        yield s


def sample(server, tmp_path, *, top_logprobs, api="chat", stream=False, ids=False, n=2):
    config = TeacherConfig(name="t", backend="openai", model=MODEL, endpoints=[Endpoint(url=server.url)],
                           api=api, stream=stream, logprob_token_ids=ids)
    problems = [{"problem_id": f"p{i}", "problem": f"What is {i} plus {i}?"} for i in range(3)]
    groups = plan_requests(config, problems, Sampling(max_tokens=64, seed=1, top_logprobs=top_logprobs), samples_per_problem=n)

    async def run():
        teacher = OpenAITeacher(config)
        try:
            with Lake.open(str(tmp_path / "lake")) as lake:
                stats = await sample_teacher(lake, teacher, groups, run_id="r1", commit_every=4)
                samples = lake.query("SELECT sample_id, completion FROM samples ORDER BY sample_id").to_pylist()
                topk = lake.query("SELECT * FROM teacher_topk ORDER BY sample_id").to_pylist()
                return stats, samples, topk
        finally:
            await teacher.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("api,stream", [("chat", False), ("chat", True), ("completions", False)])
def test_top_logprobs_are_asked_for_and_stored_with_their_samples(server, tmp_path, api, stream):
    server.reset()
    stats, samples, topk = sample(server, tmp_path, top_logprobs=3, api=api, stream=stream)
    assert stats.committed == len(samples) == len(topk) == 6
    [body] = {json.dumps({k: v for k, v in r["body"].items() if "logprob" in k}) for r in server.completion_requests()}
    assert json.loads(body) == ({"logprobs": True, "top_logprobs": 3} if api == "chat" else {"logprobs": 3})
    for s, t in zip(samples, topk):
        pieces = _pieces(s["completion"])
        assert t["sample_id"] == s["sample_id"] and t["run_id"] == "r1" and t["k"] == 3 and t["positions"] == len(pieces)
        assert t["tokens"] == pieces and t["token_ids"] is None and t["top_ids"] is None
        assert t["top_tokens"] == [[p, "alt1", "alt2"] for p in pieces]
        want = [[-0.25, -2.0 - j / 10, -3.0 - j / 10] for j in range(len(pieces))]
        got = [v for row in t["top_logprobs"] for v in row]  # float32 in the lake
        assert got == pytest.approx([v for row in want for v in row], abs=1e-6) and t["token_logprobs"] == [-0.25] * len(pieces)


def test_vllm_token_ids_are_stored_as_ids(server, tmp_path):
    server.reset()
    _, samples, topk = sample(server, tmp_path, top_logprobs=2, ids=True, n=1)
    assert server.completion_requests()[0]["body"]["return_tokens_as_token_ids"] is True
    for s, t in zip(samples, topk):
        pieces = _pieces(s["completion"])
        assert t["token_ids"] == [token_id(p) for p in pieces] and t["tokens"] is None and t["top_tokens"] is None
        assert t["top_ids"] == [[token_id(p), token_id("alt1")] for p in pieces]


def test_without_the_option_nothing_is_asked_or_stored(server, tmp_path):
    server.reset()
    stats, samples, topk = sample(server, tmp_path, top_logprobs=None)
    assert stats.committed == len(samples) == 6 and topk == []
    assert not any("logprobs" in r["body"] for r in server.completion_requests())
