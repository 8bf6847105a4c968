"""factory/cards.py without a flow: shards, size categories, refusals, a card without a run."""

from __future__ import annotations

import pytest

from factory import stages
from factory.cards import size_category, write_hf_folder
from storage import Lake
from storage.errors import BadInput
from tests.factory.test_funnel import TEACHER, build_lake, recipe


def test_shards_hold_every_row_in_order_and_load_as_one_split(tmp_path):
    from datasets import load_dataset

    build_lake(tmp_path / "s")
    with Lake.open(str(tmp_path / "s")) as lake:
        lake.save_dataset("f", stages.dataset_sql(recipe(), teacher=TEACHER, sources=["src"]), run_id="run-f")  # 2 rows
        saved = lake.read_dataset("f").to_pylist()
        info = write_hf_folder(lake, "f", None, tmp_path / "out", shard_rows=1)  # one row a shard
    assert info == {"name": "f", "version": 1, "rows": 2, "shards": 2, "path": str(tmp_path / "out")}
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert load_dataset(str(tmp_path / "out"))["train"].to_list() == saved
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: other" in card and "`?` (unknown)" in card  # no run row in this lake: said, not invented
    assert "No seed set" in card and "No problem of this dataset's sources matched" in card


def test_output_must_be_a_new_or_empty_folder_and_a_failure_leaves_nothing(tmp_path):
    build_lake(tmp_path / "s")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    with Lake.open(str(tmp_path / "s")) as lake:
        for out, msg in ((tmp_path / "full", "not empty"), (tmp_path / "file", "not a folder"), (tmp_path / "no" / "x", "no folder")):
            with pytest.raises(BadInput, match=msg):
                write_hf_folder(lake, "f", None, out)
        with pytest.raises(BadInput, match="does not exist"):
            write_hf_folder(lake, "f", None, tmp_path / "new")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full", "s"]  # no temporary folder left behind


@pytest.mark.parametrize(("rows", "label"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M"), (10**7, "10M<n<100M")])
def test_size_categories_follow_the_hub(rows, label):
    assert size_category(rows) == label
