"""The request ledger. The teacher here is an in-process double with scripted answers; the
same loop over real HTTP and a real model is in test_sampler_http.py and teachers/test_local.py."""

import asyncio
import json

import pytest

from factory.sampler import Budget, plan_requests, sample_teacher
from factory.teachers.base import Completion, Price, Sampling, TeacherConfig, TeacherError
from storage import Lake

CONFIG = TeacherConfig(name="double", backend="openai", model="m", price=Price(input_per_mtok=1.0, output_per_mtok=2.0),
                       endpoints=[{"url": "http://127.0.0.1:9/v1"}])


class ScriptedTeacher:
    """Answers every index with `<think>` text; `drop` indices come back missing, `fail` problems raise."""

    def __init__(self, drop=(), fail=None, length=(), concurrency=4):
        self.config = CONFIG
        self.drop, self.fail, self.length = set(drop), fail or {}, set(length)
        self.sent: list[tuple[str, tuple[int, ...]]] = []
        self.checked = 0
        self._concurrency = concurrency

    @property
    def max_concurrency(self):
        return self._concurrency

    async def check(self, longest_prompt=None, max_tokens=None):
        self.checked += 1

    async def generate(self, group):
        self.sent.append((group.problem_id, group.sample_indices))
        await asyncio.sleep(0.001)
        if group.problem_id in self.fail:
            raise self.fail[group.problem_id]
        return [
            Completion(i, f"<think>about {group.problem_id}</think>{i}", "length" if i in self.length else "stop",
                       prompt_tokens=10, completion_tokens=5, latency_s=0.01)
            for i in group.sample_indices if (group.problem_id, i) not in self.drop
        ]

    async def aclose(self):
        pass


PROBLEMS = [{"problem_id": f"p{i}", "problem": f"What is {i}+{i}?"} for i in range(6)]


def run(lake, teacher, k=3, **kw):
    groups = plan_requests(CONFIG, PROBLEMS, Sampling(max_tokens=32), samples_per_problem=k)
    return asyncio.run(sample_teacher(lake, teacher, groups, run_id="r1", **kw))


@pytest.fixture
def lake(tmp_path):
    with Lake.open(str(tmp_path / "store")) as lk:
        yield lk


def test_every_key_is_sampled_once_and_stored_with_reasoning_split(lake):
    teacher = ScriptedTeacher()
    stats = run(lake, teacher)
    assert (stats.keys, stats.committed, stats.missing) == (18, 18, 0)
    rows = lake.query("SELECT * FROM samples ORDER BY problem_id, sample_index").to_pylist()
    assert len({r["request_key"] for r in rows}) == 18
    first = rows[0]
    assert first["reasoning"] == "about p0" and first["answer"] == "0" and first["teacher"] == "double"
    assert first["messages"] == [{"role": "user", "content": "What is 0+0?"}]
    assert first["cost_usd"] == pytest.approx((10 * 1 + 5 * 2) / 1e6)
    assert stats.cost_usd == pytest.approx(18 * first["cost_usd"])
    assert teacher.checked == 1

    again = ScriptedTeacher()
    stats = run(lake, again)
    assert (stats.already_done, again.sent, again.checked) == (18, [], 0)  # nothing paid twice


def test_partial_results_are_kept_and_only_the_rest_is_resent(lake):
    first = ScriptedTeacher(drop={("p1", 2), ("p4", 0)})
    stats = run(lake, first)
    assert (stats.committed, stats.missing) == (16, 2)
    second = ScriptedTeacher()
    stats = run(lake, second)
    assert sorted(second.sent) == [("p1", (2,)), ("p4", (0,))]
    assert stats.committed == 2 and lake.query("SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 18}]


def test_length_is_stored_as_data_not_retried(lake):
    teacher = ScriptedTeacher(length={1})
    stats = run(lake, teacher)
    assert stats.length_cut == 6 and stats.missing == 0
    assert lake.query("SELECT count(*) AS n FROM samples WHERE finish_reason = 'length'").to_pylist() == [{"n": 6}]
    again = ScriptedTeacher()
    run(lake, again)
    assert again.sent == []


def test_a_failing_group_leaves_its_keys_for_the_next_run(lake):
    teacher = ScriptedTeacher(fail={"p3": TeacherError("500 storm", retryable=True, status=500)})
    stats = run(lake, teacher)
    assert (stats.failed_groups, stats.missing, stats.errors["http 500"]) == (1, 3, 1)
    retry = ScriptedTeacher()
    run(lake, retry)
    assert retry.sent == [("p3", (0, 1, 2))]


def test_an_auth_error_halts_the_run_but_keeps_what_arrived(lake):
    fail = {f"p{i}": TeacherError("401 bad key", retryable=False, status=401) for i in range(3, 6)}
    teacher = ScriptedTeacher(fail=fail, concurrency=1)
    with pytest.raises(TeacherError, match="401"):
        run(lake, teacher)
    assert lake.query("SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 9}]
    assert len(teacher.sent) == 4  # stopped at the first 401


def test_budget_stops_new_requests_cleanly(lake):
    teacher = ScriptedTeacher(concurrency=1)
    stats = run(lake, teacher, budget=Budget(max_tokens=100))  # 45 tokens per group of 3
    assert stats.stopped_by_budget and len(teacher.sent) == 3
    assert stats.committed == 9 and stats.missing == 9
    with pytest.raises(ValueError):
        plan_requests(CONFIG, PROBLEMS, Sampling(), samples_per_problem=0)


def test_commits_as_samples_arrive_in_groups(lake):
    stats = run(lake, ScriptedTeacher(concurrency=1), commit_every=4)
    sizes = lake.query("SELECT row_count FROM batches WHERE table_name = 'samples' ORDER BY created_at").column(0).to_pylist()
    # A commit starts once 4 or more wait and takes all that arrived while the last one ran;
    # only the flush at the end may be smaller.
    assert stats.committed == 18 and sum(sizes) == 18 and len(sizes) >= 2
    assert all(n >= 4 for n in sizes[:-1])


def test_received_samples_are_spilled_when_the_lake_fails(lake, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(lake, "commit", broken)
    with pytest.raises(OSError):
        run(lake, ScriptedTeacher(), spill_dir=str(tmp_path / "spill"))
    spilled = [json.loads(line) for f in (tmp_path / "spill").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(spilled) == 18 and {r["problem_id"] for r in spilled} == {f"p{i}" for i in range(6)}
    monkeypatch.undo()
    # the spill loads back through the normal ingest
    from factory.ingest import read_table

    table, rejects = read_table(next((tmp_path / "spill").glob("*.jsonl")), "samples")
    assert rejects == [] and table.num_rows == 18
