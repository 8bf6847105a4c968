"""The sandbox's zygote: pid 1 inside bubblewrap, it forks ONE fresh process per run.

Sent as text by factory.verifiers.sandbox (`python -I -S -B -c TEXT MARKER PIDNS TMP`): argv[1] is
the marker the host's tests find stray zygotes by, argv[2] is 1 when this is pid 1 of its own
pid namespace (0: unsafe mode, no sandbox), argv[3] the writable work area. It talks to the host
over fds 0/1 (moved to high fds) with length-prefixed JSON messages, one request per run, and
imports the standard library only (it runs with -I -S). The layers and what each run gets are
described in sandbox.py's module docstring.
"""

import builtins
import io
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback
import types

# Preloaded before the first run (a fork then gets them for free): what tests commonly import.
PRELOAD = ("collections", "fractions", "decimal", "datetime", "heapq", "math", "re", "itertools", "functools",
           "typing", "ast", "json", "string", "bisect", "random", "operator", "copy", "hashlib", "array", "cmath",
           "statistics", "fcntl", "traceback")

PIDNS = False  # set by start(): pid 1 of a pid namespace (kill(-1) then spares only us)
TMP = "/tmp"
CTL_IN = CTL_OUT = -1  # the host's request and answer pipes


def start(argv):
    """Take the control pipes off fds 0/1, become unkillable by the runs' signals, undumpable and
    OOM-immune."""
    global PIDNS, TMP, CTL_IN, CTL_OUT
    PIDNS = bool(int(argv[2]))
    TMP = argv[3]
    CTL_IN = os.dup(0)
    CTL_OUT = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for fd in (CTL_IN, CTL_OUT):
        os.set_inheritable(fd, False)
    # As pid 1 we only receive the signals we handle: handle none (SIGINT would otherwise raise
    # KeyboardInterrupt here when a run sends it to pid 1). Runs get Python's default back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: tests cannot ptrace the zygote
    except Exception:
        pass
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass


def readn(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(CTL_IN, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def send(obj):
    data = json.dumps(obj).encode()
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(CTL_OUT, data):]


def wipe(path):
    # A run may leave directories it made unreadable (chmod 0): give them back first.
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):  # a symlink: Linux cannot chmod one; unlinked below
                pass
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass


def dirty():
    """True when a writable area still holds something after the wipe: the host then starts a
    fresh sandbox (fresh tmpfs) instead of letting the next run see it."""
    for path in (TMP, "/dev/shm"):
        try:
            if os.listdir(path):
                return True
        except OSError:
            return True
    return False


def kill_rest(pgid):
    if PIDNS:
        try:
            os.kill(-1, signal.SIGKILL)  # every process of the namespace but pid 1 (us)
        except ProcessLookupError:
            pass
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def child(req, wd, fds):
    # fds: stdin, stdout, stderr, channel, secret(optional) -> 0,1,2,3,4
    try:
        os.setsid()
        import fcntl
        high = [fcntl.fcntl(f, fcntl.F_DUPFD, 16) if f is not None else None for f in fds]
        for i, f in enumerate(high):
            if f is not None:
                os.dup2(f, i)
        os.closerange(len(high), 1 << 16)
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for res, val in req["rlimits"]:
            resource.setrlimit(getattr(resource, res), (val, val))
        cpu = req["cpu"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.chdir(wd)
        sys.argv = ["<program>"]
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=False)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True)
        sys.path[:0] = [wd]
        mod = types.ModuleType("__main__")
        mod.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = mod
        code = req.get("_code") or compile(req["program"], "<program>", "exec")
        del req
    except BaseException:
        os._exit(70)
    status = 0
    try:
        exec(code, mod.__dict__)
    except SystemExit as e:
        c = e.code
        if c is None:
            status = 0
        elif isinstance(c, int):
            status = c & 0xFF
        else:
            try:
                sys.stderr.write(str(c) + "\n")  # what print(c, file=sys.stderr) writes
            except BaseException:
                pass
            status = 1
    except BaseException as e:
        try:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:
            pass
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status)


COMPILED = {}


def run(req, n):
    t0 = time.monotonic()
    if req.get("trusted_program"):
        # The host's own constant programs (the code verifier's judge and runner) are compiled
        # once here and reused by every forked run; untrusted code is never compiled in pid 1.
        code = COMPILED.get(req["program"])
        if code is None:
            code = COMPILED[req["program"]] = compile(req["program"], "<program>", "exec")
        req["_code"] = code
    wipe(TMP)
    wipe("/dev/shm")
    wd = os.path.join(TMP, "job")
    os.mkdir(wd, 0o700)
    with open(os.path.join(TMP, ".stdin"), "wb") as f:
        f.write(req.get("stdin", "").encode())
    in_fd = os.open(os.path.join(TMP, ".stdin"), os.O_RDONLY)
    os.unlink(os.path.join(TMP, ".stdin"))
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ch_r, ch_w = os.pipe()
    sec_r = None
    if req.get("secret"):
        sec_r, sec_w = os.pipe()
        os.write(sec_w, req["secret"].encode())
        os.close(sec_w)
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        os.close(ch_r)
        child(req, wd, [in_fd, out_w, err_w, ch_w, sec_r])
        os._exit(71)
    for f in (in_fd, out_w, err_w, ch_w, sec_r):
        if f is not None:
            os.close(f)
    pidfd = os.pidfd_open(pid)
    cap = req["output_limit"]
    ch_cap = req.get("channel_limit", 65536)
    bufs = {out_r: [], err_r: [], ch_r: []}
    sizes = {out_r: 0, err_r: 0, ch_r: 0}
    open_fds = [out_r, err_r, ch_r]
    deadline = t0 + req["timeout"]
    timed_out = truncated = exited = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        r, _, _ = select.select(open_fds + [pidfd], [], [], left)
        for fd in r:
            if fd == pidfd:
                exited = True
                continue
            data = os.read(fd, 65536)
            if not data:
                open_fds.remove(fd)
                continue
            bufs[fd].append(data)
            sizes[fd] += len(data)
        if sizes[out_r] + sizes[err_r] > cap or sizes[ch_r] > ch_cap:
            truncated = True
            break
        if exited:
            break
    if exited and not truncated:
        # drain what the program wrote before it exited (a daemon may keep the pipe open)
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            try:
                while sizes[out_r] + sizes[err_r] <= cap:
                    data = os.read(fd, 65536)
                    if not data:
                        break
                    bufs[fd].append(data)
                    sizes[fd] += len(data)
            except BlockingIOError:
                pass
    kill_rest(pid)
    _, status = os.waitpid(pid, 0)
    while True:  # reap everything the run left behind (orphans are re-parented to us)
        try:
            p, _ = os.waitpid(-1, os.WNOHANG if not PIDNS else 0)
            if p == 0:
                break
        except ChildProcessError:
            break
    for fd in (out_r, err_r, ch_r, pidfd):
        os.close(fd)
    elapsed = time.monotonic() - t0
    out = b"".join(bufs[out_r])
    err = b"".join(bufs[err_r])
    if len(out) > cap:
        out = out[:cap]
        truncated = True
    if len(err) > max(0, cap - len(out)):
        err = err[:max(0, cap - len(out))]
        truncated = True
    wipe(TMP)
    wipe("/dev/shm")
    dirty_after = dirty()
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    if sig == signal.SIGXCPU:
        timed_out = True
    send({"exit_code": code, "signal": sig, "stdout": out.decode("utf-8", "replace"),
          "stderr": err.decode("utf-8", "replace"), "timed_out": timed_out,
          "output_truncated": truncated, "elapsed": elapsed,
          "channel": b"".join(bufs[ch_r])[:ch_cap].hex(), "dirty": dirty_after})



def preload():
    """Import PRELOAD, and record the classes that exist before any untrusted code runs: the code
    harness trusts their dunders."""
    for name in PRELOAD:
        __import__(name)
    trusted = set()
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, type):
                trusted.add(value)
    sys._rf_trusted = frozenset(trusted)


def serve():
    """Answer requests until the host closes the pipe."""
    send({"ready": os.getpid()})
    n = 0
    while True:
        head = readn(4)
        if head is None:
            break
        body = readn(struct.unpack("<I", head)[0])
        if body is None:
            break
        n += 1
        try:
            run(json.loads(body), n)
        except Exception as e:
            send({"zygote_error": repr(e)})


if __name__ == "__main__":
    start(sys.argv)
    preload()
    serve()
