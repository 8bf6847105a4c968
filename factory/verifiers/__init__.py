"""Verifiers and filters: pure checks over completions, answering with a `Verdict` (base.py).
The same functions serve rejection sampling, GRPO rewards and student evaluation."""

from .base import STATUSES, Verdict

__all__ = ["STATUSES", "Verdict"]
