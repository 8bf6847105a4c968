"""storage.files.atomic_output: the one way commands write a user-named file."""

import errno
import os
import stat

import pytest

from storage import BadInput, FactoryError
from storage.files import atomic_output, check_output


def test_a_new_file_gets_the_usual_permissions_and_no_partial_is_left(tmp_path):
    out = tmp_path / "new.txt"
    with atomic_output(out) as tmp:
        tmp.write_text("x")
        assert tmp.parent == tmp_path and not out.exists()  # beside the target, not yet in place
    umask = os.umask(0)
    os.umask(umask)
    assert out.read_text() == "x" and stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["new.txt"]


def test_a_failed_block_keeps_the_old_file(tmp_path):
    out = tmp_path / "old.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["old.txt"]


def test_a_write_error_is_a_failed_job_naming_the_file(tmp_path):
    out = tmp_path / "o.txt"
    with pytest.raises(FactoryError, match=f"cannot write {out}: No space left on device"):
        with atomic_output(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert os.listdir(tmp_path) == []


def test_what_is_not_a_regular_file_is_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "missing-target")  # even a dangling link
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("")
    for name, kind in [("dir", "a directory"), ("link", "a symbolic link"), ("fifo", "a FIFO")]:
        with pytest.raises(BadInput, match=f"is {kind}"):
            check_output(tmp_path / name)
    with pytest.raises(BadInput, match="does not exist"):
        check_output(tmp_path / "nope" / "x")
    with pytest.raises(BadInput, match="Not a directory|is not a folder"):
        check_output(tmp_path / "file" / "x")
    assert not (tmp_path / "missing-target").exists()
