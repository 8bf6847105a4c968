"""The ledger over real HTTP: a sampler process killed with SIGKILL mid-run, then rerun.

The teacher server (tests/teacher_server.py) runs in this process on 127.0.0.1 and logs every
request it answered; the sampler runs in a child process that the test kills."""

import asyncio
import collections
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from factory.sampler import plan_requests, sample_teacher
from factory.teachers.base import Endpoint, Sampling, TeacherConfig
from factory.teachers.openai_http import OpenAITeacher
from storage import Lake
from tests.teacher_server import TeacherServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_PROBLEMS = 40
CONCURRENCY = 4
COMMIT_EVERY = 1
# What a SIGKILL may lose (factory/sampler.py, Committer): the answers the server sent that the
# sampler had not read yet (one per connection), the batch being committed (everything that had
# arrived when it started: up to 4 batches, the back-pressure bound) and the rows queued behind it
# (up to 4 batches again). With a commit per row the old bound, CONCURRENCY + 1, held only while
# commits kept up; one CI run on a loaded machine lost 6.
MAY_LOSE = CONCURRENCY + 2 * 4 * COMMIT_EVERY + 1

SAMPLER = textwrap.dedent(
    """
    import asyncio, sys
    from factory.sampler import plan_requests, sample_teacher
    from factory.teachers.base import Endpoint, Sampling, TeacherConfig
    from factory.teachers.openai_http import OpenAITeacher
    from storage import Lake
    url, store, n, concurrency, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    config = TeacherConfig(name="t", backend="openai", model="tiny",
                           endpoints=[Endpoint(url=url, max_concurrency=concurrency)])
    problems = [{"problem_id": f"p{i}", "problem": f"problem number {i}: what is {i} times {i}?"} for i in range(n)]

    async def main():
        teacher = OpenAITeacher(config)
        groups = plan_requests(config, problems, Sampling(max_tokens=64, seed=7), samples_per_problem=1)
        with Lake.open(store) as lake:
            try:
                stats = await sample_teacher(lake, teacher, groups, run_id="r", commit_every=every, commit_interval_s=0.05)
            finally:
                await teacher.aclose()
        print("done", stats.committed, flush=True)

    asyncio.run(main())
    """
)


def prompts_answered(log_path: Path) -> collections.Counter:
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return collections.Counter(
        e["body"]["messages"][-1]["content"] for e in entries if e["path"].endswith("/chat/completions") and e["completed"]
    )


def test_killed_sampler_resumes_and_pays_each_key_once(tmp_path):
    store = str(tmp_path / "store")
    log = tmp_path / "requests.jsonl"
    with TeacherServer(models=["tiny"], latency_s=0.15, log_path=log) as server:
        proc = subprocess.Popen([sys.executable, "-c", SAMPLER, server.url, store, str(N_PROBLEMS), str(CONCURRENCY), str(COMMIT_EVERY)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not log.exists() or sum(prompts_answered(log).values()) < 12):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = prompts_answered(log)
        assert 12 <= sum(first.values()) < N_PROBLEMS, "the kill did not land mid-run"

        with Lake.open(store) as lake:
            kept = set(lake.query("SELECT prompt_text FROM (SELECT messages[1].content AS prompt_text FROM samples)").column(0).to_pylist())
        # Only answers in flight or not yet committed at the kill can be lost.
        assert len(set(first) - kept) <= MAY_LOSE

        out = subprocess.run([sys.executable, "-c", SAMPLER, server.url, store, str(N_PROBLEMS), str(CONCURRENCY), str(COMMIT_EVERY)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        total = prompts_answered(log)

    second = total - first
    assert set(second) == {f"problem number {i}: what is {i} times {i}?" for i in range(N_PROBLEMS)} - kept
    assert all(n == 1 for n in second.values())  # the rerun sent each missing key once
    paid_twice = [p for p, n in total.items() if n > 1]
    assert len(paid_twice) <= MAY_LOSE
    with Lake.open(store) as lake:
        rows = lake.query("SELECT request_key, count(*) AS n FROM samples GROUP BY 1").to_pylist()
    assert len(rows) == N_PROBLEMS and all(r["n"] == 1 for r in rows)


def test_the_ledger_over_http_with_n_partial_results_and_lengths(tmp_path):
    from tests.teacher_server import Fewer, Length

    config = TeacherConfig(name="t", backend="openai", model="tiny", endpoints=[Endpoint(url="http://127.0.0.1:1/v1")])
    problems = [{"problem_id": f"p{i}", "problem": f"question {i}"} for i in range(5)]
    with TeacherServer(models=["tiny"]) as server, Lake.open(str(tmp_path / "store")) as lake:
        config = config.model_copy(update={"endpoints": [Endpoint(url=server.url, max_concurrency=1)]})
        server.script(Fewer(2), Length())
        groups = plan_requests(config, problems, Sampling(max_tokens=64), samples_per_problem=4)

        async def once():
            # max_reasks=0: the left-out indices are not asked for again in the same call (the
            # default, tests/factory/teachers/test_openai_storms.py), so the ledger resends them.
            teacher = OpenAITeacher(config, max_reasks=0)
            try:
                return await sample_teacher(lake, teacher, groups, run_id="r")
            finally:
                await teacher.aclose()

        stats = asyncio.run(once())
        assert (stats.keys, stats.committed, stats.missing) == (20, 18, 2)
        assert stats.length_cut >= 1
        first_requests = len(server.completion_requests())
        stats = asyncio.run(once())
        assert (stats.already_done, stats.committed, stats.missing) == (18, 2, 0)
        assert len(server.completion_requests()) == first_requests + 1  # only the 2 missing, in one n=2 call
        reasoning = lake.query("SELECT count(*) AS n FROM samples WHERE reasoning LIKE 'Thinking about%'").to_pylist()
        assert reasoning == [{"n": 20}]
