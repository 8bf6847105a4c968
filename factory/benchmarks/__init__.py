"""The evaluation benchmarks shipped inside the project: a registry and a loader.

    from factory.benchmarks import BENCHMARKS, load
    items = load("math500")          # [{"id", "problem", "answer", ...}, ...]
    BENCHMARKS["math500"].prompt(items[0])   # the eval prompt for one item

Decontamination (`factory.decontaminate`) and eval read the same files, so a problem that
is flagged as contaminated is exactly the text the student is scored on. The data files ship
in this package folder (public data, unchanged), read through importlib.resources: no network,
and they work from a wheel as long as pyproject ships them as package data. Sources and
licences: README.md here.

Every item is normalised to `id` (str, unique within its benchmark: the upstream id where
there is one, else the 0-based line number), `problem` (the text the model is shown), and
`answer` (reference final answer as text; None for code, whose reference is `tests`), plus
the benchmark's other fields under their own names (`solution`, `tests`, `entry_point`, ...).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from storage.errors import BadInput

# The prompt suffix of DeepSeek-R1's and most open-r1 math evals: reasoning first, then \boxed{}.
MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# HumanEval is a completion task: the model continues the signature + docstring.
HUMANEVAL_PROMPT = (
    "Complete the following Python function. Return the whole function in one ```python block.\n\n"
    "```python\n{problem}```"
)
# MBPP's own few-shot-free form (the tests tell the model the function name and signature).
MBPP_PROMPT = (
    "You are an expert Python programmer, and here is your task: {problem} "
    "Your code should pass these tests:\n\n{tests}"
)


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str  # in this package folder
    rows: int  # as this folder's README.md gives it; load() checks it
    licence: str  # as this folder's README.md gives it
    source: str
    domain: str  # "math" | "code"
    problem_fields: tuple[str, ...]  # first present, non-empty field is the problem text
    answer_field: str | None  # reference answer (math); None for code
    id_field: str | None  # None: the 0-based line number is the id
    tests_field: str | None = None  # code: the tests that decide pass/fail
    prompt_format: str = MATH_PROMPT  # str.format over the normalised item

    def prompt(self, item: dict) -> str:
        """The eval prompt for one normalised item (the text the student sees)."""
        tests = item.get("tests")
        if isinstance(tests, list):
            tests = "\n".join(tests)
        return self.prompt_format.format(problem=item["problem"], tests=tests or "")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("math500", "math500.jsonl", 500, "MIT", "MATH-500 split (identical to prm800k math_splits/test.jsonl)",
                  "math", ("problem",), "answer", "unique_id"),
        Benchmark("aime2024", "aime2024.jsonl", 30, "MIT", "GAIR-NLP/LIMO eval data", "math", ("problem",), "answer", "id"),
        Benchmark("aime2025", "aime2025.jsonl", 30, "MIT", "microsoft/G-KV", "math", ("question", "problem"), "answer", None),
        Benchmark("amc23", "amc23.jsonl", 40, "MIT", "GAIR-NLP/LIMO eval data", "math", ("problem", "question"), "answer", "id"),
        Benchmark("gsm8k", "gsm8k_test.jsonl", 1319, "MIT", "openai/grade-school-math (test split)",
                  "math", ("question",), "answer", None),
        Benchmark("minerva", "minerva_math.jsonl", 272, "upstream", "GAIR-NLP/LIMO eval data",
                  "math", ("problem", "question"), "answer", None),
        Benchmark("olympiadbench", "olympiadbench.jsonl", 675, "upstream", "GAIR-NLP/LIMO eval data",
                  "math", ("problem", "question"), "answer", "id"),
        Benchmark("humaneval", "humaneval.jsonl.gz", 164, "MIT", "openai/human-eval", "code", ("prompt",), None,
                  "task_id", tests_field="test", prompt_format=HUMANEVAL_PROMPT),
        Benchmark("mbpp", "mbpp.jsonl", 974, "CC-BY-4.0", "MBPP, third-party copy", "code", ("text",), None,
                  "task_id", tests_field="test_list", prompt_format=MBPP_PROMPT),
    ]
}


def get(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BadInput(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def parse_names(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`"math500,aime2024"`, a list, or None (all) -> registry names; BadInput on unknown ones."""
    if names is None:
        return list(BENCHMARKS)
    if isinstance(names, str):
        names = [n for n in (s.strip() for s in names.split(",")) if n]
    for n in names:
        get(n)
    if not names:
        raise BadInput(f"no benchmarks given; known: {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def _answer_text(v) -> str | None:
    # amc23 stores answers as floats (27.0): the reference answer is "27", not "27.0".
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _gsm8k_final(answer: str) -> str:
    # GSM8K's answer field is the worked solution; the reference is the value after "#### ".
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def _read_lines(file: str) -> list[str]:
    raw = resources.files(__name__).joinpath(file).read_bytes()
    if file.endswith(".gz"):
        raw = gzip.decompress(raw)
    return [line for line in io.StringIO(raw.decode("utf-8")) if line.strip()]


@cache
def _load(name: str) -> tuple[dict, ...]:
    b = get(name)
    items = []
    for i, line in enumerate(_read_lines(b.file)):
        rec = json.loads(line)
        problem = next((rec[f] for f in b.problem_fields if rec.get(f)), None)
        if problem is None:
            raise ValueError(f"{b.file}:{i + 1}: no problem text in {b.problem_fields}")
        item = {k: v for k, v in rec.items() if k not in b.problem_fields}
        item["id"] = str(rec[b.id_field]) if b.id_field else str(i)
        item["problem"] = problem
        if name == "gsm8k":
            item["solution"] = rec["answer"]
            item["answer"] = _gsm8k_final(rec["answer"])
        else:
            item["answer"] = _answer_text(rec.get(b.answer_field)) if b.answer_field else None
        if b.tests_field:
            item["tests"] = rec[b.tests_field]
        if name == "humaneval":
            item["solution"] = rec["canonical_solution"]
        elif name == "mbpp":
            item["solution"] = rec["code"]
        items.append(item)
    if len(items) != b.rows:
        raise ValueError(f"{b.file}: {len(items)} rows, the registry expects {b.rows}")
    return tuple(items)


def load(name: str) -> list[dict]:
    """The normalised items of one benchmark (fresh dicts: callers may change them)."""
    return [dict(item) for item in _load(name)]
