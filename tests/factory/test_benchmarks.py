"""The benchmark registry: every entry loads offline from the package, with the row counts and
licences that ../shared/data/README.md gives, and unknown names are BadInput."""

import re
from importlib import resources
from pathlib import Path

import pytest

from factory.benchmarks import BENCHMARKS, get, load, parse_names
from storage.errors import BadInput

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "README.md").exists(), reason="../shared/data is not beside this checkout")

COUNTS = {"math500": 500, "aime2024": 30, "aime2025": 30, "amc23": 40, "gsm8k": 1319,
          "minerva": 272, "olympiadbench": 675, "humaneval": 164, "mbpp": 974}


def test_the_registry_holds_the_nine_benchmarks():
    assert list(BENCHMARKS) == list(COUNTS)


@pytest.mark.parametrize("name", list(COUNTS))
def test_every_entry_loads_with_its_count_and_normalised_fields(name):
    items = load(name)
    assert len(items) == COUNTS[name] == BENCHMARKS[name].rows
    ids = [it["id"] for it in items]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)
    assert all(isinstance(it["problem"], str) and it["problem"].strip() for it in items)
    b = BENCHMARKS[name]
    if b.domain == "math":
        assert all(isinstance(it["answer"], str) and it["answer"] for it in items)
    else:
        assert all(it["answer"] is None and it["tests"] and it["solution"] for it in items)
    assert items[0]["problem"] in b.prompt(items[0])
    assert b.licence and b.source


def test_answers_are_normalised():
    assert load("gsm8k")[0]["answer"] == "18"  # the value after ####, not the worked solution
    assert load("amc23")[0]["answer"] == "27"  # a float 27.0 upstream
    assert load("math500")[0]["id"] == "test/precalculus/807.json"
    assert "\\boxed{}" in BENCHMARKS["math500"].prompt(load("math500")[0])
    mbpp = load("mbpp")[0]
    assert mbpp["tests"][0] in BENCHMARKS["mbpp"].prompt(mbpp)


def test_load_returns_fresh_dicts():
    load("aime2025")[0]["problem"] = "changed"
    assert load("aime2025")[0]["problem"] != "changed"


def test_unknown_names_are_bad_input_listing_the_known_ones():
    with pytest.raises(BadInput, match="math500.*mbpp"):
        load("math5000")
    with pytest.raises(BadInput, match="unknown benchmark 'nope'"):
        parse_names("math500,nope")
    assert parse_names("math500, gsm8k,math500") == ["math500", "gsm8k"]
    assert parse_names(None) == list(COUNTS)
    assert get("humaneval").tests_field == "test"


def _readme_table(text: str) -> dict[str, tuple[int, str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"[\w.]+\.jsonl(\.gz)?", cells[0]):
            rows[cells[0]] = (int(cells[1].split()[0]), cells[-1])
    return rows


@needs_data
def test_counts_and_licences_match_the_shared_data_readme():
    table = _readme_table((DATA / "README.md").read_text())
    for name, b in BENCHMARKS.items():
        rows, licence = table[b.file]
        assert (b.rows, b.licence) == (rows, licence), name


@needs_data
def test_the_shipped_files_are_unchanged_copies():
    for b in BENCHMARKS.values():
        shipped = resources.files("factory.benchmarks").joinpath(b.file).read_bytes()
        folder = "code" if b.domain == "code" else "math"
        assert shipped == (DATA / folder / b.file).read_bytes(), b.file


def test_the_package_readme_has_a_licence_line_per_file():
    readme = resources.files("factory.benchmarks").joinpath("README.md").read_text()
    for b in BENCHMARKS.values():
        line = next(l for l in readme.splitlines() if l.startswith(f"- {b.file} "))
        assert line.endswith(f"— {b.licence}") and str(b.rows) in line, line
