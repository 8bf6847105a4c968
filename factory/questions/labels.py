"""Labels without gold: majority votes over samples, the gold audit, and pass rates as difficulty.

    from factory.questions.labels import majority_vote, audit_gold, label_rows, write_labels, select_by_pass_rate
    vote = majority_vote(["18", "18.0", "$18", "17"], min_votes=3, min_agreement=0.6)
    vote.label, vote.confidence            # ("18", 0.75): 18, 18.0 and $18 are one answer (so are 1/2 and 0.5)
    audit_gold("17", vote, strong=0.8)     # None: a 0.75 majority is not strong enough to accuse a gold
    audit_gold("17", vote, strong=0.7)     # True: the gold 17 disagrees with a strong majority for 18
    rows = label_rows(problems, samples, verdicts)          # rows for the `labels` table
    write_labels(lake, rows, run_id="r1")
    band = select_by_pass_rate(lake, 0.0, 1.0)              # Arrow table: problems with 0 < p < 1 (GRPO)
    rows = label_lake(lake, run_id="r2")                     # the same from the lake's samples and verdicts

Majority vote: the votes are the samples' extracted final answers (None: the sample states no
answer, and casts no vote). Answers are grouped by value: plain numbers by exact value
(`18`, `18.0`, `$18`, `1,000` and `\\frac{1}{2}`/`0.5`... as math-verify's number rules read
them), anything else by its surface form (delimiters, `\\left`, `\\dfrac` and spacing removed).
A label needs at least `min_votes` votes and a vote share of at least `min_agreement`, and the
top group must be alone at the top: a tie gives no label. The vote share is the label's
confidence; the label is the most frequent written form within the winning group.

Gold audit: a problem with a reference answer whose samples reach a strong majority
(`confidence >= strong`, default 0.8, with enough votes) for an answer the math verifier
says differs from the gold is flagged (`gold_disagrees`). A wrong gold teaches GRPO to reward
wrong answers, so flagged seeds should be looked at before they are trained on. An audit that
cannot decide (the verifier cannot parse the answers) flags nothing.

Pass rate: a sample passes when all its verdicts pass (the verifier and any filters); the
problem's pass rate is passed / samples. Samples without any verdict count as not passed.

Not covered: answers that are equal only in meaning beyond numbers and surface forms (e.g.
`x=2` vs `2`, or two forms of one interval) vote for different groups unless they have the same
surface; the audit resolves such cases with the math verifier, the vote does not.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..records import content_hash
from ..verifiers.math import extract_answer, fast_number, surface_form, verify_math

log = logging.getLogger(__name__)

DEFAULT_MIN_VOTES = 3
DEFAULT_MIN_AGREEMENT = 0.6
DEFAULT_STRONG = 0.8


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote."""

    label: str | None  # None: no label (see reason)
    confidence: float | None  # the winning group's share of the votes
    votes: int  # answers that were cast (samples with an extractable answer)
    n_samples: int  # all samples, with or without an answer
    reason: str  # "majority" | "too few votes" | "tie" | "no agreement"
    counts: dict[str, int] = field(default_factory=dict)  # vote group (its label) -> votes, biggest first
    top: str | None = None  # the biggest group's answer even when it is no label (tie / low agreement)


def answer_key(answer: str) -> str:
    """The group an answer votes for: its exact value when it is a plain number, else its surface form."""
    num = fast_number(answer)
    if num is not None:
        value, _ = num
        return f"num:{value.numerator}/{value.denominator}"
    return "form:" + surface_form(answer)


def majority_vote(
    answers: Sequence[str | None],
    *,
    min_votes: int = DEFAULT_MIN_VOTES,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> Vote:
    """The majority answer of `answers` (None entries are samples without an answer)."""
    if min_votes < 1:
        raise ValueError(f"min_votes {min_votes!r}: expected an integer >= 1")
    if not 0.0 < min_agreement <= 1.0:
        raise ValueError(f"min_agreement {min_agreement!r}: expected a share in (0, 1]")
    cast = [a.strip() for a in answers if a is not None and a.strip()]
    groups: dict[str, Counter] = defaultdict(Counter)
    for a in cast:
        groups[answer_key(a)][a] += 1
    ranked = sorted(groups.values(), key=lambda c: -sum(c.values()))
    counts = {c.most_common(1)[0][0]: sum(c.values()) for c in ranked}
    n = len(cast)
    top = ranked[0].most_common(1)[0][0] if ranked else None
    if n < min_votes:
        return Vote(None, None, n, len(answers), "too few votes", counts, top)
    best = sum(ranked[0].values())
    share = best / n
    if len(ranked) > 1 and sum(ranked[1].values()) == best:
        return Vote(None, share, n, len(answers), "tie", counts, top)
    if share < min_agreement:
        return Vote(None, share, n, len(answers), "no agreement", counts, top)
    return Vote(top, share, n, len(answers), "majority", counts, top)


def answers_agree(a: str, b: str) -> bool | None:
    """Whether two final answers are the same value: True / False, or None when it cannot be told."""
    if answer_key(a) == answer_key(b):
        return True
    # As a boxed final answer against a gold: the math verifier's own handling of both sides.
    verdict = verify_math(f"\\boxed{{{a}}}", b)
    if verdict.status == "pass":
        return True
    if verdict.status == "fail":
        return False
    return None


def audit_gold(gold: str | None, vote: Vote, *, strong: float = DEFAULT_STRONG, min_votes: int = DEFAULT_MIN_VOTES) -> bool | None:
    """True when a strong majority (share >= `strong`, >= `min_votes` votes) contradicts the gold;
    False when it does not; None when there is no gold, no strong majority, or it cannot be told."""
    if gold is None or not str(gold).strip() or vote.top is None or vote.confidence is None:
        return None
    if vote.votes < min_votes or vote.confidence < strong or vote.reason == "tie":
        return None
    agree = answers_agree(vote.top, str(gold))
    return None if agree is None else not agree


def sample_answer(sample: dict, *, last_number: bool = False) -> str | None:
    """The final answer a sample states (the math extractor's), or with `last_number` the last
    number of its answer part when it states none explicitly (for weak teachers' short answers)."""
    text = sample.get("completion") or sample.get("answer") or ""
    found = extract_answer(text)
    if found or not last_number:
        return found
    tail = text.rsplit("</think>", 1)[-1]
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", tail)
    return numbers[-1].rstrip(",").replace(",", "") if numbers else None


def pass_counts(sample_ids: Iterable[str], verdicts: Iterable[dict]) -> tuple[int, int]:
    """(n_samples, n_passed): a sample passes when it has verdicts and every one of them passes."""
    ids = list(sample_ids)
    statuses: dict[str, list[str]] = defaultdict(list)
    wanted = set(ids)
    for v in verdicts:
        if v["sample_id"] in wanted:
            statuses[v["sample_id"]].append(v["status"])
    passed = sum(1 for s in ids if statuses.get(s) and all(x == "pass" for x in statuses[s]))
    return len(ids), passed


def label_rows(
    problems: Iterable[dict],
    samples: Iterable[dict],
    verdicts: Iterable[dict] = (),
    *,
    min_votes: int = DEFAULT_MIN_VOTES,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    strong: float = DEFAULT_STRONG,
    answer_check: str | None = None,
    last_number: bool = False,
) -> list[dict]:
    """One `labels` row per problem that has samples: the gold (method "gold") or the majority
    (method "majority") or nothing (method "none"); the vote's confidence, the gold audit and
    the pass rate. A sample's vote is the `extracted_answer` of its `answer_check` verdict when
    given (e.g. "math"), else the answer extracted from its completion."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_problem[s["problem_id"]].append(s)
    verdicts = list(verdicts)
    extracted: dict[str, str | None] = {}
    if answer_check:
        for v in verdicts:
            if v.get("check") == answer_check:
                extracted[v["sample_id"]] = v.get("extracted_answer")
    by_sample: dict[str, list[dict]] = defaultdict(list)
    for v in verdicts:
        by_sample[v["sample_id"]].append(v)
    rows = []
    for p in problems:
        group = by_problem.get(p["problem_id"], [])
        if not group:
            continue
        answers = [extracted.get(s["sample_id"]) if answer_check else sample_answer(s, last_number=last_number) for s in group]
        vote = majority_vote(answers, min_votes=min_votes, min_agreement=min_agreement)
        gold = p.get("reference_answer")
        disagrees = audit_gold(gold, vote, strong=strong, min_votes=min_votes) if gold else None
        n, passed = pass_counts([s["sample_id"] for s in group], [v for s in group for v in by_sample.get(s["sample_id"], [])])
        method = "gold" if gold else ("majority" if vote.label is not None else "none")
        rows.append({
            "problem_id": p["problem_id"],
            "method": method,
            "label": gold if gold else vote.label,
            "confidence": vote.confidence,
            "votes": vote.votes,
            "n_samples": n,
            "n_passed": passed,
            "pass_rate": passed / n if n else None,
            "gold_disagrees": disagrees,
            "majority_answer": vote.top,
            "metadata": json.dumps({"vote": vote.reason, "counts": dict(list(vote.counts.items())[:5])}, ensure_ascii=False),
        })
    flagged = sum(1 for r in rows if r["gold_disagrees"])
    if flagged:
        log.warning("gold audit: %d of %d problem(s) have a gold that a strong majority contradicts", flagged, len(rows))
    return rows


def write_labels(lake, rows: list[dict], *, run_id: str) -> int:
    """Commit `labels` rows once (the batch key is their content); the number of rows written."""
    if not rows:
        return 0
    key = "labels:" + content_hash(sorted(json.dumps(r, sort_keys=True, default=str) for r in rows))
    return lake.commit("labels", rows, batch_key=key, run_id=run_id).rows


def label_lake(lake, *, run_id: str, problem_ids: Sequence[str] | None = None, answer_check: str | None = "math",
               write: bool = True, **vote_options) -> list[dict]:
    """Label the lake's problems (all, or `problem_ids`) from all their samples and verdicts so far;
    write the rows to `labels` under `run_id` unless `write=False`. Returns the rows."""
    where, params = "", []
    if problem_ids is not None:
        where, params = " WHERE problem_id IN (SELECT unnest(?::VARCHAR[]))", [list(problem_ids)]
    problems = lake.query(f"SELECT DISTINCT ON (problem_id) problem_id, reference_answer FROM problems{where}", params).to_pylist()
    samples = lake.query(f"SELECT sample_id, problem_id, completion, answer FROM samples{where}", params).to_pylist()
    ids = [s["sample_id"] for s in samples]
    verdicts = lake.query(
        "SELECT sample_id, \"check\", status, extracted_answer FROM verdicts WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
    ).to_pylist() if ids else []
    rows = label_rows(problems, samples, verdicts, answer_check=answer_check, **vote_options)
    if write:
        write_labels(lake, rows, run_id=run_id)
    return rows


def in_band(pass_rate: float | None, low: float, high: float, *, inclusive: bool = False) -> bool:
    if pass_rate is None:
        return False
    return low <= pass_rate <= high if inclusive else low < pass_rate < high


def select_by_pass_rate(lake, low: float = 0.0, high: float = 1.0, *, inclusive: bool = False, min_samples: int = 1):
    """The problems whose newest label's pass rate is in the band (`low < p < high`, or `<=` with
    `inclusive`) and that have at least `min_samples` samples: an Arrow table of the problem
    rows with `pass_rate`, `n_samples` and `label`."""
    if not (0.0 <= low <= high <= 1.0):
        raise ValueError(f"band ({low}, {high}): expected 0 <= low <= high <= 1")
    cmp_low, cmp_high = (">=", "<=") if inclusive else (">", "<")
    return lake.query(
        f"""
        WITH latest AS (
            SELECT * FROM labels QUALIFY row_number() OVER (PARTITION BY problem_id ORDER BY created_at DESC) = 1
        ), one_problem AS (
            SELECT * FROM problems QUALIFY row_number() OVER (PARTITION BY problem_id ORDER BY created_at) = 1
        )
        SELECT p.*, l.pass_rate, l.n_samples, l.n_passed, l.label, l.method AS label_method
        FROM one_problem p JOIN latest l USING (problem_id)
        WHERE l.pass_rate {cmp_low} ? AND l.pass_rate {cmp_high} ? AND l.n_samples >= ?
        ORDER BY p.problem_id
        """,
        [low, high, min_samples],
    )
