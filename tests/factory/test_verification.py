"""factory/verification.py: the rows `factory verify` reads (a bad line is named, never a
traceback) and the verifier run over them (a bad or hostile row costs that row, not the batch)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from factory.verification import read_verify_rows, run_verifier
from factory.verifiers.base import Verdict
from storage.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]
GOOD = b'{"id": 1, "completion": "A: 1", "reference_answer": "1"}\n'


def _bad_input(path: Path, verifier: str = "math") -> list[str]:
    with pytest.raises(BadInput) as e:
        read_verify_rows(path, verifier)
    return str(e.value).splitlines()


def test_a_non_utf8_line_is_named(tmp_path):
    f = tmp_path / "rows.jsonl"
    bad = b'{"id": 2, "completion": "caf\xe9", "reference_answer": "1"}\n'  # Latin-1, not UTF-8
    f.write_bytes(GOOD + bad + GOOD)
    lines = _bad_input(f)
    col = bad.index(b"\xe9") + 1
    assert lines == ["1 bad row(s), nothing verified:", f"{f}:2: not UTF-8 text (byte 0xe9 at column {col})"]


@pytest.mark.parametrize(
    "line,why",
    [("[" * 100_000 + "]" * 100_000, "invalid JSON (nested deeper than the JSON reader allows)"),
     ('{"id": 2, "completion": "x", "reference_answer": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
     ('{"id": ' + "1" * 5000 + ', "completion": "x", "reference_answer": "1"}', "invalid JSON (Exceeds the limit (4300 digits)"),
     ('{"id": 2, "completion": "\\ud800", "reference_answer": "1"}', "unpaired UTF-16 surrogate"),
     ("[1, 2]", "expected a JSON object, got list")],
)
def test_lines_python_cannot_take_are_one_line_each(tmp_path, line, why):
    f = tmp_path / "rows.jsonl"
    f.write_bytes(GOOD + line.encode() + b"\n")
    lines = _bad_input(f)
    assert len(lines) == 2 and lines[1].startswith(f"{f}:2: ") and why in lines[1], lines


def _code_rows(timeouts):
    tests = {"style": "stdio", "cases": [{"stdin": "", "stdout": "1"}]}
    return [{"id": i, "completion": "print(1)", "tests": {**tests, **({} if t is None else {"timeout_s": t})}}
            for i, t in enumerate(timeouts)]


def test_a_bad_tests_timeout_makes_only_that_row_unverifiable(tmp_path, monkeypatch):
    import factory.verifiers.code as code

    sent = []

    def fake_batch(pairs, config=None):  # the sandbox is not what is tested here
        sent.extend(pairs)
        return [Verdict.passed("code", c) for c, _ in pairs]

    monkeypatch.setattr(code, "verify_code_batch", fake_batch)
    timeouts = [None, "abc", 2, -1, float("nan"), True, 1e9, 0.5]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _code_rows(timeouts)))
    got = run_verifier(read_verify_rows(f, "code"), "code")
    assert [g["id"] for g in got] == list(range(len(timeouts)))
    assert [g["status"] for g in got] == ["pass", "unverifiable", "pass", "unverifiable", "unverifiable",
                                          "unverifiable", "unverifiable", "pass"]
    assert got[1]["reason"] == "tests.timeout_s 'abc': expected a positive number of seconds, at most 600"
    assert all(g["reason"].startswith("tests.timeout_s") for g in got if g["status"] == "unverifiable")
    assert [t.get("timeout_s") for _, t in sent] == [None, 2, 0.5]  # only the good rows reach the sandbox


def test_regex_timeout_holds_and_the_other_rows_are_verified(tmp_path):
    rows = [{"id": "slow", "completion": "Answer: " + "a" * 40 + "b", "pattern": r"(a+)+$"},
            {"id": "ok", "completion": "Answer: 12:30", "pattern": r"\d\d:\d\d"},
            {"id": "no", "completion": "Answer: noon", "pattern": r"\d\d:\d\d"}]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # In a child process: on a regex engine without a timeout this hangs instead of failing.
    script = textwrap.dedent(f"""
        import json, time
        from factory.verification import read_verify_rows, run_verifier
        t0 = time.monotonic()
        out = run_verifier(read_verify_rows({str(f)!r}, "regex"), "regex", timeout_s=2)
        print(json.dumps({{"took": time.monotonic() - t0, "out": out}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [(o["id"], o["status"]) for o in res["out"]] == [("slow", "unverifiable"), ("ok", "pass"), ("no", "fail")]
    assert res["out"][0]["detail"] == "timeout" and "took over 2s" in res["out"][0]["reason"]
    assert 1.9 <= res["took"] < 10, res["took"]


def test_math_restatements_fail_and_answers_pass(tmp_path):
    rows = [{"id": 1, "completion": "The answer is 2 + 5.", "reference_answer": "7"},
            {"id": 2, "completion": "So, the final answer is: 4 + 4 = N.", "reference_answer": 8},
            {"id": 3, "completion": "<think>4 + 4</think>The answer is 8 apples.", "reference_answer": 8}]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = run_verifier(read_verify_rows(f, "math"), "math")
    assert [g["status"] for g in got] == ["fail", "fail", "pass"]
    assert "the answer is not" in got[0]["reason"] and "equation" in got[1]["reason"]
