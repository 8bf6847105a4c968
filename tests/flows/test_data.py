"""`factory export --format hf` (flows/data.py, factory/cards.py): a flow's dataset as a Hugging
Face folder that `datasets.load_dataset` loads as is, with a card whose numbers are the lake's."""

from __future__ import annotations

import json

import pytest
import yaml

from storage import Lake
from tests.flows.test_pipeline import server, write_recipe  # noqa: F401  (server: the scripted teacher fixture)


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
