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
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from storage.errors import BadInput

from .filters import FILTERS, FilterConfig
from .questions import QuestionSource
from .sampler import Escalation
from .teachers.base import Endpoint, Price, Sampling, TeacherConfig
from .verifiers.registry import VERIFIERS as _REGISTRY
from .yaml_config import load_yaml_model, omit

# The registry's verifiers, and "auto": each problem's own (its metadata's, else code for code, math otherwise).
VERIFIERS = (*_REGISTRY, "auto")

# A recipe or dataset name: it becomes part of run ids and is what `factory export` is given, so
# no path separators and no leading dot (`../../evil/x` is refused at load, before any request).
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
NAME_RULE = "letters, digits, '.', '_', '-' (not first: '.')"


def _name(v: str) -> str:
    if not re.fullmatch(NAME_PATTERN, v) or len(v) > 128:
        raise ValueError(f"{v[:60]!r}: expected a name of 1 to 128 {NAME_RULE}")
    return v


Name = Annotated[str, AfterValidator(_name)]
_MAX_SAMPLES = 1024  # samples of one problem: more is a typo, and a bill
_DAY_S = 86_400.0
_MAX_COUNT = 10_000_000  # problems a generator or the teacher writes for one source
_INT64 = 2**63  # integers are stored in the lake's int64 columns and JSON
_GIVE_UP_S = 600.0

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
    samples_per_problem: int = Field(4, ge=1, le=_MAX_SAMPLES)
    sampling: Sampling = Field(default_factory=Sampling)
    max_concurrency: int = Field(64, ge=1, le=10_000, description="groups in flight per endpoint")
    price: Price = Field(default_factory=Price)
    api: Literal["chat", "completions"] = "chat"
    supports_n: bool = True
    max_n: int = Field(16, ge=1, le=1024)
    context_window: int | None = Field(None, ge=1, le=100_000_000)
    request_timeout_s: float = Field(600.0, gt=0, le=_DAY_S)
    stall_timeout_s: float = Field(60.0, gt=0, le=_DAY_S)
    give_up_after_s: float = Field(_GIVE_UP_S, gt=0, le=_DAY_S, description="openai: stop the run when nothing succeeds for this long")
    stream: bool = False
    revision: str | None = None
    tensor_parallel_size: int = Field(1, ge=1, le=1024)
    batch_size: int = Field(8, ge=1, le=100_000)
    device: str | None = None
    gguf_file: str | None = None
    logprob_token_ids: bool = Field(False, description="openai: ask vLLM's server for token ids with sampling.top_logprobs")

    @model_validator(mode="after")
    def _needs_url(self) -> TeacherSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Recipes written before these options keep their hash.
        return omit(handler(self), logprob_token_ids=not self.logprob_token_ids, give_up_after_s=self.give_up_after_s == _GIVE_UP_S)

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

    accepted_per_problem: int | None = Field(None, ge=1, le=_MAX_SAMPLES)
    max_samples_per_problem: int = Field(16, ge=1, le=_MAX_SAMPLES)


class DecontaminateSpec(_Strict):
    benchmarks: str | list[str] = Field("all", description="'all' or names from the benchmark registry")
    ngram: int = Field(13, ge=3, le=1000)
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
    ngram: int = Field(5, ge=1, le=1000)
    per_problem: int = Field(1, ge=1, le=_MAX_SAMPLES, description="near-duplicate responses kept per cluster within a problem")
    problems: bool = Field(True, description="also drop near-duplicate problems before sampling")


class DatasetSpec(_Strict):
    name: Name
    description: str | None = None


class BudgetSpec(_Strict):
    max_tokens: int | None = Field(None, ge=1, description="prompt + completion tokens for the run")
    max_usd: float | None = Field(None, gt=0)


class CompactionSpec(_Strict):
    """The lake's automatic compaction during a run (storage Lake.compact_if): after the
    sampler's commits when the current snapshot reads more than `max_files` data files, and at
    each stage's end when it reads more than `stage_end_files`, small files are merged and snapshots older than `keep_s` expired (except those a
    dataset version pins). Operational only: left out of the recipe hash at its defaults."""

    max_files: int = Field(512, ge=0, description="data files that trigger a compaction (0: never automatically)")
    keep_s: float = Field(3600.0, ge=0, le=366 * _DAY_S, description="snapshots younger than this stay for time travel; "
                          "files merged away stay this long for readers in flight")

    @property
    def stage_end_files(self) -> int:
        """The threshold at a stage's end: an eighth of `max_files` (at least 1; 0 when off).
        Stages are few, and a run should end compacted (benches/lake_scale.py: at 300 files a
        GROUP BY read 5x slower than one file, `existing()` 2.7x); while sampling, a
        compaction holds the writer (4 s at 250k rows), so the sampler waits for `max_files`."""
        return max(1, self.max_files // 8) if self.max_files else 0


class TruncationSpec(_Strict):
    """Ask once more for a sample cut at max_tokens (finish_reason `length`): the same prompt and
    sample index with max_tokens times `retry_max_tokens_factor`, at most `max_tokens_cap`. Both
    samples are kept; the retry's metadata names the cut one (`retry_of`). Off unless set."""

    retry_max_tokens_factor: float = Field(2.0, gt=1, le=1024)
    max_tokens_cap: int = Field(32768, ge=2, le=100_000_000)

    def escalation(self) -> Escalation:
        return Escalation(factor=self.retry_max_tokens_factor, cap=self.max_tokens_cap)


class RunnerSpec(_Strict):
    """Where verification batches run. `thread`: in process, `max_workers` batches at once
    (default 1); `dask` and `ray` need prefect-dask / prefect-ray (and a cluster address, or a
    local one) and get every batch at once."""

    kind: Literal["thread", "dask", "ray"] = "thread"
    address: str | None = None
    max_workers: int | None = Field(None, ge=1, le=1024)


class Recipe(_Strict):
    name: Name
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
    truncation: TruncationSpec | None = Field(None, description="ask again with more max_tokens for a sample cut at the limit")
    dataset: DatasetSpec | None = None
    batch_size: int = Field(256, ge=1, le=100_000, description="records per task")
    verify_timeout_s: float = Field(10.0, gt=0, le=_DAY_S)
    sandbox_workers: int = Field(2, ge=1, le=1024, description="code sandboxes run at once")
    task_runner: RunnerSpec = Field(default_factory=RunnerSpec)
    compaction: CompactionSpec = Field(default_factory=CompactionSpec)

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

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        # A recipe written before `truncation` or `compaction` keeps its hash.
        return omit(handler(self), truncation=self.truncation is None, compaction=self.compaction == CompactionSpec())

    @model_validator(mode="after")
    def _filter_config(self) -> Recipe:
        self.filter_config_model()  # thresholds a FilterConfig refuses fail at load, not mid-run
        return self

    def filter_config_model(self) -> FilterConfig:
        return FilterConfig(**{**self.filter_config, "enabled": tuple(self.filters)})

    @property
    def dataset_name(self) -> str:
        return self.dataset.name if self.dataset else self.name


def load_recipe(path: str | Path, *, text: str | None = None) -> Recipe:
    """The validated recipe; BadInput (file:line: key path: expected) for anything wrong in it,
    including what only shows outside the model: seed files that do not exist, numbers out of
    range, one setting contradicting another. All of it before a teacher is paid. `text`: the
    file's content when the caller read it already (the flow records the text it ran)."""
    base_dir = Path(path).parent
    return load_yaml_model(path, Recipe, what="recipe", check=lambda r: recipe_problems(r, base_dir), text=text)


def recipe_problems(recipe: Recipe, base_dir: Path) -> list[tuple[tuple, str]]:
    """(key path, what was expected) for each problem of a validated recipe."""
    from .questions import GeneratorSource, SeedSource, TeacherWrittenSource

    problems = list(_out_of_range(recipe.model_dump(mode="python", by_alias=True), ()))
    for i, src in enumerate(recipe.questions):
        if isinstance(src, SeedSource):
            path = Path(src.path).expanduser()
            path = path if path.is_absolute() else base_dir / path
            ok = path.is_dir() if src.source == "hf" else path.is_file()
            if not ok:
                what = "a folder written by datasets' save_to_disk" if src.source == "hf" else f"a {src.source} file"
                problems.append((("questions", i, "path"), f"{path} does not exist or is not {what} (a relative path is from the recipe's folder)"))
        elif isinstance(src, (GeneratorSource, TeacherWrittenSource)) and src.count > _MAX_COUNT:
            problems.append((("questions", i, "count"), f"expected at most {_MAX_COUNT:,} problems per source"))
    t, ad = recipe.teacher, recipe.adaptive
    if t.context_window is not None and t.sampling.max_tokens >= t.context_window:
        problems.append((("teacher", "sampling", "max_tokens"), f"expected fewer than context_window ({t.context_window}) tokens, leaving room for the prompt"))
    if recipe.truncation is not None:
        cap = recipe.truncation.max_tokens_cap
        if cap <= t.sampling.max_tokens:
            problems.append((("truncation", "max_tokens_cap"),
                             f"expected more than teacher.sampling.max_tokens ({t.sampling.max_tokens}): no retry could be longer"))
        elif t.context_window is not None and cap >= t.context_window:
            problems.append((("truncation", "max_tokens_cap"), f"expected fewer than context_window ({t.context_window}) tokens, leaving room for the prompt"))
    if ad.accepted_per_problem is not None:
        if ad.accepted_per_problem > ad.max_samples_per_problem:
            problems.append((("adaptive", "accepted_per_problem"),
                             f"expected at most max_samples_per_problem ({ad.max_samples_per_problem}): no problem could reach it"))
        if ad.max_samples_per_problem < t.samples_per_problem:
            problems.append((("adaptive", "max_samples_per_problem"), f"expected at least teacher.samples_per_problem ({t.samples_per_problem})"))
    fc = recipe.filter_config_model()
    if fc.min_words > fc.max_words:
        problems.append((("filter_config", "min_words"), f"expected at most max_words ({fc.max_words})"))
    return problems


def _out_of_range(value: Any, loc: tuple) -> Iterator[tuple[tuple, str]]:
    """Every number pydantic's bounds let through that the run cannot use: a float that is not
    finite (`.inf`, `.nan`) or an integer beyond 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _out_of_range(v, (*loc, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _out_of_range(v, (*loc, i))
    elif isinstance(value, float) and not math.isfinite(value):
        yield loc, f"expected a finite number, got {value}"
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        yield loc, "expected an integer of at most 64 bits"


def recipe_hash(recipe: Recipe) -> str:
    """A hash of what the recipe means (not of its spelling): the validated model, canonical JSON."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
