"""The funnel's one rule (factory/funnel.py): its SQL counts a hand-built lake as worked out by
hand, the in-memory twin that plans rounds (stages.accepted_ids) accepts what the SQL accepts
over the same rows, and the dataset SELECT takes the accepted samples dedup kept."""

import datetime as dt
import random

from factory import funnel, stages
from factory.recipe import Recipe
from storage import Lake

RUN = "run-f"
OLD = "0/old"  # an older check version: its verdicts are stale once a sample has newer ones
TEACHER = "t"
# Samples of the fixture, each a case of the rule (the recipe's filter is think_format):
# a  math pass, think_format pass, dedup kept                -> accepted, in the dataset
# b  math fail                                               -> rejected (math)
# c  math unverifiable                                       -> rejected (math)
# d  math pass, think_format error                           -> verified, rejected (think_format)
# e  math pass, think_format pass, filter:language fail, dedup kept (by a recipe without that filter)
#                                                            -> verified, rejected (language: a filter outside the recipe)
# f  OLD: math fail; newest: math pass, think_format pass, dedup kept -> accepted, in the dataset
# g  OLD: math pass, think_format pass; newest: math fail    -> rejected (math)
# h  math pass, think_format pass, dedup dropped             -> accepted, not deduplicated
# i  no verdicts                                             -> not checked
# j  think_format pass only (no verifier verdict)            -> not verified
SAMPLES = "abcdefghij"
ACCEPTED = {"a", "f", "h"}
WANT = {"samples": 10, "verified": 5, "filtered": 3, "deduplicated": 2, "dataset": 2}
REJECTS = {"math": 3, "think_format": 1, "language": 1}


def recipe() -> Recipe:
    return Recipe.model_validate({"name": "f", "questions": [{"source": "generator", "generator": "arithmetic", "count": 1}],
                                  "filters": ["think_format"]})


def problem_of(sid: str) -> str:
    return f"p{SAMPLES.index(sid) % 4}"


def build_lake(store) -> None:
    """The lake of the cases above: problems p0..p3 of source `src`, one sample per case."""
    def v(sid, check, status, version=stages._VERSION):
        return {"sample_id": sid, "check": check, "status": status, "check_version": version,
                "reason": None if status == "pass" else f"{check} said {status}"}

    old = [v("f", "math", "fail", OLD), v("g", "math", "pass", OLD), v("g", "filter:think_format", "pass", OLD)]
    new = [v("a", "math", "pass"), v("a", "filter:think_format", "pass"),
           v("b", "math", "fail"), v("b", "filter:think_format", "pass"),
           v("c", "math", "unverifiable"), v("c", "filter:think_format", "pass"),
           v("d", "math", "pass"), v("d", "filter:think_format", "error"),
           v("e", "math", "pass"), v("e", "filter:think_format", "pass"), v("e", "filter:language", "fail"),
           v("f", "math", "pass"), v("f", "filter:think_format", "pass"),
           v("g", "math", "fail"), v("g", "filter:think_format", "pass"),
           v("h", "math", "pass"), v("h", "filter:think_format", "pass"),
           v("j", "filter:think_format", "pass")]
    dedup = [{"item_id": sid, "item_kind": "sample", "cluster_id": "a" if sid == "h" else sid, "kept": sid != "h", "method": "minhash"}
             for sid in ("a", "e", "f", "h")]
    with Lake.open(str(store)) as lake:
        lake.commit("problems", [{"problem_id": f"p{i}", "source": "src", "domain": "math", "problem": f"{i}+{i}?",
                                  "reference_answer": str(2 * i)} for i in range(4)], batch_key="p", run_id=RUN)
        lake.commit("samples", [{"sample_id": sid, "request_key": sid, "problem_id": problem_of(sid), "teacher": TEACHER,
                                 "model": "m", "sample_index": SAMPLES.index(sid), "reasoning": "r", "answer": "a",
                                 "prompt_tokens": 3, "completion_tokens": 10 + i, "cost_usd": 0.01}
                                for i, sid in enumerate(SAMPLES)], batch_key="s", run_id=RUN)
        lake.commit("verdicts", old, batch_key="v-old", run_id=RUN)  # committed first: older created_at
        lake.commit("verdicts", new, batch_key="v-new", run_id=RUN)
        lake.commit("dedup", dedup, batch_key="d", run_id=RUN)


ALL = "SELECT * FROM samples"


def sql_accepted(lake: Lake) -> set[str]:
    return set(lake.query(funnel.outcomes(ALL) + "SELECT sample_id FROM o WHERE accepted").column(0).to_pylist())


def lake_verdicts(lake: Lake) -> list[dict]:
    return lake.query('SELECT sample_id, "check", status, check_version, created_at FROM verdicts').to_pylist()


def test_the_sql_counts_each_case_as_worked_out_by_hand(tmp_path):
    build_lake(tmp_path / "s")
    with Lake.open(str(tmp_path / "s")) as lake:
        [row] = funnel.stage_counts(lake, "SELECT *, 'src' AS source FROM samples")
        assert {k: row[k] for k in funnel.SAMPLE_ROWS} == {k: WANT[k] for k in funnel.SAMPLE_ROWS}
        assert row["prompt_tokens"] == 30 and row["completion_tokens"] == sum(10 + i for i in range(10))
        assert funnel.reject_counts(lake, ALL) == REJECTS
        assert sql_accepted(lake) == ACCEPTED


def test_the_in_memory_twin_accepts_what_the_sql_accepts(tmp_path):
    build_lake(tmp_path / "s")
    with Lake.open(str(tmp_path / "s")) as lake:
        assert stages.accepted_ids(lake_verdicts(lake), recipe()) == sql_accepted(lake) == ACCEPTED
        # The flow's own rows (this code's version only, no timestamps) give the same answer.
        current = [r for r in lake_verdicts(lake) if r["check_version"] == stages._VERSION]
        assert stages.accepted_ids([{k: r[k] for k in ("sample_id", "check", "status")} for r in current]) == ACCEPTED
        assert stages.reject_reasons(current) == REJECTS


def test_the_twin_and_the_sql_agree_on_random_verdicts(tmp_path):
    """Many samples with random checks, statuses, versions (NULL among them) and timestamps that
    sometimes tie: the two implementations must pick the same newest version and accept the same."""
    rng = random.Random(7)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows, samples = [], []
    for n in range(300):
        sid = f"s{n}"
        samples.append({"sample_id": sid, "problem_id": "p", "teacher": TEACHER})
        for _ in range(rng.randint(0, 5)):
            rows.append({"sample_id": sid, "check": rng.choice(["math", "code", "filter:think_format", "filter:language"]),
                         "status": rng.choice(["pass", "pass", "pass", "fail", "unverifiable", "error"]),
                         "check_version": rng.choice([None, "1/a", "2/b"]), "created_at": t0 + dt.timedelta(seconds=rng.randint(0, 3))})
    with Lake.open(str(tmp_path / "s")) as lake:
        lake.commit("samples", samples, batch_key="s", run_id=RUN)
        lake.commit("verdicts", rows, batch_key="v", run_id=RUN)
        got = sql_accepted(lake)
        assert stages.accepted_ids(lake_verdicts(lake)) == got
    assert 30 < len(got) < 270  # the rows exercise both answers


def test_the_dataset_takes_the_accepted_samples_dedup_kept(tmp_path):
    build_lake(tmp_path / "s")
    with Lake.open(str(tmp_path / "s")) as lake:
        sql = stages.dataset_sql(recipe(), teacher=TEACHER, sources=["src"])
        v = lake.save_dataset("f", sql, run_id=RUN)
        rows = lake.read_dataset("f").to_pylist()
        assert v.row_count == WANT["dataset"] and sorted(r["sample_id"] for r in rows) == ["a", "f"]
        assert rows[0]["messages"][-1]["content"].startswith("<think>\nr\n</think>")
        assert lake.save_dataset("f", stages.dataset_sql(recipe(), teacher="other", sources=["src"])).row_count == 0
