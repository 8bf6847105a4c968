"""The yield funnel and the acceptance rule, written once as SQL over the lake: the flow's run
summary (and so its Prefect artifact), `factory report`'s funnel and every dataset's SELECT
(factory/stages.py `dataset_sql`) are all built from `outcomes` below.

    from factory import funnel
    scope = "SELECT s.*, p.source FROM samples s JOIN problems p USING (problem_id) WHERE s.run_id = ?"
    rows = funnel.stage_counts(lake, scope, ["run-1"])     # per source: samples, verified, filtered, ...
    rejects = funnel.reject_counts(lake, scope, ["run-1"])  # {check: rejected samples}
    sql = funnel.outcomes(scope) + "SELECT sample_id FROM o WHERE accepted"

The rule, per sample (factory/stages.py `accepted_ids` is its in-memory twin, used to plan
sampling rounds; tests/factory/test_funnel.py runs both over the same rows):
- only the sample's newest verdicts count: those of the check version of its newest verdict row;
- *verified*: it has a verifier verdict (a check not named `filter:*`) and every one is `pass`
  (`unverifiable` and `error` are not a pass);
- *accepted* (the funnel's `filtered`): verified, and every `filter:*` verdict it has is `pass`;
- *deduplicated*: accepted, and no dedup decision dropped it;
- a dataset takes the accepted samples that dedup decided to keep (`dedup_kept`), so a sample
  that no dedup has looked at yet (a run that stopped between verify and dedup) stays out.

Why these two choices, where the four copies this replaces differed:
- Newest check version, not every version and not only this code's version: bumping the check
  version makes the flow verify a sample again (factory/stages.py `_VERSION`), so its older
  verdicts are stale: counting them would let an old fail veto (or an old pass admit) a sample
  the current checks judged otherwise. A sample no run has verified again keeps its only
  verdicts, so a report of an older lake, or a dataset over several runs, still counts it.
  (Within a run the flow only reads verdicts of the current version, which are the newest.)
- Every `filter:*` verdict, not only the recipe's filters: verdicts belong to the sample, not to
  a recipe. The request-key ledger shares a sample between every recipe that makes the same
  request, and the flow does not verify a sample again when it has verdicts of the current
  version, so a sample may carry another recipe's filter verdicts; acceptance that depended on
  who asks would put one sample in and out of the lake's funnel, and the report (which has no
  recipe for the whole lake) could not compute it at all.
Not covered: a recipe whose filters another recipe did not run on a shared sample gets no
verdict from them for it (the flow does not run the missing checks).

Nothing here imports Prefect; the queries run on storage.Lake.query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

# Funnel rows (what a stage outputs) in order, and the stage (factory/stages.py STAGES) that
# produces each.
ROW_STAGE = {
    "problems": "questions",
    "decontaminated": "decontaminate",
    "requests": "sample",
    "samples": "sample",
    "verified": "verify",
    "filtered": "filter",
    "deduplicated": "dedup",
    "dataset": "dataset",
}
ROWS = tuple(ROW_STAGE)
# The flow's summary counts the recipe's problems after decontamination: no row of its own.
RUN_ROWS = tuple(r for r in ROWS if r != "decontaminated")
SAMPLE_ROWS = ("samples", "verified", "filtered", "deduplicated")

_VERIFIER = "\"check\" NOT LIKE 'filter:%'"
# A sample of a dataset's scope (factory/stages.py `dataset_scope`) is a row of the dataset when
# this holds over `o`. Both facts are the sample's own, whatever else a scope selects, so the run
# summary can count dataset rows over its own scope without evaluating the dataset's `o` again.
IN_DATASET = "accepted AND dedup_kept"


def funnel_rows(counts: dict[str, int], order: Sequence[str] = RUN_ROWS) -> list[dict]:
    """The funnel in the runs.counts shape: [{"stage": row, "count": n}] in funnel order."""
    return [{"stage": s, "count": int(counts.get(s, 0))} for s in order]


def outcomes(scope: str) -> str:
    """A WITH clause over the samples `scope` selects (a SELECT with at least `sample_id` and the
    sample's `created_at`; its other columns pass through), ending in relation `o`: one row per
    sample with `checked`, `passed` (every newest verdict is pass), `verified`, `accepted`,
    `deduplicated` and `dedup_kept` (a dedup decision kept it). Relation `vv` holds the verdicts that count (sample_id,
    check, status, reason). Append a SELECT over `o` or `vv`."""
    return f"""WITH s AS (SELECT * FROM ({scope}) QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1),
vv AS (SELECT sample_id, "check", status, reason FROM verdicts WHERE sample_id IN (SELECT sample_id FROM s)
       QUALIFY check_version IS NOT DISTINCT FROM
               first_value(check_version) OVER (PARTITION BY sample_id ORDER BY created_at DESC, check_version DESC NULLS LAST)),
v AS (SELECT sample_id, bool_and(status = 'pass') AS passed,
             coalesce(bool_and(status = 'pass') FILTER (WHERE {_VERIFIER}), FALSE) AS verified
      FROM vv GROUP BY sample_id),
d AS (SELECT item_id AS sample_id, bool_or(kept) AS kept, bool_or(NOT kept) AS dropped FROM dedup
      WHERE item_kind = 'sample' AND item_id IN (SELECT sample_id FROM s) GROUP BY item_id),
o AS (SELECT s.*, v.sample_id IS NOT NULL AS checked, coalesce(v.passed, FALSE) AS passed,
             coalesce(v.verified, FALSE) AS verified, coalesce(v.verified AND v.passed, FALSE) AS accepted,
             coalesce(v.verified AND v.passed, FALSE) AND NOT coalesce(d.dropped, FALSE) AS deduplicated,
             coalesce(d.kept, FALSE) AS dedup_kept
      FROM s LEFT JOIN v USING (sample_id) LEFT JOIN d USING (sample_id))
"""


def stage_counts(lake: Any, scope: str, params: Iterable[Any] = (), *, tables: dict[str, pa.Table] | None = None,
                 dataset_scope: str | None = None) -> list[dict[str, Any]]:
    """Per `source` of the scope's samples (the scope must select a `source` column): distinct
    problems and requests sampled, samples, verified, filtered, deduplicated, tokens and cost;
    with `dataset_scope` (factory/stages.py), also how many of them are rows of that dataset."""
    in_dataset = (f"count(*) FILTER (WHERE {IN_DATASET} AND sample_id IN (SELECT sample_id FROM ({dataset_scope}))) AS dataset,"
                  if dataset_scope else "")
    sql = outcomes(scope) + f"""SELECT source, count(DISTINCT problem_id) AS sampled_problems,
       count(DISTINCT coalesce(request_key, sample_id)) AS requests, count(*) AS samples,
       count(*) FILTER (WHERE verified) AS verified, count(*) FILTER (WHERE accepted) AS filtered,
       count(*) FILTER (WHERE deduplicated) AS deduplicated, {in_dataset}
       coalesce(sum(prompt_tokens), 0)::BIGINT AS prompt_tokens, coalesce(sum(completion_tokens), 0)::BIGINT AS completion_tokens,
       coalesce(sum(cost_usd), 0)::DOUBLE AS cost_usd
FROM o GROUP BY source ORDER BY source"""
    return lake.query(sql, list(params), tables=tables).to_pylist()


def reject_counts(lake: Any, scope: str, params: Iterable[Any] = (), *, tables: dict[str, pa.Table] | None = None) -> dict[str, int]:
    """Rejected samples of the scope by check (`filter:` dropped from the name), most first: a
    verdict that counts and is not `pass` (fail, unverifiable, error). A sample rejected by two
    checks counts under both."""
    sql = outcomes(scope) + """SELECT regexp_replace("check", '^filter:', '') AS "check", count(DISTINCT sample_id) AS n
FROM vv WHERE status <> 'pass' GROUP BY 1 ORDER BY 2 DESC, 1"""
    return {r["check"]: r["n"] for r in lake.query(sql, list(params), tables=tables).to_pylist()}


# Samples cut at max_tokens (first attempts), their retries with more max_tokens (the recipe's
# `truncation`), and the retries that finished within the larger limit.
TRUNCATION_ROWS = ("length_cut", "escalated", "escalation_recovered")


def truncation_counts(lake: Any, scope: str, params: Iterable[Any] = (), *, tables: dict[str, pa.Table] | None = None) -> dict[str, dict[str, int]]:
    """Per source of the scope's samples (the scope selects `source`, `finish_reason` and
    `metadata`), the TRUNCATION_ROWS counts; only sources with a cut sample or a retry. A retry
    is a sample whose metadata names the sample it retries (`retry_of`, factory/sampler.py)."""
    sql = f"""SELECT source, count(*) FILTER (WHERE finish_reason = 'length' AND retry_of IS NULL) AS length_cut,
       count(*) FILTER (WHERE retry_of IS NOT NULL) AS escalated,
       count(*) FILTER (WHERE retry_of IS NOT NULL AND finish_reason IS DISTINCT FROM 'length') AS escalation_recovered
FROM (SELECT source, finish_reason, json_extract_string(metadata, '$.retry_of') AS retry_of
      FROM ({scope}) QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY created_at) = 1)
GROUP BY source HAVING count(*) FILTER (WHERE finish_reason = 'length' OR retry_of IS NOT NULL) > 0 ORDER BY source"""
    return {r.pop("source"): r for r in lake.query(sql, list(params), tables=tables).to_pylist()}


def run_counts(lake: Any, problems: list[dict], keys: dict[str, str], dataset_scope: str | None = None) -> dict[str, Any]:
    """The funnel of a run: its problems, its request keys (key -> problem_id; a sample's id is
    its request key) and their samples as the lake holds them now (so a resumed run counts the
    whole, not just its last attempt), per source of the run's problems. `dataset_scope`: the
    scope of the run's dataset (factory/stages.py `dataset_scope`), for the `dataset` row. Sources
    with samples cut at max_tokens also get the TRUNCATION_ROWS counts, and `truncation` their
    totals (None when no sample was cut)."""
    source_of = {p["problem_id"]: p.get("source") or "?" for p in problems}
    scope = ("SELECT s.sample_id, s.created_at, s.problem_id, s.request_key, s.prompt_tokens, s.completion_tokens, s.cost_usd, "
             "s.finish_reason, s.metadata, k.source FROM samples s JOIN _k k ON s.sample_id = k.k")
    tables = {"_k": pa.table({"k": pa.array(list(keys), pa.string()),
                              "source": pa.array([source_of.get(pid, "?") for pid in keys.values()], pa.string())})}
    by_source: dict[str, dict[str, int]] = defaultdict(lambda: {"problems": 0, "requests": 0})
    for p in problems:
        by_source[source_of[p["problem_id"]]]["problems"] += 1
    for pid in keys.values():
        by_source[source_of.get(pid, "?")]["requests"] += 1
    rows = stage_counts(lake, scope, tables=tables, dataset_scope=dataset_scope)
    for r in rows:
        by_source[r["source"]].update({k: r[k] for k in SAMPLE_ROWS}, dataset=r.get("dataset", 0))
    cut = truncation_counts(lake, scope, tables=tables)
    for source, c in cut.items():
        by_source[source].update(c)
    total: dict[str, int] = defaultdict(int)
    for c in by_source.values():
        for k, n in c.items():
            total[k] += n
    return {
        "truncation": {k: total[k] for k in TRUNCATION_ROWS} if cut else None,
        "funnel": funnel_rows(total),
        "by_source": {s: dict(c) for s, c in sorted(by_source.items())},
        "rejects": reject_counts(lake, scope, tables=tables),
        "tokens": {"prompt": sum(r["prompt_tokens"] for r in rows), "completion": sum(r["completion_tokens"] for r in rows)},
        "cost_usd": round(float(sum(r["cost_usd"] for r in rows)), 6),
    }
