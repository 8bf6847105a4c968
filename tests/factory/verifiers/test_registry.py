"""factory/verifiers/registry.py: the one list of verifier names (recipes, `factory verify` and
its help agree with it), an unknown name refused with the field named, a check without its
reference made unverifiable before the batch runs, and every factory caller (`factory verify`,
the flow's verify stage, eval's checker) reaching the verifier through the registry."""

import json
import re

import pytest
from typer.testing import CliRunner

from factory import recipe as recipe_mod
from factory.benchmarks import get
from factory.evaluation import Checker
from factory.recipe import Recipe, load_recipe
from factory.stages import verify_samples
from factory.verification import read_verify_rows, run_verifier
from factory.verifiers.base import Verdict
from factory.verifiers.registry import VERIFIERS, Check, Options, Verifier, require_verifier, verify
from storage.errors import BadInput


def test_recipes_factory_verify_and_its_help_name_the_registry_verifiers(tmp_path):
    assert recipe_mod.VERIFIERS == (*VERIFIERS, "auto")  # "auto" is a recipe's choice, not a verifier
    for name in VERIFIERS:  # every registry name is accepted by `factory verify --verifier`
        f = tmp_path / f"{name}.jsonl"
        f.write_text(json.dumps({"id": 1, "completion": "x", "reference_answer": "1", "pattern": "1",
                                 "tests": {"style": "stdio", "cases": []}}) + "\n")
        assert len(read_verify_rows(f, name)) == 1
    from flows.cli import app

    text = re.sub(r"\s+", " ", CliRunner().invoke(app, ["verify", "--help"], terminal_width=400).stdout)
    assert all(re.search(rf"\b{n}\b", text) for n in VERIFIERS), text


def test_an_unknown_name_is_refused_naming_the_field(tmp_path):
    with pytest.raises(BadInput, match=r"^--verifier 'maths': expected one of math, code, choice, exact, regex$"):
        require_verifier("maths", "--verifier")
    with pytest.raises(BadInput, match=r"^verifier 'maths': expected one of"):
        verify("maths", [Check("x", "1")])
    with pytest.raises(BadInput, match=r"^--verifier 'auto': expected one of"):  # a recipe choice only
        read_verify_rows(tmp_path / "absent.jsonl", "auto")
    (tmp_path / "data.jsonl").write_text('{"question": "1 + 1?", "answer": "2"}\n')
    (tmp_path / "r.yaml").write_text("name: r\nquestions:\n  - {source: jsonl, path: data.jsonl}\nverify: [math, maths]\n")
    expected = r"r\.yaml:4: verify: unknown verifier\(s\) \['maths'\]: expected some of \['math', 'code', 'choice', 'exact', 'regex', 'auto'\]"
    with pytest.raises(BadInput, match=expected):
        load_recipe(tmp_path / "r.yaml")


def test_a_check_without_its_reference_is_unverifiable_and_skips_the_batch(monkeypatch):
    seen = []

    def spy(checks, options):
        seen.extend(checks)
        return [Verdict.passed("exact", c.reference) for c in checks]

    monkeypatch.setitem(VERIFIERS, "exact", Verifier(spy))
    checks = [Check("A: 1", "1"), Check("A: 2"), Check("A: 3", "3")]
    got = verify("exact", checks)
    assert [v.status for v in got] == ["pass", "unverifiable", "pass"] and got[1].reason == "no reference answer"
    assert seen == [checks[0], checks[2]]  # input order kept around the gap
    assert verify("exact", [Check("A: 2")], Options(missing="no gold and no label"))[0].reason == "no gold and no label"
    assert verify("code", [Check("print(1)", tests={})])[0].reason == "no tests"
    assert verify("exact", []) == []


def test_the_real_verifiers_answer_through_one_signature():
    got = verify("exact", [Check("The answer is Paris", "paris"), Check("The answer is Rome", "Paris")])
    assert [v.status for v in got] == ["pass", "fail"]
    got = verify("choice", [Check("Answer: (B)", "B")]) + verify("math", [Check("\\boxed{18}", "18.0")], Options(timeout_s=5))
    assert [v.status for v in got] == ["pass", "pass"]


@pytest.fixture
def spies(monkeypatch):
    """Each registry verifier replaced by a spy that records (checks, options) and passes all."""
    calls: dict[str, list] = {}
    for name, v in list(VERIFIERS.items()):
        def run(checks, options, name=name):
            calls.setdefault(name, []).append((list(checks), options))
            return [Verdict.passed(name) for _ in checks]

        monkeypatch.setitem(VERIFIERS, name, Verifier(run, v.needs))
    return calls


def test_factory_verify_goes_through_the_registry(spies):
    rows = [{"id": 1, "completion": "Answer: 12:30", "pattern": r"\d\d:\d\d"}]
    assert run_verifier(rows, "regex", timeout_s=3)[0]["status"] == "pass"
    ((checks, options),) = spies["regex"]
    assert checks == [Check("Answer: 12:30", r"\d\d:\d\d")] and options.timeout_s == 3


def test_the_flow_verify_stage_goes_through_the_registry(spies):
    recipe = Recipe.model_validate({"name": "r", "questions": [{"source": "jsonl", "path": "x.jsonl"}], "verify": ["exact", "code"],
                                    "filters": [], "verify_timeout_s": 7, "sandbox_workers": 3})
    problems = {"p": {"problem_id": "p", "domain": "puzzle", "reference_answer": "4"},
                "q": {"problem_id": "q", "domain": "code", "tests": '{"style": "stdio", "cases": []}'},
                "n": {"problem_id": "n", "domain": "puzzle"}}
    samples = [{"sample_id": f"s{p}", "problem_id": p, "completion": f"answer {p}"} for p in ("p", "q", "n")]
    rows = verify_samples(samples, problems, recipe, labels={"n": "label"})
    assert [(r["sample_id"], r["check"], r["status"]) for r in rows] == [("sp", "exact", "pass"), ("sq", "code", "pass"), ("sn", "exact", "pass")]
    ((exact, options),) = spies["exact"]
    assert exact == [Check("answer p", "4"), Check("answer n", "label")]  # the majority label stands in for gold
    assert (options.timeout_s, options.workers) == (7, 3)
    ((code, _),) = spies["code"]
    assert code == [Check("answer q", None, {"style": "stdio", "cases": []})]


def test_eval_checks_through_the_registry(spies):
    item = {"id": "1", "problem": "1 + 1?", "answer": "2"}
    assert [v.status for v in Checker(get("gsm8k")).check(item, ["\\boxed{2}", "\\boxed{3}"])] == ["pass", "pass"]
    ((checks, _),) = spies["math"]
    assert checks == [Check("\\boxed{2}", "2"), Check("\\boxed{3}", "2")]

