"""The Prefect API behind `factory run`, `factory schedule` and `factory serve`, and where Prefect logs.

    with prefect_session(verbose=False) as session:    # Prefect's log lines go to session.log
        url = connect(session)                          # the API answers, or one-line PrefectUnavailable
    with LocalServer(log) as server:                    # `factory serve`: a server with a scheduler
        print(server.ui_url)

Without PREFECT_API_URL, `factory run` and `factory schedule` use Prefect's ephemeral server (a
subprocess on 127.0.0.1 over the SQLite database in PREFECT_HOME). It gets
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS to answer, 180 s unless the user set it (Prefect's
20 s is too short for a first run, which creates the database, on a busy machine). The ephemeral
server runs no services, the scheduler among them, so `factory serve` starts a whole
`prefect server start` on 127.0.0.1 and a free port, over the same database (where `factory
schedule` wrote the deployments), and stops it when it stops.

Unless --verbose, Prefect's console log handlers write to PREFECT_HOME/logs/factory.log instead
of stderr: the CLI prints one line per outcome, and the tracebacks Prefect logs for a failed run
stay in that file (and in the Prefect UI).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import FactoryError

STARTUP_TIMEOUT_S = 180
LOG_NAME = "factory.log"
SERVER_LOG_NAME = "factory-serve-server.log"


class PrefectUnavailable(FactoryError):
    """No Prefect API answered: the message says which and what to do."""


@dataclass
class Session:
    log: Path  # where Prefect's log lines go (stderr instead with --verbose)
    verbose: bool
    ephemeral: Any = None  # Prefect's ephemeral server, when connect() started it


@contextlib.contextmanager
def prefect_session(verbose: bool) -> Iterator[Session]:
    """Prefect set up for one CLI command: no telemetry, the generous startup timeout, and its
    console log lines in the log file unless `verbose`. Restored on exit."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls home
    from prefect.settings import get_current_settings, temporary_settings

    log = Path(get_current_settings().home).expanduser() / "logs" / LOG_NAME
    # set_defaults: a value the user set (environment or profile) wins.
    with temporary_settings(set_defaults={"server.ephemeral.startup_timeout_seconds": STARTUP_TIMEOUT_S}):
        with (contextlib.nullcontext() if verbose else logs_to_file(log)):
            session = Session(log=log, verbose=verbose)
            try:
                yield session
            finally:
                if session.ephemeral is not None:  # stopped now, while its log line goes to the file
                    _drain_api_logs()
                    session.ephemeral.stop()


def _children(exclude: int) -> list[int]:
    """Pids of this process's children other than `exclude` (read from /proc)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            stat_text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_text.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(me) and fields[0] != "Z":
            out.append(int(entry))
    return out


def _wait_for_children(exclude: int, timeout_s: float) -> None:
    """Give flow-run subprocesses that Prefect's runner is stopping time to end (and to send
    their last log lines) before the server they talk to goes away."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _children(exclude):
        time.sleep(0.2)


def _drain_api_logs(detach: bool = False) -> None:
    """Send the queued log lines to the server before it stops: after, Prefect's log worker
    fails to reach it and writes '--- Error logging to API ---' on stderr. `detach` also takes
    Prefect's API log handlers off every logger, for a server that is going away for good (a
    line logged after that, during shutdown, would otherwise be queued for a dead server)."""
    try:
        from prefect.logging.handlers import APILogHandler, APILogWorker

        APILogWorker.drain_all(timeout=5, at_exit=False)
        if detach:
            loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                               if isinstance(lg, logging.Logger)]
            for logger in loggers:
                for handler in list(logger.handlers):
                    if isinstance(handler, APILogHandler):
                        logger.removeHandler(handler)
    except Exception:  # a log line lost is not worth a failed command
        logging.getLogger(__name__).debug("draining Prefect's API log worker failed", exc_info=True)


def _console_handlers() -> Iterator[tuple[logging.Logger, logging.Handler]]:
    """Every handler that Prefect's logging config points at stderr, with its logger."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            # _SafeStreamHandler: Prefect's `debug` handler (prefect._internal), also on stderr.
            if isinstance(handler, PrefectConsoleHandler) or type(handler).__name__ == "_SafeStreamHandler":
                yield logger, handler


@contextlib.contextmanager
def logs_to_file(path: Path) -> Iterator[Path]:
    """Swap Prefect's console handlers for one file handler (rotated at 5 MB), then swap back."""
    import prefect.main  # noqa: F401  configures Prefect's logging (once per process): what is swapped

    path.parent.mkdir(parents=True, exist_ok=True)
    swapped = list(_console_handlers())
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=2, encoding="utf-8", delay=True)
    file_handler.setFormatter(swapped[0][1].formatter if swapped else logging.Formatter(
        "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    for logger, handler in swapped:
        logger.removeHandler(handler)
        logger.addHandler(file_handler)
    try:
        yield path
    finally:
        for logger, handler in swapped:
            logger.removeHandler(file_handler)
            logger.addHandler(handler)
        file_handler.close()


def connect(session: Session) -> str:
    """The URL of a Prefect API that answers. With PREFECT_API_URL that server is asked for its
    health; without it Prefect's ephemeral server is started now (within the startup timeout)
    rather than inside the flow, so a failure is one PrefectUnavailable line, not a traceback;
    the session stops it at its end."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        check_api(settings.api.url)
        return settings.api.url
    from prefect.server.api.server import SubprocessASGIServer

    timeout = settings.server.ephemeral.startup_timeout_seconds
    server = SubprocessASGIServer()  # the instance Prefect's clients use (one per process)
    if server.running:
        return server.api_url
    try:
        server.start(timeout=timeout)
    except Exception as exc:
        process = server.server_process
        exited = process is not None and process.poll() is not None
        server.stop()
        if exited:
            raise PrefectUnavailable(
                f"Prefect's local server exited with code {process.returncode} while starting (its output is above); "
                "check PREFECT_HOME's database, or run a server with `prefect server start` and set PREFECT_API_URL") from None
        if "Timed out" not in str(exc):
            raise PrefectUnavailable(f"Prefect's local server did not start: {str(exc).splitlines()[0]}") from None
        raise PrefectUnavailable(
            f"Prefect's local server did not answer within {timeout} s (a first run creates its database, and a busy "
            "machine is slower): set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher (e.g. 600) and run again, "
            "or run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api") from None
    session.ephemeral = server
    return server.api_url


def check_api(url: str) -> None:
    """PrefectUnavailable unless the Prefect API at `url` answers its health check."""
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise PrefectUnavailable(
            f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(exc).__name__}: {exc}); "
            "start it, or unset PREFECT_API_URL to use a local one") from None


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """`prefect server start` on 127.0.0.1 and a free port, with its services (the scheduler
    makes the scheduled runs), in its own session so a Ctrl-C reaches only us, and stopped
    (its whole process group) on exit. Its output goes to `log`."""

    def __init__(self, log: Path, timeout_s: float):
        self.log = log
        self.timeout_s = timeout_s
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import httpx

        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        # The UI reads its API address from these, so they name the port too, not only --port.
        env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(self.port),
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        atexit.register(self.stop)  # whatever way this process ends, the server does not outlive it
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise PrefectUnavailable(f"`prefect server start` on {self.ui_url} exited with code "
                                             f"{self.process.returncode}; its output is in {self.log}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise PrefectUnavailable(
            f"`prefect server start` on {self.ui_url} did not answer within {self.timeout_s:g} s (its output is in "
            f"{self.log}); set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or run a server yourself "
            "and set PREFECT_API_URL")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 15 s; waits for it to exit. If
        this is interrupted (a second signal), the atexit hook still runs it again."""
        process = self.process
        if process is None:
            return
        _wait_for_children(exclude=process.pid, timeout_s=15)  # flow runs still sending their logs
        _drain_api_logs(detach=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # the leader, if stuck, and anything it left in its group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.process = None
        atexit.unregister(self.stop)
