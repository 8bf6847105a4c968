"""Recipes: the YAML a user writes to say what `factory run` makes, validated by pydantic.

    recipe = load_recipe("recipes/quickstart.yaml")    # BadInput: file, line, key path, expected
    recipe.teacher.to_config()                          # the TeacherConfig the sampler uses
    recipe_hash(recipe)                                 # stored with the run and the dataset

A recipe has one list of question sources (see factory/questions), one teacher, the verifiers
and filters that decide which samples are kept, the dedup threshold and the dataset name:

    name: gsm8k-r1
    questions:
      - {source: jsonl, path: data/gsm8k_test.jsonl, fields: {problem: question, answer: answer}, limit: 200}
    teacher:
      backend: openai            # openai | vllm | transformers
      base_url: http://127.0.0.1:8000/v1
      model: deepseek-r1
      samples_per_problem: 4
      sampling: {temperature: 0.6, max_tokens: 4096}
    verify: [math]
    filters: [think_format, language, repetition, truncation]
    dedup: {threshold: 0.8}
    dataset: {name: gsm8k-r1}

Paths inside a recipe are relative to the recipe file's folder. Loading and error
messages come from `factory.yaml_config.load_yaml_model`, which the trainer's configs use too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from storage.errors import BadInput

from .filters import FILTERS, FilterConfig
from .questions import QuestionSource
from .teachers.base import Endpoint, Price, Sampling, TeacherConfig
from .yaml_config import load_yaml_model

VERIFIERS = ("math", "code", "choice", "exact", "regex", "auto")

# The R1 paper's instruction for math; code asks for one fenced block (the code verifier reads it).
DEFAULT_TEMPLATES = {
    "math": "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "code": "{problem}\n\nWrite a Python solution in a single ```python code block.",
    "puzzle": "{problem}\n\nPlease reason step by step before you answer.",  # generators state their answer format
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherSpec(_Strict):
    """The teacher as a recipe names it; `to_config` gives the backend's TeacherConfig."""

    backend: Literal["openai", "vllm", "transformers"] = "transformers"
    model: str = Field("smollm2", min_length=1, description="served model id, local folder, or smollm2")
    name: str | None = Field(None, description="our name for it, stored in samples.teacher (default: the model)")
    base_url: str | list[str] | None = Field(None, description="openai backend: one base URL or a list (load-balanced)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    samples_per_problem: int = Field(4, ge=1, le=1024)
    sampling: Sampling = Field(default_factory=Sampling)
    max_concurrency: int = Field(64, ge=1, description="groups in flight per endpoint")
    price: Price = Field(default_factory=Price)
    api: Literal["chat", "completions"] = "chat"
    supports_n: bool = True
    max_n: int = Field(16, ge=1)
    context_window: int | None = Field(None, ge=1)
    request_timeout_s: float = Field(600.0, gt=0)
    stall_timeout_s: float = Field(60.0, gt=0)
    stream: bool = False
    revision: str | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    device: str | None = None
    gguf_file: str | None = None

    @model_validator(mode="after")
    def _needs_url(self) -> "TeacherSpec":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
        return self

    def to_config(self) -> TeacherConfig:
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url or [])
        endpoints = [Endpoint(url=u, api_key_env=self.api_key_env, max_concurrency=self.max_concurrency) for u in urls]
        fields = self.model_dump(exclude={"base_url", "api_key_env", "samples_per_problem", "sampling", "max_concurrency", "name", "price"})
        return TeacherConfig(name=self.name or self.model, endpoints=endpoints, price=self.price, **fields)


class PromptSpec(_Strict):
    """How a problem becomes the teacher's messages. `{problem}` is replaced; other braces are
    literal when doubled. Without `template`, the domain's default (R1's boxed-answer instruction
    for math, step-by-step for puzzles, whose text states its answer format, one
    ```python block for code)."""

    system: str | None = None
    template: str | None = None

    @field_validator("template")
    @classmethod
    def _has_problem(cls, v: str | None) -> str | None:
        if v is not None:
            if "{problem}" not in v:
                raise ValueError("expected a template containing {problem}")
            try:
                v.format(problem="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"template: only {{problem}} may be a placeholder (double other braces): {exc}") from None
        return v

    def messages(self, problem: dict) -> list[dict]:
        template = self.template or DEFAULT_TEMPLATES.get(problem.get("domain") or "math", DEFAULT_TEMPLATES["math"])
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": template.format(problem=problem["problem"])})
        return out


class AdaptiveSpec(_Strict):
    """Stop sampling a problem once it has `accepted_per_problem` accepted samples; until then
    give it more, in rounds (each round doubles its samples) up to `max_samples_per_problem`.
    Off when `accepted_per_problem` is None: every problem gets samples_per_problem."""

    accepted_per_problem: int | None = Field(None, ge=1)
    max_samples_per_problem: int = Field(16, ge=1)


class DecontaminateSpec(_Strict):
    benchmarks: str | list[str] = Field("all", description="'all' or names from the benchmark registry")
    ngram: int = Field(13, ge=3)
    enabled: bool = True

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: str | list[str]) -> str | list[str]:
        if v != "all":
            from .benchmarks import parse_names

            try:
                parse_names(v)
            except BadInput as exc:
                raise ValueError(str(exc)) from None
        return v


class DedupSpec(_Strict):
    threshold: float = Field(0.8, gt=0, le=1)
    ngram: int = Field(5, ge=1)
    per_problem: int = Field(1, ge=1, description="near-duplicate responses kept per cluster within a problem")
    problems: bool = Field(True, description="also drop near-duplicate problems before sampling")


class DatasetSpec(_Strict):
    name: str = Field(..., min_length=1)
    description: str | None = None


class BudgetSpec(_Strict):
    max_tokens: int | None = Field(None, ge=1, description="prompt + completion tokens for the run")
    max_usd: float | None = Field(None, gt=0)


class RunnerSpec(_Strict):
    """Where verification batches run. `thread`: in process, `max_workers` batches at once
    (default 1); `dask` and `ray` need prefect-dask / prefect-ray (and a cluster address, or a
    local one) and get every batch at once."""

    kind: Literal["thread", "dask", "ray"] = "thread"
    address: str | None = None
    max_workers: int | None = Field(None, ge=1)


class Recipe(_Strict):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    questions: list[QuestionSource] = Field(..., min_length=1)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    verify: list[str] = Field(default_factory=lambda: ["math"])
    filters: list[str] = Field(default_factory=lambda: ["think_format", "language", "repetition", "truncation"])
    filter_config: dict[str, Any] = Field(default_factory=dict, description="FilterConfig thresholds")
    decontaminate: DecontaminateSpec = Field(default_factory=DecontaminateSpec)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    adaptive: AdaptiveSpec = Field(default_factory=AdaptiveSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    dataset: DatasetSpec | None = None
    batch_size: int = Field(256, ge=1, le=100_000, description="records per task")
    verify_timeout_s: float = Field(10.0, gt=0)
    sandbox_workers: int = Field(2, ge=1, description="code sandboxes run at once")
    task_runner: RunnerSpec = Field(default_factory=RunnerSpec)

    @field_validator("verify")
    @classmethod
    def _known_verifiers(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in VERIFIERS]
        if bad:
            raise ValueError(f"unknown verifier(s) {bad}: expected some of {list(VERIFIERS)}")
        return v

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in FILTERS]
        if bad:
            raise ValueError(f"unknown filter(s) {bad}: expected some of {sorted(FILTERS)}")
        return v

    @model_validator(mode="after")
    def _filter_config(self) -> "Recipe":
        self.filter_config_model()  # thresholds a FilterConfig refuses fail at load, not mid-run
        return self

    def filter_config_model(self) -> FilterConfig:
        return FilterConfig(**{**self.filter_config, "enabled": tuple(self.filters)})

    @property
    def dataset_name(self) -> str:
        return self.dataset.name if self.dataset else self.name


def load_recipe(path: str | Path) -> Recipe:
    recipe = load_yaml_model(path, Recipe, what="recipe")
    return recipe


def recipe_hash(recipe: Recipe) -> str:
    """A hash of what the recipe means (not of its spelling): the validated model, canonical JSON."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
