"""Run model-written (hostile) Python in a sandbox: cgroup + rlimits + bubblewrap, empty environment.

    from factory.verifiers.sandbox import SandboxConfig, run_in_sandbox, Sandbox
    r = run_in_sandbox("print(input()[::-1])", "abc\\n", SandboxConfig(timeout_s=5))
    r.exit_code, r.stdout, r.timed_out, r.oom          # 0, "cba\\n", False, False

    with Sandbox(SandboxConfig()) as box:               # one long-lived sandbox per worker
        for prog in programs:
            box.run(prog)                                # one fresh process per run

Layers, outermost first (each is probed at start; a missing one refuses to run, naming it,
unless `unsafe_no_sandbox=True` is set explicitly):

0. An unprivileged host uid. bubblewrap maps the sandbox's user to the uid that started it, so
   started by root, code inside would be host root to every permission check outside its
   namespaces (it could write /proc/sys/kernel/core_pattern and have the kernel run a command
   as root). A root caller therefore drops to `host_uid` (default 65534, nobody) with no
   supplementary groups (`setpriv`) before bubblewrap starts; uid or gid 0 is refused. The
   interpreter's prefix, when that uid cannot reach it (pyenv under /root), is bind-mounted
   onto a reachable empty dir in a private mount namespace (`unshare --mount`), invisible to
   the host. `_start` checks the uid of the running bubblewrap from the host side.
1. cgroup, one per sandbox (worker): `pids.max` and a memory limit that includes swap
   (v2: memory.max + memory.swap.max=0; v1: memory.limit_in_bytes + memory.memsw.limit_in_bytes).
   A v2 hierarchy is used when it offers the memory and pids controllers (GPU nodes, systemd
   hosts); otherwise the v1 memory and pids hierarchies. The OOM-kill counter of the cgroup
   (memory.events / memory.oom_control) tells an OOM kill from a timeout. The cgroup is joined
   before the uid drop, so the sandbox cannot move itself out.
2. bubblewrap: `--unshare-all` (user, pid, net, ipc, uts, cgroup: no network at all, not even
   the host's loopback), `--die-with-parent`, `--new-session`, uid/gid 65534, all capabilities
   dropped, read-only binds of the system dirs and of the interpreter's prefix only (the venv,
   the project and $HOME are not visible; third-party site-packages are hidden behind empty
   read-only tmpfs), `--proc /proc`, `--dev /dev` (remounted read-only), private size-capped
   tmpfs at /tmp (the work dir) and /dev/shm, and the root itself remounted read-only: those two
   tmpfs are the only writable places. /sys is not mounted; /proc/sys and /proc/sysrq-trigger
   belong to host root, which the sandbox never is.
   A seccomp filter (factory.verifiers.seccomp, `--seccomp FD`) answers EPERM to what untrusted
   code never needs: mount, namespaces, ptrace, kexec, bpf, keyctl, perf_event_open, modules,
   io_uring, and System V / POSIX message-queue IPC (whose objects would outlive a run).
   bwrap and everything below it start from an EMPTY environment (`env={}` to the subprocess
   and `--clearenv`), and the sandbox's pid 1 is our own zygote (`--as-pid-1`), so
   /proc/1/environ shows nothing of the parent (bubblewrap's own pid-1 reaper would otherwise
   expose the environment bwrap was started with).
3. A zygote inside the sandbox (programs/zygote.py, sent as text to `python -I -S -B`; pid 1 of
   the pid namespace, OOM-immune, not dumpable so tests cannot ptrace it) forks ONE fresh
   process per run: new session, rlimits (CPU, address space, file size, open files, no core dumps), a fresh empty work dir
   (/tmp and /dev/shm are wiped after every run, directories a run locked with chmod included;
   if anything is still there after the wipe, the host discards the whole sandbox and the next
   run starts a fresh one with fresh tmpfs), stdin from a file, stdout/stderr/result pipes.
   Output is read up to `output_limit_bytes`, then the run is killed. At the end of every run
   (normal exit, timeout, output cap) the zygote sends SIGKILL to every other process of the
   pid namespace (`kill(-1)`, which spares pid 1 only), so setsid daemons and fork bombs die
   too, and reaps them. Starting bwrap + python costs ~40 ms and a fresh `python -I` ~60 ms on
   a loaded 2-core box; a run forked from the zygote (which has preloaded the stdlib modules
   tests use) costs ~5 ms end to end, which is where the speed comes from. Each run is still a
   separate process with its own rlimits. The cgroup is per sandbox (worker), not per run:
   runs of one worker are sequential, so its OOM-kill counter and its pids/memory limits apply
   to exactly one run at a time, and creating a cgroup per run would cost more than the run.
   Runs share the zygote's memory image (fork): never give one run data another must not see
   in the same sandbox (the code verifier keeps its judge in a sandbox of its own).

What is NOT covered: the kernel itself (a kernel exploit escapes any namespace sandbox; use a VM
or gVisor for that threat), CPU time shared with other tenants (no cpu.max), and side channels.
Tests of one worker run one after another in the same sandbox: they cannot see each other's
processes or files (killed and wiped in between), but they share the zygote's address-space
layout (fork). In unsafe mode (no bwrap, no cgroup) only rlimits and process-group kills apply:
a setsid daemon can then survive, files outside the work dir are reachable, and the parent's
environment is still removed.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from .programs import source

log = logging.getLogger(__name__)

MARKER = "rf-sandbox-zygote"  # in the zygote's argv: tests look for strays by it
CGROUP_PREFIX = "rf-sbx-"


class SandboxUnavailable(RuntimeError):
    """A sandbox layer is missing or broken; the sandbox refuses to run (fail closed)."""

    def __init__(self, layer: str, why: str):
        self.layer = layer
        super().__init__(
            f"sandbox layer '{layer}' is unavailable: {why}. Refusing to run untrusted code; "
            "fix the layer, or set SandboxConfig(unsafe_no_sandbox=True) to run without it."
        )


class SandboxConfig(BaseModel):
    """Limits of one sandboxed run. Sizes in MiB, times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0, le=3600, description="wall-clock limit per run")
    cpu_s: float | None = Field(None, gt=0, description="RLIMIT_CPU per run; default timeout+1")
    memory_mb: int = Field(1024, ge=32, description="RLIMIT_AS per process")
    cgroup_memory_mb: int = Field(2048, ge=64, description="memory+swap of the whole sandbox")
    pids_max: int = Field(64, ge=8, description="processes+threads of the whole sandbox")
    file_size_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: largest file a run may write")
    tmpfs_mb: int = Field(64, ge=1, description="size of the writable tmpfs")
    open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE")
    output_limit_bytes: int = Field(1 << 20, ge=1024, description="stdout+stderr read per run")
    bwrap_path: str = "/usr/bin/bwrap"
    python: str | None = Field(None, description="interpreter run inside; default: this one's base")
    cgroup: Literal["auto", "v1", "v2"] = "auto"
    cgroup_parent: str = Field("reasoning-factory", description="parent dir in each hierarchy")
    host_uid: int | None = Field(
        None, ge=0, description="host uid the sandbox runs as; default: 65534 (nobody) when started "
        "as root, else the caller's uid. 0 is refused: bubblewrap maps the sandbox user to it")
    host_gid: int | None = Field(None, ge=0, description="host gid; default: the same as host_uid")
    seccomp: StrictBool = Field(True, description="load the syscall deny-list (factory.verifiers.seccomp)")
    unsafe_no_sandbox: StrictBool = Field(
        False, description="run with rlimits only when bwrap/cgroups are missing. NOT a sandbox."
    )

    @field_validator("cgroup_parent")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/") or not v:
            raise ValueError(f"cgroup_parent {v!r}: expected a relative path like 'reasoning-factory'")
        return v

    def interpreter(self) -> str:
        if self.python:
            return self.python
        base = getattr(sys, "_base_executable", None) or sys.executable
        return os.path.realpath(base)

    def cpu_limit(self) -> int:
        return int(math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))


@dataclass
class SandboxResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    timed_out: bool
    oom: bool
    output_truncated: bool
    elapsed: float
    channel: bytes = b""  # what the program wrote on fd 3 (the result channel); capped
    sandbox_error: str | None = None  # the sandbox itself broke (not the program)
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- cgroups
def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of cgroup mounts."""
    out = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            fstype, _, opts = post.split(" ", 2)
            if fstype in ("cgroup", "cgroup2"):
                out.append((pre.split(" ")[4], fstype, set(opts.split(","))))
    except OSError:
        pass
    return out


class Cgroup:
    """One cgroup (v2) or one pair of v1 cgroups (memory, pids) holding a sandbox."""

    def __init__(self, version: str, dirs: list[Path]):
        self.version = version
        self.dirs = dirs

    @classmethod
    def create(cls, config: SandboxConfig, name: str) -> Cgroup:
        mounts = _mounts()
        errors = []
        if config.cgroup in ("auto", "v2"):
            for mnt, fstype, _ in mounts:
                if fstype != "cgroup2":
                    continue
                try:
                    return cls._create_v2(Path(mnt), config, name)
                except OSError as e:
                    errors.append(f"v2 at {mnt}: {e}")
        if config.cgroup in ("auto", "v1"):
            mem = next((m for m, t, o in mounts if t == "cgroup" and "memory" in o), None)
            pids = next((m for m, t, o in mounts if t == "cgroup" and "pids" in o), None)
            if mem and pids:
                try:
                    return cls._create_v1(Path(mem), Path(pids), config, name)
                except OSError as e:
                    errors.append(f"v1: {e}")
            else:
                errors.append("v1: no memory and pids hierarchies mounted")
        raise SandboxUnavailable("cgroup", "; ".join(errors) or "no cgroup hierarchy found")

    @classmethod
    def _create_v2(cls, root: Path, config: SandboxConfig, name: str) -> Cgroup:
        avail = set((root / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= avail:
            raise OSError(f"memory/pids controllers not available (have {sorted(avail)})")
        parent = root
        for part in config.cgroup_parent.split("/"):
            ctl = set((parent / "cgroup.subtree_control").read_text().split())
            if not {"memory", "pids"} <= ctl:
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
            parent = parent / part
            parent.mkdir(exist_ok=True)
        ctl = set((parent / "cgroup.subtree_control").read_text().split())
        if not {"memory", "pids"} <= ctl:
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
        cls.sweep(parent)
        d = parent / name
        d.mkdir()
        cg = cls("v2", [d])
        try:
            (d / "pids.max").write_text(str(config.pids_max))
            (d / "memory.max").write_text(str(config.cgroup_memory_mb << 20))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "memory.oom.group").exists() and (d / "memory.oom.group").write_text("0")
        except OSError:
            cg.remove()
            raise
        return cg

    @classmethod
    def _create_v1(cls, mem: Path, pids: Path, config: SandboxConfig, name: str) -> Cgroup:
        dm = mem / config.cgroup_parent / name
        dp = pids / config.cgroup_parent / name
        cls.sweep(dm.parent)
        cls.sweep(dp.parent)
        dm.mkdir(parents=True)
        cg = cls("v1", [dm])
        try:
            dp.mkdir(parents=True)
            cg.dirs.append(dp)
            (dp / "pids.max").write_text(str(config.pids_max))
            limit = str(config.cgroup_memory_mb << 20)
            (dm / "memory.limit_in_bytes").write_text(limit)
            if (dm / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap
                (dm / "memory.memsw.limit_in_bytes").write_text(limit)
            else:
                try:
                    (dm / "memory.swappiness").write_text("0")
                except OSError:
                    pass
        except OSError:
            cg.remove()
            raise
        return cg

    @staticmethod
    def sweep(parent: Path) -> None:
        """Remove empty cgroups left by sandbox owners that died without closing (SIGKILL)."""
        try:
            names = [d.name for d in parent.iterdir() if d.name.startswith(CGROUP_PREFIX)]
        except OSError:
            return
        for name in names:
            m = re.match(rf"{CGROUP_PREFIX}(?:probe-)?(\d+)-", name)
            if m and not Path(f"/proc/{m.group(1)}").exists():
                try:
                    (parent / name).rmdir()  # fails, harmlessly, while processes remain in it
                except OSError:
                    pass

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_kills(self) -> int:
        try:
            if self.version == "v2":
                text = (self.dirs[0] / "memory.events").read_text()
            else:
                text = (self.dirs[0] / "memory.oom_control").read_text()
            m = re.search(r"^oom_kill (\d+)", text, re.M)
            return int(m.group(1)) if m else 0
        except OSError:
            return 0

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def kill(self) -> None:
        if self.version == "v2" and (self.dirs[0] / "cgroup.kill").exists():
            try:
                (self.dirs[0] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


# ----------------------------------------------------------------------------------- probe
_probe_lock = threading.Lock()
_probed: dict[tuple, dict] = {}


def host_ids(config: SandboxConfig) -> tuple[int, int] | None:
    """(uid, gid) to drop to before bubblewrap, or None when the caller is already unprivileged.

    bubblewrap maps the sandbox's user to the uid that started it: started by root, a process
    inside is host root to every permission check outside its namespaces (/proc/sys, for
    one). So a root caller drops to `host_uid` (default 65534, nobody) first, and uid 0 is
    refused outright.
    """
    euid = os.geteuid()
    uid = config.host_uid
    if euid != 0:
        if uid is not None and uid != euid:
            raise SandboxUnavailable("uid", f"host_uid {uid} needs root to switch to; running as uid {euid}")
        return None
    uid = 65534 if uid is None else uid
    if uid == 0:
        raise SandboxUnavailable("uid", "refusing to run untrusted code as host uid 0; set host_uid "
                                 "to an unprivileged uid (the default, 65534, is one)")
    gid = config.host_gid if config.host_gid is not None else uid
    if gid == 0:
        raise SandboxUnavailable("uid", "refusing to run untrusted code with host gid 0")
    for tool in ("setpriv", "unshare", "mount"):
        if not shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin"):
            raise SandboxUnavailable("uid", f"{tool} (util-linux) not found: it drops root before the sandbox")
    return uid, gid


_stage_lock = threading.Lock()
_stage_dir: str | None = None


def _stage() -> str:
    """An empty directory a dropped uid can reach: the interpreter's prefix (under /root, say,
    which nobody cannot enter) is bind-mounted onto it in a private mount namespace, so
    bubblewrap running as that uid can bind it from there. The host never sees the mount."""
    global _stage_dir
    with _stage_lock:
        if _stage_dir is None or not os.path.isdir(_stage_dir):
            import tempfile

            _stage_dir = tempfile.mkdtemp(prefix="rf-sbx-stage-")
            os.chmod(_stage_dir, 0o755)
            atexit.register(shutil.rmtree, _stage_dir, True)
        return _stage_dir


def _site_dirs(prefix: Path) -> list[str]:
    """Third-party package folders under the bound system dirs: hidden from the sandbox (the
    runs need the standard library only, and nothing else installed there is theirs to read)."""
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    out = []
    for d in (prefix / "lib" / ver / "site-packages", Path("/usr/lib/python3/dist-packages"),
              Path("/usr/local/lib") / ver / "dist-packages", Path("/usr/local/lib") / ver / "site-packages",
              Path("/usr/lib") / ver / "site-packages"):
        if d.is_dir() and str(d) not in out:
            out.append(str(d))
    return out


def launch_argv(config: SandboxConfig, inner: list[str], cgroup_procs: list[str] = ()) -> tuple[list[str], int | None]:
    """The argv that starts `inner` in the sandbox, and the read end of the pipe that carries
    the seccomp program (the caller passes it to the child and closes it after the start).

    The chain, outermost first: /bin/sh joins the cgroup(s) (still as the caller, which may
    write them) and makes itself OOM-immune; as root, `unshare --mount` makes a private mount
    namespace where the interpreter's prefix is bound onto a reachable stage dir, and
    `setpriv` drops to the unprivileged host uid with no supplementary groups; then bubblewrap.
    """
    py = config.interpreter()
    prefix = Path(py).resolve().parent.parent  # e.g. /usr or ~/.pyenv/versions/3.11.7
    ids = host_ids(config)
    stage = _stage() if ids is not None and not str(prefix).startswith("/usr") else None
    bw = [
        config.bwrap_path, "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
        "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv",
        "--hostname", "sandbox", "--ro-bind", "/usr", "/usr",
    ]
    for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        p = Path(d)
        if p.is_symlink():
            bw += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            bw += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/localtime"):
        if Path(f).exists():
            bw += ["--ro-bind", f, f]
    if not str(prefix).startswith("/usr"):
        bw += ["--ro-bind", stage or str(prefix), str(prefix)]
    for d in _site_dirs(prefix):
        bw += ["--tmpfs", d, "--remount-ro", d]
    # /dev is bwrap's own tmpfs: made read-only (a run could otherwise leave files there for
    # the next run), with a small writable /dev/shm that the zygote wipes like /tmp. The root
    # itself (bwrap's tmpfs, which has no size cap) is made read-only last, so /tmp and
    # /dev/shm, both size-capped and wiped after every run, are the only writable places.
    bw += ["--proc", "/proc", "--dev", "/dev", "--size", str(config.tmpfs_mb << 20),
           "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
           "--size", str(config.tmpfs_mb << 20), "--tmpfs", "/tmp",
           "--remount-ro", "/", "--chdir", "/tmp", "--setenv", "PATH", "/usr/bin:/bin",
           "--setenv", "LANG", "C.UTF-8"]
    seccomp_fd = None
    if config.seccomp:
        from .seccomp import deny_filter

        try:
            program = deny_filter()
        except ValueError as e:
            raise SandboxUnavailable("seccomp", str(e)) from e
        r, w = os.pipe()
        os.write(w, program)  # a few hundred bytes: fits the pipe buffer
        os.close(w)
        seccomp_fd = r
        bw += ["--seccomp", str(r)]
    argv = bw + inner
    if ids is not None:
        uid, gid = ids
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
        if stage:
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    'mount --bind "$1" "$2" || exit 96; shift 2; exec "$@"', "sh", str(prefix), stage,
                    *argv]
    wrapper = ('for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; '
               'shift; done; shift; echo -1000 > /proc/$$/oom_score_adj; '
               'PATH=/usr/bin:/bin:/usr/sbin:/sbin exec "$@"')
    return ["/bin/sh", "-c", wrapper, "sh", *cgroup_procs, "--", *argv], seccomp_fd


def probe(config: SandboxConfig) -> dict:
    """Check each layer once per (bwrap, python, cgroup) setting; raise SandboxUnavailable."""
    key = (config.bwrap_path, config.interpreter(), config.cgroup, config.cgroup_parent,
           config.host_uid, config.host_gid, config.seccomp)
    with _probe_lock:
        if key in _probed:
            return _probed[key]
        layers: dict = {}
        import resource  # noqa: F401  (the rlimits layer is the resource module + setrlimit)

        limit = str(1 << 30)
        try:
            r = subprocess.run([sys.executable, "-I", "-S", "-c", source("rlimits_probe.py"), limit],
                               capture_output=True, text=True, timeout=30, env={})
            if r.returncode != 0 or r.stdout.strip() != limit:
                raise SandboxUnavailable("rlimits", f"setrlimit failed: {r.stderr.strip()[-300:]}")
        except OSError as e:
            raise SandboxUnavailable("rlimits", str(e)) from e
        layers["rlimits"] = True
        if not Path(config.interpreter()).exists():
            raise SandboxUnavailable("python", f"interpreter {config.interpreter()} not found")
        if not os.access(config.bwrap_path, os.X_OK):
            raise SandboxUnavailable("bwrap", f"{config.bwrap_path} is not an executable file "
                                     "(install bubblewrap: apt-get install bubblewrap)")
        try:
            argv, sfd = launch_argv(config, [config.interpreter(), "-I", "-S", "-B", "-c", source("probe.py")])
        except SandboxUnavailable:
            raise
        except OSError as e:
            raise SandboxUnavailable("bwrap", str(e)) from e
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={},
                               pass_fds=(sfd,) if sfd is not None else ())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable("bwrap", str(e)) from e
        finally:
            if sfd is not None:
                os.close(sfd)
        got = r.stdout.split()
        if r.returncode != 0 or got[:2] != ["1", "65534"]:
            raise SandboxUnavailable("bwrap", f"test run failed (rc={r.returncode}): "
                                     f"{(r.stderr or r.stdout).strip()[-300:]}")
        if config.seccomp and got[2:] != ["2"]:
            raise SandboxUnavailable("seccomp", f"the filter is not loaded (Seccomp: {got[2:]})")
        ids = host_ids(config)
        layers["uid"] = ids[0] if ids else os.geteuid()
        layers["seccomp"] = config.seccomp
        layers["bwrap"] = True
        cg = Cgroup.create(config, f"{CGROUP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}")
        layers["cgroup"] = cg.version
        cg.remove()
        _probed[key] = layers
        return layers


def _proc_uids(pid: int) -> set[int]:
    """Real, effective, saved and fs uids of a host process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return {int(x) for x in line.split()[1:]}
    except OSError:
        pass
    return set()


def _zygote_argv(config: SandboxConfig) -> list[str]:
    """The zygote's command line, less its last two arguments (pid namespace or not, work dir).
    MARKER is its first argument, where tests look for stray zygotes (programs/zygote.py)."""
    return [config.interpreter(), "-I", "-S", "-B", "-c", source("zygote.py"), MARKER]


# ----------------------------------------------------------------------------------- sandbox
class Sandbox:
    """One long-lived sandbox (a worker): bwrap + cgroup + zygote; `run` forks one process.

    Started lazily by the first `run`. bwrap's --die-with-parent is tied to the THREAD that
    started it: if that thread exits, the sandbox dies and the next `run` starts a new one.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.unsafe = False
        try:
            self.layers = probe(self.config)
        except SandboxUnavailable as e:
            if not self.config.unsafe_no_sandbox:
                raise
            log.warning("UNSAFE: running untrusted code without a sandbox (%s)", e)
            self.layers = {"rlimits": True}
            self.unsafe = True
        self._proc: subprocess.Popen | None = None
        self._cg: Cgroup | None = None
        self._unsafe_tmp: str | None = None
        self._lock = threading.Lock()
        _all_boxes.add(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lifecycle
    def _start(self) -> None:
        cfg = self.config
        env: dict[str, str] = {}
        if self.unsafe:
            import tempfile

            self._unsafe_tmp = tempfile.mkdtemp(prefix="rf-unsafe-")
            argv = [*_zygote_argv(cfg), "0", self._unsafe_tmp]
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, env=env,
                                          start_new_session=True, cwd=self._unsafe_tmp)
        else:
            self._cg = Cgroup.create(cfg, f"{CGROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            # Enter the cgroup before exec'ing bwrap, so that nothing runs outside it; and give
            # bwrap + zygote OOM immunity (the zygote's children set theirs back to +1000).
            try:
                argv, sfd = launch_argv(cfg, [*_zygote_argv(cfg), "1", "/tmp"], self._cg.procs_files())
            except BaseException:
                self._cg.remove()
                self._cg = None
                raise
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, env=env, start_new_session=True,
                                              pass_fds=(sfd,) if sfd is not None else ())
            finally:
                if sfd is not None:
                    os.close(sfd)
        hello = self._recv(30.0)
        if not hello or "ready" not in hello:
            err = b""
            if self._proc.stderr:
                try:
                    self._proc.kill()
                    err = self._proc.stderr.read()[-500:]
                except Exception:
                    pass
            self._stop()
            raise SandboxUnavailable("bwrap", f"zygote did not start: {err.decode(errors='replace')}")
        if not self.unsafe:
            want = host_ids(cfg)
            uids = _proc_uids(self._proc.pid)
            if want is not None and uids != {want[0]}:
                self._stop()
                raise SandboxUnavailable("uid", f"bubblewrap runs as host uids {sorted(uids)}, not {want[0]}")

    def _stop(self) -> None:
        p, self._proc = self._proc, None
        if p is not None:
            try:
                p.stdin.close()
            except Exception:
                pass
            if self.unsafe:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            p.kill()  # bwrap dies -> zygote (pid 1, die-with-parent) dies -> the namespace dies
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for s in (p.stdout, p.stderr):
                if s:
                    s.close()
        if self._cg is not None:
            self._cg.remove()
            self._cg = None
        if self._unsafe_tmp:
            shutil.rmtree(self._unsafe_tmp, ignore_errors=True)
            self._unsafe_tmp = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    # -- protocol
    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self._proc.stdin.write(struct.pack("<I", len(data)) + data)
        self._proc.stdin.flush()

    def _recv(self, timeout: float) -> dict | None:
        import select

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        need = 4
        size = None
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, max(need - len(buf), 65536) if size else need - len(buf))
            if not chunk:
                return None
            buf += chunk
            if size is None and len(buf) >= 4:
                size = struct.unpack("<I", buf[:4])[0]
                need = 4 + size
        return json.loads(buf[4:need])

    # -- one run
    def run(self, program: str, stdin: str = "", *, timeout_s: float | None = None,
            secret: str | None = None, channel_limit: int = 65536,
            trusted_program: bool = False) -> SandboxResult:
        """Run `program` (Python source, as __main__) in a fresh process inside the sandbox.

        `secret`, when given, can be read once from fd 4 by the program (the harness reads it
        before any untrusted code runs); fd 3 is the result channel returned as `channel`.
        """
        cfg = self.config
        timeout = timeout_s or cfg.timeout_s
        rl = [("RLIMIT_AS", cfg.memory_mb << 20), ("RLIMIT_FSIZE", cfg.file_size_mb << 20),
              ("RLIMIT_NOFILE", cfg.open_files), ("RLIMIT_CORE", 0)]
        req = {"program": program, "stdin": stdin, "timeout": timeout,
               "cpu": int(math.ceil(cfg.cpu_s if cfg.cpu_s is not None else timeout + 1)),
               "rlimits": rl, "output_limit": cfg.output_limit_bytes, "secret": secret,
               "channel_limit": channel_limit, "trusted_program": trusted_program}
        with self._lock:
            t0 = time.monotonic()
            resp = None
            for _attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._stop()
                    self._start()
                oom0 = self._cg.oom_kills() if self._cg else 0
                try:
                    self._send(req)
                except OSError:  # the zygote died between runs: start a new one, once
                    self._stop()
                    continue
                try:
                    resp = self._recv(timeout + 10.0)
                except OSError:
                    resp = None
                break
            if resp is not None and "zygote_error" not in resp:
                oom = bool(self._cg and self._cg.oom_kills() > oom0)
                err_tail = resp["stderr"].rstrip().rsplit("\n", 1)[-1]
                if resp["exit_code"] == 1 and err_tail.startswith("MemoryError"):
                    oom = True
                if resp.get("dirty"):  # the wipe left something: the next run gets a fresh sandbox
                    log.info("sandbox writable area not empty after a run; restarting the sandbox")
                    self._stop()
                return SandboxResult(
                    exit_code=resp["exit_code"], signal=resp["signal"],
                    stdout=resp["stdout"], stderr=resp["stderr"],
                    timed_out=resp["timed_out"], oom=oom,
                    output_truncated=resp["output_truncated"], elapsed=resp["elapsed"],
                    channel=bytes.fromhex(resp["channel"]),
                )
            # No answer: the zygote broke or hung past the guard timeout. Kill the whole
            # sandbox (bwrap dies -> pid 1 dies -> the namespace dies; then the cgroup is
            # emptied and removed); the next run starts a fresh one.
            oom = bool(self._cg and self._cg.oom_kills() > oom0)
            why = resp.get("zygote_error") if resp else "the sandbox stopped answering"
            self._stop()
            elapsed = time.monotonic() - t0
            timed_out = elapsed >= timeout and not oom
            return SandboxResult(
                exit_code=None, signal=signal.SIGKILL, stdout="", stderr="",
                timed_out=timed_out, oom=oom, output_truncated=False, elapsed=elapsed,
                sandbox_error=None if (oom or timed_out) else why,
            )


_local = threading.local()
_all_boxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for box in list(_all_boxes):
        try:
            box.close()
        except Exception:
            pass


def _cached_box(config: SandboxConfig, role: str = "run") -> Sandbox:
    """This thread's sandbox for `config` and `role` (the code verifier keeps its judge apart)."""
    boxes = getattr(_local, "boxes", None)
    if boxes is None:
        boxes = _local.boxes = {}
    box = boxes.get((config, role))
    if box is None:
        box = boxes[(config, role)] = Sandbox(config)
    return box


def run_in_sandbox(program: str, stdin: str = "", config: SandboxConfig | None = None,
                   *, secret: str | None = None) -> SandboxResult:
    """One run in this thread's cached sandbox for `config` (started on first use)."""
    return _cached_box(config or SandboxConfig()).run(program, stdin, secret=secret)


def close_cached_sandboxes() -> None:
    """Stop this thread's cached sandboxes (run_in_sandbox starts them lazily)."""
    for box in getattr(_local, "boxes", {}).values():
        box.close()
    _local.boxes = {}
