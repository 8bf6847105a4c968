"""`factory report`: the page names every stage, its numbers match the lake, hostile text is
escaped, and it is self-contained (no external scripts, styles, fonts or images)."""

import json
import re

import pytest
from typer.testing import CliRunner

from factory.stages import STAGES
from flows.cli import app
from flows.report import collect_report, read_metrics, resolve_scope
from flows.report_html import funnel_markdown, render_html
from storage import BadInput, Lake

HOSTILE = '<script>alert("x")</script>'
RUN = "run-a"


def build_lake(store, *, with_counts: bool = False) -> None:
    """Two sources, 6 problems, 3 samples each (18); verdicts by a rule so the counts are known:
    gsm8k samples pass math unless sample_index == 2; synth samples fail math at index 0; the
    samples of index 2 were cut at max_tokens (finish_reason 'length').
    One passing sample fails filter:repetition with a hostile reason; one is a dedup drop."""
    problems, samples, verdicts = [], [], []
    for i in range(6):
        source = "gsm8k" if i < 4 else "synth"
        problems.append({"problem_id": f"p{i}", "source": source, "domain": "math", "problem": f"What is {i}+{i}?",
                         "reference_answer": str(2 * i), "difficulty": float(1 + i % 3),
                         "contamination": ["math500"] if i == 5 else []})
        for k in range(3):
            sid = f"s{i}-{k}"
            samples.append({"sample_id": sid, "problem_id": f"p{i}", "request_key": f"r{i}-{k}", "teacher": "t",
                            "model": "m", "sample_index": k, "reasoning": "x" * (10 + 30 * k + i),
                            "answer": str(2 * i), "completion": "...", "finish_reason": "length" if k == 2 else "stop",
                            "prompt_tokens": 10, "completion_tokens": 100 * (k + 1) + i, "cost_usd": 0.001})
            ok = (k != 2) if source == "gsm8k" else (k != 0)
            verdicts.append({"sample_id": sid, "check": "math", "status": "pass" if ok else "fail",
                             "reason": None if ok else "answer 7 != 2"})
            bad_filter = sid == "s0-0"
            verdicts.append({"sample_id": sid, "check": "filter:repetition", "status": "fail" if bad_filter else "pass",
                             "reason": HOSTILE if bad_filter else None})
    with Lake.open(str(store)) as lake:
        lake.commit("problems", problems, batch_key="p", run_id=RUN)
        lake.commit("samples", samples, batch_key="s", run_id=RUN)
        lake.commit("verdicts", verdicts, batch_key="v", run_id=RUN)
        lake.commit("dedup", [{"item_id": "s0-1", "item_kind": "sample", "cluster_id": "s1-0", "kept": False, "method": "minhash", "similarity": 0.9},
                              {"item_id": "s1-0", "item_kind": "sample", "cluster_id": "s1-0", "kept": True, "method": "minhash", "similarity": 1.0}],
                    batch_key="d", run_id=RUN)
        counts = None
        if with_counts:
            counts = json.dumps({"funnel": [{"stage": "problems", "count": 200}, {"stage": "requests", "count": 800},
                                            {"stage": "samples", "count": 790}, {"stage": "verified", "count": 500},
                                            {"stage": "filtered", "count": 450}, {"stage": "deduplicated", "count": 440},
                                            {"stage": "dataset", "count": 437}],
                                 "by_source": {"gsm8k": {"problems": 100, "samples": 400, "verified": 250}},
                                 "rejects": {"math": 290, HOSTILE: 10},
                                 "tokens": {"prompt": 12345, "completion": 67890}, "cost_usd": 1.5,
                                 "seconds": {"questions": 1.0, "sample": 125.0},
                                 # keys the page does not use must not break it (the flow adds these)
                                 "sent_this_attempt": 3, "dataset": {"name": "ds-a", "version": 1, "rows": 437}})
        lake.commit("runs", [{"run_id": RUN, "status": "finished", "counts": counts}], batch_key="run", run_id=RUN)
        lake.save_dataset("ds-a", "SELECT sample_id, run_id FROM samples WHERE sample_index = 0", run_id=RUN)


@pytest.fixture
def store(tmp_path):
    build_lake(tmp_path / "store")
    return tmp_path / "store"


def funnel_of(html_text: str) -> dict[str, str]:
    """output -> count cell, read back from the funnel table of the page."""
    section = html_text.split('id="funnel"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>[^<]*</td><td[^>]*>([^<]*)</td>", section)
    return dict(rows)


def test_page_names_every_stage_and_computes_the_funnel_from_the_tables(store):
    with Lake.open(str(store)) as lake:
        data = collect_report(lake, RUN)
        page = render_html(data)
    for stage in STAGES:
        assert f"{stage}</li>" in page, stage
    # 18 samples; math passes 8 gsm8k (index 0, 1) + 4 synth (index 1, 2) = 12 verified;
    # s0-0 fails the repetition filter -> 11; s0-1 is a dedup drop -> 10; dataset = index 0 = 6.
    assert funnel_of(page) == {"problems": "6", "decontaminated": "5", "requests": "18", "samples": "18",
                               "verified": "12", "filtered": "11", "deduplicated": "10", "dataset": "6"}
    assert data.counts["by_source"]["gsm8k"]["verified"] == 8 and data.counts["by_source"]["synth"]["filtered"] == 4
    assert data.counts["rejects"] == {"math": 6, "repetition": 1}  # named as the flow's summary names them
    assert data.counts["tokens"] == {"prompt": 180, "completion": sum(100 * (k + 1) + i for i in range(6) for k in range(3))}


def test_pass_rates_lengths_and_rejects(store):
    with Lake.open(str(store)) as lake:
        data = collect_report(lake, RUN)
    # all verdicts pass: gsm8k 8 math passes minus s0-0's filter fail = 7 of 12; synth 4 of 6.
    by_source = {r["label"]: (r["passed"], r["checked"]) for r in data.pass_by_source}
    assert by_source == {"gsm8k": (7, 12), "synth": (4, 6)}
    by_diff = {r["label"]: (r["passed"], r["checked"]) for r in data.pass_by_difficulty}
    # difficulty 1 + i % 3: problems 0,3 -> 1; 1,4 -> 2; 2,5 -> 3
    assert by_diff == {"1": (3, 6), "2": (4, 6), "3": (4, 6)}
    assert data.length_unit == "tokens"
    assert sum(b["passed"] for b in data.lengths) == 11 and sum(b["other"] for b in data.lengths) == 7
    assert data.lengths[0]["lo"] == 100 and data.lengths[-1]["hi"] > 305
    top = {(r["check"], r["status"], r["reason"]): r["count"] for r in data.rejects}
    assert top == {("math", "fail", "answer 7 != 2"): 6, ("repetition", "fail", HOSTILE): 1}


def test_finish_reasons_per_source_with_their_pass_rates(store):
    with Lake.open(str(store)) as lake:
        data = collect_report(lake, RUN)
    got = {(r["source"], r["finish_reason"]): (r["samples"], r["checked"], r["passed"]) for r in data.finish_reasons}
    # gsm8k: index 0, 1 stop (8; s0-0 fails its filter: 7 pass), index 2 cut (4, all fail math);
    # synth: index 0, 1 stop (4; index 0 fails math: 2 pass), index 2 cut (2, both pass).
    assert got == {("gsm8k", "stop"): (8, 8, 7), ("gsm8k", "length"): (4, 4, 0), ("synth", "stop"): (4, 4, 2), ("synth", "length"): (2, 2, 2)}
    section = render_html(data).split('id="finish-reasons"')[1].split("</table>")[0]
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in section.split("<tr>")[2:]]
    assert cells[1] == ["gsm8k", "length", "4", "33.3%", "4", "0", "0.0%"]


def test_unverifiable_and_errored_verdicts_are_rejects_as_in_the_flow(tmp_path):
    """A sample without a usable gold (math: unverifiable) and one whose filter broke (error)
    are rejected by the flow (factory.stages.accepted_ids); the computed funnel and the rejects
    say the same."""
    from factory.recipe import Recipe
    from factory.stages import accepted_ids, reject_reasons

    samples = [{"sample_id": f"s{k}", "problem_id": "p0", "request_key": f"r{k}", "teacher": "t", "model": "m",
                "sample_index": k, "reasoning": "r", "answer": "4", "completion": "...", "finish_reason": "stop",
                "prompt_tokens": 1, "completion_tokens": 10} for k in range(3)]
    verdicts = [
        {"sample_id": "s0", "check": "math", "status": "pass"},
        {"sample_id": "s0", "check": "filter:language", "status": "pass"},
        {"sample_id": "s1", "check": "math", "status": "unverifiable", "reason": "no reference answer"},
        {"sample_id": "s1", "check": "filter:language", "status": "pass"},
        {"sample_id": "s2", "check": "math", "status": "pass"},
        {"sample_id": "s2", "check": "filter:language", "status": "error", "reason": "detector failed"},
    ]
    recipe = Recipe.model_validate({"name": "r", "questions": [{"source": "generator", "generator": "arithmetic", "count": 1}],
                                    "filters": ["language"]})
    assert accepted_ids(verdicts, recipe) == {"s0"}
    with Lake.open(str(tmp_path / "store")) as lake:
        lake.commit("problems", [{"problem_id": "p0", "source": "x", "domain": "math", "problem": "2+2?"}], batch_key="p", run_id=RUN)
        lake.commit("samples", samples, batch_key="s", run_id=RUN)
        lake.commit("verdicts", verdicts, batch_key="v", run_id=RUN)
        data = collect_report(lake, RUN)
    funnel = {f["stage"]: f["count"] for f in data.counts["funnel"]}
    assert (funnel["samples"], funnel["verified"], funnel["filtered"]) == (3, 2, 1)
    assert data.counts["rejects"] == reject_reasons(verdicts) == {"math": 1, "language": 1}
    top = {(r["check"], r["status"]): r["reason"] for r in data.rejects}
    assert top == {("math", "unverifiable"): "no reference answer", ("language", "error"): "detector failed"}


def test_hostile_text_is_escaped_and_the_page_is_self_contained(store):
    with Lake.open(str(store)) as lake:
        page = render_html(collect_report(lake, RUN))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page and "<link" not in page
    assert page.count("<svg") >= 4  # funnel, two pass-rate charts, histogram


def test_stored_counts_are_used_for_a_run_and_in_the_markdown():
    counts = {"funnel": [{"stage": "problems", "count": 200}, {"stage": "samples", "count": 790}, {"stage": "dataset", "count": 437}],
              "by_source": {"gsm8k": {"problems": 100, "samples": 400}}, "rejects": {"math": 290, "a|b": 3},
              "tokens": {"prompt": 12345, "completion": 67890}, "cost_usd": 1.5, "seconds": {"questions": 1.0, "sample": 125.0}}
    md = funnel_markdown(counts)
    assert "| problems | questions | 200 |" in md and "| samples | sample | 790 |  | 2 min 5 s |" in md  # no ratio across units
    assert "| dataset | dataset | 437 | 55.3% |" in md
    assert "| gsm8k | 100 | 400 |" in md and "| a\\|b | 3 |" in md
    assert "12,345 prompt, 67,890 completion" in md and "$1.50" in md


def test_run_with_stored_counts_renders_them(tmp_path):
    build_lake(tmp_path / "s", with_counts=True)
    with Lake.open(str(tmp_path / "s")) as lake:
        data = collect_report(lake, RUN)
    page = render_html(data)
    assert data.counts_from.startswith("runs.counts")
    assert funnel_of(page)["dataset"] == "437" and funnel_of(page)["samples"] == "790"
    assert "12,345" in page and "$1.50" in page and "2 min 5 s" in page
    assert "<script" not in page.lower()  # the hostile check name in counts.rejects
    # the charts below still come from the tables
    assert sum(r["checked"] for r in data.pass_by_source) == 18


def test_dataset_target_and_unknown_target(store):
    with Lake.open(str(store)) as lake:
        scope = resolve_scope(lake, "ds-a")
        assert scope.kind == "dataset" and scope.run_ids == [RUN] and scope.dataset["row_count"] == 6
        assert resolve_scope(lake, "ds-a@1").dataset["version"] == 1
        data = collect_report(lake, "ds-a")
        assert {r["stage"]: r["count"] for r in data.counts["funnel"]}["dataset"] == 6
        assert "SELECT sample_id, run_id FROM samples" in render_html(data)
        with pytest.raises(BadInput, match=r"'nope'.*run-a.*ds-a"):
            resolve_scope(lake, "nope")
        with pytest.raises(BadInput, match="does not exist|neither"):
            resolve_scope(lake, "ds-a@9")


def test_evals_table_and_accuracy_by_length(tmp_path):
    build_lake(tmp_path / "s")
    rows = []
    for model, correct_every in (("student-a", 2), ("student-b", 4)):
        for i in range(8):
            rows.append({"eval_id": model, "model": model, "benchmark": "math500", "item_id": f"q{i}", "sample_index": 0,
                         "status": "pass", "correct": i % correct_every == 0, "completion_tokens": 64 if i < 4 else 600})
    rows.append({"eval_id": "x", "model": "student-a", "benchmark": "aime2024", "item_id": "a1", "sample_index": 0,
                 "status": "fail", "correct": False, "completion_tokens": 3000})
    with Lake.open(str(tmp_path / "s")) as lake:
        lake.commit("evals", rows, batch_key="e", run_id="eval-1")
        data = collect_report(lake)
    page = render_html(data)
    assert 'id="evals"' in page
    assert "50.0%  (n=8, 8 items)" in page and "25.0%  (n=8, 8 items)" in page and "0.0%  (n=1, 1 items)" in page
    acc = {(r["model"], r["lo"]): r["accuracy"] for r in data.eval_lengths}
    # student-a: q0, q2 correct among the short (64 tokens: bucket 64-127), q4, q6 among 600 (512-1023)
    assert acc[("student-a", 64)] == 0.5 and acc[("student-a", 512)] == 0.5 and acc[("student-a", 2048)] == 0.0
    assert acc[("student-b", 64)] == 0.25


def test_no_evals_section_without_eval_rows(store):
    with Lake.open(str(store)) as lake:
        assert 'id="evals"' not in render_html(collect_report(lake))


def test_metrics_csv_plots_each_numeric_column(tmp_path):
    f = tmp_path / "metrics.csv"
    f.write_text("step,loss,lr,phase,grad_norm\n1,2.5,1e-05,warmup,\n2,2.0,2e-05,main,1.5\n3,1.5,2e-05,main,0.9\n")
    mf = read_metrics(f)
    assert mf.series == {"loss": [(1.0, 2.5), (2.0, 2.0), (3.0, 1.5)], "lr": [(1.0, 1e-05), (2.0, 2e-05), (3.0, 2e-05)],
                         "grad_norm": [(2.0, 1.5), (3.0, 0.9)]}
    assert mf.skipped == ["phase"]
    (tmp_path / "bad.csv").write_text("loss\n1\n")
    with pytest.raises(BadInput, match=r"bad\.csv.*'step'"):
        read_metrics(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("step,loss\n1,2\nten,3\n")
    with pytest.raises(BadInput, match=r"bad2\.csv:3: step 'ten'"):
        read_metrics(tmp_path / "bad2.csv")


def test_cli_writes_the_page_and_maps_bad_input_to_exit_2(store, tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_STORE", str(store))
    monkeypatch.delenv("FACTORY_CATALOG", raising=False)
    metrics = tmp_path / "m.csv"
    metrics.write_text("step,loss,tokens_per_s\n" + "".join(f"{i},{3 / (i + 1)},{1000 + i}\n" for i in range(50)))
    out = tmp_path / "r.html"
    runner = CliRunner()
    r = runner.invoke(app, ["report", RUN, "--output", str(out), "--metrics", str(metrics)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert 'id="training"' in page and ">loss <" in page and ">tokens_per_s <" in page
    r = runner.invoke(app, ["report", "missing-run", "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 2 and "'missing-run'" in r.stderr and "run-a" in r.stderr and "ds-a" in r.stderr
    r = runner.invoke(app, ["report", "--metrics", str(tmp_path / "none.csv"), "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 2 and "none.csv" in r.stderr


def test_an_empty_lake_renders_without_sections_of_data(tmp_path):
    with Lake.open(str(tmp_path / "empty")) as lake:
        data = collect_report(lake)
    page = render_html(data)
    assert [r["count"] for r in data.counts["funnel"]] == [0] * 8
    assert "No samples with a length." in page and "No rejected verdicts" in page
    for stage in STAGES:
        assert f"{stage}</li>" in page


def test_evals_under_two_prompts_are_two_columns_not_one_average(tmp_path):
    """Base vs student compare only under one prompt and sampling: the same set scored under two
    prompts is two measurements, each with its own column and its prompt listed."""
    build_lake(tmp_path / "s")
    rows = []
    for prompt, correct in (("Q: {problem}\nA:", True), ("<script>x</script> {problem}", False)):
        for i in range(4):
            rows.append({"eval_id": prompt, "model": "base", "benchmark": "addition-d3-test", "item_id": f"q{i}", "sample_index": 0,
                         "prompt_format": prompt, "sampling": '{"temperature": 0.0}', "status": "pass" if correct else "fail",
                         "correct": correct, "completion_tokens": 8})
    with Lake.open(str(tmp_path / "s")) as lake:
        lake.commit("evals", rows, batch_key="e", run_id="eval-1")
        data = collect_report(lake)
    by_prompt = {r["prompt_format"]: (r["benchmark"], r["accuracy"]) for r in data.evals}
    assert by_prompt["Q: {problem}\nA:"][1] == 1.0 and by_prompt["<script>x</script> {problem}"][1] == 0.0
    assert sorted(label for label, _ in by_prompt.values()) == ["addition-d3-test (setting 1 of 2)", "addition-d3-test (setting 2 of 2)"]
    page = render_html(data)
    assert "100.0%  (n=4, 4 items)" in page and "0.0%  (n=4, 4 items)" in page
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
