"""A seccomp filter for the code sandbox: the system calls untrusted code never needs, refused.

    from factory.verifiers.seccomp import deny_filter, DENIED
    program = deny_filter()          # raw `struct sock_filter[]` bytes for `bwrap --seccomp FD`

The filter is a classic BPF program that bubblewrap loads (`--seccomp FD`) into the sandbox's
first process, so the zygote and every run inherit it. It allows by default and answers EPERM
for the calls below: mounting and namespaces (`mount`, `unshare`, `setns`, clone with a
namespace flag), kernel and process introspection (`ptrace`, `process_vm_*`, `kcmp`,
`pidfd_getfd`, `perf_event_open`, `bpf`, `userfaultfd`, `io_uring_*`), the keyring, module
loading, kexec, reboot, clocks, swap, quotas, and every System V / POSIX message-queue IPC call
(their objects live in the sandbox's IPC namespace, which outlives a run: without this one
run could leave data for the next). `clone3` answers ENOSYS so that the C library falls back
to `clone`, whose flags the filter can read. A call from another architecture's ABI (x32 on
x86-64, or a foreign audit arch) kills the process.

Syscall numbers are per architecture; x86-64 and aarch64 are known. On others `deny_filter`
raises `ValueError` and the sandbox refuses to start (fail closed). The x86-64 numbers are
checked against the kernel headers by the tests when the headers are installed; aarch64's are
the asm-generic table, not exercised on this project's machines.
"""

from __future__ import annotations

import platform
import struct

# Denied on every known architecture (names resolve through the tables below).
DENIED = (
    # file systems and namespaces
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "unshare", "setns", "open_by_handle_at",
    "name_to_handle_at", "quotactl", "quotactl_fd", "fanotify_init",
    # other processes and the kernel
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "perf_event_open",
    "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
    "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "syslog", "acct", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup",
    "lookup_dcookie", "personality",
    # IPC objects that would outlive a run
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl", "semget",
    "semop", "semctl", "semtimedop", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
)
# x86-64 only
DENIED_X86_64 = ("iopl", "ioperm", "modify_ldt", "uselib")

_X86_64 = {
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246, "kexec_file_load": 320,
    "bpf": 321, "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
    "swapoff": 168, "syslog": 103, "acct": 163, "settimeofday": 164, "clock_settime": 227,
    "clock_adjtime": 305, "adjtimex": 159, "unshare": 272, "setns": 308, "userfaultfd": 323,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "quotactl": 179, "quotactl_fd": 443,
    "lookup_dcookie": 212, "fanotify_init": 300, "iopl": 172, "ioperm": 173, "move_mount": 429,
    "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "sethostname": 170, "setdomainname": 171, "vhangup": 153, "uselib": 134, "kcmp": 312,
    "pidfd_getfd": 438, "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "msgget": 68,
    "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semget": 64, "semop": 65, "semctl": 66,
    "semtimedop": 220, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242,
    "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245, "clone": 56, "clone3": 435,
    "personality": 135, "modify_ldt": 154,
}
# asm-generic numbering (arm64)
_AARCH64 = {
    "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "ptrace": 117,
    "process_vm_readv": 270, "process_vm_writev": 271, "kexec_load": 104, "kexec_file_load": 294,
    "bpf": 280, "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241,
    "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224,
    "swapoff": 225, "syslog": 116, "acct": 89, "settimeofday": 170, "clock_settime": 112,
    "clock_adjtime": 266, "adjtimex": 171, "unshare": 97, "setns": 268, "userfaultfd": 282,
    "open_by_handle_at": 265, "name_to_handle_at": 264, "quotactl": 60, "quotactl_fd": 443,
    "lookup_dcookie": 18, "fanotify_init": 262, "move_mount": 429, "open_tree": 428,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "sethostname": 161,
    "setdomainname": 162, "vhangup": 58, "kcmp": 272, "pidfd_getfd": 438, "shmget": 194,
    "shmctl": 195, "shmat": 196, "shmdt": 197, "msgget": 186, "msgctl": 187, "msgrcv": 188,
    "msgsnd": 189, "semget": 190, "semctl": 191, "semtimedop": 192, "semop": 193, "mq_open": 180,
    "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
    "mq_getsetattr": 185, "clone": 220, "clone3": 435, "personality": 92,
}
_ARCHES = {
    "x86_64": (0xC000003E, _X86_64, DENIED + DENIED_X86_64),
    "aarch64": (0xC00000B7, _AARCH64, DENIED),
}

# BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_EPERM, _ENOSYS = 1, 38
_X32_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


def syscall_numbers(machine: str | None = None) -> dict[str, int]:
    """The syscall table this module knows for `machine` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for {machine!r} (known: {', '.join(_ARCHES)})")
    return dict(_ARCHES[machine][1])


def deny_filter(machine: str | None = None) -> bytes:
    """The BPF program (native byte order `struct sock_filter` array) for `bwrap --seccomp`."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for {machine!r} (known: {', '.join(_ARCHES)})")
    audit_arch, table, denied = _ARCHES[machine]
    numbers = sorted({table[name] for name in denied})
    # Layout: header, one JEQ per denied number (jumping to DENY), clone3 -> ENOSYS, the clone
    # flag test, then the three return statements ALLOW, DENY, ENOSYS at the end.
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),              # A = seccomp_data.arch
        (_JEQ_K, 1, 0, audit_arch),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),  # a foreign ABI: never allowed
        (_LD_W_ABS, 0, 0, 0),              # A = seccomp_data.nr
    ]
    checks: list[tuple[str, int]] = []
    if machine == "x86_64":
        checks.append(("ge", _X32_BIT))
    checks += [("eq", n) for n in numbers]
    n_checks = len(checks)
    # After the checks: [clone3 jeq][clone jeq][ld arg0][jset][ALLOW][DENY][ENOSYS]
    body_start = len(prog)
    allow_at = body_start + n_checks + 4
    deny_at, enosys_at = allow_at + 1, allow_at + 2
    for i, (kind, k) in enumerate(checks):
        here = body_start + i
        jt = deny_at - here - 1
        if kind == "ge":
            prog.append((_JGE_K, jt, 0, k))
        else:
            prog.append((_JEQ_K, jt, 0, k))
    here = len(prog)
    prog.append((_JEQ_K, enosys_at - here - 1, 0, table["clone3"]))
    here = len(prog)
    prog.append((_JEQ_K, 0, allow_at - here - 1, table["clone"]))
    prog.append((_LD_W_ABS, 0, 0, 16))     # low 32 bits of args[0] (little-endian): the flags
    here = len(prog)
    prog.append((_JSET_K, deny_at - here - 1, 0, _CLONE_NS_FLAGS))
    assert len(prog) == allow_at
    prog += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | _EPERM),
             (_RET_K, 0, 0, _RET_ERRNO | _ENOSYS)]
    for _code, jt, jf, _k in prog:
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("seccomp program too long for 8-bit jumps")
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


__all__ = ["DENIED", "deny_filter", "syscall_numbers"]
