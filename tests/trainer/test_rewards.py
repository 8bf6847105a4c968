"""GRPO rewards: the factory's verifiers and filters as weighted reward functions, the DAPO
over-long penalty, the (sample hash, function version) cache and the per-function breakdown."""

from __future__ import annotations

import json

import pytest

from trainer import rewards as rw
from trainer.rewards import RewardConfig, RewardSpec, Scorer, overlong_penalty


def sample(completion: str, gold: str = "18", domain: str = "math", **kw) -> dict:
    return {"problem_id": "p1", "completion": completion, "reference_answer": gold, "domain": domain, **kw}


def test_math_accuracy_through_the_math_verifier():
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="accuracy", unverifiable=-0.5)]))
    got = scorer.score([sample("<think>9+9</think> The answer is \\boxed{18}."), sample("\\boxed{17}"),
                        sample("I am not sure.")])
    # right, wrong, and no answer at all (unverifiable -> the spec's explicit value)
    assert got.total == [1.0, 0.0, -0.5]
    assert got.statuses["accuracy"] == {"pass": 1, "fail": 1, "unverifiable": 1}


def test_exact_checker_for_other_domains():
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="accuracy")]))
    assert scorer.score([sample("Paris", gold="paris", domain="puzzle"), sample("Rome", gold="Paris", domain="puzzle")]).total == [1.0, 0.0]


def test_format_and_language_filters_as_rewards():
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="format"), RewardSpec(name="language")]))
    english = "<think>First add the two numbers, then check the sum twice to be sure of it.</think> It is 18."
    mixed = "<think>First add the numbers 首先我们把两个数字相加然后检查结果是否正确无误呢对吧</think> 18"
    got = scorer.score([sample(english), sample(mixed), sample("18")])
    assert got.per_function["format"] == [1.0, 1.0, 0.0]  # the last has no <think> block
    assert got.per_function["language"][:2] == [1.0, 0.0]  # mixed scripts fail the consistency check
    assert got.per_function["language"][2] == 0.0  # too few letters to tell: unverifiable -> 0.0


def test_overlong_penalty_values():
    # DAPO: max 100 tokens, buffer 20: free up to 80, linear to -1 at 100, -1 beyond
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert overlong_penalty(101, 100, 20) == -1.0
    assert overlong_penalty(100, 100, 0, truncated=True) == -1.0
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="overlong", max_length=100, buffer=20)]))
    assert scorer.score([sample("x", completion_tokens=n) for n in (50, 95)]).total == [0.0, pytest.approx(-0.75)]


def test_weighted_total_and_breakdown():
    cfg = RewardConfig(functions=[RewardSpec(name="accuracy"), RewardSpec(name="format", weight=0.5)])
    got = Scorer(cfg).score([sample("<think>ok</think> \\boxed{18}"), sample("\\boxed{18}"), sample("<think>hm</think> \\boxed{3}")])
    assert got.per_function == {"accuracy": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0]}
    assert got.total == [1.5, 1.0, 0.5]


def test_cache_by_sample_hash_and_version(monkeypatch):
    calls = []
    real = rw.REWARD_FUNCTIONS["format"]

    def counting(samples, spec, cfg):
        calls.append(len(samples))
        return real(samples, spec, cfg)

    monkeypatch.setitem(rw.REWARD_FUNCTIONS, "format", counting)
    scorer = Scorer(RewardConfig(functions=[RewardSpec(name="format")]))
    a, b = sample("<think>x</think> 1"), sample("2")
    assert scorer.score([a, b]).cache_hits == 0
    again = scorer.score([a, b, sample("3")])
    assert again.cache_hits == 2 and calls == [2, 1]  # only the new completion was checked
    assert again.total == [1.0, 0.0, 0.0]
    monkeypatch.setitem(rw.VERSIONS, "format", lambda spec: "2")  # a verifier change invalidates
    scorer.score([a])
    assert calls == [2, 1, 1]
    assert rw.sample_hash(a) != rw.sample_hash({**a, "reference_answer": "19"})  # the gold is part of the key


def test_code_accuracy_in_the_sandbox():
    from factory.verifiers.sandbox import SandboxConfig, SandboxUnavailable, probe

    try:
        probe(SandboxConfig())
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")
    tests = {"style": "stdio", "cases": [{"stdin": "1 2\n", "stdout": "3"}]}
    good = sample("```python\na, b = map(int, input().split())\nprint(a + b)\n```", gold="", domain="code", tests=tests)
    bad = sample("```python\nprint(0)\n```", gold="", domain="code", tests=tests)
    assert Scorer(RewardConfig()).score([good, bad]).total == [1.0, 0.0]


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="name"):
        RewardSpec(name="helpfulness")


def test_accuracy_checks_through_the_verifier_registry(monkeypatch):
    from factory.verifiers.base import Verdict
    from factory.verifiers.registry import VERIFIERS, Check, Verifier

    calls = {}
    for name in ("math", "code", "exact"):
        def run(checks, options, name=name):
            calls[name] = (list(checks), options)
            return [Verdict.failed(name) for _ in checks]

        monkeypatch.setitem(VERIFIERS, name, Verifier(run, VERIFIERS[name].needs))
    tests = {"style": "stdio", "cases": []}
    scorer = Scorer(RewardConfig(math_timeout_s=3))
    got = scorer.score([sample("\\boxed{18}"), sample("print(1)", domain="code", tests=json.dumps(tests)), sample("Paris", gold="paris", domain="puzzle")])
    assert got.total == [0.0, 0.0, 0.0] and got.statuses["accuracy"] == {"fail": 3}
    assert calls["math"] == ([Check("\\boxed{18}", "18")], calls["math"][1]) and calls["math"][1].timeout_s == 3
    assert calls["code"][0] == [Check("print(1)", "18", tests)] and calls["code"][1].timeout_s is None  # the sandbox's own limits
    assert calls["exact"][0] == [Check("Paris", "paris")]
