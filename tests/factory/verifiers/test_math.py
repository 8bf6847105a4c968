"""Math verifier: extraction, the fast path, the worker pool's timeouts, and agreement with real
labelled data (Math-Verify's own cases, GPT-3 GSM8K solutions, MR-GSM8K wrong solutions)."""

import asyncio
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from factory.verifiers.math import (
    MathOptions,
    check_version,
    extract_answer,
    fast_number,
    prepare_gold,
    surface_form,
    verify_answer,
    verify_math,
    verify_math_batch,
    why_not_a_number,
    worker_pids,
)
from tests.data import VERIFIER_CASES as CASES


def _rows(name: str) -> list[dict]:
    with open(CASES / name) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------- extraction


def test_extract_boxed_with_nested_and_escaped_braces():
    text = r"so $x = \boxed{\frac{a}{\{b\}}}$ and that is it"
    assert extract_answer(text) == r"\frac{a}{\{b\}}"
    assert extract_answer(r"\boxed{1} then \fbox{2}") == "2"  # the last box wins
    assert extract_answer(r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}") == r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"


def test_extract_skips_a_truncated_box():
    assert extract_answer(r"\boxed{3} ... and finally \boxed{\frac{1}{2") == "3"


def test_extract_looks_only_after_think():
    text = r"<think>maybe \boxed{7}? no.</think>The answer: \boxed{8}"
    assert extract_answer(text) == "8"
    # an answer only inside the reasoning does not count
    assert extract_answer(r"<think>\boxed{7}</think>I am not sure.") is None


def test_extract_order_of_patterns():
    assert extract_answer("blah\nThe final answer is $28\\%$. I hope it is correct.") == "28\\%"
    assert extract_answer("The final answer is 3.5.") == "3.5"
    assert extract_answer("steps\n#### 1,000\n") == "1,000"
    assert extract_answer("Q: what?\nsteps\nA: 18") == "18"
    assert extract_answer("work\n**Answer:** 42") == "42"
    assert extract_answer("Step 6: #### 390\nStep 7: The answer is: 390") == "390"
    assert extract_answer(r"#### 5 but \boxed{6}") == "6"  # a box beats everything


def test_no_answer_is_unverifiable_not_fail():
    for text in ("I think it is about twelve", "", "<think>\\boxed{3}</think>"):
        v = verify_math(text, "12")
        assert v.status == "unverifiable" and v.score is None and v.extracted_answer is None


N = 200_000
# Completions built to make extraction slow: many boxes that never close (each used to be scanned
# to the end), chains of `\boxed` without braces, deep nesting, long runs without a line break.
HOSTILE = {
    "unclosed boxes": "\\boxed{" * (N // 7),
    "brace-less box chain": "\\boxed" * (N // 6),
    "nested boxes": "\\boxed{" * (N // 14) + "1" + "}" * (N // 14),
    "boxes then text": "\\boxed{1}" * (N // 9),
    "answer lines": "The final answer is: 4 + 4 = N. " * (N // 32),
    "one long line": "A: " + "1 + " * (N // 4),
    "hashes": "#" * N,
    "braces": "{" * N,
    "backslashes": "\\" * N,
    "text commands": "Answer: " + "\\text{" * (N // 6),
    "dollars": "The answer is $" + "$" * N,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_are_read_in_linear_time(name):
    text = HOSTILE[name]
    for step in (extract_answer, lambda t: surface_form(extract_answer(t) or t), lambda t: why_not_a_number(extract_answer(t) or t)):
        t0 = time.perf_counter()
        step(text)
        assert time.perf_counter() - t0 < 2.0, name  # the old box scan took minutes on the first three


# ----------------------------------------------------------------- strict numeric answers


@pytest.mark.parametrize(
    "completion,gold,why",
    [("The answer is 2 + 5.", "7", "2 numbers"),  # math-verify evaluates it to 7
     ("So, the final answer is: 4 + 4 = N.", "8", "an equation"),
     (r"\boxed{4 + 4 = 8}", "8", "an equation"),
     ("The answer is 2 + 5 = 7.", "7", "an equation"),
     (r"\boxed{N}", "8", "no number"),
     (r"\boxed{?}", "8", "no number"),
     ("Answer: What is 2 + 5?", "7", "expression"),
     (r"\boxed{\sqrt{49}}", "7", r"'\\sqrt'"),
     (r"\boxed{2^3}", "8", "'^3'"),
     (r"\boxed{7 + 0}", "7", "2 numbers"),
     (r"\boxed{x = 2 + 5}", "7", "2 numbers"),
     ("The answer is 7 - x.", "7", "'-'")],
)
def test_restatements_fail_against_a_number(completion, gold, why):
    v = verify_math(completion, gold)
    assert (v.status, v.extra["path"]) == ("fail", "strict"), v
    assert v.reason.startswith("the reference is a number and the answer is not") and why in v.reason, v.reason
    # without the option math-verify has the last word (it credits these; `N`, `?` are plain wrong)
    loose = verify_math(completion, gold, options=MathOptions(strict_numeric=False))
    assert loose.extra.get("path") != "strict"


def test_restatements_fail_in_a_batch_too():
    got = verify_math_batch([("The answer is 2 + 5.", "7"), ("The answer is 7.", "7"), ("The answer is 3 + 4.", 7)])
    assert [v.status for v in got] == ["fail", "pass", "fail"]


@pytest.mark.parametrize(
    "answer,gold",
    [("7", "7"), ("7.0", "7"), ("7/1", "7"), ("14/2", "7"), (r"\boxed{7}", "7"), ("7 apples", "7"),
     ("$7", "7"), (r"\$7.00", "7"), ("7%", "7"), (r"7\%", "7"), ("1,000", "1000"), (r"1{,}000", "1000"),
     ("-3", "-3"), (r"\frac{1}{2}", "0.5"), (r"\dfrac12", "0.5"), ("3/4", "3/4"), ("x = 7", "7"),
     (r"\theta = 30^\circ", "30"), (r"24 \text{ cm}^2", "24"), ("Janet makes $18 every day", "18"),
     (r"k = \frac{1}{3}", "1/3"), (r"1.2 \times 10^3", "1200"), ("7 (seven)", "7")],
)
def test_numbers_in_the_usual_forms_still_pass(answer, gold):
    assert why_not_a_number(answer) is None
    # (math-verify reads `\boxed{7 (seven)}` as a product; such an answer comes on a line)
    v = verify_math(f"\\boxed{{{answer}}}" if "(" not in answer else f"The answer is {answer}.", gold)
    assert v.status == "pass", v


def test_symbolic_references_keep_math_verify_equivalence():
    # the gold is not a plain number: no strictness, `2 + 5`-like forms are still equal
    assert verify_math(r"\boxed{1 + x}", "x+1").status == "pass"
    assert verify_math(r"\boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}").status == "pass"
    assert verify_math(r"\boxed{2 \cdot \pi}", r"2\pi").status == "pass"


def test_strictness_is_in_the_check_version():
    assert check_version() == "2+strict"
    assert check_version(MathOptions(strict_numeric=False)) == "2"


# ----------------------------------------------------------------- fast path


@pytest.mark.parametrize(
    "text,value",
    [("18", 18), ("1,000", 1000), ("$18", 18), ("18.0", 18), ("3/4", 0.75), ("-2", -2),
     ("$\\frac{3}{4}$", 0.75), ("-\\dfrac{10}{9}", -10 / 9), ("\\boxed{14{,}916}", 14916), (".5", 0.5)],
)
def test_fast_number_reads_plain_numbers(text, value):
    got = fast_number(text)
    assert got is not None and float(got[0]) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0,111", "1,22", "28\\%", "x+1", "1 000", "- 2", "5/0", "\\sqrt{2}", "2^{10}"])
def test_fast_number_leaves_the_rest_to_math_verify(text):
    assert fast_number(text) is None


@pytest.mark.parametrize(
    "pred,gold,status",
    [("1,000", "1000", "pass"), ("$18", "18", "pass"), ("18.0", "18", "pass"), ("3/4", "0.75", "pass"),
     ("-2", "-2", "pass"), ("17", "18", "fail"), ("0.5", "0.75", "fail"), ("\\frac{28}{6}", "\\frac{14}{3}", "pass")],
)
def test_fast_path_decides_without_workers(pred, gold, status):
    v = verify_math(f"A: {pred}", gold)
    assert v.status == status and v.extra["path"] == "fast"


def test_close_decimals_go_to_math_verify():
    v = verify_math("A: 0.333333", "\\frac{1}{3}")  # within float_rounding=6: math-verify decides
    assert v.status == "pass" and v.extra["path"] == "math-verify"
    v = verify_math("A: 0.33", "\\frac{1}{3}")
    assert v.status == "fail" and v.extra["path"] == "fast"


def test_slow_path_and_unparseable_rules():
    assert verify_math(r"\boxed{\frac{\sqrt{8}}{2}}", r"\sqrt{2}").status == "pass"
    assert verify_math(r"\boxed{(1, 2]}", r"(1,2]").status == "pass"
    # extracted but not a number of any kind: the model committed to an answer -> fail
    assert verify_math("A: no idea", "5").status == "fail"
    gold = prepare_gold("18")
    assert prepare_gold(gold) is gold and prepare_gold("18") is gold  # parsed once per problem


def test_same_form_shortcut_only_after_the_gold_parsed():
    assert surface_form(r"\boxed{\left( 3, \dfrac{\pi}{2} \right)}") == surface_form(r"$(3,\frac{\pi}{2})$.")
    assert surface_form(r"\pi r") != surface_form(r"\pir")  # a space after a command is meaning
    gold = r"\left( 3, \frac{\pi}{2} \right)"
    pairs = [(r"\boxed{(3,\dfrac{\pi}{2})}", gold), (r"\boxed{(3, \pi)}", gold), (r"\boxed{(3,\dfrac{\pi}{2})}", gold)]
    got = verify_math_batch(pairs)
    assert [v.status for v in got] == ["pass", "fail", "pass"]
    # the differing answer probed the gold through sympy; the same-form ones then skipped it
    assert [v.extra["path"] for v in got] == ["same-form", "math-verify", "same-form"]
    # a gold that is not math stays unverifiable even when the answer repeats it word for word
    words = "Let's think step by step."
    assert [v.status for v in verify_math_batch([(f"\\boxed{{{words}}}", words)] * 2)] == ["unverifiable"] * 2


def test_escaped_dollar_is_not_a_math_delimiter():
    assert verify_math(r"The final answer is $\boxed{\$32,\!348}$.", r"\$32,\!348").status == "pass"
    assert verify_math(r"\boxed{\$32,\!348}", r"\$32,\!349").status == "fail"


def test_batch_keeps_order_and_mixes_paths():
    pairs = [("A: 18", "18"), (r"\boxed{\sqrt{2}}", r"\frac{2}{\sqrt{2}}"), ("nothing", "3"), ("A: 4", "5")]
    got = verify_math_batch(pairs)
    assert [v.status for v in got] == ["pass", "pass", "unverifiable", "fail"]
    assert [v.extra.get("path") for v in got] == ["fast", "math-verify", None, "fast"]


# ----------------------------------------------------------------- timeouts and processes


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to count processes")
def test_timeout_off_the_main_thread_is_an_error_and_leaks_nothing():
    assert verify_math(r"\boxed{x+1}", "1+x").status == "pass"  # the pool is up
    before = set(worker_pids())
    out = {}

    def call():
        out["v"] = verify_math(r"\boxed{x+1}", "1+x", timeout_s=0.5, _worker_sleep_s=30)

    t0 = time.monotonic()
    th = threading.Thread(target=call)
    th.start()
    th.join(60)
    assert not th.is_alive()
    v = out["v"]
    assert v.status == "error" and v.detail == "timeout" and v.score is None and "0.5" in v.reason
    assert time.monotonic() - t0 < 20
    killed = before - set(worker_pids())
    assert len(killed) == 1 and not any(_alive(p) for p in killed)
    # the pool still answers, from asyncio too
    v2 = asyncio.run(asyncio.to_thread(verify_math, r"\boxed{2x}", "x+x"))
    assert v2.status == "pass"
    live = set(worker_pids())
    assert live and all(_alive(p) for p in live)
    # Nothing stray: every process the forkserver holds is a live worker. (Other tests of a full
    # run may own processes under this one too, so only the forkserver's children are checked.)
    servers = [p for p in _descendants(os.getpid()) if b"multiprocessing.forkserver" in _cmdline(p)]
    assert servers, "workers are expected to come from multiprocessing's forkserver"
    held = set().union(*(_descendants(p) for p in servers))
    assert {p for p in held if _alive(p)} <= live and not (held - live), (held, live)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


# ----------------------------------------------------------------- real data


def _options(kw: dict) -> MathOptions:
    return MathOptions(
        match_types=tuple(kw.get("match_types", ("latex", "expr"))),
        float_rounding=kw.get("precision", 6),
        strict=kw.get("strict", True),
        allow_set_relation_comp=kw.get("allow_set_relation_comp", False),
    )


def test_all_math_verify_suite_cases_agree():
    from concurrent.futures import ThreadPoolExecutor

    rows = _rows("math_verify_cases.jsonl")
    assert len(rows) == 269

    def one(r):
        return verify_answer(r["pred"], r["gold"], options=_options(r["compare_kwargs"]))

    with ThreadPoolExecutor(4) as ex:  # the pool spreads them over its workers
        verdicts = list(ex.map(one, rows))
    wrong = [
        (i, r["test_name"], r["gold"][:60], r["pred"][:60], r["expected"], v.status, v.reason)
        for i, (r, v) in enumerate(zip(rows, verdicts))
        if (v.status == "pass") != bool(r["expected"])
    ]
    assert wrong == [], f"{len(wrong)}/269 cases disagree: {wrong}"
    assert not any(v.status == "error" for v in verdicts)


def test_labelled_gsm8k_solutions_agree_with_labels():
    rows = _rows("gsm8k_model_solutions_labelled.jsonl")
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    pairs, labels = [], []
    for r in rows:
        gold = prepare_gold(r["ground_truth"].rsplit("A:", 1)[1].strip())
        for k in keys:
            pairs.append((r[k]["solution"], gold))
            labels.append(bool(r[k]["is_correct"]))
    assert len(pairs) == 5276
    t0 = time.perf_counter()
    verdicts = verify_math_batch(pairs)
    elapsed = time.perf_counter() - t0
    # agreement: pass <=> labelled correct (unverifiable and fail both mean "not credited")
    agree = sum((v.status == "pass") == y for v, y in zip(verdicts, labels))
    rate = agree / len(pairs)
    fast = sum(v.extra.get("path") == "fast" for v in verdicts)
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "unverifiable", "error")}
    msg = f"agreement {agree}/{len(pairs)} = {rate:.4%}; statuses {counts}; fast path {fast}; {elapsed:.2f}s"
    assert rate >= 0.995, msg
    assert counts["error"] == 0, msg
    assert not any(v.status == "unverifiable" and y for v, y in zip(verdicts, labels)), msg
    assert fast >= 0.95 * len(pairs), msg  # the throughput promise: sympy is the exception here


def _final_hash_number(text: str) -> float | None:
    """The number after the last `####`, read independently of the verifier."""
    found = re.findall(r"####\s*\$?(-?[\d,]*\.?\d+)", text)
    try:
        return float(found[-1].replace(",", "")) if found else None
    except ValueError:
        return None


def test_mr_gsm8k_wrong_solutions_never_pass_unless_the_number_is_right():
    rows = _rows("mr_gsm8k_wrong_solutions.jsonl")
    assert len(rows) == 590
    pairs = [("\n".join(r["model_output_steps"]), str(r["ground_truth_answer"])) for r in rows]
    verdicts = verify_math_batch(pairs)
    # Every solution is labelled wrong (model_output_solution_correctness); the final number is
    # right where model_output_answer_correctness == "correct" (19 rows), and in one more row whose
    # label slipped: 8df91126... ends "#### 4" with ground truth "4" but is labelled "wrong"
    # (the annotator judged the flawed step, 7 - 3 + 2 = 4). We read the final number ourselves.
    right, slips = [], []
    for r, (text, gold) in zip(rows, pairs):
        labelled = r["model_output_answer_correctness"] == "correct"
        final = _final_hash_number(text)
        try:
            same = final is not None and final == float(gold.replace(",", ""))
        except ValueError:
            same = False
        right.append(labelled or same)
        if same and not labelled:
            slips.append(r["uuid"])
    assert sum(r["model_output_answer_correctness"] == "correct" for r in rows) == 19
    assert slips == ["8df91126-490d-47d1-850f-22642d38ba19"]
    bad = [
        (r["uuid"], r["ground_truth_answer"], v.extracted_answer)
        for r, v, ok in zip(rows, verdicts, right)
        if v.status == "pass" and not ok
    ]
    assert bad == [], f"{len(bad)} wrong final answers passed: {bad[:10]}"
    statuses = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "unverifiable", "error")}
    assert statuses["error"] == 0, statuses
    # gold "Let's think step by step." (a broken reversed-question row) is not math: unverifiable
    for r, v in zip(rows, verdicts):
        if str(r["ground_truth_answer"]).startswith("Let's think"):
            assert v.status == "unverifiable", (r["uuid"], v)
