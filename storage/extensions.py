"""Load DuckDB extensions from their PyPI wheels, never from the network.

DuckDB would otherwise download `ducklake`, `httpfs`, `postgres` or `sqlite` on first use,
which fails on an offline machine and is a supply-chain hole on an online one. The
`duckdb-extension-*` wheels ship the binaries; we LOAD them by path.
"""

from __future__ import annotations

import functools
import importlib
import os
import stat
import tempfile
from pathlib import Path

import duckdb

from .errors import MissingDependency

_PIP = "pip install duckdb-extension-{name}=={version}"
# Wheels whose file is named after the alias while DuckDB looks for the init function of the
# real extension name, which it derives from the file name.
_REAL_NAMES = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner"}


@functools.cache
def extension_path(name: str) -> str:
    """Path of the installed extension binary for this duckdb version."""
    version = duckdb.__version__
    try:
        module = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as exc:
        raise MissingDependency(
            f"the DuckDB extension {name!r} is not installed; run: {_PIP.format(name=name, version=version)}"
        ) from exc
    root = Path(module.__file__).parent / "extensions"
    candidates = sorted(root.glob(f"v{version}/**/{name}.duckdb_extension"))
    if not candidates:
        found = sorted(str(p.relative_to(root)) for p in root.glob("**/*.duckdb_extension"))
        raise MissingDependency(
            f"duckdb-extension-{name} does not match duckdb {version} (found {found or 'nothing'}); "
            f"run: {_PIP.format(name=name, version=version)}"
        )
    found = candidates[0]
    real = _REAL_NAMES.get(name)
    if real is None:
        return str(found)
    # Give DuckDB the file under its real name through a symlink in a per-user folder.
    base = Path(tempfile.gettempdir()) / f"factory-duckdb-ext-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    # /tmp is shared: a folder another user made first could swap the link for their own
    # library, which LOAD would run. Use it only if it is ours and nobody else can write it.
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise MissingDependency(f"{base} is not a private folder of this user: remove it and retry")
    folder = base / f"v{version}"
    folder.mkdir(mode=0o700, exist_ok=True)
    link = folder / f"{real}.duckdb_extension"
    if not (link.is_symlink() and os.readlink(link) == str(found)):
        tmp = folder / f".{real}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found)
        tmp.replace(link)  # atomic, so concurrent processes never see a half-made link
    return str(link)


def connect(*names: str) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with the named extensions loaded from their wheels."""
    con = duckdb.connect(
        config={
            # Never reach the extension repository: everything we need is loaded below.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    for name in names:
        con.execute(f"LOAD '{extension_path(name)}'")
    # Timestamps come back in UTC whatever the machine's zone, so results are reproducible.
    con.execute("SET TimeZone = 'UTC'")
    return con
