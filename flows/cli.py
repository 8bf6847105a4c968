"""The `factory` command: every subcommand registered on `app`, in the order `--help` lists them.

    factory ingest recipes/seeds/gsm8k_train_200.jsonl --table problems --map problem=question
    factory sql "SELECT source, count(*) FROM problems GROUP BY 1"
    factory --help

The commands are plain functions in their own modules (flows/data.py, run.py, train.py,
evaluate.py, export_model.py, report.py, view.py); what they share (--store, --catalog, the stderr console, the exit
codes) is in flows/options.py, so no command module imports this one. Each imports its heavy
libraries (torch, Prefect) inside the command body, so `factory --help` stays fast.

Exit codes: 0 ok, 1 the job failed, 2 bad input (the message names the file, row or field).
Data goes to stdout; messages and progress go to stderr.
"""

from __future__ import annotations

import typer

from flows import data, evaluate, export_model, report, run, train, view

app = typer.Typer(
    name="factory",
    help="Reasoning Factory: verified long chain-of-thought data in a DuckLake lake.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

# The lake and files of rows.
app.command()(data.ingest)
app.command()(data.sql)
app.command()(data.tables)
app.command()(data.snapshot)
app.command()(data.export)
app.command()(data.verify)
app.command()(data.dedup)
app.command()(data.decontaminate)
app.command()(data.maintain)
# The generation job on Prefect.
app.command()(run.run)
app.command()(run.runs)
app.command()(run.schedule)
app.command()(run.serve)
# The student: train, evaluate, report.
app.command()(train.train)
app.command("eval")(evaluate.eval_)
app.command("export-model")(export_model.export_model)
app.command()(report.report)
app.command()(view.view)


def render_help() -> str:
    """Every command's --help as Markdown: docs/cli.md is this text (a test keeps them equal).

        python -c "from flows.cli import render_help; print(render_help(), end='')" > docs/cli.md
    """
    from typer.testing import CliRunner

    runner = CliRunner()

    def help_of(*args: str) -> str:
        # A fixed width, so the text does not depend on the terminal it is made in.
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100", "TERM": "dumb"}, terminal_width=100)
        return result.stdout.rstrip() + "\n"

    names = list(typer.main.get_command(app).commands)
    parts = ["# The `factory` command\n", "Generated from `--help` by `flows.cli.render_help`; do not edit by hand.\n"]
    parts.append("```\n$ factory --help\n" + help_of() + "```\n")
    for name in names:
        parts.append(f"## factory {name}\n\n```\n$ factory {name} --help\n" + help_of(name) + "```\n")
    return "\n".join(parts)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
