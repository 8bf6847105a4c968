"""What `factory run` made, and what to type next: the closing lines of the run command.

    from flows.next_steps import print_next_steps
    print_next_steps(console, summary, store=None, catalog=None)   # summary: run_recipe's

prints, for the quickstart:

    dataset quickstart v1: 18 rows
    one accepted sample: What is 9 + 1? -> 9 + 1 is 10, so the final answer is 10.
    report: factory report --output report.html
    next: factory sql 'SELECT "check", status, count(*) AS n FROM verdicts GROUP BY ALL ORDER BY ALL'
          factory export quickstart --format jsonl --output quickstart.jsonl

The sample is the dataset version's first row, read back from the lake (so it is what the
dataset holds, not what the run meant to save). Every suggested command carries the run's
`--store` / `--catalog`, so it reads the same lake. A dataset with no rows gets the verdict
query as the thing to look at instead of a sample.
"""

from __future__ import annotations

import shlex

from rich.console import Console

from storage import Lake

# Why samples were rejected: every check's verdicts by status.
VERDICTS_SQL = 'SELECT "check", status, count(*) AS n FROM verdicts GROUP BY ALL ORDER BY ALL'
SAMPLE_CHARS = 200  # a long trace is cut: the line is a glimpse, `factory export` has the rest


def _one_line(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= SAMPLE_CHARS else flat[: SAMPLE_CHARS - 3] + "..."


def first_row(name: str, version: int, store: str | None, catalog: str | None) -> dict | None:
    """The first row of dataset `name` at `version`, or None when it has none."""
    with Lake.open(store, catalog, create=False) as lake:
        for batch in lake.dataset_reader(name, version, batch_size=1):  # not the whole dataset
            if batch.num_rows:
                return batch.slice(0, 1).to_pylist()[0]
    return None


def lake_flags(store: str | None, catalog: str | None) -> str:
    """` --store S --catalog C` for the lake options a command was given, quoted for a shell."""
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in (("--store", store), ("--catalog", catalog)) if value)


def next_commands(name: str, store: str | None, catalog: str | None) -> dict[str, str]:
    """The follow-up commands for dataset `name`, with the same lake options as the run."""
    lake = lake_flags(store, catalog)
    return {
        "report": f"factory report --output report.html{lake}",
        "sql": f"factory sql {shlex.quote(VERDICTS_SQL)}{lake}",
        "export": f"factory export {shlex.quote(name)} --format jsonl --output {shlex.quote(name + '.jsonl')}{lake}",
    }


def print_next_steps(console: Console, summary: dict, store: str | None = None, catalog: str | None = None) -> None:
    """The run's dataset (version, rows, one accepted sample) and the commands to try next."""
    ds = summary.get("dataset") or {}
    if not ds:
        return
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731 - model text is not markup
    say(f"dataset {ds['name']} v{ds['version']}: {ds['rows']} rows" + ("" if ds.get("new") else " (unchanged)"))
    commands = next_commands(ds["name"], store, catalog)
    row = first_row(ds["name"], ds["version"], store, catalog) if ds["rows"] else None
    if row is None:
        say(f"no accepted sample; why each was rejected: {commands['sql']}")
        return
    say(f"one accepted sample: {_one_line(row.get('problem'))} -> {_one_line(row.get('answer'))}")
    say(f"report: {commands['report']}")
    say(f"next: {commands['sql']}")
    say(f"      {commands['export']}")
