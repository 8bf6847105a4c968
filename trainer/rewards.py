"""GRPO rewards: the factory's verifiers and filters as weighted reward functions, cached.

    from trainer.rewards import RewardConfig, RewardSpec, Scorer
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="accuracy"), RewardSpec(name="format", weight=0.2)]))
    scored = scorer.score(samples)        # samples: dicts with completion, reference_answer, domain, ...
    scored.total                          # one weighted reward per sample
    scored.per_function["accuracy"]       # the breakdown, for the metrics

A sample is a dict with `completion` (the raw text), `problem_id`, `reference_answer`, `tests`
(code, a dict or its JSON), `domain` (math / code / ...), `finish_reason` and `completion_tokens`.
The reward functions, looked up by name (open-r1 style):
- `accuracy`: the verifier (factory.verifiers' registry) the domain calls for: math -> math
  (math-verify in its killable pool), code -> code (the bubblewrap sandbox), anything else ->
  exact match of the final answer. Or forced with `checker`.
- `format`: factory.filters' think_format: one well-formed, non-empty `<think>...</think>`.
- `language`: factory.filters' language consistency (share of letters in the target script).
- `overlong`: DAPO's soft over-long penalty: 0 up to `max_length - buffer` tokens, then falling
  linearly to -1 at `max_length`, and -1 beyond (or when cut by the length limit).
A verdict that cannot tell (`unverifiable`, `error`) scores `unverifiable` (default 0.0): a
reward must decide what such a verdict is worth, explicitly (see factory/verifiers/base.py).

Rewards are cached by (sample hash, function, function version): the sample hash covers the
completion and everything the function reads, so a re-scored completion (a repeated rollout, a
resumed run) costs nothing, and a verifier change (its version) invalidates old entries. The
cache is in-process and bounded (oldest out first).

Not covered: LLM-as-judge rewards (async, paid), process rewards; code rewards need bubblewrap
(without it the verdict is `error`, so the reward is `unverifiable`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.filters import FilterConfig, check_language, check_think_format
from factory.records import content_hash
from factory.teachers.base import split_reasoning
from factory.verifiers.base import Verdict
from factory.verifiers.math import check_version as math_check_version
from factory.verifiers.registry import Check, Options, verify

log = logging.getLogger(__name__)


class RewardSpec(BaseModel):
    """One weighted reward function."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["accuracy", "format", "language", "overlong"]
    weight: float = 1.0
    unverifiable: float = Field(0.0, description="the reward of a verdict that cannot tell (unverifiable / error)")
    checker: Literal["auto", "math", "code", "exact"] = "auto"  # accuracy only
    language: str = "en"  # language only: en (Latin script) or zh (CJK)
    max_length: int | None = Field(None, ge=1, description="overlong: the completion token limit (default: the rollout's)")
    buffer: int = Field(0, ge=0, description="overlong: tokens before max_length where the penalty ramps in (DAPO's L_cache)")


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    functions: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="accuracy")], min_length=1)
    cache_size: int = Field(100_000, ge=0)
    math_timeout_s: float = Field(5.0, gt=0)


@dataclass
class Scored:
    """Rewards of a batch: the weighted total and each function's unweighted values."""

    total: list[float]
    per_function: dict[str, list[float]]
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # function -> verdict status -> count
    elapsed_s: float = 0.0
    cache_hits: int = 0


# --- the reward functions: (samples, spec, config) -> a Verdict-like score per sample ------------


def _sample_view(s: dict) -> dict:
    """The fields factory.filters reads: completion, reasoning, answer."""
    completion = s.get("completion") or ""
    reasoning, answer = split_reasoning(completion)
    return {"completion": completion, "reasoning": reasoning, "answer": answer}


def _checker(spec: RewardSpec, sample: dict) -> str:
    if spec.checker != "auto":
        return spec.checker
    return {"math": "math", "code": "code"}.get((sample.get("domain") or "").lower(), "exact")


def accuracy(samples: list[dict], spec: RewardSpec, cfg: RewardConfig) -> list[Verdict]:
    out: list[Verdict | None] = [None] * len(samples)
    by_name: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_name.setdefault(_checker(spec, s), []).append(i)
    for name, idx in by_name.items():
        checks = [_check(samples[i]) for i in idx]
        options = Options(timeout_s=cfg.math_timeout_s) if name == "math" else Options()  # code: the sandbox's own limits
        for i, v in zip(idx, verify(name, checks, options)):
            out[i] = v
    return out  # type: ignore[return-value]


def _check(sample: dict) -> Check:
    reference, tests = sample.get("reference_answer"), sample.get("tests")
    return Check(sample.get("completion") or "", None if reference is None else str(reference),
                 json.loads(tests) if isinstance(tests, str) else tests)


def think_format(samples: list[dict], spec: RewardSpec, cfg: RewardConfig) -> list[Verdict]:
    fc = FilterConfig()
    return [check_think_format(_sample_view(s), fc) for s in samples]


def language(samples: list[dict], spec: RewardSpec, cfg: RewardConfig) -> list[Verdict]:
    fc = FilterConfig(language=spec.language)
    return [check_language(_sample_view(s), fc) for s in samples]


def overlong_penalty(length: int, max_length: int, buffer: int, truncated: bool = False) -> float:
    """DAPO's soft over-long punishment: 0 up to max_length - buffer, linear down to -1 at
    max_length, -1 past it or when the completion was cut by the limit."""
    if truncated or length > max_length:
        return -1.0
    start = max_length - buffer
    if length <= start:
        return 0.0
    return (start - length) / buffer


def overlong(samples: list[dict], spec: RewardSpec, cfg: RewardConfig) -> list[Verdict]:
    out = []
    for s in samples:
        max_length = spec.max_length or s.get("max_tokens")
        n = s.get("completion_tokens")
        if not max_length or n is None:
            out.append(Verdict.unverifiable("reward:overlong", "no completion_tokens / max_length to measure"))
            continue
        # Cut by the limit with a buffer: the ramp already reached -1; without one, DAPO's hard -1.
        p = overlong_penalty(int(n), int(max_length), spec.buffer, truncated=s.get("finish_reason") == "length" and not spec.buffer)
        out.append(Verdict("pass" if p == 0 else "fail", "reward:overlong", score=p))
    return out


REWARD_FUNCTIONS: dict[str, Callable[[list[dict], RewardSpec, RewardConfig], list[Verdict]]] = {
    "accuracy": accuracy,
    "format": think_format,
    "language": language,
    "overlong": overlong,
}


def _code_version() -> str:
    try:
        from factory.verifiers.code import CHECK_VERSION

        return str(CHECK_VERSION)
    except ImportError:  # pragma: no cover
        return "?"


# Bump a function's version when its decisions change: cached rewards are then recomputed.
VERSIONS: dict[str, Callable[[RewardSpec], str]] = {
    "accuracy": lambda spec: f"1/{spec.checker}/code{_code_version()}/math{math_check_version()}",
    "format": lambda spec: "1",
    "language": lambda spec: f"1/{spec.language}",
    "overlong": lambda spec: f"1/{spec.max_length}/{spec.buffer}",
}
_READS = ("problem_id", "completion", "reference_answer", "tests", "domain", "finish_reason", "completion_tokens", "max_tokens")


def sample_hash(sample: dict) -> str:
    """The content hash of what any reward function reads from a sample."""
    return content_hash("reward-sample", {k: sample.get(k) for k in _READS})


class Scorer:
    """Weighted reward functions over batches of samples, with the (sample hash, function,
    version) cache. One per training run; not thread-safe."""

    def __init__(self, config: RewardConfig | None = None):
        self.config = config or RewardConfig()
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, str]] = OrderedDict()

    def score(self, samples: list[dict]) -> Scored:
        t0 = time.perf_counter()
        hashes = [sample_hash(s) for s in samples]
        total = [0.0] * len(samples)
        per_function: dict[str, list[float]] = {}
        statuses: dict[str, dict[str, int]] = {}
        hits = 0
        for spec in self.config.functions:
            label = spec.name if spec.name not in per_function else f"{spec.name}_{len(per_function)}"
            version = VERSIONS[spec.name](spec)
            keys = [(h, label, version) for h in hashes]
            values: list[tuple[float, str] | None] = [self._cache.get(k) for k in keys]
            hits += sum(v is not None for v in values)
            todo = [i for i, v in enumerate(values) if v is None]
            if todo:
                verdicts = REWARD_FUNCTIONS[spec.name]([samples[i] for i in todo], spec, self.config)
                for i, v in zip(todo, verdicts):
                    values[i] = (spec.unverifiable if v.score is None else float(v.score), v.status)
                    self._remember(keys[i], values[i])  # type: ignore[arg-type]
            per_function[label] = [v[0] for v in values]  # type: ignore[index]
            counts: dict[str, int] = {}
            for v in values:
                counts[v[1]] = counts.get(v[1], 0) + 1  # type: ignore[index]
            statuses[label] = counts
            for i, v in enumerate(values):
                total[i] += spec.weight * v[0]  # type: ignore[index]
        return Scored(total, per_function, statuses, time.perf_counter() - t0, hits)

    def _remember(self, key: tuple[str, str, str], value: tuple[float, str]) -> None:
        if self.config.cache_size == 0:
            return
        self._cache[key] = value
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
