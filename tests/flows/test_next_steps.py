"""The run command's closing lines: the dataset, one of its rows as saved, and next commands
that carry the run's store (fast; the real quickstart run is in test_run_cli.py)."""

import io
import shlex

from rich.console import Console

from flows.next_steps import VERDICTS_SQL, print_next_steps
from storage import Lake


def closing_lines(summary: dict, store: str) -> list[str]:
    buf = io.StringIO()
    print_next_steps(Console(file=buf, width=80, soft_wrap=True), summary, store=store)
    return buf.getvalue().splitlines()


def test_shows_a_saved_row_and_commands_for_the_same_store(tmp_path):
    store = str(tmp_path / "my store")  # a space: the commands must quote it
    with Lake.open(store) as lake:
        rows = [{"sample_id": f"s{i}", "problem_id": f"p{i}", "answer": f"line one\n[bold]{i}[/bold] " + "x" * 300}
                for i in range(3)]
        lake.commit("samples", rows, batch_key="a", run_id="r")
        lake.commit("problems", [{"problem_id": f"p{i}", "problem": f"What is {i} + {i}?"} for i in range(3)], batch_key="b", run_id="r")
        v1 = lake.save_dataset("sums", "SELECT problem, answer FROM samples JOIN problems USING (problem_id) ORDER BY sample_id")
        lake.commit("samples", [{"sample_id": "s9", "problem_id": "p0", "answer": "later"}], batch_key="c", run_id="r")
    lines = closing_lines({"dataset": {"name": "sums", "version": v1.version, "rows": 3, "new": True}}, store)
    assert lines[0] == "dataset sums v1: 3 rows"
    # the version's first row, on one line, markup shown as written, cut to a glimpse
    assert lines[1].startswith("one accepted sample: What is 0 + 0? -> line one [bold]0[/bold] xxx") and lines[1].endswith("...")
    assert len(lines[1]) < 260
    assert lines[2] == f"report: factory report --output report.html --store {shlex.quote(store)}"
    assert shlex.split(lines[3].removeprefix("next: ")) == ["factory", "sql", VERDICTS_SQL, "--store", store]
    assert shlex.split(lines[4]) == ["factory", "export", "sums", "--format", "jsonl", "--output", "sums.jsonl", "--store", store]


def test_an_empty_dataset_points_at_the_verdicts(tmp_path):
    store = str(tmp_path / "store")
    with Lake.open(store) as lake:
        v = lake.save_dataset("none", "SELECT sample_id FROM samples")
    lines = closing_lines({"dataset": {"name": "none", "version": v.version, "rows": 0, "new": False}}, store)
    assert lines[0] == "dataset none v1: 0 rows (unchanged)"
    assert lines[1].startswith("no accepted sample; why each was rejected: factory sql ") and len(lines) == 2
    assert closing_lines({"dataset": None}, store) == []
