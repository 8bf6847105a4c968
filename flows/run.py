"""`factory run`, `factory runs`, `factory schedule`, `factory serve`: the main job on Prefect.

    factory run recipes/quickstart.yaml                  # resumes by default; --limit N for a trial
    factory run recipes/quickstart.yaml --preview 8      # 8 problems, then the whole recipe's projection
    factory runs                                         # past runs with their funnel counts
    factory schedule recipes/r1_math_vllm.yaml --cron "0 3 * * *"
    factory serve                                        # runs the scheduled deployments

Plain functions: flows/cli.py registers them on `app`. Prefect is imported inside the
commands, so `factory --help` stays fast. Prefect's own log lines go to
PREFECT_HOME/logs/factory.log unless --verbose (flows/server.py): the rich progress display shows
what runs, and a failure is one line that names that file. Without PREFECT_API_URL, `run` and
`schedule` use Prefect's ephemeral server and `serve` starts a whole Prefect server (it has the
scheduler) on 127.0.0.1, over the same database in PREFECT_HOME, and stops it when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.options import Catalog, Store, err, run_job
from flows.server import SERVER_LOG_NAME, LocalServer, Session, check_api, connect, prefect_session
from storage import BadInput, FactoryError, Lake, LakeBusy

FLOW_NAME = "factory-run"


@contextlib.contextmanager
def _failures_name_the_log(session: Session):
    """A failed job's one line names the file that holds Prefect's log of it (not with --verbose:
    that log went to stderr). Bad input and a busy lake keep their own message and exit code."""
    from factory.teachers import TeacherError

    try:
        yield
    except (BadInput, LakeBusy):
        raise
    except (FactoryError, TeacherError) as exc:  # TeacherError: the teacher is down or refuses the recipe
        raise FactoryError(str(exc) if session.verbose else f"{exc}; details in {session.log}") from None


class RichProgress:
    """The flow's stages as rich progress bars on stderr."""

    def __init__(self, console: Console):
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console, transient=False)
        self.tasks: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, stage: str, total: int | None = None) -> None:
        self.totals[stage] = total
        if stage in self.tasks:
            self.bar.reset(self.tasks[stage], total=total, note="")
        else:
            self.tasks[stage] = self.bar.add_task(stage, total=total, note="")

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self.tasks and n:
            self.bar.advance(self.tasks[stage], n)

    def end(self, stage: str, note: str = "") -> None:
        if stage in self.tasks:
            total = self.totals.get(stage) or 1
            self.bar.update(self.tasks[stage], note=note, total=total, completed=total)


def funnel_table(summary: dict) -> Table:
    table = Table(title=f"run {summary.get('run_id', '')}", title_justify="left")
    stages = [f["stage"] for f in summary.get("funnel", [])]
    table.add_column("source")
    for s in stages:
        table.add_column(s, justify="right")
    for source, c in (summary.get("by_source") or {}).items():
        table.add_row(source, *[str(c.get(s, 0)) for s in stages])
    table.add_row("all", *[str(f["count"]) for f in summary.get("funnel", [])], style="bold")
    return table


def _fmt(q: str, x: float | None) -> str:
    if x is None:
        return "?"
    if q == "cost_usd":
        return f"${x:,.4f}"
    if q == "wall_s":
        return f"{x:,.1f} s"
    return f"{x:,.0f}"


def preview_table(projection: dict) -> Table:
    """factory/preview.py's projection: each quantity as the preview measured it, projected for
    the whole recipe with its 95% interval, and what a full run still does."""
    table = Table(title=f"projection for all {projection['problems']} problems from a preview of {projection['previewed']} "
                        f"({projection['interval']})", title_justify="left")
    for c in ("", "preview", "whole recipe", "95% interval", "still to do"):
        table.add_column(c, justify="left" if not c else "right")
    names = {"requests": "requests", "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
             "cost_usd": "cost", "wall_s": "wall (sample + verify)", "accepted": "accepted samples"}
    for q, name in names.items():
        t = projection["totals"][q]
        interval = "?" if t["low"] is None else f"{_fmt(q, t['low'])} - {_fmt(q, t['high'])}"
        table.add_row(name, _fmt(q, t["preview"]), _fmt(q, t["value"]), interval, _fmt(q, t["rest"]))
    for source, r in projection["by_source"].items():
        expected = "?" if r["expected"] is None else f"{r['expected']:,.0f} ({r['expected_low']:,.0f} - {r['expected_high']:,.0f})"
        table.add_row(f"  accepted: {source}", f"{r['accepted']} of {r['samples']:.0f}", expected,
                      f"yield {r['yield_low']:.0%} - {r['yield_high']:.0%}", f"{r['problems'] - r['previewed']} problems")
    return table


def _go_on(yes: bool) -> bool:
    """After a preview: --yes goes on; a terminal is asked; anything else stops."""
    if yes:
        return True
    if not sys.stdin.isatty():
        return False
    return typer.confirm("continue with the full run?", default=False, err=True)


def run(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML (see recipes/ and docs/recipes.md).")],
    store: Store = None,
    catalog: Catalog = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use at most N problems (a trial run).")] = None,
    preview: Annotated[int | None, typer.Option(
        "--preview", min=1, help="Sample and verify only N problems (spread over the sources), print the projection for the whole "
        "recipe (requests, tokens, cost, wall time, accepted samples, with 95% intervals), then stop; the full run later does not "
        "send the preview's requests again. On a terminal it asks whether to go on with the full run.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="With --preview: go on with the full run without asking.")] = False,
    format: Annotated[str, typer.Option("--format", help="Summary on stdout: table or json (with --preview: one line per run).")] = "table",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own log lines.")] = False,
) -> None:
    """Generate: questions -> decontaminate -> sample -> verify + filter -> dedup -> dataset; resumes by default.

    Never asks anything without --preview (schedules and CI run it); the recipe's `budget`
    bounds what a run may spend."""
    if format not in ("table", "json"):
        err.print(f"error: --format {format!r}: expected table or json")
        raise typer.Exit(2)
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, soft_wrap=True, width=160)  # a pipe or file: do not cut column names

    def job() -> None:
        from factory.recipe import load_recipe
        from flows.next_steps import lake_flags, print_next_steps
        from flows.pipeline import run_recipe

        load_recipe(recipe)  # bad recipes fail here, before Prefect starts a server
        with prefect_session(verbose) as session, _failures_name_the_log(session):
            connect(session)  # the server starts (or fails, in one line) before the progress display
            if preview:
                with RichProgress(err) as display:
                    first = run_recipe(str(recipe), store=store, catalog=catalog, limit=limit, on_progress=display, preview=preview)
                if format == "json":
                    typer.echo(json.dumps(first, sort_keys=True, default=str))
                else:
                    out.print(funnel_table(first))
                    out.print(preview_table(first["preview"]))
                if not _go_on(yes):
                    rest = f"factory run {shlex.quote(str(recipe))}{lake_flags(store, catalog)}" + (f" --limit {limit}" if limit else "")
                    err.print(f"preview only: `{rest}` runs the rest (the preview's samples are kept)", markup=False)
                    return
            with RichProgress(err) as display:
                summary = run_recipe(str(recipe), store=store, catalog=catalog, limit=limit, on_progress=display)
        if format == "json":
            typer.echo(json.dumps(summary, sort_keys=True, default=str))
            return
        out.print(funnel_table(summary))
        ds = summary.get("dataset") or {}
        rejects = ", ".join(f"{k} {v}" for k, v in (summary.get("rejects") or {}).items()) or "none"
        out.print(f"rejects by check: {rejects}")
        out.print(f"tokens: {summary['tokens']['prompt']} prompt + {summary['tokens']['completion']} completion; "
                  f"cost ${summary['cost_usd']:.4f}; "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in summary.get("seconds", {}).items()))
        if (cut := summary.get("truncation")) and cut["escalated"]:
            out.print(f"cut at max_tokens: {cut['length_cut']}; asked again with more tokens: {cut['escalated']}, "
                      f"of which {cut['escalation_recovered']} finished")
        elif cut:
            out.print(f"cut at max_tokens: {cut['length_cut']} (none asked again: a recipe's `truncation:` asks again with more tokens)")
        if summary.get("budget_reached"):
            out.print("budget reached: some requests were not sent (raise the budget and run again to continue)")
        if ds:
            print_next_steps(out, summary, store, catalog)

    run_job(job)


def runs(
    store: Store = None,
    catalog: Catalog = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show the newest N runs.")] = 20,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Past runs with their funnel counts."""

    def job() -> None:
        with Lake.open(store, catalog, read_only=True) as lake:  # answers while a run writes
            rows = lake.query(
                "SELECT run_id, arg_max(status, created_at) AS status, arg_max(counts, created_at) AS counts, "
                "min(started_at) AS started_at, max(finished_at) AS finished_at, any_value(recipe) AS recipe, "
                "max(cost_usd) AS cost_usd FROM runs GROUP BY run_id ORDER BY min(created_at) DESC LIMIT ?", [limit],
            ).to_pylist()
        if format == "json":
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table()
        for c in ("run", "status", "started", "problems", "samples", "verified", "dataset", "cost $"):
            table.add_column(c, justify="right" if c not in ("run", "status", "started") else "left")
        for r in rows:
            counts = json.loads(r["counts"]) if r["counts"] else {}
            f = {x["stage"]: x["count"] for x in counts.get("funnel", [])}
            table.add_row(r["run_id"], r["status"], str(r["started_at"])[:19], *[str(f.get(s, "")) for s in ("problems", "samples", "verified", "dataset")],
                          f"{r['cost_usd']:.4f}" if r["cost_usd"] is not None else "")
        Console(highlight=False).print(table)

    run_job(job)


def deployment_for(recipe: Path, cron: str, name: str | None, store: str | None, catalog: str | None, timezone: str = "UTC"):
    """The Prefect deployment of `factory run RECIPE` on a cron schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.pipeline import factory_run

    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except Exception as exc:
        raise BadInput(f"--cron {cron!r}: expected a cron expression such as '0 3 * * *' ({str(exc).splitlines()[0]})") from None
    params = {"recipe_path": str(recipe.resolve()), "store": store, "catalog": catalog}
    return factory_run.to_deployment(name=name or recipe.stem, schedule=schedule, parameters=params,
                                     description=f"factory run {recipe}")


def schedule(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML to run on the schedule.")],
    cron: Annotated[str, typer.Option("--cron", help='When to run, e.g. "0 3 * * *" (03:00 every day).')],
    name: Annotated[str | None, typer.Option("--name", help="Deployment name [default: the recipe file's stem].")] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="Timezone of the cron expression.")] = "UTC",
    store: Store = None,
    catalog: Catalog = None,
) -> None:
    """Create (or update) a Prefect deployment that runs a recipe on a cron schedule; `factory serve` runs it."""

    def job() -> None:
        from factory.recipe import load_recipe

        load_recipe(recipe)
        with prefect_session(False) as session, _failures_name_the_log(session):
            dep = deployment_for(recipe, cron, name, store, catalog, timezone)
            connect(session)  # without PREFECT_API_URL: the database in PREFECT_HOME, which `factory serve` reads
            dep_id = dep.apply()
        err.print(f"deployment {FLOW_NAME}/{dep.name} ({dep_id}) runs {recipe} at '{cron}' {timezone}; "
                  "`factory serve` runs it (restart a running one to include it)", markup=False)

    run_job(job)


def scheduled_deployments() -> list:
    """The deployments `factory schedule` created, rebuilt so this process can serve them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows.pipeline import factory_run

    with get_client(sync_client=True) as client:
        found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    out = []
    for d in found:
        out.append(factory_run.to_deployment(name=d.name, schedules=[s.schedule for s in d.schedules],
                                             parameters=d.parameters, description=d.description))
    return out


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the server we own is stopped either
    way (while deployments are served, Prefect's runner handles SIGTERM itself, gracefully)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def serve(verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own log lines.")] = False) -> None:
    """Run the scheduled recipes (every deployment made by `factory schedule`) until stopped.

    Without PREFECT_API_URL it starts a Prefect server on 127.0.0.1 (its UI shows the runs), over
    the database `factory schedule` wrote to, and stops it on Ctrl-C or SIGTERM.
    """

    def job() -> None:
        from prefect import serve as prefect_serve
        from prefect.settings import get_current_settings, temporary_settings

        try:
            with _sigterm_stops(), prefect_session(verbose) as session, _failures_name_the_log(session):
                settings = get_current_settings()
                own = None if settings.api.url else LocalServer(session.log.with_name(SERVER_LOG_NAME),
                                                                 settings.server.ephemeral.startup_timeout_seconds)
                with own or contextlib.nullcontext():
                    if own is None:
                        check_api(settings.api.url)
                    api, ui = (own.api_url, own.ui_url) if own else (settings.api.url, settings.ui_url)
                    # Flow runs are subprocesses of Prefect's runner: they get the API URL from the
                    # settings, and keep their log lines for the API (the UI) unless --verbose.
                    quiet = {} if verbose else {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}
                    with temporary_settings(updates={"api.url": api}), _environ(**quiet):
                        deps = scheduled_deployments()
                        if not deps:
                            raise BadInput("no scheduled recipes: create one with `factory schedule RECIPE.yaml --cron ...`")
                        err.print(f"serving {len(deps)} scheduled recipe(s): {', '.join(d.name for d in deps)}; "
                                  f"runs in the Prefect UI at {ui} (Ctrl-C stops)", markup=False)
                        prefect_serve(*deps, print_starting_message=False)
        except KeyboardInterrupt:
            pass
        except SystemExit as exc:  # Prefect's runner exits 0 on a SIGTERM that comes while it stops
            if exc.code not in (0, None):
                raise
        err.print("stopped", markup=False)

    run_job(job)
