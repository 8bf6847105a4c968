"""Question sources: seed sets, procedural generators and teacher-written questions, as rows of the
`problems` table; the checker for each problem's samples; majority-vote labels (labels.py).

    from factory.questions import parse_source, iter_problems, check_sample, write_questions
    src = parse_source({"source": "jsonl", "path": "gsm8k_train.jsonl",
                        "fields": {"problem": "question", "answer": "answer"}, "limit": 100})
    rows = list(iter_problems(src, base_dir=Path(".")))      # problems rows; BadInput on bad input
    gen = parse_source({"source": "generator", "generator": "countdown", "count": 50, "difficulty": 3})
    verdict = check_sample(problem_row, sample_row)          # by metadata.verifier
    new = await write_questions(lake, teacher, rows, run_id="r1", count=20)   # teacher_written

A recipe lists sources; `parse_source` validates one (`where` prefixes the key path in errors,
e.g. `questions[2].fields.questoin: unknown field`). The three kinds, told apart by `source`:
- seed sets: `{source: jsonl|parquet|csv|hf, path, fields: {problem, answer, tests, id,
  metadata, difficulty, setup, entry_point}, limit, name, answer_format: auto|gsm8k|boxed|plain,
  domain, verifier, split (hf), on_bad_row: fail|skip, show_tests: N (code)}` -> seeds.py;
- generators: `{source: generator, generator: addition|arithmetic|linear|countdown|sorting, count,
  difficulty: 1..5, seed, split: all|train|test, test_share}` -> generators.py; `split: train`
  keeps `count` distinct problems of the train side of the hash split (splits.py), the side an
  eval's `--split test` never draws from;
- teacher-written: `{source: teacher_written, from: <index or name of another source>, count,
  modes: [harder, new_context, combine], ...}` -> writer.py; the flow supplies the teacher and
  the seed rows (those of the named source) and calls `write_questions(**src.write_options())`.

Every problem row's metadata names its checker: `{"verifier": "math" | "code" | "countdown" |
"sorting" | "exact" | "choice"}`; `check_sample` dispatches on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_serializer, model_validator

from storage.errors import BadInput

from ..verifiers.base import Verdict
from ..yaml_config import omit
from .generators import CHECKERS, GENERATORS, generate
from .seeds import FieldMap, read_seeds
from .splits import DEFAULT_TEST_SHARE, Split, generate_split, split_of
from .writer import MODES, WriteStats, write_questions

__all__ = [
    "GENERATORS",
    "MODES",
    "VERIFIERS",
    "FieldMap",
    "GeneratorSource",
    "QuestionSource",
    "SeedSource",
    "TeacherWrittenSource",
    "WriteStats",
    "check_sample",
    "iter_problems",
    "parse_source",
    "source_name",
    "split_of",
    "write_questions",
]

VERIFIERS = ("math", "code", "countdown", "sorting", "exact", "choice")


class SeedSource(BaseModel):
    """A seed set: a JSONL / Parquet / CSV file or a local HF `datasets` folder."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["jsonl", "parquet", "csv", "hf"]
    path: str = Field(..., min_length=1, description="relative to the recipe's folder")
    fields: FieldMap = Field(default_factory=FieldMap)
    limit: int | None = Field(None, ge=1)
    name: str | None = None
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"
    domain: str | None = None  # default: code when tests are mapped, else math
    verifier: Literal["math", "code", "countdown", "sorting", "exact", "choice"] | None = None
    split: str | None = None  # hf: which split of a DatasetDict folder
    on_bad_row: Literal["fail", "skip"] = "fail"
    show_tests: int = Field(0, ge=0)  # code: append the first N asserts to the problem (MBPP's prompt)
    license: str | None = Field(None, min_length=1, max_length=200, description="the seed set's licence, for dataset cards")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        return omit(handler(self), license=self.license is None)  # a recipe written before `license` keeps its hash


class GeneratorSource(BaseModel):
    """Procedural problems with exact answers. `split: train` (or `test`) keeps only the problems
    on that side of the hash split (splits.py), `count` distinct ones, so an eval on the family's
    test side never sees a problem this source made; `all` (the default) draws `count` items as
    they come."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["generator"]
    generator: Literal["addition", "arithmetic", "linear", "countdown", "sorting"]
    count: int = Field(..., ge=1)
    difficulty: int = Field(2, ge=1, le=5)
    seed: int = 0
    name: str | None = None
    split: Split = "all"
    test_share: float = Field(DEFAULT_TEST_SHARE, gt=0.0, lt=1.0, description="the test side's share of the family")

    @model_validator(mode="after")
    def _share_needs_split(self) -> GeneratorSource:
        if "test_share" in self.model_fields_set and self.split == "all":
            raise ValueError("test_share is only for split: train or split: test")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        unsplit = self.split == "all"  # a recipe written before splits keeps its hash
        return omit(handler(self), split=unsplit, test_share=unsplit)


class TeacherWrittenSource(BaseModel):
    """New problems a teacher writes from another source's problems."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: Literal["teacher_written"]
    from_: int | str = Field(..., alias="from", description="index or name of the seed source")
    count: int = Field(..., ge=1)
    modes: list[Literal["harder", "new_context", "combine"]] = Field(default_factory=lambda: list(MODES), min_length=1)
    name: str | None = None
    samples_per_question: int = Field(4, ge=1)
    min_votes: int = Field(3, ge=1)
    min_agreement: float = Field(0.6, gt=0.0, le=1.0)
    write_max_tokens: int = Field(512, ge=1)
    answer_max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    answer_temperature: float = Field(0.6, ge=0.0, le=2.0)
    seed: int = 0
    max_rounds: int = Field(3, ge=1)
    keep_truncated: bool = False
    last_number: bool = False
    benchmarks: list[str] | None = None  # decontamination benchmarks (None: the whole registry)

    def write_options(self) -> dict[str, Any]:
        """Keyword arguments for `write_questions` (besides lake, teacher, seeds and run_id)."""
        return {
            "count": self.count, "modes": list(self.modes), "samples_per_question": self.samples_per_question,
            "min_votes": self.min_votes, "min_agreement": self.min_agreement, "write_max_tokens": self.write_max_tokens,
            "answer_max_tokens": self.answer_max_tokens, "temperature": self.temperature,
            "answer_temperature": self.answer_temperature, "seed": self.seed, "max_rounds": self.max_rounds,
            "keep_truncated": self.keep_truncated, "last_number": self.last_number, "benchmarks": self.benchmarks,
            "source": self.name or "teacher_written",
        }


QuestionSource = Annotated[SeedSource | GeneratorSource | TeacherWrittenSource, Field(discriminator="source")]
_ADAPTER: TypeAdapter = TypeAdapter(QuestionSource)
_KINDS = ("jsonl", "parquet", "csv", "hf", "generator", "teacher_written")


def _path(loc: tuple) -> str:
    out = ""
    if loc and loc[0] in _KINDS:
        loc = loc[1:]  # pydantic puts the union member's tag first: not a key
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_source(data: Any, where: str = "source") -> SeedSource | GeneratorSource | TeacherWrittenSource:
    """A validated source config; BadInput naming the key path (`where` + the path inside)."""
    if isinstance(data, (SeedSource, GeneratorSource, TeacherWrittenSource)):
        return data
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a mapping with a 'source' key, got {type(data).__name__}")
    if "source" not in data:
        raise BadInput(f"{where}.source: missing; expected one of {', '.join(_KINDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _path(err["loc"])
            key = f"{where}.{path}" if path else where
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            if err["type"] == "union_tag_invalid":
                msg = f"source {data.get('source')!r}: expected one of {', '.join(_KINDS)}"
            problems.append(f"{key}: {msg}")
        raise BadInput("; ".join(problems)) from None


def source_name(source, index: int | None = None) -> str:
    """The name a source's rows carry in `problems.source` (and that `from:` can refer to)."""
    if source.name:
        return source.name
    if isinstance(source, SeedSource):
        p = Path(source.path)
        return p.name if source.source == "hf" else p.name.split(".")[0]
    if isinstance(source, GeneratorSource):
        return f"gen-{source.generator}"
    return "teacher_written" if index is None else f"teacher_written-{index}"


def iter_problems(source, *, base_dir: Path) -> Iterator[dict]:
    """Rows for the `problems` table from a seed or generator source (BadInput on bad input).
    Teacher-written sources need a teacher: the flow calls `write_questions` for them."""
    source = parse_source(source)
    if isinstance(source, GeneratorSource):
        if source.split == "all":
            rows = generate(source.generator, count=source.count, difficulty=source.difficulty, seed=source.seed)
        else:
            rows = iter(generate_split(source.generator, count=source.count, difficulty=source.difficulty, seed=source.seed,
                                       split=source.split, test_share=source.test_share,
                                       where=f"generator source {source_name(source)}"))
        if source.name:
            return ({**r, "source": source.name} for r in rows)
        return rows
    if isinstance(source, TeacherWrittenSource):
        raise ValueError("a teacher_written source is written by write_questions (it needs a teacher and seed rows)")
    path = Path(source.path).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    return read_seeds(
        path, source.fields, source=source_name(source), answer_format=source.answer_format,
        kind=source.source, limit=source.limit, domain=source.domain, verifier=source.verifier,
        split=source.split, on_bad_row=source.on_bad_row, show_tests=source.show_tests,
    )


def _completion(sample: dict) -> str:
    if sample.get("completion"):
        return sample["completion"]
    reasoning, answer = sample.get("reasoning"), sample.get("answer")
    return (f"<think>{reasoning}</think>" if reasoning else "") + (answer or "")


def check_sample(problem_row: dict, sample_row: dict) -> Verdict:
    """The verdict of one sample on its problem, by the checker the problem's metadata names."""
    meta = problem_row.get("metadata")
    try:
        meta = json.loads(meta) if isinstance(meta, str) else dict(meta or {})
    except (TypeError, ValueError):
        return Verdict.errored("questions", "the problem's metadata is not a JSON object")
    verifier = meta.get("verifier", "math")
    completion = _completion(sample_row)
    gold = problem_row.get("reference_answer")
    try:
        if verifier in CHECKERS:
            if verifier != "countdown" and not gold:
                return Verdict.unverifiable(verifier, "the problem has no reference answer")
            return CHECKERS[verifier](completion, {**problem_row, "metadata": meta})
        if verifier in ("code", "exact", "choice"):  # the shared verifiers, by the one registry
            from ..verifiers.registry import Check, Options, verify

            tests = problem_row.get("tests")
            tests = json.loads(tests) if isinstance(tests, str) else tests
            missing = "the problem has no tests" if verifier == "code" else "the problem has no reference answer"
            return verify(verifier, [Check(completion, reference=gold or None, tests=tests)], Options(missing=missing))[0]
    except (KeyError, TypeError, ValueError) as exc:
        return Verdict.errored(verifier, f"the problem's checker data is incomplete: {exc}")
    return Verdict.unverifiable(str(verifier), f"unknown verifier {verifier!r}; expected one of {', '.join(VERIFIERS)}")
