"""What every `factory` command shares: the lake options, the stderr console, the exit codes.

    from flows.options import Catalog, Store, err, run_job

    def tables(store: Store = None, catalog: Catalog = None) -> None:
        def job() -> None: ...
        run_job(job)

A command module imports this, never flows/cli.py: the CLI imports the command modules to
register their functions on `app`, so nothing imports back into it. Data goes to stdout;
messages and progress go to `err` (stderr).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from storage import BadInput, FactoryError, LakeBusy

err = Console(stderr=True, highlight=False, soft_wrap=True)

Store = Annotated[
    str | None,
    typer.Option(
        "--store", metavar="URI", help="Lake data location: a directory or s3://bucket/prefix [env FACTORY_STORE; default ./factory-store]."
    ),
]
Catalog = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        metavar="CATALOG",
        help="Lake catalog: a .ducklake file, sqlite:PATH or postgresql://... [env FACTORY_CATALOG; default <store>/catalog.ducklake].",
    ),
]


def run_job(job: Callable[[], None]) -> None:
    """Run a command body; map library errors to the documented exit codes.

    Exit codes: 0 ok, 1 the job failed (or the lake is busy), 2 bad input. Each error is one
    line on stderr; anything a user can get wrong is a BadInput, so it shows no traceback.
    """
    try:
        job()
    except BadInput as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    except LakeBusy as exc:
        err.print(f"busy: {exc}", markup=False)
        raise typer.Exit(1) from None
    except FactoryError as exc:
        err.print(f"failed: {exc}", markup=False)
        raise typer.Exit(1) from None
