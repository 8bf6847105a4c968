"""Programs that run outside this process: inside the sandbox, or in a killable worker.

    from factory.verifiers.programs import source
    zygote = source("zygote.py")                   # the text the host sends, read from the package
    runner = source("codec.py", "runner.py")       # files joined in order: the runner uses the codec

Each is a real .py file here, so that the linter and the tests see it, and each is sent as TEXT
(`python -I -S -c TEXT`, or a request to the sandbox's zygote) to an interpreter that cannot
import this package: the sandbox binds no project files and hides site-packages. So a program
imports the standard library only, takes its numbers from argv or its request, never from
string formatting, and starts work under `if __name__ == "__main__":` so that tests can import
its helpers in-process. A program that needs another file's functions (the runner and the judge
use the codec) is sent with that file in front of it; `source` joins them.

- zygote.py: pid 1 of a sandbox; forks one process per run (sandbox.py).
- probe.py, rlimits_probe.py: the sandbox's start-up checks (sandbox.py `probe`).
- codec.py, runner.py, judge.py: the code verifier's plain-data codec, candidate runner and
  judge (code.py).
- regex_worker.py: matches a caller's regex in a killable process (answers.py).
- math_worker.py: the math-verify worker loop. The one exception: it needs sympy, so it is not
  sent as text but imported by the forkserver that math.py's workers fork from.

How to run: nothing here runs by itself; `pytest tests/factory/verifiers/test_programs.py`
compiles every file and tests their pure helpers in-process.
"""

from __future__ import annotations

import functools
from importlib import resources

# Sent as text; math_worker.py is imported, not sent (see above).
TEXT_PROGRAMS = ("zygote.py", "probe.py", "rlimits_probe.py", "codec.py", "runner.py", "judge.py", "regex_worker.py")


@functools.cache
def source(*names: str) -> str:
    """The text of the named program files, joined in order (read once, from the installed package)."""
    folder = resources.files(__name__)
    return "".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


__all__ = ["TEXT_PROGRAMS", "source"]
