"""The verdict contract: statuses, scores, and the `verdicts` row a verdict fills."""

import pytest

from factory.verifiers.base import Verdict
from storage import schemas


def test_as_row_fills_exactly_the_verdict_columns_a_check_owns():
    row = Verdict.failed("code", "42", "wrong output", detail="timeout", elapsed_s=1.5, extra={"k": [1]}).as_row()
    owned = set(schemas.VERDICTS.names) - {"sample_id", "run_id", "check_version", "created_at"}
    assert set(row) == owned
    assert row == {"status": "fail", "check": "code", "score": 0.0, "extracted_answer": "42",
                   "reason": "timeout: wrong output", "elapsed_s": 1.5}


def test_as_row_reason_falls_back_to_detail_and_leaves_extra_alone():
    extra = {"tests": [1, 2]}
    v = Verdict.errored("code", "", detail="sandbox_error", extra=extra)
    assert v.as_row()["reason"] == "sandbox_error"
    assert Verdict.passed("math").as_row()["reason"] == ""
    assert v.extra is extra and extra == {"tests": [1, 2]}


@pytest.mark.parametrize("status,score", [("unverifiable", 1.0), ("error", 0.0)])
def test_unscored_statuses_refuse_a_score(status, score):
    with pytest.raises(ValueError, match="no score"):
        Verdict(status, "math", score)


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        Verdict("maybe", "math")  # type: ignore[arg-type]
