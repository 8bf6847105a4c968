"""The teacher interface: what every backend takes and returns, and the request key.

    from factory.teachers.base import RequestGroup, Sampling, TeacherConfig
    group = RequestGroup(problem_id="p1", messages=[{"role": "user", "content": "1+1?"}],
                         sampling=Sampling(max_tokens=256), sample_indices=(0, 1, 2, 3))
    completions = await teacher.generate(group)   # one Completion per sample index received

A request key is a content hash of (model id + revision, the exact messages, the sampling
parameters, the sample index): the unit the ledger pays for exactly once. A backend receives
a `RequestGroup` (one prompt, several sample indices) so it can ask for them in one call where
the server supports `n`; it returns the completions it got, each tagged with its sample index.
Fewer than asked is allowed (partial results are kept; the missing keys are sent again on the
next run), though the OpenAI-compatible backend asks again in the same call for indices a
server left out. Errors are `TeacherError`: `retryable` says whether trying again later can help.

Top-k log-probs: `Sampling.top_logprobs = k` asks the backend for the k most likely tokens
and their log-probs at every generated position (OpenAI-compatible `logprobs`/`top_logprobs`,
vLLM's `SamplingParams(logprobs=k)`, the local teacher's own logits). A completion then carries
them in `Completion.topk` (see `TopK`); the sampler stores them in the `teacher_topk` table and
`factory train distill` (kd.mode sparse) learns from them. It is part of the request key: a
sample paid for without log-probs has none to give, so asking for them is a new request. Left
unset it is left out of `Sampling`'s dump, so request keys and recipe hashes from before the
option existed stay as they were.

Backends: `factory.teachers.openai_http` (any OpenAI-compatible server), `factory.teachers.vllm_offline`
(vLLM's `LLM.generate`), `factory.teachers.local` (transformers on CPU or one GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from ..records import content_hash
from ..yaml_config import omit


class Sampling(BaseModel):
    """Sampling parameters. `n` is not here: the number of samples is the number of keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.6, ge=0.0, le=2.0)  # DeepSeek-R1's recommended setting
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(4096, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = Field(None, ge=1, le=100_000, description="top-k log-probs per generated token (None: none)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return omit(handler(self), top_logprobs=self.top_logprobs is None)  # keys and hashes from before it stay


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(0.0, ge=0.0)
    output_per_mtok: float = Field(0.0, ge=0.0)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_per_mtok + (completion_tokens or 0) * self.output_per_mtok) / 1e6


class Endpoint(BaseModel):
    """One server of an OpenAI-compatible teacher."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., description="base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    max_concurrency: int = Field(64, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"{v!r}: expected an http:// or https:// base URL such as http://127.0.0.1:8000/v1")
        return v.rstrip("/")


class TeacherConfig(BaseModel):
    """A teacher as a recipe names it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="our name for it, stored in samples.teacher")
    backend: Literal["openai", "vllm", "transformers"]
    model: str = Field(..., min_length=1, description="model id as the server knows it, or a local folder")
    revision: str | None = None
    endpoints: list[Endpoint] = Field(default_factory=list)
    api: Literal["chat", "completions"] = "chat"
    supports_n: bool = True  # False: fan out one request per sample index
    max_n: int = Field(16, ge=1)
    context_window: int | None = Field(None, ge=1)
    price: Price = Field(default_factory=Price)
    request_timeout_s: float = Field(600.0, gt=0)  # per request, retries included
    stall_timeout_s: float = Field(60.0, gt=0)  # no bytes for this long on a stream: give up
    # Failing with no success for this long (a 429 storm, a server down): TeacherUnavailable stops the run.
    give_up_after_s: float = Field(600.0, gt=0)
    stream: bool = False
    # vLLM and transformers
    tensor_parallel_size: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    device: str | None = None  # transformers: "cpu", "cuda", or None for the best available
    gguf_file: str | None = None  # transformers: a GGUF file inside the model folder
    # openai: ask for token ids with top-k log-probs (vLLM's `return_tokens_as_token_ids`; other servers may refuse it)
    logprob_token_ids: bool = False


@dataclass(frozen=True)
class RequestGroup:
    """One prompt and the sample indices wanted for it."""

    problem_id: str
    messages: tuple[dict, ...] | list[dict]
    sampling: Sampling
    sample_indices: tuple[int, ...]

    def keys(self, config: TeacherConfig) -> dict[int, str]:
        return {i: request_key(config, self.messages, self.sampling, i) for i in self.sample_indices}


@dataclass
class Completion:
    """What a backend got for one sample index."""

    sample_index: int
    text: str  # the raw completion (the message content)
    finish_reason: str | None
    reasoning_content: str | None = None  # servers that split reasoning out (DeepSeek, vLLM reasoning parsers)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    endpoint: str | None = None
    extra: dict = field(default_factory=dict)
    topk: TopK | None = None  # with Sampling.top_logprobs: the teacher's top-k at each generated token


@dataclass
class TopK:
    """The teacher's top-k log-probs at each generated position, in order: position j is the
    distribution the j-th generated token was drawn from. Ids where the backend gives them
    (transformers, vLLM offline, vLLM's server with `logprob_token_ids`), token strings where it
    gives those (OpenAI-compatible servers); each position may hold fewer than `k` entries."""

    k: int
    top_logprobs: list[list[float]]
    top_ids: list[list[int]] | None = None
    top_tokens: list[list[str]] | None = None
    token_ids: list[int] | None = None  # the token generated at each position
    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None  # its log-prob (it need not be in the top k)

    def row(self, sample_id: str) -> dict:
        """A `teacher_topk` row (storage/schemas.py) for the sample."""
        return {"sample_id": sample_id, "k": self.k, "positions": len(self.top_logprobs), **vars(self)}


class TeacherError(Exception):
    """A request failed. `retryable`: a later try may succeed (the ledger will resend the key)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class TeacherUnavailable(TeacherError):
    """No request succeeded for `give_up_after_s` while requests kept failing (a rate-limit storm
    that does not end, a server that stays down): every further request would fail alike, so the
    sampler stops its workers (what was received is committed) instead of cycling on."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message, retryable=False, status=status)


class TeacherConfigError(TeacherError):
    """The teacher cannot work as configured (unknown model, missing key, unreachable at start)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@runtime_checkable
class Teacher(Protocol):
    config: TeacherConfig

    @property
    def max_concurrency(self) -> int:
        """How many groups the sampler may have in flight at once."""

    async def check(self, longest_prompt: list[dict] | None = None, max_tokens: int | None = None) -> None:
        """Fail with TeacherConfigError before any money is spent: unreachable endpoint, unknown
        model, missing API key, a prompt (plus `max_tokens`, where the length is known exactly)
        longer than the context window."""

    async def generate(self, group: RequestGroup) -> list[Completion]:
        """The completions received for the group's sample indices (maybe fewer)."""

    async def aclose(self) -> None: ...


def request_key(config: TeacherConfig, messages, sampling: Sampling, sample_index: int) -> str:
    """The content hash the ledger pays for once."""
    return content_hash(
        "request", config.model, config.revision, [dict(m) for m in messages], sampling.model_dump(), sample_index
    )


_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def split_reasoning(text: str, reasoning_content: str | None = None) -> tuple[str | None, str | None]:
    """(reasoning, answer) from a completion: `reasoning_content` when the server split it,
    else the `<think>...</think>` block; an unterminated `<think>` (cut by max_tokens) is all
    reasoning and no answer. Text without a think block is all answer."""
    if reasoning_content:
        return reasoning_content.strip(), text.strip() or None
    m = _THINK.search(text)
    if m:
        answer = (text[: m.start()] + text[m.end() :]).strip()
        return m.group(1).strip(), answer or None
    if "<think>" in text:
        return text.split("<think>", 1)[1].strip(), None
    if "</think>" in text:  # templates that put <think> in the prompt
        reasoning, answer = text.split("</think>", 1)
        return reasoning.strip(), answer.strip() or None
    return None, text.strip() or None
