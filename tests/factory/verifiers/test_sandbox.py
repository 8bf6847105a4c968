"""The attack suite: hostile programs against the real sandbox (bubblewrap + cgroup + rlimits).

Each attack must end with the expected status, and the machine must be unchanged afterwards:
the sandbox's cgroup holds exactly the processes it held before (bwrap + zygote), no process
carrying the zygote's marker is left once the sandbox is closed, no file appears outside the
sandbox, a listener on the host's 127.0.0.1 sees no connection, no secret leaks.
Skipped (with the reason) where bubblewrap or a writable cgroup is missing.
"""

from __future__ import annotations

import os
import select
import socket
import textwrap
import time
from pathlib import Path

import pytest

from factory.verifiers.code import verify_code
from factory.verifiers.sandbox import (
    MARKER,
    Cgroup,
    Sandbox,
    SandboxConfig,
    SandboxUnavailable,
)

from .sandboxes import needs_sandbox

CFG = SandboxConfig(timeout_s=2.0, memory_mb=256, cgroup_memory_mb=512, pids_max=32,
                    file_size_mb=8, output_limit_bytes=1 << 20)

pytestmark = needs_sandbox(CFG)

ADD_TESTS = {"style": "asserts", "entry_point": "add",
             "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
GOOD = "def add(a, b):\n    return a + b\n"


def marker_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if MARKER.encode() in (d / "cmdline").read_bytes():
                    out.add(int(d.name))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def box():
    b = Sandbox(CFG)
    b.run("pass")  # start it
    yield b
    cg_dirs = list(b._cg.dirs) if b._cg else []
    ours = set(b._cg.pids()) if b._cg else set()
    assert ours and ours <= marker_pids()  # bwrap + zygote carry the marker in their argv
    b.close()
    time.sleep(0.05)
    # Other test sessions may run sandboxes of their own at the same time: check ours only.
    assert not ours & marker_pids(), "a sandbox process survived close()"
    assert not any(d.exists() for d in cg_dirs), "the cgroup was not removed"


@pytest.fixture()
def clean(box):
    """Asserts that the sandbox's cgroup holds the same processes before and after a test."""
    box.run("pass")
    base = set(box._cg.pids())
    yield box
    after = set(box._cg.pids())
    assert after == base, f"stray or lost processes: {after ^ base}"  # same bwrap + zygote
    assert verify_code(GOOD, ADD_TESTS, sandbox=box).status == "pass"  # and it still works


def attack(box, code: str, tests: dict = ADD_TESTS):
    return verify_code(textwrap.dedent(code), tests, sandbox=box)


# ------------------------------------------------------------------------- time and processes
def test_infinite_loop(clean):
    v = attack(clean, "def add(a, b):\n    while True: pass\n")
    assert (v.status, v.detail) == ("fail", "timeout")


def test_sleep(clean):
    v = attack(clean, "import time\ntime.sleep(100)\n")
    assert (v.status, v.detail) == ("fail", "timeout")


def test_fork_bomb(clean):
    v = attack(clean, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert (v.status, v.detail) == ("fail", "timeout")


def test_setsid_daemon_dies(clean, tmp_path):
    flag = tmp_path / "daemon-alive"
    v = attack(clean, f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    try:
                        open({str(flag)!r}, "w").write("x")
                    except OSError:
                        pass
                    time.sleep(0.05)
        def add(a, b):
            return a + b
    """)
    assert v.status == "pass"  # the program itself is right; its daemon must still be gone
    before = set(clean._cg.pids())
    clean.run("import time; time.sleep(0.3)")
    assert set(clean._cg.pids()) == before
    assert not flag.exists()


def test_kill_parent_and_everyone(clean):
    v = attack(clean, """
        import os, signal
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):
            for target in (os.getppid(), 1, -1):
                try:
                    os.kill(target, sig)
                except OSError:
                    pass
        def add(a, b):
            return a - b
    """)
    assert (v.status, v.detail) == ("fail", "wrong_answer")


# ------------------------------------------------------------------------- memory, output, files
def test_memory_bomb_single_process(clean):
    v = attack(clean, "x = []\nwhile True:\n    x.append(b'\\x01' * (16 << 20))\n")
    assert (v.status, v.detail) == ("fail", "oom")


def test_memory_bomb_many_processes(clean):
    # Each process stays under RLIMIT_AS (256 MiB); together they pass the cgroup's 512 MiB.
    v = attack(clean, """
        import os, time
        for _ in range(6):
            if os.fork() == 0:
                x = b'\\x01' * (200 << 20)
                time.sleep(10)
                os._exit(0)
        x = b'\\x01' * (200 << 20)
        time.sleep(10)
    """)
    assert (v.status, v.detail) == ("fail", "oom"), v


def test_output_flood(clean):
    v = attack(clean, "import sys\nfor _ in range(1600):\n    sys.stdout.write('x' * 65536)\n")
    assert (v.status, v.detail) == ("fail", "crash")
    assert "output limit" in v.reason
    r = clean.run("import sys\nfor _ in range(1600):\n    sys.stdout.write('x' * 65536)\n")
    assert r.output_truncated and len(r.stdout) <= CFG.output_limit_bytes


def test_big_file(clean):
    v = attack(clean, """
        with open("big", "wb") as f:
            for _ in range(1024):
                f.write(b"0" * (1 << 20))
    """)
    assert (v.status, v.detail) == ("fail", "crash")  # SIGXFSZ at RLIMIT_FSIZE


def test_segfault(clean):
    v = attack(clean, "import ctypes\nctypes.string_at(0)\n")
    assert (v.status, v.detail) == ("fail", "crash")
    assert "signal 11" in v.reason


def test_read_file_outside(clean, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-FILE-CONTENT")
    r = clean.run(f"""
for p in ({str(secret)!r}, "/etc/shadow", {str(Path.home() / ".bashrc")!r}, {str(Path.cwd() / "pyproject.toml")!r}):
    try:
        print(open(p).read())
    except OSError as e:
        print("denied", p, type(e).__name__)
""")
    assert "TOP-SECRET-FILE-CONTENT" not in r.stdout
    assert "denied" in r.stdout and r.exit_code == 0


def test_write_outside(clean, tmp_path):
    targets = [tmp_path / "pwned", Path("/tmp") / f"rf-pwned-{os.getpid()}",
               Path("/usr/rf-pwned"), Path.cwd() / "rf-pwned"]
    r = clean.run(f"""
import os
for p in {[str(t) for t in targets]!r}:
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write("x")
        print("wrote-inside-sandbox", p)
    except OSError as e:
        print("denied", p, type(e).__name__)
open("inside.txt", "w").write("ok")
""")
    assert r.exit_code == 0, r.stderr
    for t in targets:
        assert not t.exists(), f"{t} written on the host"


def test_runs_do_not_see_each_other(clean):
    r = clean.run("import os\nfor p in ('/tmp/left', '/dev/shm/left', 'left'):\n    open(p, 'w').write('x')\n")
    assert r.exit_code == 0, r.stderr
    r = clean.run("import os\nprint([p for p in ('/tmp/left', '/dev/shm/left', 'left') if os.path.exists(p)])")
    assert r.stdout == "[]\n"


# ------------------------------------------------------------------------- network, environment
def test_no_network(clean):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        r = clean.run(f"""
import socket
for host in ("127.0.0.1", "localhost", "10.0.0.1"):
    try:
        socket.create_connection((host, {port}), timeout=0.5)
        print("connected", host)
    except OSError as e:
        print("refused", host, type(e).__name__)
""")
        assert "connected" not in r.stdout
        ready, _, _ = select.select([srv], [], [], 0.3)
        assert not ready, "the listener saw a connection"
    finally:
        srv.close()


def test_environment_does_not_leak(monkeypatch):
    secret = "RF-ENV-SECRET-" + os.urandom(8).hex()
    monkeypatch.setenv("RF_TEST_SECRET", secret)
    with Sandbox(CFG) as b:
        r = b.run("""
import os, glob
print(dict(os.environ))
for p in ["/proc/1/environ", "/proc/self/environ"] + glob.glob("/proc/*/environ"):
    try:
        print(p, open(p, "rb").read())
    except OSError as e:
        print(p, "unreadable", type(e).__name__)
for p in glob.glob("/proc/*/cmdline"):
    try:
        print(p, open(p, "rb").read()[:200])
    except OSError:
        pass
""")
    assert r.exit_code == 0, r.stderr
    assert "/proc/1/environ" in r.stdout
    assert secret not in r.stdout and secret not in r.stderr
    assert "RF_TEST_SECRET" not in r.stdout


# ------------------------------------------------------------------------- forging a verdict
def test_exit_zero_before_asserts(clean):
    v = attack(clean, "import os\nos._exit(0)\n")
    assert (v.status, v.detail) == ("fail", "wrong_answer")
    v = attack(clean, "import sys\nsys.exit(0)\n")
    assert v.status == "fail"


def test_forged_pass_line(clean):
    v = attack(clean, """
        import os, sys
        print("PASSED"); print("ok " + "0" * 32)
        os.write(3, b"ok " + b"0" * 32 + b"\\n")
        sys.stdout.flush()
        os._exit(0)
    """)
    assert (v.status, v.detail) == ("fail", "wrong_answer")


def test_eq_always_true(clean):
    v = attack(clean, """
        class Anything:
            def __eq__(self, other):
                return True
        def add(a, b):
            return Anything()
    """)
    assert (v.status, v.detail) == ("fail", "wrong_answer")
    v = attack(clean, """
        class Int(int):
            __eq__ = lambda self, other: True
        def add(a, b):
            return [Int(0)][0]
    """)
    assert (v.status, v.detail) == ("fail", "wrong_answer")


def test_patched_builtins_do_not_count(clean):
    tests = {"style": "asserts", "entry_point": "f",
             "asserts": ["assert abs(f(1) - 2.0) < 1e-6"]}
    v = attack(clean, "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 99.0\n",
               tests)
    assert (v.status, v.detail) == ("fail", "wrong_answer")


# ------------------------------------------------------------------------- fail closed
def test_fail_closed_without_bwrap():
    cfg = SandboxConfig(bwrap_path="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        Sandbox(cfg)
    v = verify_code(GOOD, ADD_TESTS, config=cfg)
    assert (v.status, v.detail, v.score) == ("error", "sandbox_error", None)
    assert "bwrap" in v.reason


def test_fail_closed_without_cgroup(monkeypatch):
    import factory.verifiers.sandbox as sb

    monkeypatch.setattr(sb, "_mounts", lambda: [])
    monkeypatch.setattr(sb, "_probed", {})
    with pytest.raises(SandboxUnavailable, match="cgroup"):
        Sandbox(SandboxConfig(cgroup_parent="rf-test-no-cgroup"))


def test_unsafe_switch_is_explicit():
    assert SandboxConfig().unsafe_no_sandbox is False
    with pytest.raises(ValueError):
        SandboxConfig(unsafe_no_sandbox="yes")  # a string is not an explicit switch
    cfg = SandboxConfig(bwrap_path="/nonexistent/bwrap", unsafe_no_sandbox=True, timeout_s=5)
    with Sandbox(cfg) as b:
        assert b.unsafe and "bwrap" not in b.layers
        r = b.run("print(6 * 7)")
        assert (r.exit_code, r.stdout) == (0, "42\n")


def test_cgroup_layer_reports_version():
    cg = Cgroup.create(CFG, f"rf-sbx-test-{os.getpid()}")
    try:
        assert cg.version in ("v1", "v2") and cg.dirs[0].exists()
    finally:
        cg.remove()
    assert not cg.dirs[0].exists()


def test_cgroup_v2_files_on_a_fake_hierarchy(tmp_path):
    """The v2 path (GPU nodes) writes the expected files; run against a fake cgroupfs here,
    since this machine's unified hierarchy has no memory/pids controllers."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    (root / "cgroup.subtree_control").write_text("")
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # a real cgroupfs creates the interface files with the dir
        real_mkdir(self, *a, **k)
        (self / "cgroup.subtree_control").touch()
        (self / "memory.swap.max").touch()
        (self / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")

    cfg = SandboxConfig(pids_max=40, cgroup_memory_mb=300)
    import unittest.mock as um

    with um.patch.object(Path, "mkdir", mkdir):
        cg = Cgroup._create_v2(root, cfg, "rf-sbx-x")
    d = root / "reasoning-factory" / "rf-sbx-x"
    assert cg.version == "v2" and cg.dirs == [d]
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (d / "pids.max").read_text() == "40"
    assert (d / "memory.max").read_text() == str(300 << 20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert cg.oom_kills() == 1 and cg.procs_files() == [str(d / "cgroup.procs")]


# ------------------------------------------------------------------------- the host kernel
KERNEL_FILES = ["/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sys/kernel/panic",
                "/proc/sys/kernel/modprobe", "/proc/sysrq-trigger", "/proc/sys/fs/file-max",
                "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/fs/cgroup/cgroup.procs",
                "/proc/1/oom_score_adj"]


def test_host_kernel_files_cannot_be_opened_for_writing(clean):
    # Opened and closed at once, never written: the test must not change the host.
    r = clean.run(f"""
import os
for p in {KERNEL_FILES!r}:
    try:
        fd = os.open(p, os.O_WRONLY)
        os.close(fd)
        print("OPENED", p)
    except OSError as e:
        print("denied", p, e.errno)
""")
    assert r.exit_code == 0, r.stderr
    assert "OPENED" not in r.stdout, r.stdout
    assert r.stdout.count("denied") == len(KERNEL_FILES)


def test_runs_as_an_unprivileged_host_uid(clean):
    from factory.verifiers.sandbox import _proc_uids

    uids = {u for pid in clean._cg.pids() for u in _proc_uids(pid)}
    assert uids and 0 not in uids, uids  # bwrap and the zygote, seen from the host
    if os.geteuid() == 0:
        assert uids == {65534}


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop from host root needs the tests to run as root")
def test_refuses_to_run_as_host_root():
    for cfg in (SandboxConfig(host_uid=0), SandboxConfig(host_gid=0)):
        with pytest.raises(SandboxUnavailable, match="uid|gid"):
            Sandbox(cfg)
        v = verify_code(GOOD, ADD_TESTS, config=cfg)
        assert (v.status, v.detail) == ("error", "sandbox_error")


def test_seccomp_refuses_what_untrusted_code_never_needs(clean):
    r = clean.run("""
import ctypes, os, threading, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return ctypes.get_errno() if rc == -1 else 0
out = {
    "unshare_user": errno_of(libc.unshare(0x10000000)),
    "unshare_net": errno_of(libc.unshare(0x40000000)),
    "mount": errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "ptrace": errno_of(libc.ptrace(16, 1, None, None)),
    "keyctl": errno_of(libc.syscall(250, 0, 0, 0, 0)),
    "bpf": errno_of(libc.syscall(321, 0, 0, 0)),
    "perf_event_open": errno_of(libc.syscall(298, 0, 0, -1, -1, 0)),
    "shmget": errno_of(libc.shmget(1234, 4096, 0o1666)),
    "msgget": errno_of(libc.msgget(1234, 0o1666)),
    "userfaultfd": errno_of(libc.syscall(323, 0)),
    "io_uring_setup": errno_of(libc.syscall(425, 1, None)),
}
print(out)
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(3)
print("fork", os.waitpid(pid, 0)[1] >> 8)
print(subprocess.run(["/bin/echo", "child-ok"], capture_output=True, text=True).stdout.strip())
""")
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the raw syscall numbers in this test are x86-64's")
    assert r.exit_code == 0, r.stderr
    out = eval(r.stdout.splitlines()[0])
    assert set(out.values()) == {1}, out  # EPERM for every one
    assert "fork 3" in r.stdout and "child-ok" in r.stdout


def test_seccomp_table_matches_the_kernel_headers():
    import re as _re

    from factory.verifiers.seccomp import DENIED, DENIED_X86_64, syscall_numbers

    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip(f"{header} not installed (Debian's linux-libc-dev)")
    real = dict((m[0], int(m[1])) for m in _re.findall(r"#define __NR_(\w+) (\d+)", header.read_text()))
    ours = syscall_numbers("x86_64")
    for name in DENIED + DENIED_X86_64 + ("clone", "clone3"):
        assert ours[name] == real[name], name


def test_nothing_written_in_one_run_is_seen_by_the_next(clean):
    r = clean.run("""
import os, ctypes
wrote = []
for d in ("/tmp", "/dev/shm", "/tmp/job", "/root", "/etc", "/", "/var/tmp", "/home", "/usr", "/dev", "/proc"):
    try:
        with open(os.path.join(d, "left-behind"), "w") as f:
            f.write("x")
        wrote.append(d)
    except OSError:
        pass
os.makedirs("/tmp/locked/inner", exist_ok=True)
open("/tmp/locked/inner/f", "w").write("x")
os.chmod("/tmp/locked/inner", 0)
os.chmod("/tmp/locked", 0)
print(sorted(wrote))
""")
    assert r.exit_code == 0, r.stderr
    assert eval(r.stdout.splitlines()[-1]) <= ["/dev/shm", "/tmp", "/tmp/job"]
    r = clean.run("""
import os
found = []
for root in ("/tmp", "/dev/shm", "/root", "/etc", "/", "/var", "/home"):
    for dirpath, dirs, files in os.walk(root):
        if dirpath.startswith(("/proc", "/sys", "/usr", "/dev/pts")):
            dirs[:] = []
            continue
        found += [os.path.join(dirpath, f) for f in files if "left-behind" in f]
print(found, os.path.exists("/tmp/locked"), sorted(os.listdir("/tmp")))
""")
    assert r.stdout.split("\n")[0] == "[] False ['job']", r.stdout + r.stderr


def test_a_run_cannot_fill_the_worker(clean):
    # The root of the sandbox is read-only and /tmp is size-capped: a run that tries to leave
    # gigabytes behind stops at the cap, and the next run finds an empty, usable /tmp.
    r = clean.run("""
import os
total = 0
for d in ("/", "/root", "/etc", "/tmp", "/dev/shm"):
    for i in range(64):
        try:
            with open(os.path.join(d, "fill-%d" % i), "wb") as f:
                f.write(b"x" * (4 << 20))
            total += 4 << 20
        except OSError:
            break
print(total >> 20)
""")
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout.split()[-1]) <= 2 * CFG.tmpfs_mb + 8  # /tmp and /dev/shm only
    r = clean.run("open('/tmp/ok', 'wb').write(b'y' * (1 << 20)); print(len(__import__('os').listdir('/tmp')))")
    assert r.exit_code == 0 and r.stdout.strip() == "2", r.stdout + r.stderr  # job + ok


def test_a_symlink_left_behind_is_wiped_not_a_sandbox_error(clean):
    # The wipe after a run once raised NotImplementedError on a link to a directory (Linux has no
    # lchmod): the run then came back as a sandbox error instead of its own result.
    r = clean.run("import os; os.symlink('/usr', 'link'); os.symlink('/etc', '/dev/shm/link'); print('made')")
    assert (r.sandbox_error, r.exit_code, r.stdout) == (None, 0, "made\n")
    r = clean.run("import os; print(sorted(os.listdir('/tmp')), os.listdir('/dev/shm'))")
    assert r.stdout == "['job'] []\n", r.stdout + r.stderr
