"""The regex worker: matches a caller's pattern against an answer in a process that can be killed
(factory.verifiers.answers, through workers.ScriptWorker).

Sent as text: `python -I -S -c TEXT FD MEMORY_BYTES`. FD is this end of a socket, wrapped in a
multiprocessing Connection; MEMORY_BYTES caps the address space. It sends ("ready", pid), then
answers each (pattern, text) with (kind, info): ("match" | "no_match", ""), ("bad_pattern", why)
or ("error", exception name). A pattern such as `(a+)+$` backtracks exponentially in `re` and
never returns to the interpreter loop, so no thread can stop it: only killing the process holds
the timeout.
"""

import os
import re
import resource
import sys
from functools import lru_cache
from multiprocessing.connection import Connection

compile_ = lru_cache(maxsize=256)(re.compile)


def answer(pattern, text):
    """(kind, info) for one request: does `pattern` match all of `text`?"""
    try:
        rx = compile_(pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        return ("bad_pattern", str(exc))
    try:
        return ("match" if rx.fullmatch(text) else "no_match", "")
    except (MemoryError, RecursionError) as exc:
        return ("error", type(exc).__name__)


def serve(conn):
    """Answer requests until the caller closes the connection."""
    conn.send(("ready", os.getpid()))
    while True:
        try:
            pattern, text = conn.recv()
        except EOFError:
            break
        conn.send(answer(pattern, text))


if __name__ == "__main__":
    memory = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    serve(Connection(int(sys.argv[1])))
