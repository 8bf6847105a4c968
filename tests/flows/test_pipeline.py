"""The factory flow end to end on Prefect's test harness, against the scripted teacher server
over real HTTP: what lands in the dataset, the funnel, resume without resending, teacher faults,
and SIGKILL at several points followed by a rerun."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from factory import benchmarks
from storage import Lake
from tests.teacher_server import Normal, Stall, Status, TeacherServer

ROOT = Path(__file__).resolve().parents[2]

N_PROBLEMS = 6
WRONG_ALWAYS = 5  # problem 5: the teacher never gets it right


def _numbers(prompt: str) -> tuple[int, int, int]:
    m = re.search(r"Problem (\d+): what is (\d+) plus (\d+)\?", prompt)
    assert m, prompt
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def scripted_parts(prompt: str, seed, j: int) -> tuple[str, str]:
    """Even choices answer right with one reasoning per problem (so the two right samples of a
    problem are exact duplicates); odd choices answer wrong. Problem 5 is always wrong."""
    i, a, b = _numbers(prompt)
    right = (j % 2 == 0) and i != WRONG_ALWAYS
    reasoning = (f"We add {a} and {b} for problem {i}. First take {a}, then count up {b} more steps, "
                 f"checking each step carefully along the way until the total is reached.")
    if not right:
        reasoning += f" Variant {j} of the reasoning with seed {seed} and a slip in the last step."
    return reasoning, f"The answer is \\boxed{{{a + b if right else a + b + 1}}}."


def write_recipe(tmp: Path, url: str, *, contaminated: bool = True, extra: str = "", name: str = "flowtest",
                 n: int = N_PROBLEMS) -> Path:
    rows = [{"q": f"Problem {i}: what is {10 + i} plus {20 + 2 * i}?", "a": str(30 + 3 * i)} for i in range(n)]
    if contaminated:  # a GSM8K test problem copied verbatim: dropped before any request
        item = benchmarks.load("gsm8k")[0]
        rows.append({"q": item["problem"], "a": "0"})
    (tmp / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: {name}
        questions:
          - {{source: jsonl, path: problems.jsonl, fields: {{problem: q, answer: a}}, name: adds}}
        teacher:
          backend: openai
          base_url: {url}
          model: test-model
          samples_per_problem: 4
          max_concurrency: 1
          sampling: {{temperature: 0.6, max_tokens: 200, seed: 7}}
        verify: [math]
        filters: [think_format, repetition]
        dedup: {{threshold: 0.8}}
        dataset: {{name: {name}}}
        batch_size: 8
        """) + extra)
    return recipe


def request_keys(server: TeacherServer) -> Counter:
    """(prompt, seed) of every answered completion request: one request carries all 4 samples."""
    out = Counter()
    for r in server.completion_requests():
        if r.get("completed"):
            body = r["body"]
            out[(json.dumps(body.get("messages"), sort_keys=True), body.get("seed"), body.get("n"))] += 1
    return out


def tables(store: Path) -> dict:
    with Lake.open(str(store), create=False) as lake:
        ds = lake.query("SELECT name, max(version) AS v FROM datasets GROUP BY 1").to_pylist()
        rows = sorted(lake.read_dataset(ds[0]["name"]).column("sample_id").to_pylist()) if ds else []
        return {
            "samples": sorted(lake.query("SELECT sample_id FROM samples").column("sample_id").to_pylist()),
            "verdicts": sorted(tuple(r.values()) for r in lake.query('SELECT sample_id, "check", status FROM verdicts').to_pylist()),
            "dedup": sorted(tuple(r.values()) for r in lake.query("SELECT item_id, kept FROM dedup").to_pylist()),
            "dataset": rows,
            "problems": sorted(lake.query("SELECT problem_id FROM problems").column("problem_id").to_pylist()),
        }


@pytest.fixture()
def server():
    with TeacherServer(models=["test-model"], parts=scripted_parts) as s:
        yield s


def test_flow_end_to_end_dataset_and_funnel(prefect_api, server, tmp_path):
    from flows.pipeline import factory_run

    recipe = write_recipe(tmp_path, server.url)
    store = tmp_path / "store"
    summary = factory_run(str(recipe), store=str(store))
    funnel = {f["stage"]: f["count"] for f in summary["funnel"]}
    # 6 clean problems (the GSM8K copy is dropped), 4 samples each; 2 right per problem but
    # problem 5; the two right ones of a problem are duplicates, so one each is kept.
    assert summary["problems_dropped"] == 1
    assert funnel == {"problems": 6, "requests": 24, "samples": 24, "verified": 10, "filtered": 10,
                      "deduplicated": 5, "dataset": 5}
    assert summary["rejects"]["math"] == 14
    with Lake.open(str(store), create=False) as lake:
        data = lake.read_dataset("flowtest").to_pylist()
        assert len(data) == 5
        for row in data:
            i, a, b = _numbers(row["problem"])
            assert f"\\boxed{{{a + b}}}" in row["answer"]
            assert row["sample_index"] in (0, 2)
            assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].startswith("<think>\n")
        assert len({r["problem_id"] for r in data}) == 5
        runs = lake.query("SELECT status, counts FROM runs ORDER BY created_at").to_pylist()
        assert [r["status"] for r in runs] == ["started", "finished"]
        assert json.loads(runs[-1]["counts"])["funnel"] == summary["funnel"]
        contaminated = lake.query("SELECT count(*) AS n FROM problems WHERE len(contamination) > 0").column("n")[0].as_py()
        assert contaminated == 1
    sent = request_keys(server)
    assert len(sent) == 6 and set(sent.values()) == {1}  # one request per clean problem

    # The funnel is also a Prefect artifact beside the run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["funnel-flowtest"])))
    assert arts and "| dataset | dataset | 5 |" in arts[0].data and "| problems | questions | 6 |" in arts[0].data

    # A rerun resumes: nothing is sent again, the dataset version is unchanged.
    again = factory_run(str(recipe), store=str(store))
    assert request_keys(server) == sent
    assert again["dataset"]["version"] == summary["dataset"]["version"] and again["dataset"]["new"] is False
    assert {f["stage"]: f["count"] for f in again["funnel"]} == funnel


def test_flow_teacher_faults_end_complete(prefect_api, server, tmp_path):
    """429s, 500s and a stalled stream are retried by the backend; the run still ends with the
    full dataset."""
    from flows.pipeline import factory_run

    server.script(Status(429, retry_after="0"), Status(500), Stall(after_chunks=1, seconds=30), Status(503))
    recipe = write_recipe(tmp_path, server.url, contaminated=False)
    recipe.write_text(recipe.read_text().replace("max_concurrency: 1", "max_concurrency: 1\n  stream: true\n  stall_timeout_s: 1"))
    summary = factory_run(str(recipe), store=str(tmp_path / "store"))
    assert {f["stage"]: f["count"] for f in summary["funnel"]}["dataset"] == 5


def test_flow_dead_teacher_fails_listing_what_is_missing_then_resumes(prefect_api, server, tmp_path):
    from flows.pipeline import RunIncomplete, factory_run

    recipe = write_recipe(tmp_path, server.url, contaminated=False)
    recipe.write_text(recipe.read_text().replace("max_concurrency: 1", "max_concurrency: 1\n  request_timeout_s: 3"))
    server.default = Status(500)
    with pytest.raises(RunIncomplete) as exc:
        factory_run(str(recipe), store=str(tmp_path / "store"))
    assert "24 of 24 requests got no sample" in str(exc.value) and "run the same command again" in str(exc.value)
    with Lake.open(str(tmp_path / "store"), create=False) as lake:
        assert lake.query("SELECT arg_max(status, created_at) AS s FROM runs").column("s")[0].as_py() == "incomplete"
    server.default = Normal()
    summary = factory_run(str(recipe), store=str(tmp_path / "store"))
    assert {f["stage"]: f["count"] for f in summary["funnel"]}["dataset"] == 5
    with Lake.open(str(tmp_path / "store"), create=False) as lake:
        assert lake.query("SELECT count(DISTINCT run_id) AS n FROM runs").column("n")[0].as_py() == 1  # resumed the same run


@pytest.mark.integration
def test_flow_on_a_dask_task_runner(prefect_api, server, tmp_path):
    """The same run with verification on a local Dask cluster (worker processes on 127.0.0.1)."""
    pytest.importorskip("prefect_dask", reason="prefect-dask is not installed")
    from flows.pipeline import run_recipe

    recipe = write_recipe(tmp_path, server.url, contaminated=False, extra="task_runner: {kind: dask, max_workers: 2}\n")
    summary = run_recipe(str(recipe), store=str(tmp_path / "store"))
    assert {f["stage"]: f["count"] for f in summary["funnel"]} == {
        "problems": 6, "requests": 24, "samples": 24, "verified": 10, "filtered": 10, "deduplicated": 5, "dataset": 5}


@pytest.mark.parametrize("workers", [None, 3])
def test_verification_batches_in_flight_follow_max_workers(prefect_api, server, tmp_path, monkeypatch, workers):
    """On threads one verification batch runs at a time in the flow's own thread by default;
    `max_workers: N` lets N run at once on the runner's threads. The result is the same."""
    import threading
    import time

    from factory import stages
    from flows.pipeline import run_recipe

    real, active, seen = stages.verify_samples, [0], {"max": 0, "threads": set()}
    lock = threading.Lock()

    def watched(*a, **kw):
        with lock:
            active[0] += 1
            seen["max"] = max(seen["max"], active[0])
            seen["threads"].add(threading.current_thread().name)
        time.sleep(0.3)  # long enough for the next batch to start if it may
        try:
            return real(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(stages, "verify_samples", watched)
    extra = f"task_runner: {{kind: thread, max_workers: {workers}}}\n" if workers else ""
    recipe = write_recipe(tmp_path, server.url, contaminated=False, n=12, extra=extra)  # 48 samples: 6 batches
    summary = run_recipe(str(recipe), store=str(tmp_path / "store"))
    assert {f["stage"]: f["count"] for f in summary["funnel"]}["verified"] == 22  # 11 problems x 2 right answers (problem 5 never)
    if workers:
        assert 2 <= seen["max"] <= workers
        assert threading.main_thread().name not in seen["threads"]
    else:
        assert seen["max"] == 1 and seen["threads"] == {threading.main_thread().name}


def test_adaptive_sampling_stops_when_enough_are_accepted(prefect_api, server, tmp_path):
    from flows.pipeline import factory_run

    recipe = write_recipe(tmp_path, server.url, contaminated=False,
                          extra="adaptive: {accepted_per_problem: 1, max_samples_per_problem: 8}\n")
    recipe.write_text(recipe.read_text().replace("samples_per_problem: 4", "samples_per_problem: 1"))
    summary = factory_run(str(recipe), store=str(tmp_path / "store"))
    funnel = {f["stage"]: f["count"] for f in summary["funnel"]}
    # Round 1: index 0 of each problem (right for 0-4). Problem 5 is never right: it gets
    # 1 -> 2 -> 4 -> 8 samples, then stops at the cap.
    assert funnel["requests"] == 5 * 1 + 8
    assert funnel["dataset"] == 5


KILLER = """
import os, signal, sys
import storage.lake as lake_mod
table, nth, when = sys.argv[2], int(sys.argv[3]), sys.argv[4]
real = lake_mod.Lake.commit
seen = [0]
def commit(self, t, data, **kw):
    if t == table:
        seen[0] += 1
        if seen[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
    out = real(self, t, data, **kw)
    if t == table and seen[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
lake_mod.Lake.commit = commit
# Group commit would put this run's 48 samples in one batch: small batches, so that a kill
# at the 2nd samples commit lands in the middle of sampling.
import factory.sampler
factory.sampler.sample_teacher.__kwdefaults__["commit_every"] = 8
from flows.pipeline import factory_run
factory_run(sys.argv[1], store=sys.argv[5])
"""


@pytest.mark.integration
@pytest.mark.parametrize(
    "table,nth,when",
    [
        ("samples", 2, "after"),  # during sampling: after a commit, before the rest
        ("verdicts", 1, "after"),  # between a commit and the bookkeeping that follows it
        ("dedup", 2, "before"),  # during sample dedup: leaders committed, decisions not
        ("datasets", 1, "before"),  # before the dataset version
    ],
)
def test_sigkill_then_rerun_equals_uninterrupted(prefect_api, tmp_path, table, nth, when):
    from flows.pipeline import factory_run

    with TeacherServer(models=["test-model"], parts=scripted_parts) as clean_server:
        (tmp_path / "a").mkdir()
        recipe = write_recipe(tmp_path / "a", clean_server.url, n=12)
        recipe.write_text(recipe.read_text().replace("samples_per_problem: 4", "samples_per_problem: 4\n  max_n: 2"))
        factory_run(str(recipe), store=str(tmp_path / "clean"))
        want = tables(tmp_path / "clean")

    with TeacherServer(models=["test-model"], parts=scripted_parts) as server:
        (tmp_path / "b").mkdir()
        recipe = write_recipe(tmp_path / "b", server.url, n=12)
        recipe.write_text(recipe.read_text().replace("samples_per_problem: 4", "samples_per_problem: 4\n  max_n: 2"))
        store = tmp_path / "killed"
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", KILLER, str(recipe), table, str(nth), when, str(store)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-3000:]
        factory_run(str(recipe), store=str(store))
        got = tables(store)
        sent = request_keys(server)
    assert got == want
    assert len(sent) == 24 and set(sent.values()) == {1}, "a request was sent twice"


def writer_parts(prompt: str, seed, j: int) -> tuple[str, str]:
    """A teacher that writes a new problem when asked to (its starting count differs by request),
    and otherwise answers: Zorblax problems with their starting count, seed problems by adding."""
    if "Write one new math problem" in prompt:
        n = 3 + 7 * (int(hashlib.sha256(f"{prompt}|{seed}|{j}".encode()).hexdigest()[:4], 16) % 50)
        return "", f"Zorblax has {n} gears in a crate and buys {j + 2} boxes of gears. How many gears did Zorblax start with?"
    m = re.search(r"Zorblax has (\d+) gears", prompt)
    if m:
        return f"Zorblax started with {m.group(1)} gears before buying anything at all today.", f"The answer is \\boxed{{{m.group(1)}}}."
    return scripted_parts(prompt, seed, j)


def test_flow_with_teacher_written_questions(prefect_api, tmp_path):
    """A teacher_written source: the recipe's teacher writes problems from the seed source, the
    ones whose own samples agree become problems of the run, and they are sampled, verified and
    land in the dataset like the seeds."""
    from flows.pipeline import factory_run

    with TeacherServer(models=["test-model"], parts=writer_parts) as server:
        recipe = write_recipe(tmp_path, server.url, contaminated=False, n=3, extra="")
        text = recipe.read_text().replace(
            "name: adds}\n",
            "name: adds}\n  - {source: teacher_written, from: adds, count: 2, max_rounds: 2, samples_per_question: 3}\n")
        recipe.write_text(text)
        summary = factory_run(str(recipe), store=str(tmp_path / "store"))
        sent = len(server.completion_requests())
        by_source = summary["by_source"]
        assert by_source["adds"]["problems"] == 3 and by_source["adds"]["dataset"] == 3
        written = by_source["teacher_written"]
        assert written["problems"] == 2 and written["dataset"] == 2
        with Lake.open(str(tmp_path / "store"), create=False) as lake:
            rows = lake.query("SELECT problem, reference_answer FROM problems WHERE source = 'teacher_written'").to_pylist()
            for r in rows:
                assert re.search(r"Zorblax has (\d+) gears", r["problem"]).group(1) == r["reference_answer"]
        again = factory_run(str(recipe), store=str(tmp_path / "store"))
        assert len(server.completion_requests()) == sent  # the rerun writes and samples nothing
        assert again["by_source"] == summary["by_source"]


def test_flow_heartbeat_is_off_only_without_a_prefect_server(monkeypatch):
    """Ephemeral mode: no heartbeat (nothing outlives the run to read it). A configured server
    keeps Prefect's default, and a value the user set wins either way."""
    from prefect.settings import get_current_settings, temporary_settings

    from flows.pipeline import flow_settings

    def beat() -> int | None:
        with flow_settings():
            return get_current_settings().flows.heartbeat_frequency

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with temporary_settings(restore_defaults={"api.url"}):
        assert beat() is None
    with temporary_settings(updates={"api.url": "http://127.0.0.1:4200/api"}):
        assert beat() == 180
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with temporary_settings(restore_defaults={"api.url"}):
        assert beat() == 60


def test_flow_summary_report_funnel_and_dataset_count_agree(tmp_path):
    """One lake with pass, fail, unverifiable and error verdicts, two check versions and a filter
    outside the recipe (tests/factory/test_funnel.py lists its cases): the flow's summary, the
    report's funnel computed from the tables, and the dataset's row count say the same."""
    from factory import stages
    from factory.rounds import RoundState
    from flows.pipeline import summarize, verdicts_for
    from flows.report import collect_report
    from tests.factory.test_funnel import ACCEPTED, REJECTS, RUN, SAMPLES, TEACHER, WANT, build_lake, problem_of, recipe

    build_lake(tmp_path / "s")
    problems = [{"problem_id": f"p{i}", "source": "src", "problem": f"{i}+{i}?"} for i in range(4)]
    rounds = RoundState(recipe(), {p["problem_id"]: p for p in problems}, recipe().teacher.to_config())
    rounds.keys = {sid: problem_of(sid) for sid in SAMPLES}
    with Lake.open(str(tmp_path / "s")) as lake:
        sql = stages.dataset_sql(recipe(), teacher=TEACHER, sources=["src"])
        saved = lake.save_dataset("f", sql, run_id=RUN)
        ds = {"name": "f", "version": saved.version, "rows": saved.row_count, "new": True,
              "scope": stages.dataset_scope(teacher=TEACHER, sources=["src"])}
        summary = summarize(lake, problems, rounds, {}, ds)
        report = collect_report(lake, RUN).counts
        # The round planner's in-memory view of the same samples accepts the same ones.
        rounds.add_verdicts(verdicts_for(lake, list(rounds.keys)), covering=rounds.keys)
        rounds.close_round()
    flow_funnel = {f["stage"]: f["count"] for f in summary["funnel"]}
    report_funnel = {f["stage"]: f["count"] for f in report["funnel"]}
    for stage in WANT:
        assert flow_funnel[stage] == report_funnel[stage] == WANT[stage], stage
    assert saved.row_count == flow_funnel["dataset"] == report_funnel["dataset"]
    assert summary["rejects"] == report["rejects"] == REJECTS
    assert summary["by_source"]["src"]["filtered"] == report["by_source"]["src"]["filtered"] == len(rounds.accepted)
    assert rounds.accepted == ACCEPTED


def long_odd_parts(prompt: str, seed, j: int) -> tuple[str, str]:
    """Every choice right; odd choices reason for 40 more words (cut at max_tokens 40, whole at 80)."""
    i, a, b = _numbers(prompt)
    reasoning = f"We add {a} and {b} for problem {i} in choice {j}." + (" Then we check it again." * 8 if j % 2 else "")
    return reasoning, f"The answer is \\boxed{{{a + b}}}."


def test_truncated_samples_are_retried_verified_and_counted(prefect_api, tmp_path):
    from flows.pipeline import factory_run

    with TeacherServer(models=["test-model"], parts=long_odd_parts) as server:
        recipe = write_recipe(tmp_path, server.url, contaminated=False, n=3, extra="truncation: {retry_max_tokens_factor: 2}\n")
        recipe.write_text(recipe.read_text().replace("max_tokens: 200", "max_tokens: 40"))
        store = str(tmp_path / "store")
        summary = factory_run(str(recipe), store=store)
        # 3 problems x 4 samples; choices 1 and 3 of each cut, then asked again with 80 tokens.
        assert summary["truncation"] == {"length_cut": 6, "escalated": 6, "escalation_recovered": 6}
        assert summary["by_source"]["adds"]["escalated"] == 6
        funnel = {f["stage"]: f["count"] for f in summary["funnel"]}
        assert funnel["requests"] == funnel["samples"] == 18 and funnel["verified"] == 12  # the cut ones state no answer
        with Lake.open(store, create=False) as lake:
            data = lake.read_dataset("flowtest").to_pylist()
            cut = set(lake.query("SELECT sample_id FROM samples WHERE finish_reason = 'length'").column(0).to_pylist())
            links = dict(tuple(r.values()) for r in lake.query(
                "SELECT sample_id, json_extract_string(metadata, '$.retry_of') AS r FROM samples WHERE r IS NOT NULL").to_pylist())
            passed = set(lake.query("SELECT sample_id FROM verdicts WHERE \"check\" = 'math' AND status = 'pass'").column(0).to_pylist())
        assert set(links.values()) == cut and len(links) == 6  # each retry names the cut sample it retries
        assert set(links) <= passed and not cut & passed  # the retries verified and passed; the cut ones did not
        # The dataset holds no cut sample (which retries it holds is dedup's call: the scripted
        # retries repeat the first request's choices word for word).
        assert len({r["problem_id"] for r in data}) == 3 and all(r["finish_reason"] == "stop" and r["sample_id"] not in cut for r in data)
        before = len(server.completion_requests())
        again = factory_run(str(recipe), store=store)
        assert len(server.completion_requests()) == before and again["sent_this_attempt"] == 0
        assert again["truncation"] == summary["truncation"]


def test_automatic_compaction_keeps_every_dataset_version_export_byte_identical(prefect_api, server, tmp_path, cli):
    """Three runs, each adding problems and a dataset version, with a compaction threshold so low
    that it triggers at stage ends and after sampler commits, and snapshots expire at once
    (keep_s: 0): every version's `factory export` stays byte for byte what it was, and the
    data files the lake reads stay bounded."""
    from flows.pipeline import factory_run

    store = tmp_path / "store"  # the cli fixture's FACTORY_STORE
    exports: dict[str, bytes] = {}
    files, snapshots = [], []
    for run, n in enumerate((4, 8, 12)):
        recipe = write_recipe(tmp_path, server.url, n=n, contaminated=False, extra="compaction: {max_files: 2, keep_s: 0}\n")
        summary = factory_run(str(recipe), store=str(store))
        assert summary["dataset"]["version"] == run + 1
        for v in range(1, run + 2):
            for fmt in ("jsonl", "parquet"):
                out = tmp_path / f"v{v}.{fmt}"
                assert cli("export", f"flowtest@{v}", "--format", fmt, "--output", str(out)).exit_code == 0
                assert exports.setdefault(f"{v}.{fmt}", out.read_bytes()) == out.read_bytes(), f"v{v} {fmt} after run {run}"
        with Lake.open(str(store), create=False) as lake:
            files.append(lake.data_files())
            snapshots.append(lake.query("SELECT count(*) AS n FROM ducklake_snapshots('lake')").column("n")[0].as_py())
            commits = lake.query("SELECT count(*) AS n FROM batches").column("n")[0].as_py()
    # Bounded: after the first compaction (one file per table is the floor), each run's files
    # are merged whenever they pass the threshold (2). Without compaction: 3 more per run.
    assert max(files[1:]) <= files[0] + 2, files
    assert snapshots[-1] < commits / 2, (snapshots, commits)  # expired at once (keep_s: 0), the 3 pinned ones kept


def test_a_stage_end_compacts_at_an_eighth_of_the_sampler_threshold(tmp_path):
    """While sampling, compaction waits for `max_files` (it holds the writer); at a stage's end it
    runs past `max_files / 8`, so a run ends with few files to read."""
    from factory.recipe import CompactionSpec
    from flows.pipeline import compact_due

    spec = CompactionSpec(max_files=64, keep_s=0)
    assert (spec.stage_end_files, CompactionSpec(max_files=4).stage_end_files, CompactionSpec(max_files=0).stage_end_files) == (8, 1, 0)
    with Lake.open(str(tmp_path / "s"), data_inlining_row_limit=0) as lake:
        for b in range(12):
            lake.commit("problems", [{"problem_id": f"p{b}", "source": "s", "problem": f"{b}?"}], batch_key=f"b{b}", run_id="r")
        before = lake.data_files()
        assert before > 12 and compact_due(lake, spec) is None and lake.data_files() == before  # under 64: the sampler's check waits
        done = compact_due(lake, spec, stage_end=True)
        assert done is not None and lake.data_files() < before
        assert compact_due(lake, spec, stage_end=True) is None  # nothing new since
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 12
