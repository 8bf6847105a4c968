"""Verifiers and filters: pure checks over completions, answering with a `Verdict` (base.py).
The same functions serve rejection sampling, GRPO rewards and student evaluation.

    from factory.verifiers.math import verify_math            # math-verify behind a killable pool
    from factory.verifiers.code import verify_code            # bubblewrap + cgroup sandbox
    from factory.verifiers.answers import verify_choice       # exact / choice / regex / judge
"""

from .base import STATUSES, Verdict

__all__ = ["STATUSES", "Verdict"]
