"""A preview: the recipe's run on a few problems, and what it projects for the whole recipe.

    picked = preview_problems(eligible, 8)               # 8 problems, spread over the sources
    measured = measure(lake, keys)                       # per previewed problem: requests, tokens, cost, ...
    p = project(measured, population={"gsm8k": 200}, accepted=accepted_ids, seconds=...)
    p["totals"]["completion_tokens"]                     # {"value", "low", "high", "preview", "rest"}

`factory run RECIPE --preview N` (flows/run.py) runs the normal flow on `preview_problems` (so
the samples are paid through the ledger, verified and filtered, and a full run later sends only
the rest), then prints `project`'s figures.

How each figure is projected (95% intervals):
- requests, prompt and completion tokens, cost: the stratified estimate of a population total
  from a simple random sample per source (the previewed problems are the first by problem_id, a
  hash: as good as random): T = sum_s N_s * mean_s, variance sum_s N_s^2 (1 - n_s/N_s) var_s / n_s
  (the finite-population correction makes a preview of every problem exact), interval
  T +- t * sd with Student's t at the smallest n_s - 1 degrees of freedom. A source previewed
  with one problem (and more to go) has no variance estimate: the interval is unknown (None).
- accepted samples, per source: the preview's acceptance rate p = accepted / samples with a
  Wilson score interval (binomial over the preview's samples; it ignores that samples of one
  problem are correlated, so it is too narrow when problems differ a lot in difficulty), applied
  to the projected samples still to come, plus those the preview accepted.
- wall time of the rest: the preview's seconds sending to the teacher and verifying, per
  completion token generated, times the completion tokens still to come (with their interval),
  plus the preview's fixed cost of the sample stage (teacher check, model load). Not covered:
  a full run with more requests in flight than the preview had is faster than this.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

# Student's t, two-sided 95%, by degrees of freedom (1..30); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z95 = 1.959964
QUANTITIES = ("requests", "samples", "prompt_tokens", "completion_tokens", "cost_usd")


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else Z95


def preview_problems(problems: Sequence[dict], n: int) -> list[dict]:
    """`n` problems spread evenly over the sources (round robin, sources by name), each source's
    taken in problem_id order (a content hash: a fixed, effectively random choice)."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for p in sorted(problems, key=lambda p: p["problem_id"]):
        by_source[p.get("source") or ""].append(p)
    queues = [by_source[s] for s in sorted(by_source)]
    out: list[dict] = []
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return out


def measure(lake: Any, keys: dict[str, str], problems: Iterable[dict]) -> list[dict]:
    """Per previewed problem (every one of `problems`, sampled or not): its source, requests
    planned (the run's keys, key -> problem id), samples in the lake and their tokens and cost."""
    got = lake.query(
        "SELECT k.p AS problem_id, count(s.sample_id) AS samples, coalesce(sum(s.prompt_tokens), 0)::BIGINT AS prompt_tokens, "
        "coalesce(sum(s.completion_tokens), 0)::BIGINT AS completion_tokens, coalesce(sum(s.cost_usd), 0)::DOUBLE AS cost_usd "
        "FROM _k k LEFT JOIN (SELECT * FROM samples QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1) s "
        "ON s.sample_id = k.k GROUP BY 1",
        tables={"_k": pa.table({"k": pa.array(list(keys), pa.string()), "p": pa.array(list(keys.values()), pa.string())})},
    ).to_pylist()
    by_id = {r["problem_id"]: r for r in got}
    requests: dict[str, int] = defaultdict(int)
    for pid in keys.values():
        requests[pid] += 1
    out = []
    for p in problems:
        r = by_id.get(p["problem_id"], {})
        out.append({"problem_id": p["problem_id"], "source": p.get("source") or "", "requests": requests[p["problem_id"]],
                    **{q: r.get(q, 0) for q in QUANTITIES if q != "requests"}})
    return out


def stratified_total(values: dict[str, list[float]], population: dict[str, int]) -> dict[str, float | None]:
    """The estimated population total of a quantity measured on a sample of each source's
    problems (`values`: source -> one value per previewed problem; `population`: source -> its
    problem count), with a 95% interval (low/high None: not estimable). See the module docstring."""
    total, var, dfs = 0.0, 0.0, []
    for source, big_n in population.items():
        xs = values.get(source) or []
        n = len(xs)
        if n == 0:
            if big_n:
                return {"value": None, "low": None, "high": None}
            continue
        mean = sum(xs) / n
        total += big_n * mean
        if n < big_n:
            if n < 2:
                dfs.append(0)
                continue
            s2 = sum((x - mean) ** 2 for x in xs) / (n - 1)
            var += big_n**2 * (1 - n / big_n) * s2 / n
            dfs.append(n - 1)
    if any(df == 0 for df in dfs):
        return {"value": total, "low": None, "high": None}
    half = t95(min(dfs)) * math.sqrt(var) if dfs else 0.0
    return {"value": total, "low": max(0.0, total - half), "high": total + half}


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((0, 1) with no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def project(measured: Sequence[dict], population: dict[str, int], accepted: dict[str, int], *,
            send_s: float = 0.0, verify_s: float = 0.0, fixed_s: float = 0.0, sent_completion_tokens: int = 0) -> dict[str, Any]:
    """The whole recipe's projection from the preview. `measured`: `measure`'s rows; `population`:
    source -> the recipe's problems to sample (after decontamination and problem dedup);
    `accepted`: source -> the preview's accepted samples. For the wall time: the seconds the
    preview spent sending (`send_s`, for `sent_completion_tokens` newly generated tokens) and
    verifying, and the sample stage's fixed cost (`fixed_s`). Each total is {"value", "low",
    "high", "preview" (what the preview measured), "rest" (value - preview: what a full run still
    does)}; None where it cannot be estimated."""
    per_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in measured:
        for q in QUANTITIES:
            per_source[row["source"]][q].append(float(row[q] or 0))
    totals: dict[str, dict] = {}
    for q in QUANTITIES:
        est = stratified_total({s: v[q] for s, v in per_source.items()}, population)
        seen = sum(float(r[q] or 0) for r in measured)
        totals[q] = {**est, "preview": seen, "rest": None if est["value"] is None else est["value"] - seen}
    by_source: dict[str, dict] = {}
    acc_value = acc_low = acc_high = 0.0
    for source in sorted(population):
        samples = sum(per_source[source]["samples"]) if source in per_source else 0.0
        n = len(per_source[source]["samples"]) if source in per_source else 0
        got = accepted.get(source, 0)
        expected_samples = population[source] * samples / n if n else None
        lo, hi = wilson(got, int(samples))
        rest = None if expected_samples is None else max(0.0, expected_samples - samples)
        row = {"problems": population[source], "previewed": n, "samples": samples, "accepted": got,
               "yield": got / samples if samples else None, "yield_low": lo, "yield_high": hi,
               "expected": None if rest is None else got + rest * (got / samples if samples else 0.0),
               "expected_low": None if rest is None else got + rest * lo,
               "expected_high": None if rest is None else got + rest * hi}
        by_source[source] = row
        if rest is None:
            acc_value = acc_low = acc_high = math.nan
        else:
            acc_value += row["expected"]
            acc_low += row["expected_low"]
            acc_high += row["expected_high"]
    totals["accepted"] = {"value": _num(acc_value), "low": _num(acc_low), "high": _num(acc_high),
                          "preview": float(sum(accepted.values())),
                          "rest": _num(acc_value - sum(accepted.values()))}
    totals["wall_s"] = _wall(totals["completion_tokens"], send_s + verify_s, fixed_s, sent_completion_tokens)
    return {"previewed": len(measured), "problems": sum(population.values()), "totals": totals, "by_source": by_source,
            "interval": "95%: stratified t for totals, Wilson (binomial) for yield"}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _wall(completion: dict, busy_s: float, fixed_s: float, sent_tokens: int) -> dict:
    """Seconds of sampling and verifying: `rest` is what a full run still spends (the fixed cost
    again, plus the preview's busy seconds per newly generated completion token times the tokens
    still to come), `value` the preview's seconds plus that."""
    done = busy_s + fixed_s
    if sent_tokens <= 0 or completion["rest"] is None:
        return {"value": None, "low": None, "high": None, "preview": done, "rest": None}
    per_token = busy_s / sent_tokens

    def rest(total):
        return None if total is None else fixed_s + max(0.0, total - completion["preview"]) * per_token

    return {"value": done + rest(completion["value"]), "low": _plus(done, rest(completion["low"])),
            "high": _plus(done, rest(completion["high"])), "preview": done, "rest": rest(completion["value"])}


def _plus(a: float, b: float | None) -> float | None:
    return None if b is None else a + b
