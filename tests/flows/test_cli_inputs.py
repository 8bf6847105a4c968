"""The CLI against hostile inputs: output paths that are devices, links, folders or in missing
folders; ingests that repeat ids; inputs that used to end in a traceback. Each must end in one
line and exit 2 (or do the documented safe thing), and leave what it was pointed at unchanged."""

import json
import os
import stat
from pathlib import Path

import pytest

from storage import Lake


@pytest.fixture
def dataset(cli, tmp_path):
    """A lake with 3 problems and the dataset `d` over them."""
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"problem": f"What is {i}+{i}?"}) + "\n" for i in range(3)))
    assert cli("ingest", str(seed), "--table", "problems").exit_code == 0
    assert cli("snapshot", "d", "SELECT problem_id, problem FROM problems").exit_code == 0
    return "d"


def _device(tmp_path: Path) -> Path:
    """A character device to write to: our own null device (root may make one), else /dev/null
    (which a non-root user cannot replace, so the test cannot harm it)."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return Path("/dev/null")
    return node


def _one_line_refusal(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _no_partial_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if "partial" in p.name]


def test_export_to_a_device_is_refused_and_the_node_stays_a_device(cli, dataset, tmp_path):
    dev = _device(tmp_path)
    line = _one_line_refusal(cli("export", dataset, "--output", str(dev)))
    assert f"output {dev}: is a character device" in line
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    _no_partial_files(tmp_path)


def test_export_to_a_symlink_is_refused_and_link_and_target_stay(cli, dataset, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    line = _one_line_refusal(cli("export", dataset, "--output", str(link)))
    assert "is a symbolic link" in line and "give the link's target" in line
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "keep me\n"
    _no_partial_files(tmp_path)


def test_export_to_a_directory_or_a_fifo_is_refused(cli, dataset, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert "is a directory" in _one_line_refusal(cli("export", dataset, "--output", str(folder)))
    assert folder.is_dir() and not list(folder.iterdir())
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "is a FIFO" in _one_line_refusal(cli("export", dataset, "--output", str(fifo)))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_export_into_a_missing_folder_is_refused_and_creates_nothing(cli, dataset, tmp_path):
    out = tmp_path / "no" / "such" / "x.jsonl"
    line = _one_line_refusal(cli("export", dataset, "--output", str(out)))
    assert f"the folder {out.parent} does not exist" in line
    assert not (tmp_path / "no").exists()


def test_export_replaces_a_regular_file_keeping_its_mode(cli, dataset, tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    out.chmod(0o640)
    r = cli("export", dataset, "--output", str(out))
    assert r.exit_code == 0, r.stderr
    assert len(out.read_text().splitlines()) == 3 and stat.S_IMODE(out.stat().st_mode) == 0o640
    _no_partial_files(tmp_path)


def test_every_command_that_writes_a_file_refuses_a_device_and_a_symlink(cli, dataset, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": 1, "problem": "a b c d e f", "completion": "\\boxed{2}", "reference_answer": "2"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "fine one"}\n{"problem": 3.5e400}\n')
    target = tmp_path / "target.txt"
    target.write_text("keep\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    dev = _device(tmp_path)
    for out in (dev, link):
        commands = [
            ["verify", str(rows), "--verifier", "math", "--output", str(out)],
            ["dedup", str(rows), "--column", "problem", "--output", str(out)],
            ["decontaminate", str(rows), "--benchmarks", "gsm8k", "--output", str(out)],
            ["report", "--output", str(out)],
            ["ingest", str(bad), "--table", "problems", "--skip-bad-rows", "--rejects", str(out)],
        ]
        for args in commands:
            line = _one_line_refusal(cli(*args))
            assert f"output {out}: is a" in line, (args, line)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert link.is_symlink() and target.read_text() == "keep\n"
    with Lake.open(str(tmp_path / "store")) as lake:  # the ingest stopped before its commit
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 3
    _no_partial_files(tmp_path)


def test_rejects_into_a_missing_folder_fail_before_anything_is_committed(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "good"}\n{"problem": ["not", "text"]}\n')
    line = _one_line_refusal(cli("ingest", str(bad), "--table", "problems", "--skip-bad-rows", "--rejects", str(tmp_path / "nope" / "r.jsonl")))
    assert "does not exist" in line
    with Lake.open(str(tmp_path / "store")) as lake:
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 0
    # The default rejects path beside an input in a folder we cannot write: also before the commit.
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / "bad.jsonl").write_text(bad.read_text())
        ro.chmod(0o555)
        _one_line_refusal(cli("ingest", str(ro / "bad.jsonl"), "--table", "problems", "--skip-bad-rows"))


# -- ingest: one row per id --------------------------------------------------------------------


def _count(tmp_path: Path, table: str, column: str) -> tuple[int, int]:
    with Lake.open(str(tmp_path / "store")) as lake:
        row = lake.query(f"SELECT count(*) AS n, count(DISTINCT {column}) AS d FROM {table}").to_pylist()[0]
    return row["n"], row["d"]


def test_ingest_commits_one_row_per_problem_id(cli, tmp_path):
    f = tmp_path / "twice.jsonl"
    f.write_text("".join(json.dumps({"problem": p}) + "\n" for p in ["same", "other", "same"]))
    r = cli("ingest", str(f), "--table", "problems")
    assert r.exit_code == 0, r.stderr
    assert "skipped 1 duplicate problem_id(s): 1 repeated in" in r.stderr and "ingested 2 row(s)" in r.stderr
    assert _count(tmp_path, "problems", "problem_id") == (2, 2)

    many = tmp_path / "many.jsonl"  # the tester's case, smaller: thousands of copies of one row
    many.write_text((json.dumps({"problem": "copied"}) + "\n") * 5000)
    r = cli("ingest", str(many), "--table", "problems")
    assert r.exit_code == 0 and "4999 repeated" in r.stderr and "ingested 1 row(s)" in r.stderr
    assert _count(tmp_path, "problems", "problem_id") == (3, 3)

    overlap = tmp_path / "overlap.jsonl"  # a new file: two ids already stored, one new
    overlap.write_text("".join(json.dumps({"problem": p}) + "\n" for p in ["other", "new", "copied"]))
    r = cli("ingest", str(overlap), "--table", "problems")
    assert r.exit_code == 0 and "2 already in problems" in r.stderr and "ingested 1 row(s)" in r.stderr
    assert _count(tmp_path, "problems", "problem_id") == (4, 4)


def test_ingest_commits_one_row_per_sample_id(cli, tmp_path):
    rows = [{"sample_id": s, "problem": "1+1?", "completion": "2"} for s in ("a", "b", "a")]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("ingest", str(f), "--table", "samples")
    assert r.exit_code == 0 and "skipped 1 duplicate sample_id(s)" in r.stderr
    g = tmp_path / "more.jsonl"
    g.write_text("".join(json.dumps({**rows[0], "sample_id": s}) + "\n" for s in ("b", "c")))
    assert "ingested 1 row(s)" in cli("ingest", str(g), "--table", "samples").stderr
    assert _count(tmp_path, "samples", "sample_id") == (3, 3)


# -- what used to end in a traceback -------------------------------------------------------------


def test_deeply_nested_json_and_huge_numbers_name_their_line(cli, tmp_path):
    f = tmp_path / "hostile.jsonl"
    f.write_text(
        json.dumps({"problem": "fine"}) + "\n"
        + '{"problem": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
        + '{"problem": "x", "difficulty": ' + "9" * 5000 + "}\n"
        + '{"problem": "y", "difficulty": ' + "9" * 400 + "}\n"
    )
    r = cli("ingest", str(f), "--table", "problems")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{f}:2: invalid JSON (nested too deeply)" in r.stderr
    assert f"{f}:3: invalid JSON (Exceeds the limit (4300 digits)" in r.stderr
    assert f"{f}:4: field 'difficulty': expected a finite number" in r.stderr
    big = tmp_path / "big.jsonl"  # beyond the int64 column, within Python's limit
    big.write_text(json.dumps({"problem": "1+1?", "completion": "2", "prompt_tokens": 2**70}) + "\n")
    r = cli("ingest", str(big), "--table", "samples")
    assert r.exit_code == 2 and "field 'prompt_tokens': expected an integer that fits 64 bits" in r.stderr
    for cmd in (["dedup", str(f), "--column", "problem", "--output", str(tmp_path / "o.jsonl")],
                ["decontaminate", str(f), "--benchmarks", "gsm8k", "--output", str(tmp_path / "o.jsonl")]):
        r = cli(*cmd)
        assert r.exit_code == 2 and "Traceback" not in r.stderr and f"{f}:2: invalid JSON (nested too deeply)" in r.stderr


def test_store_that_is_a_file_is_bad_input(cli, tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"problem": "x"}) + "\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a lake\n")
    for store in (a_file, a_file / "below"):
        line = _one_line_refusal(cli("ingest", str(seed), "--table", "problems", "--store", str(store)))
        assert f"cannot create the lake at store {store}" in line
    assert a_file.read_text() == "not a lake\n"


def test_run_refuses_a_folder_a_dataset_path_and_duplicate_keys(cli, tmp_path):
    line = _one_line_refusal(cli("run", str(tmp_path)))
    assert f"{tmp_path}: is a folder; expected a recipe file" in line
    recipe = tmp_path / "r.yaml"
    base = "name: r\nquestions:\n  - {source: generator, generator: arithmetic, count: 2}\n"
    recipe.write_text(base + "dataset: {name: ../../evil/x}\n")
    line = _one_line_refusal(cli("run", str(recipe)))
    assert f"{recipe}:4: dataset.name: '../../evil/x': expected a name" in line
    recipe.write_text(base + "batch_size: 8\nbatch_size: 9\n")
    line = _one_line_refusal(cli("run", str(recipe)))
    assert f"{recipe}:5: duplicate key 'batch_size' (first at line 4)" in line


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "jsonl", "parquet"])
def test_sql_output_refuses_devices_links_and_folders(cli, dataset, tmp_path, fmt):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    dev = _device(tmp_path)
    for bad in (link, dev, tmp_path, tmp_path / "missing" / "out"):
        _one_line_refusal(cli("sql", "SELECT * FROM problems", "--format", fmt, "--output", str(bad)))
    assert link.is_symlink() and target.read_text() == "keep"
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    out = tmp_path / f"out.{fmt}"
    r = cli("sql", "SELECT * FROM problems", "--format", fmt, "--output", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.stat().st_size > 0
    _no_partial_files(tmp_path)
