"""The benchmark registry: every entry loads offline from the package, with the row counts and
licences of the upstream data README, byte for byte as copied, and unknown names are BadInput."""

import hashlib
from importlib import resources

import pytest

from factory.benchmarks import BENCHMARKS, get, load, parse_names
from storage.errors import BadInput

# Each file as the project's development data folder holds it: rows and licence from its README,
# and the SHA-256 of its bytes (sha256sum there, when the copies were made). Recorded here so the
# check runs in a clean clone: tests never read outside the repository.
UPSTREAM = {
    "math500.jsonl": (500, "MIT", "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
    "aime2024.jsonl": (30, "MIT", "a0f7eb9915f60f70fdaa9375414869d101eab639a67acf652cde98166efcd1cc"),
    "aime2025.jsonl": (30, "MIT", "6caa6dcafd9a6ba06babe30e43e9a76a8272c12d2a84e479601754c1c701742c"),
    "amc23.jsonl": (40, "MIT", "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4"),
    "gsm8k_test.jsonl": (1319, "MIT", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
    "minerva_math.jsonl": (272, "upstream", "e04ec2bc1d8f80a0091b4b1989f1ffb366f3583f5bae381546a066d4ccc26e3d"),
    "olympiadbench.jsonl": (675, "upstream", "8016961fd178845f84b0b6c03afb2c9c8638f7e0b692142608970e5c9faaad2f"),
    "humaneval.jsonl.gz": (164, "MIT", "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
    "mbpp.jsonl": (974, "CC-BY-4.0", "0b5e07b5b40fedd01c57b7c9177b79f8b2eebd72c304c928605d91a7237d2f33"),
}

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


def test_counts_and_licences_match_the_upstream_readme():
    assert sorted(b.file for b in BENCHMARKS.values()) == sorted(UPSTREAM)
    for name, b in BENCHMARKS.items():
        rows, licence, _ = UPSTREAM[b.file]
        assert (b.rows, b.licence) == (rows, licence), name


def test_the_shipped_files_are_unchanged_copies():
    for b in BENCHMARKS.values():
        shipped = resources.files("factory.benchmarks").joinpath(b.file).read_bytes()
        assert hashlib.sha256(shipped).hexdigest() == UPSTREAM[b.file][2], b.file


def test_the_package_readme_has_a_licence_line_per_file():
    readme = resources.files("factory.benchmarks").joinpath("README.md").read_text()
    for b in BENCHMARKS.values():
        line = next(x for x in readme.splitlines() if x.startswith(f"- {b.file} "))
        assert line.endswith(f"— {b.licence}") and str(b.rows) in line, line
