"""The sandbox's start-up check, run inside bubblewrap (sandbox.py `probe`).

Writes its pid (1 as pid 1), its uid inside (65534) and its Seccomp mode (2: a filter is
loaded). The host uid cannot be read from inside (bubblewrap nests user namespaces):
Sandbox._start checks it from the host side.
"""

import os
import sys

with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
sys.stdout.write(f"{os.getpid()} {os.getuid()} {status.get('Seccomp', '?').strip()}\n")
