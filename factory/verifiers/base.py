"""The verdict contract every check answers with; verifiers, filters and GRPO rewards share it.

    v = verify_math(completion, gold)        # -> Verdict
    v.status in ("pass", "fail", "unverifiable", "error")
    v.score                                  # 1.0 / 0.0 for pass / fail; None otherwise

`unverifiable` (the gold or the answer cannot be parsed) and `error` (the checker broke) are
never scored as wrong answers: their score is None, and a reward function must decide what to
do with them explicitly. Code checks refine `fail` with a `detail` (timeout, oom, crash,
sandbox_error) so a report can tell a wrong program from a hostile or broken one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "unverifiable", "error"]
STATUSES: tuple[str, ...] = ("pass", "fail", "unverifiable", "error")


@dataclass(frozen=True)
class Verdict:
    status: Status
    check: str  # the verifier or filter name, as stored in verdicts.check
    score: float | None = None
    extracted_answer: str | None = None
    reason: str = ""
    detail: str | None = None  # e.g. timeout | oom | crash | sandbox_error for code
    elapsed_s: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: expected one of {STATUSES}")
        if self.status in ("unverifiable", "error") and self.score is not None:
            raise ValueError(f"a {self.status} verdict has no score")

    @classmethod
    def passed(cls, check: str, extracted: str | None = None, reason: str = "", **kw) -> Verdict:
        return cls("pass", check, 1.0, extracted, reason, **kw)

    @classmethod
    def failed(cls, check: str, extracted: str | None = None, reason: str = "", **kw) -> Verdict:
        return cls("fail", check, 0.0, extracted, reason, **kw)

    @classmethod
    def unverifiable(cls, check: str, reason: str, extracted: str | None = None, **kw) -> Verdict:
        return cls("unverifiable", check, None, extracted, reason, **kw)

    @classmethod
    def errored(cls, check: str, reason: str, extracted: str | None = None, **kw) -> Verdict:
        return cls("error", check, None, extracted, reason, **kw)

    def as_row(self) -> dict:
        """The fields of a `verdicts` row this verdict fills."""
        # Field by field: dataclasses.asdict deep-copies `extra` only to drop it (it was 40% of
        # verify_samples' time on plain-number answers).
        reason = self.reason
        if self.detail:
            reason = f"{self.detail}: {self.reason}" if self.reason else self.detail
        return {"status": self.status, "check": self.check, "score": self.score,
                "extracted_answer": self.extracted_answer, "reason": reason, "elapsed_s": self.elapsed_s}
