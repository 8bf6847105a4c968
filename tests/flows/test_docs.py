"""The docs match the code: docs/cli.md is the real --help, and the README lists every command."""

import re
from pathlib import Path

import typer

from flows.cli import app, render_help

ROOT = Path(__file__).resolve().parents[2]


def test_cli_md_is_the_current_help():
    assert (ROOT / "docs" / "cli.md").read_text() == render_help(), (
        "docs/cli.md is stale; regenerate it: "
        "python -c \"from flows.cli import render_help; print(render_help(), end='')\" > docs/cli.md"
    )


def test_readme_lists_every_command_with_its_help_line():
    readme = (ROOT / "README.md").read_text()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        row = re.search(rf"^\| `factory {name}\b[^|]*(?:\\\|[^|]*)*\| (?P<text>.*) \|$", readme, re.M)
        assert row, f"README's CLI table has no row for factory {name}"
        assert row["text"] == cmd.help.strip().splitlines()[0], f"README's line for {name} differs from its --help"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    bash scripts/test.sh\n" in readme and "exec bash scripts/test.sh" in ci
