"""Verifiers and filters: pure checks over completions, answering with a `Verdict` (base.py).
The same functions serve rejection sampling, GRPO rewards and student evaluation, looked up by
name in one registry (registry.py):

    from factory.verifiers import VERIFIERS, Check, Options, verify
    verify("math", [Check(completion, reference="42")], Options(timeout_s=5))   # -> [Verdict]

    from factory.verifiers.math import verify_math            # math-verify behind a killable pool
    from factory.verifiers.code import verify_code            # bubblewrap + cgroup sandbox
    from factory.verifiers.answers import verify_choice       # exact / choice / regex / judge
"""

from .base import STATUSES, Verdict
from .registry import VERIFIERS, Check, Options, Verifier, require_verifier, verify

__all__ = ["STATUSES", "VERIFIERS", "Check", "Options", "Verdict", "Verifier", "require_verifier", "verify"]
