"""The sandbox's rlimits check, run in a plain `python -I -S` (sandbox.py `probe`).

Sets RLIMIT_AS to argv[1] bytes and RLIMIT_CORE to 0, then writes the address-space limit it
reads back: the host compares it with the number it passed.
"""

import resource
import sys

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.stdout.write(f"{resource.getrlimit(resource.RLIMIT_AS)[0]}\n")
