"""The programs that run outside this process (factory/verifiers/programs/): each file compiles, the
text programs import the standard library only, their pure helpers work in-process, and the code
verifier's runner and judge speak their protocol in a plain subprocess (no sandbox needed: the
sandboxed runs are tested in test_sandbox.py, test_code.py and test_reward_hacks.py)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import Counter, OrderedDict, deque
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from factory.verifiers import programs
from factory.verifiers.programs import codec, judge, regex_worker, zygote
from factory.verifiers.programs import source as program_source

FOLDER = Path(programs.__file__).parent
FILES = sorted(p.name for p in FOLDER.glob("*.py") if p.name != "__init__.py")


# ------------------------------------------------------------------------- the files
def test_every_program_file_is_listed():
    assert sorted([*programs.TEXT_PROGRAMS, "math_worker.py"]) == FILES


@pytest.mark.parametrize("name", FILES)
def test_program_compiles_and_is_sent_as_read(name):
    text = (FOLDER / name).read_text()
    compile(text, name, "exec")
    assert program_source(name) == text


@pytest.mark.parametrize("name", programs.TEXT_PROGRAMS)
def test_text_programs_import_the_standard_library_only(name):
    """They run with -I -S or inside the sandbox, where nothing else is importable."""
    tree = ast.parse(program_source(name))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    assert found <= sys.stdlib_module_names, sorted(found - sys.stdlib_module_names)


@pytest.mark.parametrize("names", [("codec.py", "runner.py"), ("codec.py", "judge.py")])
def test_joined_programs_compile(names):
    compile(program_source(*names), "+".join(names), "exec")


# ------------------------------------------------------------------------- codec
PLAIN = [None, True, 0, -7, 1 << 80, 2.5, float("inf"), "é", b"\x00\xff", bytearray(b"ab"), [1, [2]],
         (1, (2,)), {1: "a", "k": [1]}, {1, 2}, frozenset({3}), 1 + 2j, range(1, 9, 2), Fraction(1, 3),
         Decimal("1.10"), Counter("aab"), OrderedDict(a=1), deque([1, 2]), int, str]


@pytest.mark.parametrize("value", PLAIN, ids=[type(v).__name__ for v in PLAIN])
def test_codec_round_trip_keeps_value_and_exact_type(value):
    enc, dec, _, _ = codec._rf_codec()
    back = dec(json.loads(json.dumps(enc(value))))
    assert back == value and type(back) is type(value)


def test_codec_drains_iterators_and_refuses_what_is_not_plain():
    enc, dec, NotPlain, _ = codec._rf_codec()
    assert list(dec(enc(x * x for x in range(3)))) == [0, 1, 4]

    class Forged(int):
        def __eq__(self, other):
            return True

    for bad in (Forged(1), [Forged(1)], object(), lambda: 0):
        with pytest.raises(NotPlain):
            enc(bad)
    nested: list = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(NotPlain, match="nested deeper"):
        enc(nested)
    for bad in ({"$": "tuple"}, {"$": "float", "v": "1e999"}, {"$": "nope", "v": 1}, {"x": 1}):
        with pytest.raises(NotPlain):
            dec(bad)


def test_codec_reports_a_pending_argument():
    enc, _, _, PendingArg = codec._rf_codec(pending=judge.Pending)
    with pytest.raises(PendingArg):
        enc([1, judge.Pending()])


# ------------------------------------------------------------------------- judge helpers
def test_judge_name_helpers():
    src = "import math as m\nx = f(y)\ndef g(a):\n    return a + z\n"
    assert judge.bound(src) >= {"m", "x", "g", "a"}
    assert judge.loads(src) == {"f", "y", "a", "z"}


def test_judge_pending_absorbs_what_a_test_does():
    p = judge.Pending()
    assert p == 3 and p != 3 and bool(p) and list(p) == [] and str(p + 1) == "" and int(p.x()[0]) == 0


def test_judge_rewrites_asserts_into_calls():
    tree = judge.Asserts().visit(ast.parse("assert f(1) == 2"))
    assert ast.unparse(ast.fix_missing_locations(tree)) == "_rf_assert(f(1) == 2)"


# ------------------------------------------------------------------------- runner + judge, unsandboxed
def _run_fd3(text: str, stdin: dict) -> dict:
    """Run a program as the sandbox would (stdin JSON, result on fd 3), without the sandbox."""
    r, w = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", f"import os; os.dup2({w}, 3); exec({text!r})"],
                              input=json.dumps(stdin), capture_output=True, text=True, timeout=60, pass_fds=(w,))
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            out = f.read()
    finally:
        if w >= 0:
            os.close(w)
    assert out, proc.stderr
    return json.loads(out)


def _judge(asserts: list[str], table: dict) -> dict:
    payload = {"prompt": "", "setup": "", "entry_point": "add", "asserts": asserts, "test": None,
               "candidate_names": {"defs": ["add"], "classes": []}}
    return _run_fd3(program_source("codec.py", "judge.py"), {"payload": payload, "table": table, "budget_s": 10})


def _runner(code: str, calls: list[dict]) -> list[dict]:
    return _run_fd3(program_source("codec.py", "runner.py"), {"code": code, "setup": "", "calls": calls})["results"]


@pytest.mark.parametrize("code, verdict", [("def add(a, b):\n    return a + b\n", "pass"),
                                           ("def add(a, b):\n    return a - b\n", "fail")])
def test_judge_decides_from_the_runners_data(code, verdict):
    asserts = ["assert add(1, 2) == 3", "assert add(add(1, 1), 2) == 4"]
    table: dict = {}
    for _ in range(4):
        doc = _judge(asserts, table)
        if "verdict" in doc:
            break
        need = doc["need"]
        for call, res in zip(need, _runner(code, need)):
            table[call["key"]] = res
    assert doc["verdict"] == verdict
    assert len(table) == 3  # add(1, 2) and add(1, 1); then add(2, 2) or add(0, 2), a dependent call
    assert (doc.get("detail"), doc["reason"]) == ((None, "all tests passed") if verdict == "pass"
                                                  else ("wrong_answer", "assert failed in assert 0"))


def test_runner_returns_forged_values_as_errors_not_values():
    code = "class I(int):\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return I(5)\n"
    [res] = _runner(code, [{"name": "add", "args": [1, 2], "kwargs": {"$": "dict", "v": []}}])
    assert "v" not in res and "not plain data" in res["error"]


# ------------------------------------------------------------------------- zygote, probes, workers
def test_zygote_wipe_removes_what_a_run_locked(tmp_path):
    locked = tmp_path / "a" / "b"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    (locked / "link").symlink_to(tmp_path)  # os.walk lists a link to a directory among the dirs
    (tmp_path / "link").symlink_to("/etc")
    os.chmod(tmp_path / "a", 0)
    zygote.wipe(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_sandbox_starts_the_zygote_file_with_its_marker():
    from factory.verifiers.sandbox import MARKER, SandboxConfig, _zygote_argv

    argv = _zygote_argv(SandboxConfig())
    assert argv[-2:] == [program_source("zygote.py"), MARKER]


def test_rlimits_probe_sets_the_limit_it_is_given():
    out = subprocess.run([sys.executable, "-I", "-S", "-c", program_source("rlimits_probe.py"), str(3 << 30)],
                         capture_output=True, text=True, timeout=60, env={})
    assert out.stdout.strip() == str(3 << 30)


@pytest.mark.parametrize("pattern, text, kind", [("a+b", "aab", "match"), ("a+", "aab", "no_match"), ("(", "x", "bad_pattern")])
def test_regex_worker_answer(pattern, text, kind):
    assert regex_worker.answer(pattern, text)[0] == kind


def test_regex_worker_takes_its_memory_cap_from_argv():
    from factory.verifiers.workers import ScriptWorker

    w = ScriptWorker(program_source("regex_worker.py"), "regex", args=(str(700 << 20),))
    try:
        limits = Path(f"/proc/{w.pid}/limits").read_text()
        w.conn.send(("b+", "bbb"))
        assert w.conn.recv() == ("match", "")
    finally:
        w.kill()
    assert [line.split()[3] for line in limits.splitlines() if line.startswith("Max address space")] == [str(700 << 20)]


def test_math_worker_answer_in_process():
    pytest.importorskip("math_verify")
    from factory.verifiers.math import MathOptions
    from factory.verifiers.programs import math_worker

    parse_first = math_worker.parser()
    opts = MathOptions()

    def ask(gold, pred):
        return math_worker.answer(((gold,), True, (pred,) if pred else (), opts, 0.0), parse_first)[0]

    assert ask("$\\frac{1}{2}$", "$0.5$") == "equal"
    assert ask("$(x+1)^2$", "$x^2+2x+1$") == "equal"
    assert ask("$3$", "$4$") == "different"
    assert ask("$3$", None) == "pred_unparseable"
    assert ask("\\boxed{Let's think step by step.}", "$3$") == "gold_unparseable"
