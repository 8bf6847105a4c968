"""The recipe's stages as plain functions over records; flows/pipeline.py orders them on Prefect.

    problems = collect_questions(recipe.questions, base_dir=Path("recipes"), limit=200)
    problems = mark_contamination(problems, recipe.decontaminate)
    wanted = plan_round(counts, recipe)                 # problem_id -> new sample indices
    verdicts = verify_samples(samples, problems_by_id, recipe)   # verdicts rows, verifiers + filters
    sql = dataset_sql(recipe, teacher="smol", sources=["gsm8k"])   # the dataset's saved SELECT

Stage names, the same in code, Prefect task, table and report: questions, decontaminate,
sample, verify (the verifiers), filter (the readability filters), dedup, dataset. A sample is
accepted when it has a verifier verdict and every one of its verdicts says pass (the rule, in
SQL, is factory/funnel.py's); an `unverifiable` verifier verdict (no gold, no extractable
answer) is not a pass.

Nothing here touches the lake or Prefect, so each stage is tested with plain lists.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from storage.errors import BadInput

from . import funnel
from .decontaminate import contamination_labels, decontaminate_records
from .filters import apply_filters
from .recipe import Recipe
from .verifiers.base import Verdict
from .verifiers.math import check_version as math_check_version

log = logging.getLogger(__name__)

STAGES = ("questions", "decontaminate", "sample", "verify", "filter", "dedup", "dataset")


# -- questions ----------------------------------------------------------------------------


def collect_questions(sources: Sequence[Any], *, base_dir: Path, limit: int | None = None) -> list[dict]:
    """`problems` rows from every seed and generator source in order; a problem met twice (same
    normalised text, so the same problem_id) is kept once, from its first source. `limit` caps
    the total. Teacher-written sources are skipped here: they need the teacher (see
    `teacher_written`)."""
    from .questions import TeacherWrittenSource, iter_problems

    seen: set[str] = set()
    out: list[dict] = []
    for source in sources:
        if isinstance(source, TeacherWrittenSource):
            continue
        for row in iter_problems(source, base_dir=base_dir):
            if row["problem_id"] in seen:
                continue
            seen.add(row["problem_id"])
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
    return out


def teacher_written(sources: Sequence[Any], problems: list[dict]) -> list[tuple[Any, list[dict]]]:
    """Each teacher-written source with the seed rows it writes from (the rows of the source its
    `from` names, by index in the recipe's list or by source name)."""
    from .questions import TeacherWrittenSource, source_name

    names = [source_name(s, i) for i, s in enumerate(sources)]
    out = []
    for i, s in enumerate(sources):
        if not isinstance(s, TeacherWrittenSource):
            continue
        ref = s.from_
        if isinstance(ref, int):
            if not 0 <= ref < len(sources) or isinstance(sources[ref], TeacherWrittenSource):
                raise BadInput(f"questions[{i}].from: {ref} is not the index of a seed or generator source")
            ref = names[ref]
        elif ref not in names:
            raise BadInput(f"questions[{i}].from: {ref!r} names no source; known: {names}")
        out.append((s, [p for p in problems if p.get("source") == ref]))
    return out


def mark_contamination(problems: list[dict], spec: Any) -> list[dict]:
    """The rows with `contamination` filled (one JSON hit per benchmark item matched)."""
    if not spec.enabled or not problems:
        return [{**p, "contamination": p.get("contamination") or []} for p in problems]
    names = None if spec.benchmarks == "all" else spec.benchmarks
    checked = decontaminate_records(problems, "problem", names, ngram=spec.ngram)
    return [{**p, "contamination": contamination_labels(c)} for p, c in zip(problems, checked)]


# -- sample --------------------------------------------------------------------------------


def plan_round(counts: dict[str, tuple[int, int]], recipe: Recipe) -> dict[str, tuple[int, ...]]:
    """The sample indices to request next, per problem, from (samples so far, accepted so far).

    First round: indices 0..n-1 (n = samples_per_problem). With adaptive sampling on, a problem
    below `accepted_per_problem` gets as many again (doubling), up to `max_samples_per_problem`;
    a problem that reached it gets nothing more. Indices continue where the last round stopped,
    so request keys (and the ledger) stay the same across reruns."""
    n = recipe.teacher.samples_per_problem
    ad = recipe.adaptive
    wanted: dict[str, tuple[int, ...]] = {}
    for pid, (have, accepted) in counts.items():
        if have == 0:
            wanted[pid] = tuple(range(n))
        elif ad.accepted_per_problem is not None and accepted < ad.accepted_per_problem:
            upto = min(ad.max_samples_per_problem, max(have * 2, have + 1))
            if upto > have:
                wanted[pid] = tuple(range(have, upto))
    return wanted


# -- verify and filter ---------------------------------------------------------------------


def checks_of(recipe: Recipe) -> tuple[list[str], list[str]]:
    """The verifier check names and the filter check names a recipe's samples must pass."""
    return list(recipe.verify), [f"filter:{f}" for f in recipe.filters]


def _verifier_for(problem: dict, recipe: Recipe) -> str:
    """The check that decides a problem's samples: a registry verifier's name, or a generator's
    own checker (countdown, sorting, ...) named in the problem's metadata."""
    from .verifiers.registry import VERIFIERS

    own = _meta(problem).get("verifier")
    if "auto" in recipe.verify or not recipe.verify:
        return own or ("code" if problem.get("domain") == "code" else "math")
    if own and own not in VERIFIERS:
        return own  # a generator's own checker (countdown, sorting, ...) always decides
    if problem.get("domain") == "code" and "code" in recipe.verify:
        return "code"
    return recipe.verify[0]


def _meta(row: dict) -> dict:
    m = row.get("metadata")
    if isinstance(m, dict):
        return m
    try:
        return json.loads(m) if m else {}
    except (TypeError, ValueError):
        return {}


# Why a sample its verifier cannot check is `unverifiable`, by verifier (default: no reference answer).
_MISSING = {"math": "no reference answer and no majority label", "code": "the problem has no tests"}


def _check(problem: dict, sample: dict, labels: dict[str, str] | None):
    """The registry's Check of a sample: its completion, the problem's gold (else its majority
    label) and its tests."""
    from .verifiers.registry import Check

    gold = problem.get("reference_answer")
    if gold is None and labels:
        gold = labels.get(problem["problem_id"])
    tests = problem.get("tests")
    return Check(sample.get("completion") or "", None if gold is None else str(gold),
                 json.loads(tests) if isinstance(tests, str) else tests)


def verify_samples(
    samples: Sequence[dict],
    problems: dict[str, dict],
    recipe: Recipe,
    *,
    labels: dict[str, str] | None = None,
) -> list[dict]:
    """`verdicts` rows (without run_id/created_at) for each sample: its verifier's verdict and
    each filter's. The reference answer is the problem's gold, else its majority label
    (`labels`), else the verifier says unverifiable. The verifier's row is checked under its own
    name (math, code, countdown, ...), the filters' under `filter:<name>`, so SQL can ask per
    check. Each registry verifier checks its samples as one batch."""
    from .questions import check_sample
    from .verifiers.registry import VERIFIERS, Options, verify

    verdicts: dict[int, Verdict] = {}
    jobs: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        p = problems.get(s["problem_id"])
        if p is None:
            verdicts[i] = Verdict.unverifiable("math", "the sample's problem is not in this run")
            continue
        name = _verifier_for(p, recipe)
        if name in VERIFIERS:
            jobs[name].append(i)
        else:
            verdicts[i] = check_sample(p, s)
    for name, idx in jobs.items():
        checks = [_check(problems[samples[i]["problem_id"]], samples[i], labels) for i in idx]
        options = Options(timeout_s=recipe.verify_timeout_s, workers=recipe.sandbox_workers,
                          missing=_MISSING.get(name, "no reference answer"))
        verdicts.update(zip(idx, verify(name, checks, options)))
    cfg = recipe.filter_config_model()
    out: list[dict] = []
    for i, s in enumerate(samples):
        p = problems.get(s["problem_id"]) or {}
        rows = [verdicts[i], *apply_filters(s, cfg, domain=p.get("domain"))] if recipe.filters else [verdicts[i]]
        for v in rows:
            out.append({"sample_id": s["sample_id"], "check_version": _VERSION, **v.as_row()})
    return out


# Bump when a verifier or filter changes its decisions: old verdicts are then redone. The math
# check's own version (strict numeric answers included) is part of it.
_VERSION = f"1/math{math_check_version()}"


def accepted_ids(verdicts: Iterable[dict], recipe: Recipe | None = None) -> set[str]:
    """The samples the rule of factory/funnel.py accepts, computed in memory (the flow plans its
    sampling rounds with it; tests/factory/test_funnel.py holds it to the SQL): among each
    sample's newest verdicts, at least one verifier verdict, and every verdict, verifier or
    `filter:*`, is `pass`. Rows with `created_at` (as read from the lake) are narrowed to each
    sample's newest check version; rows without it (the flow's own, all of this code's version)
    all count. `recipe` is not consulted: every filter's verdict counts (the reason is in
    factory/funnel.py)."""
    verified: dict[str, bool] = {}
    passed: dict[str, bool] = {}
    for v in _newest(verdicts):
        sid, ok = v["sample_id"], v["status"] == "pass"
        passed[sid] = passed.get(sid, True) and ok
        if not v["check"].startswith("filter:"):
            verified[sid] = verified.get(sid, True) and ok
    return {sid for sid, ok in verified.items() if ok and passed[sid]}


def _newest(verdicts: Iterable[dict]) -> list[dict]:
    """Each sample's verdicts of the check version of its newest row (ties: the greater version,
    a NULL version last), as factory/funnel.py `outcomes` picks them."""
    rows = list(verdicts)
    if not rows or any("created_at" not in v for v in rows):
        return rows
    newest: dict[str, tuple] = {}
    for v in rows:
        key = (v["created_at"], v.get("check_version") is not None, v.get("check_version") or "")
        newest[v["sample_id"]] = max(newest.get(v["sample_id"], key), key)
    return [v for v in rows if v.get("check_version") == newest[v["sample_id"]][2] or
            (v.get("check_version") is None and not newest[v["sample_id"]][1])]


def reject_reasons(verdicts: Iterable[dict]) -> dict[str, int]:
    """Rejects counted by check (a sample rejected by two checks counts under both)."""
    out: dict[str, int] = defaultdict(int)
    for v in verdicts:
        if v["status"] != "pass":
            out[v["check"].removeprefix("filter:")] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# -- dataset -------------------------------------------------------------------------------


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def dataset_scope(*, teacher: str, sources: Sequence[str]) -> str:
    """The samples a dataset may take, before the funnel's rule: this teacher's samples on
    problems of `sources` that are not contaminated, with the columns a dataset row carries
    (`messages` ready for SFT: the prompt turns plus the assistant turn with the reasoning
    inside <think>)."""
    src = ", ".join(_quote(s) for s in sorted(set(sources))) or "NULL"
    return f"""SELECT s.sample_id, s.created_at, s.problem_id, p.source, p.domain, p.problem, p.reference_answer,
         list_append(s.messages, {{'role': 'assistant',
                                   'content': '<think>\n' || coalesce(s.reasoning, '') || '\n</think>\n\n' || coalesce(s.answer, '')}}) AS messages,
         s.reasoning, s.answer, s.teacher, s.model, s.sample_index, s.finish_reason, s.completion_tokens
  FROM samples s
  JOIN (SELECT problem_id, any_value(source) AS source, any_value(domain) AS domain, any_value(problem) AS problem,
               any_value(reference_answer) AS reference_answer, max(len(coalesce(contamination, []))) AS hits
        FROM problems GROUP BY problem_id) p ON p.problem_id = s.problem_id
  WHERE s.teacher = {_quote(teacher)} AND p.source IN ({src}) AND p.hits = 0"""


def dataset_sql(recipe: Recipe, *, teacher: str, sources: Sequence[str]) -> str:
    """The dataset's SELECT: the samples of `dataset_scope` accepted by the funnel's rule and
    kept by dedup (factory/funnel.py, the same SQL the run summary and the report count with).
    Saved with the dataset and pinned to a snapshot, so it reads the same forever. `recipe` is
    not consulted: every check's verdict counts, not only the recipe's."""
    scope = dataset_scope(teacher=teacher, sources=sources)
    return funnel.outcomes(scope) + """SELECT sample_id, problem_id, source, domain, problem, reference_answer, messages,
  reasoning, answer, teacher, model, sample_index, finish_reason, completion_tokens
FROM o WHERE """ + funnel.IN_DATASET + """
ORDER BY problem_id, sample_index"""


# -- batches --------------------------------------------------------------------------------


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def require_sources(problems: list[dict], where: str) -> None:
    if not problems:
        raise BadInput(f"{where}: the recipe's question sources gave no problems")
