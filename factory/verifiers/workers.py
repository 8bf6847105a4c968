"""Killable worker processes for checks whose cost the caller cannot bound: math-verify's sympy
work (math.py) and user-supplied regular expressions (answers.py).

    pool = SharedPool(start_worker, default_size=lambda: 2, label="regex")
    kind, info = pool.get().call(request, timeout_s=2.0)
    # the worker's own reply, or ("timeout", why) / ("crash", why): the worker was killed

A thread inside the caller cannot be stopped while `re` or sympy runs (neither returns to the
interpreter loop), and `signal.alarm` only works on the main thread; a separate process can
always be killed. So the caller sends a request down a pipe and waits on it with a deadline: a
worker that overruns is killed and replaced, from any thread and from asyncio (via
`asyncio.to_thread`). Workers are started lazily, one per concurrent caller up to the pool
size, re-created in a forked child (the parent's workers are not the child's), and stopped at
exit.

A worker is any object with `conn` (a multiprocessing `Connection`), `pid`, `exitcode` and
`kill()`; `ScriptWorker` runs a small stdlib-only Python script in a fresh interpreter (starts
in tens of milliseconds, imports nothing of ours; answers.py's regex worker), `ForkWorker` a
function in a multiprocessing process (math.py forks its workers from a forkserver preloaded
with math-verify). The programs they run are in programs/.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.process
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Protocol

logger = logging.getLogger(__name__)


class Worker(Protocol):
    conn: Connection

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    def kill(self) -> None: ...


class _Started:
    """What every worker here shares: a process `proc`, the start-up handshake (wait for its
    ("ready", pid), else kill it) and the kill."""

    conn: Connection
    proc: subprocess.Popen | multiprocessing.process.BaseProcess

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def exitcode(self) -> int | None:  # None while it runs
        raise NotImplementedError

    def _reap(self) -> None:  # wait up to 10 s for the killed process
        raise NotImplementedError

    def kill(self) -> None:
        try:
            if self.exitcode is None:
                self.proc.kill()
            self._reap()
        finally:
            self.conn.close()

    def _await_ready(self, label: str, timeout_s: float) -> None:
        try:
            if not self.conn.poll(timeout_s):
                raise TimeoutError(f"no sign of life within {timeout_s:g}s")
            self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise RuntimeError(f"{label} worker failed to start (exit code {self.exitcode}): {e!r}") from e


class ScriptWorker(_Started):
    """`python -I -S -c script FD *args`: the script wraps FD in a `Connection`, sends ("ready",
    pid), then answers one request per message; `args` carry its settings (programs/). -I -S: no
    site-packages, no environment, no cwd on the path, so the worker imports only the standard
    library and starts fast."""

    def __init__(self, script: str, label: str, start_timeout_s: float = 30.0, args: Sequence[str] = ()) -> None:
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", script, str(child.fileno()), *args],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self._await_ready(label, start_timeout_s)

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def _reap(self) -> None:
        self.proc.wait(10)


class ForkWorker(_Started):
    """`target(conn, *args)` in a process of the multiprocessing context `ctx` (math.py: forked
    from a forkserver preloaded with math-verify); it sends ("ready", pid) first, like a script."""

    def __init__(self, ctx, target: Callable, args: tuple, label: str, start_timeout_s: float = 30.0) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True, name=f"factory-{label}")
        self.proc.start()
        child.close()
        self.conn = parent
        self._await_ready(label, start_timeout_s)

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def _reap(self) -> None:
        self.proc.join(10)


class WorkerPool:
    """A few persistent worker processes; a caller checks one out, so any thread may call."""

    def __init__(self, start: Callable[[], Worker], size: int, label: str) -> None:
        self.size = max(1, size)
        self.owner_pid = os.getpid()
        self.label = label
        self._start = start
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._live: set[Worker] = set()
        self._count = 0  # live + starting, never above size
        self._closed = False

    def _checkout(self) -> Worker:
        with self._cond:
            while not self._idle and self._count >= self.size:
                if self._closed:
                    raise RuntimeError(f"{self.label} pool is shut down")
                self._cond.wait()
            if self._closed:
                raise RuntimeError(f"{self.label} pool is shut down")
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            w = self._start()  # started outside the lock: it takes a while
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._live.add(w)
        return w

    def _release(self, w: Worker) -> None:
        with self._cond:
            if self._closed:
                self._live.discard(w)
                self._count -= 1
                w.kill()
            else:
                self._idle.append(w)
            self._cond.notify()

    def _discard(self, w: Worker) -> None:
        w.kill()
        with self._cond:
            self._live.discard(w)
            self._count -= 1
            self._cond.notify()

    def call(self, request: tuple, timeout_s: float) -> tuple:
        """The worker's reply to `request`, or ("timeout" | "crash", why) after killing it.
        RuntimeError when no worker can be started."""
        w = self._checkout()
        try:
            w.conn.send(request)
            if not w.conn.poll(timeout_s):
                logger.warning("%s worker %s overran %.1fs: killed and replaced", self.label, w.pid, timeout_s)
                self._discard(w)
                return ("timeout", f"{self.label} took over {timeout_s:g}s; worker killed")
            resp = w.conn.recv()
        except (EOFError, OSError) as e:
            code = w.exitcode
            logger.warning("%s worker %s died (exit code %s): %s", self.label, w.pid, code, e)
            self._discard(w)
            return ("crash", f"{self.label} worker died (exit code {code})")
        except BaseException:
            self._discard(w)  # interrupted mid-request: the worker's state is unknown
            raise
        self._release(w)
        return resp

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._live if w.pid]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            for w in idle:
                self._live.discard(w)
                self._count -= 1
            self._cond.notify_all()
        for w in idle:
            w.kill()


class SharedPool:
    """The process-wide `WorkerPool` of one kind of check, started on first use."""

    def __init__(self, start: Callable[[], Worker], default_size: Callable[[], int], label: str) -> None:
        self._start, self._default_size, self.label = start, default_size, label
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()
        self._size: int | None = None
        _SHARED.add(self)

    def get(self) -> WorkerPool:
        with self._lock:
            if self._pool is not None and self._pool.owner_pid != os.getpid():
                self._pool = None  # we are a forked child: the parent's workers are not ours to use
            if self._pool is None:
                self._pool = WorkerPool(self._start, self._size or self._default_size(), self.label)
            return self._pool

    def configure(self, workers: int | None = None) -> None:
        """Set the number of workers (None: the default); restarts the pool."""
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: expected >= 1")
        self.shutdown()
        self._size = workers

    def shutdown(self) -> None:
        """Stop the workers (busy ones stop when their request ends). Safe to call twice."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool.owner_pid == os.getpid():
            pool.close()

    def pids(self) -> list[int]:
        """Pids of the live workers (for accounting and tests)."""
        with self._lock:
            pool = self._pool
        return pool.worker_pids() if pool is not None and pool.owner_pid == os.getpid() else []

    def _reset_after_fork(self) -> None:
        # A fork taken while another thread held the lock would leave the child's copy locked
        # forever; the parent's workers are not the child's to use either.
        self._lock = threading.Lock()
        self._pool = None


_SHARED: weakref.WeakSet[SharedPool] = weakref.WeakSet()


def _shutdown_all() -> None:
    for p in list(_SHARED):
        p.shutdown()


def _reset_all_after_fork() -> None:
    for p in list(_SHARED):
        p._reset_after_fork()


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)


def default_size() -> int:
    """min(4, CPUs): enough to overlap a few slow checks without crowding a small machine."""
    return max(1, min(4, os.cpu_count() or 1))


__all__ = ["ForkWorker", "ScriptWorker", "SharedPool", "Worker", "WorkerPool", "default_size"]
