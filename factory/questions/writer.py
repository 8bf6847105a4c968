"""Teacher-written questions: new problems written by a teacher from seed problems, kept only when
the teacher's own samples agree on an answer.

    rows = await write_questions(lake, teacher, seeds, run_id="r1", count=20)
    rows[0]["reference_answer"], json.loads(rows[0]["metadata"])["label"]["confidence"]

One pass, for `count` new problems:
1. write: attempt i picks its mode (`harder`, `new_context`, `combine`, in turn) and its seed
   problem(s) from a `random.Random` seeded by (seed, i), and asks the teacher for one new
   problem (sample index i, so every attempt is its own request key);
2. clean: the answer part of the completion, without "New problem:" labels or a solution the
   teacher added; empty, too short and (unless `keep_truncated`) length-cut ones are dropped;
3. deduplicate against the seeds and the other new problems (exact, then MinHash-LSH through
   `factory.dedup`), and decontaminate against the benchmark registry (`factory.decontaminate`);
4. answer: `samples_per_question` samples of each surviving problem, with a prompt that asks
   for a final `Answer:` line;
5. keep a problem only if its samples reach a majority (`labels.majority_vote`: at least
   `min_votes` answers, a share of at least `min_agreement`, no tie); the majority answer
   becomes its reference answer and the share its confidence.
Rounds repeat steps 1-5 for the still-missing number, up to `max_rounds`.

Both teacher calls go through `factory.sampler.sample_teacher`, so every request is in the
`samples` table (the ledger) and a rerun pays for nothing twice: the completions are read
back from the lake by request key, so a rerun reaches the same decisions without sending any
request. The write requests' samples carry a problem id of their own (a hash of the prompt,
no `problems` row), so no verify stage mistakes them for answers; the answer samples carry the
new problem's id and are ordinary samples of it.

With `commit=True` (default) the kept problems go to `problems` and their majority labels to
`labels`, each as one exactly-once batch; `commit=False` only returns the rows (for a flow that
commits problems itself).

Not covered: agreement is self-consistency, not correctness (a teacher can agree with itself on
a wrong answer; the gold audit cannot help, there is no gold), and the written problems are
assumed to be math with one final answer (the math verifier checks samples of them later).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..decontaminate import contamination_labels, decontaminate_records
from ..dedup import dedup_records
from ..records import content_hash, problem_id
from ..sampler import Budget, sample_teacher
from ..teachers.base import RequestGroup, Sampling
from .labels import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_VOTES,
    answer_key,
    majority_vote,
    sample_answer,
)

log = logging.getLogger(__name__)

MODES = ("harder", "new_context", "combine")
_TAIL = "It must have exactly one final answer. Write only the new problem, without its solution."
PROMPTS = {
    "harder": "Here is a math problem:\n\n{a}\n\nWrite one new math problem of the same kind that is harder: "
              "it needs more steps or larger numbers. " + _TAIL,
    "new_context": "Here is a math problem:\n\n{a}\n\nWrite one new math problem that needs the same kind of reasoning "
                   "in a completely different setting, with other people, objects and numbers. " + _TAIL,
    "combine": "Here are two math problems.\n\nProblem 1: {a}\n\nProblem 2: {b}\n\nWrite one new math problem that "
               "combines them, so that solving it needs the reasoning of both. " + _TAIL,
}
ANSWER_PROMPT = "{problem}\n\nSolve the problem step by step. End with the final answer on its own line, as: Answer: <answer>"
MIN_CHARS = 20


@dataclass
class WriteStats:
    """What a `write_questions` call did, per step (the funnel a report shows)."""

    attempts: int = 0  # write requests planned
    written: int = 0  # write completions found in the ledger
    dropped: Counter = field(default_factory=Counter)  # reason -> candidates dropped
    answered: int = 0  # candidates whose answers were sampled
    kept: int = 0
    votes: Counter = field(default_factory=Counter)  # vote outcome -> candidates
    sent: int = 0  # requests sent to the teacher (0 on a complete rerun)


_LABEL = re.compile(r"^\s*(?:\*\*|#+\s*)?(?:new|harder|combined)?\s*(?:math\s+)?(?:word\s+)?problem\s*\d*\s*(?::\s*(?:\*\*)?|\*\*\s*:)\s*", re.IGNORECASE)
_CUT = re.compile(r"\n\s*(?:\*\*|#+\s*)?(?:solution|answer|step 1|explanation)\b", re.IGNORECASE)


def clean_written(text: str | None) -> str:
    """The new problem alone: no leading "New problem:" label, no solution after it, no quotes."""
    if not text:
        return ""
    text = text.strip()
    text = _LABEL.sub("", text, count=1) if _LABEL.match(text) else text
    m = _CUT.search(text)
    if m:
        text = text[: m.start()]
    return text.strip().strip('"').strip()


def _pick(rng: random.Random, seeds: list[dict], mode: str) -> list[dict]:
    if mode == "combine" and len(seeds) >= 2:
        return rng.sample(seeds, 2)
    return [rng.choice(seeds)]


def _write_group(mode: str, picked: list[dict], attempt: int, sampling: Sampling) -> RequestGroup:
    content = PROMPTS[mode].format(a=picked[0]["problem"].strip(), b=picked[-1]["problem"].strip())
    messages = ({"role": "user", "content": content},)
    # Its own id: a write request is no sample of any problem a verifier should score.
    return RequestGroup(content_hash("write-request", content), messages, sampling, (attempt,))


async def _ledger_rows(lake, keys: list[str]) -> dict[str, dict]:
    if not keys:
        return {}
    table = await asyncio.to_thread(
        lake.query,
        "SELECT request_key, problem_id, completion, answer, finish_reason FROM samples "
        "WHERE request_key IN (SELECT unnest(?::VARCHAR[]))",
        [keys],
    )
    return {r["request_key"]: r for r in table.to_pylist()}


@dataclass
class _Job:
    """One `write_questions` call: its settings, and what its rounds have gathered so far."""

    lake: Any
    teacher: Any
    pool: list[dict]  # the seed problems, by problem_id
    run_id: str
    count: int
    modes: Sequence[str]
    samples_per_question: int
    min_votes: int
    min_agreement: float
    write_sampling: Sampling
    answer_sampling: Sampling
    seed: int
    keep_truncated: bool
    last_number: bool
    dedup_threshold: float
    benchmarks: str | Sequence[str] | None
    source: str
    budget: Budget | None
    stats: WriteStats
    seen: set[str] = field(default_factory=set)  # problem ids of the seeds and of every candidate
    earlier: list[dict] = field(default_factory=list)  # the dedup reference, in order
    kept_rows: list[dict] = field(default_factory=list)
    label_rows: list[dict] = field(default_factory=list)
    attempt: int = 0  # write attempts planned so far: the next one's index

    def __post_init__(self) -> None:
        self.seen = {s["problem_id"] for s in self.pool}
        self.earlier = [{"problem_id": s["problem_id"], "problem": s["problem"]} for s in self.pool]


def _seed_pool(seeds: Sequence[dict], modes: Sequence[str], count: int, samples_per_question: int,
               max_rounds: int) -> list[dict]:
    """The seed problems with text, one per problem_id, in id order; ValueError on bad settings."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes {list(modes)!r}: expected a non-empty list from {list(MODES)}")
    if count < 0 or samples_per_question < 1 or max_rounds < 1:
        raise ValueError("count >= 0, samples_per_question >= 1 and max_rounds >= 1 expected")
    pool = sorted({s["problem_id"]: s for s in seeds if s.get("problem")}.values(), key=lambda s: s["problem_id"])
    if not pool:
        raise ValueError("write_questions needs at least one seed problem with text")
    return pool


async def _sample(job: _Job, groups: list[RequestGroup]) -> dict[str, dict]:
    """Sample `groups` through the ledger, and read every one of their samples back by request key."""
    sampled = await sample_teacher(job.lake, job.teacher, groups, run_id=job.run_id, budget=job.budget)
    job.stats.sent += sampled.sent_groups
    return await _ledger_rows(job.lake, [k for g in groups for k in g.keys(job.teacher.config).values()])


def _plan_writes(job: _Job, need: int) -> list[tuple[str, list[dict], RequestGroup]]:
    """Step 1: (mode, seed problems, request) of the next `need` write attempts."""
    plans = []
    for i in range(job.attempt, job.attempt + need):
        rng = random.Random(f"write:{job.seed}:{i}")
        mode = job.modes[i % len(job.modes)]
        picked = _pick(rng, job.pool, mode)
        if mode == "combine" and len(picked) < 2:
            mode = "harder"  # one seed problem: nothing to combine
        plans.append((mode, picked, _write_group(mode, picked, i, job.write_sampling)))
    job.attempt += need
    job.stats.attempts += need
    return plans


def _clean_candidates(job: _Job, plans: list, got: dict[str, dict]) -> list[dict]:
    """Step 2: the written problems, cleaned; not written, cut, too short and exact duplicates dropped."""
    stats, candidates = job.stats, []
    for mode, picked, g in plans:
        key = next(iter(g.keys(job.teacher.config).values()))
        row = got.get(key)
        if row is None:
            stats.dropped["not written (teacher failed or budget)"] += 1
            continue
        stats.written += 1
        text = clean_written(row["answer"] or row["completion"])
        if row["finish_reason"] == "length" and not job.keep_truncated:
            stats.dropped["cut by max_tokens"] += 1
            continue
        if len(text) < MIN_CHARS:
            stats.dropped["empty or too short"] += 1
            continue
        pid = problem_id(text)
        if pid in job.seen:
            stats.dropped["exact duplicate"] += 1
            continue
        job.seen.add(pid)
        candidates.append({
            "problem_id": pid, "problem": text, "mode": mode, "from": [p["problem_id"] for p in picked],
            "write_request_key": key,
        })
    return candidates


def _drop_near_duplicates(job: _Job, candidates: list[dict]) -> list[dict]:
    """Step 3a: dedup against the seeds and everything written before (all candidates join that reference)."""
    if not candidates:
        return candidates
    decided = dedup_records(job.earlier + candidates, "problem", threshold=job.dedup_threshold, id_column="problem_id")
    fresh = {r["problem_id"] for r in decided[len(job.earlier):] if r["kept"]}
    for c in candidates:
        if c["problem_id"] not in fresh:
            job.stats.dropped["near duplicate"] += 1
    job.earlier += [{"problem_id": c["problem_id"], "problem": c["problem"]} for c in candidates]
    return [c for c in candidates if c["problem_id"] in fresh]


def _drop_contaminated(job: _Job, candidates: list[dict]) -> list[dict]:
    """Step 3b: decontaminate against the benchmark registry."""
    if not candidates:
        return candidates
    clean = []
    for c in decontaminate_records(candidates, "problem", benchmarks=job.benchmarks):
        if c["contaminated"]:
            job.stats.dropped[f"contaminated ({c['benchmark']})"] += 1
        else:
            clean.append(c)
    return clean


async def _answer(job: _Job, candidates: list[dict]) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Step 4: `samples_per_question` answers of each candidate: (request keys by problem id, ledger rows)."""
    groups = [
        RequestGroup(c["problem_id"], ({"role": "user", "content": ANSWER_PROMPT.format(problem=c["problem"])},),
                     job.answer_sampling, tuple(range(job.samples_per_question)))
        for c in candidates
    ]
    job.stats.answered += len(candidates)
    answers = await _sample(job, groups)
    keys = {c["problem_id"]: list(g.keys(job.teacher.config).values()) for c, g in zip(candidates, groups)}
    return keys, answers


def _keep_agreeing(job: _Job, candidates: list[dict], keys: dict[str, list[str]], answers: dict[str, dict]) -> None:
    """Step 5: keep each candidate whose answers reach a majority, until `count` are kept."""
    for c in candidates:
        rows = [answers[k] for k in keys[c["problem_id"]] if k in answers]
        said = [sample_answer(r, last_number=job.last_number) for r in rows]
        vote = majority_vote(said + [None] * (job.samples_per_question - len(rows)),
                             min_votes=job.min_votes, min_agreement=job.min_agreement)
        job.stats.votes[vote.reason] += 1
        if vote.label is None:
            job.stats.dropped[f"no consistent answer ({vote.reason})"] += 1
            continue
        want = answer_key(vote.label)
        agreeing = sum(1 for a in said if a is not None and a.strip() and answer_key(a.strip()) == want)
        job.kept_rows.append(_problem_row(job, c, vote, len(rows)))
        job.label_rows.append(_label_row(c, vote, len(rows), agreeing))
        if len(job.kept_rows) >= job.count:
            break


def _problem_row(job: _Job, c: dict, vote, n_samples: int) -> dict:
    config = job.teacher.config
    meta = {
        "verifier": "math", "mode": c["mode"], "from": c["from"], "writer": config.name, "model": config.model,
        "write_request_key": c["write_request_key"],
        "label": {"method": "majority", "confidence": vote.confidence, "votes": vote.votes, "samples": n_samples},
    }
    return {
        "problem_id": c["problem_id"], "source": job.source, "domain": "math", "problem": c["problem"],
        "reference_answer": vote.label, "tests": None, "difficulty": None,
        "metadata": json.dumps(meta, sort_keys=True), "contamination": contamination_labels(c),
    }


def _label_row(c: dict, vote, n_samples: int, agreeing: int) -> dict:
    return {
        "problem_id": c["problem_id"], "method": "majority", "label": vote.label, "confidence": vote.confidence,
        "votes": vote.votes, "n_samples": n_samples, "n_passed": agreeing,
        "pass_rate": agreeing / n_samples if n_samples else None, "gold_disagrees": None, "majority_answer": vote.top,
        "metadata": json.dumps({"vote": vote.reason, "counts": vote.counts, "pass_rate_from": "agreement with the majority"}),
    }


async def _round(job: _Job, need: int) -> None:
    """Steps 1-5 for `need` more problems."""
    plans = _plan_writes(job, need)
    got = await _sample(job, [g for _, _, g in plans])
    candidates = _clean_candidates(job, plans, got)
    candidates = _drop_near_duplicates(job, candidates)
    candidates = _drop_contaminated(job, candidates)
    if candidates:
        keys, answers = await _answer(job, candidates)
        _keep_agreeing(job, candidates, keys, answers)


async def _commit(job: _Job) -> None:
    """The kept problems and their labels, each as one exactly-once batch."""
    ids = sorted(r["problem_id"] for r in job.kept_rows)
    await asyncio.to_thread(job.lake.commit, "problems", job.kept_rows, batch_key="problems:written:" + content_hash(ids),
                            run_id=job.run_id)
    await asyncio.to_thread(job.lake.commit, "labels", job.label_rows, batch_key="labels:written:" + content_hash(ids),
                            run_id=job.run_id)


async def write_questions(
    lake,
    teacher,
    seeds: Sequence[dict],
    *,
    run_id: str,
    count: int,
    modes: Sequence[str] = MODES,
    samples_per_question: int = 4,
    min_votes: int = DEFAULT_MIN_VOTES,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    write_max_tokens: int = 512,
    answer_max_tokens: int = 1024,
    temperature: float = 0.8,
    answer_temperature: float = 0.6,
    seed: int = 0,
    max_rounds: int = 3,
    keep_truncated: bool = False,
    last_number: bool = False,
    dedup_threshold: float = 0.8,
    benchmarks: str | Sequence[str] | None = None,
    source: str = "teacher_written",
    commit: bool = True,
    budget: Budget | None = None,
    stats: WriteStats | None = None,
) -> list[dict]:
    """Up to `count` new problems written from `seeds` (rows with problem_id, problem), each with
    its majority answer as reference; see the module docstring. `last_number` lets a sample's
    last number count as its answer when it states none (weak teachers)."""
    job = _Job(
        lake=lake, teacher=teacher, pool=_seed_pool(seeds, modes, count, samples_per_question, max_rounds),
        run_id=run_id, count=count, modes=modes, samples_per_question=samples_per_question, min_votes=min_votes,
        min_agreement=min_agreement, seed=seed, keep_truncated=keep_truncated, last_number=last_number,
        write_sampling=Sampling(temperature=temperature, max_tokens=write_max_tokens, seed=seed),
        answer_sampling=Sampling(temperature=answer_temperature, max_tokens=answer_max_tokens, seed=seed),
        dedup_threshold=dedup_threshold, benchmarks=benchmarks, source=source, budget=budget,
        stats=stats if stats is not None else WriteStats(),
    )
    for _ in range(max_rounds):
        need = count - len(job.kept_rows)
        if need <= 0:
            break
        await _round(job, need)
    stats = job.stats
    stats.kept = len(job.kept_rows)
    log.info("write_questions: %d attempts, %d written, %d answered, %d kept; dropped %s",
             stats.attempts, stats.written, stats.answered, stats.kept, dict(stats.dropped))
    if commit and job.kept_rows:
        await _commit(job)
    return job.kept_rows
