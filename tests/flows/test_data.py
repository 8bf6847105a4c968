"""`factory export --format hf` (flows/data.py, factory/cards.py): a flow's dataset as a Hugging
Face folder that `datasets.load_dataset` loads as is, with a card whose numbers are the lake's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from storage import Lake
from tests.flows.test_pipeline import server, write_recipe  # noqa: F401  (server: the scripted teacher fixture)

ROOT = Path(__file__).resolve().parents[2]


def card_parts(folder) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


@pytest.mark.integration
def test_hf_export_loads_with_datasets_and_its_card_is_the_lake(prefect_api, server, tmp_path, cli):  # noqa: F811
    from datasets import load_dataset

    from flows.pipeline import factory_run

    recipe = write_recipe(tmp_path, server.url)  # one GSM8K test problem among the seeds: a contaminated source
    recipe.write_text(recipe.read_text().replace("name: adds}", "name: adds, license: mit}"))
    store = tmp_path / "store"  # the cli fixture's FACTORY_STORE
    summary = factory_run(str(recipe), store=str(store))

    out = tmp_path / "flowtest-hf"
    r = cli("export", "flowtest", "--format", "hf", "--output", str(out))
    assert r.exit_code == 0, r.stderr
    rows = load_dataset(str(out))["train"].to_list()
    with Lake.open(str(store), create=False) as lake:
        saved = lake.read_dataset("flowtest").to_pylist()
        [run] = lake.query("SELECT run_id, recipe_hash, counts FROM runs WHERE status = 'finished'").to_pylist()
        checks = lake.query('SELECT "check", status, count(DISTINCT sample_id) AS n FROM verdicts WHERE sample_id IN '
                            "(SELECT sample_id FROM samples) GROUP BY ALL").to_pylist()
        hits = lake.query("SELECT count(*) AS n FROM problems WHERE len(contamination) > 0").column("n")[0].as_py()
    assert rows == saved and len(rows) == 5  # every column, every row, in order
    assert all(r["messages"][-1]["content"].startswith("<think>\n") for r in rows)  # the reasoning is kept

    header, body = card_parts(out)
    assert header["license"] == "mit"  # the seed source's license key
    assert header["size_categories"] == ["n<1K"] and header["task_categories"] == ["text-generation"]
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert "5 rows of verified reasoning" in body and f"`{run['run_id']}` (finished)" in body and run["recipe_hash"] in body
    by_source = json.loads(run["counts"])["by_source"]["adds"]
    assert by_source == {k: summary["by_source"]["adds"][k] for k in by_source}
    cols = ("problems", "requests", "samples", "verified", "filtered", "deduplicated", "dataset")
    assert "| adds | " + " | ".join(str(by_source[c]) for c in cols) + " |" in body
    for c in checks:  # only the dataset's rows are counted in the card: all pass
        if c["status"] == "pass":
            assert f"| {c['check']} |" in body
    assert "| math | 1/" in body and "| pass | 5 |" in body
    assert hits == 1 and "Contaminated sources" in body and "| adds | gsm8k | 1 |" in body
    assert "`problems.jsonl` (jsonl): licence mit" in body and "temperature 0.6" in body and "`think_format`" in body

    # The folder is never overwritten, and --license is only for the card.
    again = cli("export", "flowtest", "--format", "hf", "--output", str(out))
    assert again.exit_code == 2 and "--output" in again.stderr and "not empty" in again.stderr
    bad = cli("export", "flowtest", "--license", "mit", "--output", str(tmp_path / "x.jsonl"))
    assert bad.exit_code == 2 and "--license: only with --format hf" in bad.stderr


def _factory(tmp_path, *args: str, **env: str):
    """The CLI in a fresh process, as a user runs it (huggingface_hub reads its settings at import)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FACTORY_", "PREFECT_API_"))}
    base.update(PYTHONPATH=str(ROOT), FACTORY_STORE=str(tmp_path / "s"), HF_HOME=str(tmp_path / "hf-home"), COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=tmp_path, env=base,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def small_lake(tmp_path):
    from factory import stages
    from tests.factory.test_funnel import TEACHER, build_lake, recipe

    build_lake(tmp_path / "s")
    with Lake.open(str(tmp_path / "s")) as lake:
        lake.save_dataset("f", stages.dataset_sql(recipe(), teacher=TEACHER, sources=["src"]), run_id="run-f")
    return tmp_path / "s"


@pytest.mark.integration
def test_push_uploads_the_folder_in_one_commit_to_the_hub_api(small_lake, tmp_path):
    from tests.hub_server import HubServer

    with HubServer(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0"}
        done = _factory(tmp_path, "export", "f", "--format", "hf", "--output", "out", "--push", "me/f-data", "--private", **env)
        assert done.returncode == 0, done.stderr
        local = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
        assert set(local) == {"README.md", "data/train-00000-of-00001.parquet"}
        assert hub.files["me/f-data"] == local and hub.repos["me/f-data"] == {"private": True}
        assert hub.commits["me/f-data"] == ["factory export f@1"] and "pushed to me/f-data" in done.stderr
        assert hub.validated == 1  # the card's YAML header passed the Hub's metadata check

        # Pushing again to the same repository adds a commit (the repository exists: no error).
        again = _factory(tmp_path, "export", "f", "--format", "hf", "--output", "out2", "--push", "me/f-data", **env)
        assert again.returncode == 0, again.stderr
        assert len(hub.commits["me/f-data"]) == 2

        # A wrong token is the user's to fix (exit 2, the status named); the folder is kept.
        bad = _factory(tmp_path, "export", "f", "--format", "hf", "--output", "out3", "--push", "me/f-data", **{**env, "HF_TOKEN": "hf_no"})
        assert bad.returncode == 2 and "HTTP 401" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert (tmp_path / "out3" / "README.md").is_file()

    # The Hub failing the commit is a failure (exit 1), not bad input; the folder is whole.
    with HubServer(token="hf_test", fail_commits=100) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0"}
        down = _factory(tmp_path, "export", "f", "--format", "hf", "--output", "out4", "--push", "me/f-data", **env)
        assert down.returncode == 1 and "HTTP 500" in down.stderr and "hf upload me/f-data" in down.stderr, down.stderr
        assert (tmp_path / "out4" / "README.md").is_file() and hub.files["me/f-data"] == {}


def test_push_refuses_before_writing_offline_without_token_or_with_a_bad_id(small_lake, tmp_path):
    cases = [
        ({"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test"}, "me/d", "HF_HUB_OFFLINE is set"),
        ({}, "me/d", "no Hugging Face token"),
        ({"HF_TOKEN": "hf_test"}, "not-a-repo-id", "expected a Hub dataset id USER/NAME"),
        ({"HF_TOKEN": "hf_test"}, "me/../x", "expected a Hub dataset id USER/NAME"),
    ]
    for env, repo, message in cases:
        done = _factory(tmp_path, "export", "f", "--format", "hf", "--output", "out", "--push", repo, **env)
        assert done.returncode == 2 and message in done.stderr, (env, repo, done.stderr)
        assert not (tmp_path / "out").exists()  # refused before anything was written
    flag = _factory(tmp_path, "export", "f", "--output", "x.jsonl", "--push", "me/d")
    assert flag.returncode == 2 and "--push: only with --format hf" in flag.stderr
