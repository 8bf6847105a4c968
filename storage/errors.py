"""Errors of the lake, split by what the caller should do about them.

`BadInput` is the caller's fault (exit code 2 in the CLI): its message names the file, row or
field and what was expected. `LakeBusy` is transient: retrying later succeeds. Anything else
that escapes is a failed job (exit code 1).
"""


class FactoryError(Exception):
    """Base of the project's own errors."""


class BadInput(FactoryError, ValueError):
    """The input (a file, a row, a field, an option, a query) is not what was expected."""


class LakeBusy(FactoryError):
    """Another process holds the catalog, or a commit conflicted: retry later."""


class MissingDependency(FactoryError, ImportError):
    """An optional dependency is absent; the message gives the exact pip line."""


def bad_rows(problems: list[str], consequence: str) -> BadInput:
    """One error for all the bad rows of a file: the first ten, each naming its line, and a count."""
    more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return BadInput(f"{len(problems)} bad row(s), {consequence}:\n" + "\n".join(problems[:10]) + more)


def require(module: str, pip_line: str):
    """Import an optional module or fail with the exact install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"{module} is not installed; run: {pip_line}") from exc
