"""Writing a user-named file safely: every command that writes an output file goes through here.

    with atomic_output(Path("out.jsonl")) as tmp:     # BadInput if out.jsonl cannot be a target
        tmp.write_text("...")                         # out.jsonl: the old file or the whole new one

The data goes to a temporary file beside the target, which replaces the target only when the
block succeeds, so a reader (or a crash) never sees half a file. What may be replaced is a
regular file or nothing. Anything else is refused with `BadInput` before any work:
- a symbolic link: replacing it would silently break the link, and writing through it would
  write somewhere the user did not name; give the link's target instead;
- a directory, a device (`/dev/null`, `/dev/full`), a FIFO or a socket: a rename would replace
  the node itself (as root, `/dev/full` became a regular file);
- a path whose folder does not exist: the folder is not created, so a typo in it fails at once
  instead of leaving a stray tree of folders.
An error while writing (disk full, a read-only file system) is a `FactoryError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import BadInput, FactoryError

# Part of every temporary name, so listings (ArtifactStore.list) can skip half-written files.
PARTIAL = ".factory-partial-"


def check_output(path: str | os.PathLike) -> Path:
    """`path` as a Path if a command may write it (a regular file or nothing, in an existing
    folder); BadInput saying why not otherwise."""
    out = Path(path)
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. a component of the path is a regular file (ENOTDIR)
        raise BadInput(f"output {out}: {exc.strerror}; expected a file path in an existing folder") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise BadInput(f"output {out}: is {kind}; expected a regular file or a new path" + (
            " (give the link's target instead)" if kind == "a symbolic link" else ""))
    parent = out.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a folder"
        raise BadInput(f"output {out}: the folder {parent} {what}; expected an existing folder (create it first)")
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it only when the block succeeds (see the
    module docstring for what is refused). The new file gets the old one's permissions, or the
    usual ones for a new file (0666 less the umask)."""
    out = check_output(path)
    tmp = _create_temp(out)
    try:
        yield tmp
        try:
            mode = os.stat(out).st_mode if out.exists() else None
            if mode is not None:
                os.chmod(tmp, stat.S_IMODE(mode))
            check_output(out)  # still a file or nothing (it may have changed while we wrote)
            os.replace(tmp, out)
        except OSError as exc:
            raise FactoryError(f"cannot write {out}: {exc.strerror or exc}") from exc
    except OSError as exc:  # from the block: disk full, I/O error, ...
        raise FactoryError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _create_temp(out: Path) -> Path:
    # os.open with O_EXCL and mode 0666 (not mkstemp's 0600): the umask decides, as for any new file.
    for _ in range(100):
        tmp = out.with_name(f".{out.name[:200]}{PARTIAL}{secrets.token_hex(4)}")  # within NAME_MAX
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only or unwritable folder: the user named it
            raise BadInput(f"output {out}: cannot create a file in {out.parent}: {exc.strerror}") from None
    raise FactoryError(f"cannot create a temporary file beside {out}")  # pragma: no cover - 100 name clashes
