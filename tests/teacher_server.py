"""A local OpenAI-compatible teacher server for tests, scriptable to misbehave.

    from tests.teacher_server import TeacherServer, Status, Stall
    with TeacherServer(models=["tiny"]) as server:       # 127.0.0.1, a free port, own thread
        server.script(Status(429, retry_after="1"), Status(500), Stall(after_chunks=2))
        ...  point a teacher at server.url ("http://127.0.0.1:PORT/v1") ...
        server.completion_requests()                      # the request log: body, time, outcome

Serves GET /v1/models, POST /v1/chat/completions and POST /v1/completions (with `n`,
`seed`, `stream` and `stream_options.include_usage`). Completions are deterministic: choice j
of a request with seed s and prompt P is

    <think>Thinking about: <the prompt's last 8 words> (seed s, choice j)</think> The answer is <k>.

with k from a hash of (prompt, s, j). With `reasoning="reasoning_content"` (or "reasoning")
the think part is sent in that field instead, as DeepSeek and vLLM's reasoning parsers do.
Token counts are whitespace words: prompt_tokens once per request, completion_tokens summed
over the choices; `max_tokens` cuts the words and sets finish_reason "length".

Misbehaviour: `script(*behaviours)` queues behaviours that the next completion requests
consume in order (one each; `times=N` repeats one N times); `default` is what a request gets
when the queue is empty (Normal(), or e.g. Status(503) for a dead endpoint). Behaviours:
Normal, Status (any code, optional Retry-After, server message), Garbage (a 200 that is not
JSON), EmptyChoices, Length, Fewer(k), Slow(seconds), Stall(after_chunks, seconds) and Reset
(the connection is dropped without an answer). `latency_s` delays every completion request;
the server counts the requests in flight and keeps the maximum (`max_in_flight`).

The request log: one entry per request, added on arrival (time, path, headers of interest,
the JSON body, the behaviour) and closed with its status and `completed`: a whole answer was
made and is being sent. It is closed just before the last bytes go out (as a server bills
what it generated), so a client that has its answer always finds it logged. With `log_path`, each finished request is appended to that JSONL file and
flushed at once, so a test that kills a client process can read what the server answered.
Run it alone (`python -m tests.teacher_server --port 0 --log requests.jsonl`) to serve a
client in another process; it prints its URL on the first line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


# -- behaviours ---------------------------------------------------------------------------


@dataclass
class Normal:
    times: int = 1


@dataclass
class Status:
    """An error answer: `code` with an OpenAI-style error body and an optional Retry-After."""

    code: int
    message: str | None = None
    retry_after: str | None = None
    times: int = 1


@dataclass
class Garbage:
    """A 200 whose body is not JSON."""

    times: int = 1


@dataclass
class EmptyChoices:
    """A 200 with `choices: []` (and a usage block)."""

    times: int = 1


@dataclass
class Length:
    """Every choice cut short: half the words, finish_reason "length"."""

    times: int = 1


@dataclass
class Fewer:
    """Only the first `k` choices of the `n` asked for."""

    k: int = 1
    times: int = 1


@dataclass
class Slow:
    """Answer normally after `seconds`."""

    seconds: float = 1.0
    times: int = 1


@dataclass
class Stall:
    """Send the headers (and, streaming, `after_chunks` chunks), then go silent for `seconds`."""

    after_chunks: int = 1
    seconds: float = 30.0
    times: int = 1


@dataclass
class Reset:
    """Drop the connection without an answer."""

    times: int = 1


Behaviour = Normal | Status | Garbage | EmptyChoices | Length | Fewer | Slow | Stall | Reset


# -- the deterministic teacher --------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def prompt_text(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content") or "") for m in body["messages"])
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def choice_parts(prompt: str, seed: Any, j: int) -> tuple[str, str]:
    """(reasoning, answer) of choice j: a function of the prompt, the seed and j only."""
    tail = " ".join(_words(prompt)[-8:])
    k = int(hashlib.sha256(f"{prompt}|{seed}|{j}".encode()).hexdigest()[:6], 16) % 1000
    return f"Thinking about: {tail} (seed {seed}, choice {j})", f"The answer is {k}."


class TeacherServer:
    """See the module docstring. Thread-safe: the server runs in its own thread and loop."""

    def __init__(
        self,
        *,
        models: list[str] | tuple[str, ...] = ("test-model",),
        reasoning: str = "think",
        latency_s: float = 0.0,
        log_path: str | Path | None = None,
        port: int = 0,
        api_key: str | None = None,
        parts: Callable[[str, Any, int], tuple[str, str]] | None = None,
    ):
        if reasoning not in ("think", "reasoning_content", "reasoning"):
            raise ValueError(f"reasoning={reasoning!r}: expected 'think', 'reasoning_content' or 'reasoning'")
        self.models = list(models)
        self.reasoning = reasoning
        self.latency_s = latency_s
        self.api_key = api_key  # when set, requests without "Bearer <key>" get 401
        self.parts = parts or choice_parts  # (prompt, seed, j) -> (reasoning, answer): a test's own answers
        self.default: Behaviour = Normal()
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._log_file = open(log_path, "a", encoding="utf-8") if log_path else None
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.url = ""

    # -- control from the test's thread ---------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next completion requests, in order."""
        with self._lock:
            for b in behaviours:
                for _ in range(max(1, b.times)):
                    self._queue.append(b)

    def pending(self) -> int:
        """Scripted behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    def requests(self, path: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self.log if path is None or e["path"].endswith(path)]

    def completion_requests(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self.log if e["path"].endswith("completions")]

    def reset(self) -> None:
        """Forget the log, the script and the in-flight maximum."""
        with self._lock:
            self.log.clear()
            self._queue.clear()
            self.max_in_flight = self.in_flight
            self.default = Normal()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TeacherServer:
        self._thread = threading.Thread(target=self._serve, name="teacher-server", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the teacher server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"the teacher server failed to start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/completions", self._completions)
        # handler_cancellation: a client that gives up (a stall test) ends its handler too.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the port the OS picked for 0
        self.url = f"http://{HOST}:{port}/v1"
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- handlers ------------------------------------------------------------------------------

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}, status=401)
        return None

    async def _models(self, request: web.Request) -> web.Response:
        entry = self._arrive(request, None, "models")
        resp = self._unauthorised(request) or web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "tests"} for m in self.models]}
        )
        self._finish(entry, resp.status, True)
        return resp

    def _arrive(self, request: web.Request, body: Any, behaviour: str) -> dict:
        entry = {
            "time": time.time(),
            "path": request.path,
            "authorization": request.headers.get("Authorization"),
            "body": body,
            "behaviour": behaviour,
            "status": None,
            "completed": False,
        }
        with self._lock:
            self.log.append(entry)
        return entry

    def _finish(self, entry: dict, status: int | None, completed: bool) -> None:
        """Close the entry (the first call counts) and append it to the JSONL log."""
        with self._lock:
            if "elapsed_s" in entry:
                return
            entry["status"] = status
            entry["completed"] = completed
            entry["elapsed_s"] = round(time.time() - entry["time"], 4)
            if self._log_file is not None:
                self._log_file.write(json.dumps(entry) + "\n")
                self._log_file.flush()

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        behaviour = self._next()
        entry = self._arrive(request, body if body is not None else raw.decode("utf-8", "replace"), type(behaviour).__name__)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status: int | None = None
        completed = False
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            resp = self._unauthorised(request)
            if resp is None and not isinstance(body, dict):
                resp = _error(400, "the body is not a JSON object")
            if resp is None and body.get("model") not in self.models:
                resp = _error(404, f"The model `{body.get('model')}` does not exist.")
            if resp is None:
                status, completed, resp = await self._behave(request, body, behaviour, entry)
            else:
                status, completed = resp.status, True
            return resp
        finally:
            with self._lock:
                self.in_flight -= 1
            self._finish(entry, status, completed)

    async def _behave(self, request: web.Request, body: dict, b: Behaviour, entry: dict) -> tuple[int | None, bool, web.StreamResponse]:
        if isinstance(b, Status):
            resp = _error(b.code, b.message or f"scripted {b.code}")
            if b.retry_after is not None:
                resp.headers["Retry-After"] = str(b.retry_after)
            return b.code, True, resp
        if isinstance(b, Garbage):
            if body.get("stream"):
                resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                self._finish(entry, 200, True)
                await resp.write(b'data: {"id": "cmpl-1", "choices": [{"ind\n\n')
                await resp.write_eof()
                return 200, True, resp
            return 200, True, web.Response(body=b'{"id": "cmpl-1", "choices": [{"ind', content_type="application/json")
        if isinstance(b, Reset):
            request.transport.abort()
            return None, False, web.Response(status=500)  # never reaches the client
        if isinstance(b, Slow):
            await asyncio.sleep(b.seconds)
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("n") or 1)
        choices, usage = self._answer(body, chat, n, b)
        if body.get("stream"):
            return await self._stream(request, body, chat, choices, usage, b, entry)
        if isinstance(b, Stall):
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await asyncio.sleep(b.seconds)
            return 200, False, resp
        obj = {
            "id": "cmpl-test",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [] if isinstance(b, EmptyChoices) else choices,
            "usage": usage,
        }
        return 200, True, web.json_response(obj)

    def _answer(self, body: dict, chat: bool, n: int, b: Behaviour) -> tuple[list[dict], dict]:
        prompt = prompt_text(body)
        seed = body.get("seed")
        max_tokens = int(body.get("max_tokens") or 1 << 30)
        choices = []
        completion_tokens = 0
        for j in range(n if not isinstance(b, Fewer) else min(n, b.k)):
            reasoning, answer = self.parts(prompt, seed, j)
            words = _words(reasoning) + _words(answer)
            limit = max(1, len(words) // 2) if isinstance(b, Length) else max_tokens
            finish = "length" if len(words) > limit else "stop"
            kept_r = _words(reasoning)[:limit]
            kept_a = _words(answer)[: max(0, limit - len(kept_r))]
            completion_tokens += len(kept_r) + len(kept_a)
            reasoning_text = " ".join(kept_r)
            answer_text = " ".join(kept_a)
            if self.reasoning == "think":
                text = f"<think>{reasoning_text}" + (f"</think> {answer_text}" if finish == "stop" or kept_a else "")
                extra = {}
            else:
                text = answer_text
                extra = {self.reasoning: reasoning_text}
            if chat:
                choices.append({"index": j, "message": {"role": "assistant", "content": text, **extra}, "finish_reason": finish})
            else:
                choices.append({"index": j, "text": text, "finish_reason": finish, "logprobs": None})
        usage = {
            "prompt_tokens": len(_words(prompt)),
            "completion_tokens": completion_tokens,
            "total_tokens": len(_words(prompt)) + completion_tokens,
        }
        return choices, usage

    async def _stream(self, request, body, chat, choices, usage, b, entry) -> tuple[int, bool, web.StreamResponse]:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        base = {"id": "cmpl-test", "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()), "model": body["model"]}
        events: list[dict] = []
        if isinstance(b, EmptyChoices):
            choices = []
        for c in choices:
            j = c["index"]
            if chat:
                msg = c["message"]
                events.append({"choices": [{"index": j, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
                if self.reasoning != "think":
                    for w in _pieces(msg[self.reasoning]):
                        events.append({"choices": [{"index": j, "delta": {self.reasoning: w}, "finish_reason": None}]})
                for w in _pieces(msg["content"]):
                    events.append({"choices": [{"index": j, "delta": {"content": w}, "finish_reason": None}]})
                events.append({"choices": [{"index": j, "delta": {}, "finish_reason": c["finish_reason"]}]})
            else:
                for w in _pieces(c["text"]):
                    events.append({"choices": [{"index": j, "text": w, "finish_reason": None}]})
                events.append({"choices": [{"index": j, "text": "", "finish_reason": c["finish_reason"]}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"choices": [], "usage": usage})
        for k, ev in enumerate(events):
            if isinstance(b, Stall) and k == b.after_chunks:
                await asyncio.sleep(b.seconds)
                return 200, False, resp
            await resp.write(b"data: " + json.dumps({**base, **ev}).encode() + b"\n\n")
        self._finish(entry, 200, True)  # before the last bytes, as for a plain answer
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return 200, True, resp


def _pieces(text: str) -> list[str]:
    """Split text into stream deltas that join back to it exactly (a word and its space)."""
    out, start = [], 0
    for k in range(1, len(text) + 1):
        if k == len(text) or text[k] == " ":
            out.append(text[start:k])
            start = k
    return out


def _error(code: int, message: str) -> web.Response:
    kind = "invalid_request_error" if code < 500 else "server_error"
    return web.json_response({"object": "error", "error": {"message": message, "type": kind, "code": code}}, status=code)


def main() -> None:  # pragma: no cover - for running a client in another process by hand
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reasoning", default="think")
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    server = TeacherServer(models=args.model or ["test-model"], latency_s=args.latency, reasoning=args.reasoning, log_path=args.log, port=args.port)
    with server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
