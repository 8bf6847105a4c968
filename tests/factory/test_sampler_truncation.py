"""Truncation escalation over real HTTP: the scripted OpenAI-compatible server (tests/teacher_server.py)
cuts an answer longer than `max_tokens` words with finish_reason "length"; the sampler asks once
more with the larger max_tokens, keeps both samples and links them, pays each request key once,
and stops at a spent budget."""

import asyncio
import json

from factory.sampler import Budget, Escalation, plan_requests, sample_teacher
from factory.teachers.base import Endpoint, Sampling, TeacherConfig
from factory.teachers.openai_http import OpenAITeacher
from storage import Lake
from tests.teacher_server import TeacherServer

# Words in each problem's whole answer (reasoning + answer): p0 fits 12, p1 fits 24 (and 20),
# p2 fits neither.
WORDS = {"p0": 8, "p1": 18, "p2": 40}
PROBLEMS = [{"problem_id": pid, "problem": f"problem {pid}"} for pid in WORDS]
FAST = dict(backoff_base_s=0.01, backoff_cap_s=0.05, breaker_cooldown_s=0.3)


def parts(prompt: str, seed, j: int) -> tuple[str, str]:
    pid = prompt.split()[-1]
    return " ".join(["step"] * (WORDS[pid] - 4)), "The answer is 7."


def sample(url: str, store: str, *, escalation=None, budget=None, max_tokens=12):
    config = TeacherConfig(name="t", backend="openai", model="tiny", endpoints=[Endpoint(url=url, max_concurrency=1)])

    async def main():
        teacher = OpenAITeacher(config, **FAST)
        groups = plan_requests(config, PROBLEMS, Sampling(max_tokens=max_tokens, seed=3), samples_per_problem=2)
        with Lake.open(store) as lake:
            try:
                return await sample_teacher(lake, teacher, groups, run_id="r", escalation=escalation, budget=budget)
            finally:
                await teacher.aclose()

    return asyncio.run(main())


def sent(server: TeacherServer) -> list[tuple[str, int]]:
    """(problem, max_tokens) of every answered completion request, in order."""
    return [(r["body"]["messages"][-1]["content"].split()[-1], r["body"]["max_tokens"])
            for r in server.completion_requests() if r["completed"]]


def rows(store: str) -> list[dict]:
    with Lake.open(store, create=False) as lake:
        return lake.query("SELECT sample_id, problem_id, sample_index, finish_reason, sampling, metadata FROM samples "
                          "ORDER BY problem_id, sample_index, json_extract(sampling, '$.max_tokens')::INT").to_pylist()


def test_cut_samples_are_asked_again_with_twice_the_tokens_and_linked(tmp_path):
    store = str(tmp_path / "s")
    with TeacherServer(models=["tiny"], parts=parts) as server:
        stats = sample(server.url, store, escalation=Escalation(factor=2, cap=32768))
        assert sorted(sent(server)) == [("p0", 12), ("p1", 12), ("p1", 24), ("p2", 12), ("p2", 24)]
        got = rows(store)
        assert len(got) == 10  # 6 first attempts, 4 retries: both attempts kept
        first = {(r["problem_id"], r["sample_index"]): r for r in got if json.loads(r["sampling"])["max_tokens"] == 12}
        retries = [r for r in got if json.loads(r["sampling"])["max_tokens"] == 24]
        assert [(r["problem_id"], r["sample_index"]) for r in retries] == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]
        for r in retries:
            assert json.loads(r["metadata"])["retry_of"] == first[(r["problem_id"], r["sample_index"])]["sample_id"]
        assert [r["finish_reason"] for r in retries] == ["stop", "stop", "length", "length"]
        assert first[("p0", 0)]["finish_reason"] == "stop" and first[("p1", 0)]["finish_reason"] == "length"
        assert stats.keys == 10 and stats.committed == 10 and stats.missing == 0 and stats.length_cut == 6
        assert sorted(stats.escalations.values()) == ["p1", "p1", "p2", "p2"]

        server.reset()
        again = sample(server.url, store, escalation=Escalation(factor=2, cap=32768))
        assert sent(server) == [] and again.already_done == 10 and again.missing == 0  # the ledger: nothing twice


def test_a_rerun_sends_only_the_missing_escalations(tmp_path):
    """The cut samples of an earlier run (here one without escalation, as if it stopped before
    the second pass) are escalated by the next, which sends nothing else."""
    store = str(tmp_path / "s")
    with TeacherServer(models=["tiny"], parts=parts) as server:
        sample(server.url, store)
        assert len(sent(server)) == 3 and len(rows(store)) == 6
        server.reset()
        stats = sample(server.url, store, escalation=Escalation(factor=2, cap=32768))
        assert sorted(sent(server)) == [("p1", 24), ("p2", 24)]
        assert stats.already_done == 6 and stats.committed == 4 and len(rows(store)) == 10


def test_the_cap_bounds_the_retry(tmp_path):
    store = str(tmp_path / "s")
    with TeacherServer(models=["tiny"], parts=parts) as server:
        sample(server.url, store, escalation=Escalation(factor=4, cap=20))
        assert sorted(sent(server)) == [("p0", 12), ("p1", 12), ("p1", 20), ("p2", 12), ("p2", 20)]
        server.reset()
        sample(server.url, str(tmp_path / "s2"), escalation=Escalation(factor=2, cap=12))
        assert sorted(sent(server)) == [("p0", 12), ("p1", 12), ("p2", 12)]  # no room above max_tokens: no retry
    assert Escalation(factor=2, cap=12).max_tokens(12) is None and Escalation(factor=1.5, cap=100).max_tokens(12) == 18


def test_a_spent_budget_stops_the_escalations(tmp_path):
    with TeacherServer(models=["tiny"], parts=parts) as server:
        plain = sample(server.url, str(tmp_path / "a"))  # what the first pass costs
        spent = plain.prompt_tokens + plain.completion_tokens
        server.reset()
        stats = sample(server.url, str(tmp_path / "b"), escalation=Escalation(), budget=Budget(max_tokens=spent))
        assert sorted(sent(server)) == [("p0", 12), ("p1", 12), ("p2", 12)] and stats.stopped_by_budget
        assert not stats.escalations
        server.reset()
        # Room for one more request: the escalations start, and the budget stops them again.
        stats = sample(server.url, str(tmp_path / "c"), escalation=Escalation(), budget=Budget(max_tokens=spent + 1))
        assert sorted(sent(server)) == [("p0", 12), ("p1", 12), ("p1", 24), ("p2", 12)] and stats.stopped_by_budget
        assert stats.missing == 2  # p2's retries: left for a run with more budget
