"""`factory eval` against the scripted OpenAI-compatible server (tests/teacher_server.py): exact
scores from scripted right and wrong answers, the stored records, comparison across evals, bad
options, and an eval killed with SIGKILL and rerun (no committed sample is requested again)."""

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.teacher_server as teacher_server
from factory.benchmarks import get, load
from factory.evaluation import compare, pivot
from factory.questions.splits import split_of
from factory.records import problem_id
from storage import Lake
from tests.teacher_server import TeacherServer

ROOT = Path(__file__).resolve().parents[2]


# Five GSM8K problems, four samples each; "g" is the reference answer, None a completion with no
# answer in it. The hand-computed scores (n=4; pass@2 = 1 - C(4-c, 2)/C(4, 2), C(4, 2) = 6):
#   item 0: g g g g         c=4  pass@1 1     pass@2 1        pass@4 1  maj 1
#   item 1: g x g.0 y       c=2  pass@1 1/2   pass@2 1-1/6    pass@4 1  maj 1   ("g" and "g.0" are one vote)
#   item 2: g x x y         c=1  pass@1 1/4   pass@2 1-3/6    pass@4 1  maj 0   (x wins)
#   item 3: g g x x         c=2  pass@1 1/2   pass@2 1-1/6    pass@4 1  maj 1/2 (a tie, one side right)
#   item 4: - - - -         c=0  pass@1 0     pass@2 0        pass@4 0  maj 0   (unverifiable: no votes)
SCRIPT = [["g", "g", "g", "g"], ["g", "x", "g.0", "y"], ["g", "x", "x", "y"], ["g", "g", "x", "x"], [None] * 4]
EXPECTED = {
    "pass@1": (1 + 1 / 2 + 1 / 4 + 1 / 2 + 0) / 5,
    "pass@2": (1 + 5 / 6 + 1 / 2 + 5 / 6 + 0) / 5,
    "pass@4": (1 + 1 + 1 + 1 + 0) / 5,
    "maj@4": (1 + 1 + 0 + 1 / 2 + 0) / 5,
}


def scripted_answers(monkeypatch):
    """Make the server answer item i's sample s with SCRIPT[i][s] (the teacher sends seed 0 + the
    first sample index of a request, and choice j of it is sample seed + j)."""
    items = load("gsm8k")[:5]

    def choice_parts(prompt, seed, j):
        i = next(n for n, it in enumerate(items) if it["problem"] in prompt)
        gold = int(items[i]["answer"])
        word = SCRIPT[i][int(seed) + j]
        answer = {"g": f"{gold}", "g.0": f"{gold}.0", "x": f"{gold + 1}", "y": f"{gold + 2}", None: None}[word]
        return "Let me think.", (f"The answer is {answer}." if answer else "I cannot tell.")

    monkeypatch.setattr(teacher_server, "choice_parts", choice_parts)
    return items


@pytest.mark.integration
def test_scripted_endpoint_gives_exactly_the_expected_scores(cli, monkeypatch, tmp_path):
    items = scripted_answers(monkeypatch)
    with TeacherServer(models=["student"]) as server:
        args = ["eval", "student", "--backend", "openai", "--base-url", server.url, "--benchmark", "gsm8k",
                "--limit", "5", "--samples", "4", "--max-tokens", "64"]
        r = cli(*args, "--format", "json")
        assert r.exit_code == 0, r.stderr
        (result,) = json.loads(r.stdout)
        assert result["scores"]["items"] == 5 and result["scores"]["samples"] == 4
        assert result["scores"]["metrics"] == pytest.approx(EXPECTED, abs=1e-12)
        assert result["scores"]["statuses"] == {"pass": 9, "fail": 7, "unverifiable": 4}
        lo, hi = result["scores"]["intervals"]["pass@1"]
        assert 0 <= lo <= EXPECTED["pass@1"] <= hi <= 1 and hi - lo > 0.1
        assert result["progress"]["committed"] == 20 and result["progress"]["missing"] == 0
        sent = len(server.completion_requests())
        assert sent == 5  # one n=4 request per problem

        # The records, one per problem x sample, with the verdict and the prompt format.
        with Lake.open(str(tmp_path / "store")) as lake:
            rows = lake.query("SELECT * FROM evals ORDER BY item_id, sample_index").to_pylist()
        assert len(rows) == 20
        assert {r["eval_id"] for r in rows} == {result["eval_id"]}
        assert [r["correct"] for r in rows if r["item_id"] == "1"] == [True, False, True, False]
        assert rows[0]["reference_answer"] == items[0]["answer"] and rows[0]["model"] == "student"
        assert rows[0]["prompt_format"] == get("gsm8k").prompt_format and rows[0]["finish_reason"] == "stop"
        assert all(r["completion_tokens"] > 0 for r in rows)

        # A rerun sends nothing and prints the same scores as a table.
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        assert len(server.completion_requests()) == sent
        assert "already stored" in r.stderr and re.search(r"pass@1\s*│\s*45\.0\s*│", r.stdout) and "maj@4" in r.stdout

        # More samples extend the same eval: only samples 4 and 5 of each problem are sent.
        SCRIPT_EXTRA = {0: "g", 1: "x"}
        for row in SCRIPT:
            row.extend([SCRIPT_EXTRA[0], SCRIPT_EXTRA[1]])
        try:
            r = cli("eval", "student", "--backend", "openai", "--base-url", server.url, "--benchmark", "gsm8k",
                    "--limit", "5", "--samples", "6", "--max-tokens", "64", "--format", "json")
        finally:
            for row in SCRIPT:
                del row[4:]
        assert r.exit_code == 0, r.stderr
        (six,) = json.loads(r.stdout)
        assert six["eval_id"] == result["eval_id"] and six["progress"]["already_done"] == 20
        new = server.completion_requests()[sent:]
        assert len(new) == 5 and all(e["body"]["n"] == 2 and e["body"]["seed"] == 4 for e in new)

    with Lake.open(str(tmp_path / "store")) as lake:
        table = compare(lake)
    assert [(t["model"], t["benchmark"], t["items"], t["samples"]) for t in table] == [("student", "gsm8k", 5, 6)]
    models, benches, cells = pivot(table)
    assert (models, benches) == (["student"], ["gsm8k"])
    assert cells[("student", "gsm8k")] == pytest.approx((5 / 6 + 3 / 6 + 2 / 6 + 3 / 6 + 1 / 6) / 5)


def test_bad_options_exit_2_and_name_the_option(cli, tmp_path):
    r = cli("eval", "student", "--backend", "openai", "--benchmark", "gsm8k")
    assert r.exit_code == 2 and "--base-url" in r.stderr
    r = cli("eval", "student", "--benchmark", "gsm9k")
    assert r.exit_code == 2 and "gsm9k" in r.stderr and "math500" in r.stderr
    r = cli("eval", "smollm2", "--benchmark", "gsm8k", "--samples", "0")
    assert r.exit_code == 2 and "--samples" in r.stderr
    r = cli("eval", str(tmp_path / "no-such-checkpoint"), "--benchmark", "gsm8k")
    assert r.exit_code == 2 and "no such folder" in r.stderr
    r = cli("eval", "smollm2", "--benchmark", "gsm8k", "--format", "xml")
    assert r.exit_code == 2 and "--format" in r.stderr


@pytest.mark.integration
def test_unknown_model_on_the_server_is_bad_input(cli):
    with TeacherServer(models=["student"]) as server:
        r = cli("eval", "other", "--backend", "openai", "--base-url", server.url, "--benchmark", "gsm8k", "--limit", "2")
    assert r.exit_code == 2 and "other" in r.stderr


@pytest.mark.integration
def test_missing_answers_exit_1_and_a_rerun_fills_exactly_them(cli, tmp_path):
    from tests.teacher_server import Fewer, Status

    with TeacherServer(models=["student"]) as server:
        # Item 0 gets 1 of its 3 samples and a 400 (not retried) for each of the other two, asked
        # again one by one (the server gave 1 for n=3); item 1 a 400 for each of its three; item 2
        # is answered in full.
        server.script(Fewer(1), Status(400, "scripted refusal", times=5))
        args = ["eval", "student", "--backend", "openai", "--base-url", server.url, "--benchmark", "gsm8k",
                "--limit", "3", "--samples", "3", "--concurrency", "1", "--format", "json"]
        r = cli(*args)
        assert r.exit_code == 1 and "5 sample(s) missing" in r.stderr and "rerun" in r.stderr
        (first,) = json.loads(r.stdout)
        assert first["progress"]["committed"] == 4 and first["progress"]["failed_groups"] == 1
        assert first["scores"]["items"] == 2 and first["scores"]["samples"] == 1  # only what is stored
        sent = len(server.completion_requests())
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        (second,) = json.loads(r.stdout)
        new = [e["body"] for e in server.completion_requests()[sent:]]
    assert sorted((b["n"], b["seed"]) for b in new) == [(2, 1), (3, 0)]  # item 0: samples 1-2; item 1: all
    assert second["progress"]["already_done"] == 4 and second["progress"]["committed"] == 5
    assert (second["scores"]["items"], second["scores"]["samples"]) == (3, 3)


# -- resume after SIGKILL ----------------------------------------------------------------------

N_ITEMS = 40
CONCURRENCY = 4


def answered(log_path: Path) -> collections.Counter:
    """Requests the server answered in full, per prompt (one n=2 request per problem)."""
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return collections.Counter(
        e["body"]["messages"][-1]["content"] for e in entries if e["path"].endswith("/chat/completions") and e["completed"]
    )


@pytest.mark.integration
def test_killed_eval_resumes_without_requesting_any_stored_sample_again(tmp_path):
    store = str(tmp_path / "store")
    log = tmp_path / "requests.jsonl"
    with TeacherServer(models=["student"], latency_s=0.15, log_path=log) as server:
        cmd = [sys.executable, "-c", "from flows.cli import main; main()", "eval", "student", "--backend", "openai", "--base-url", server.url,
               "--benchmark", "gsm8k", "--limit", str(N_ITEMS), "--samples", "2", "--max-tokens", "64",
               "--concurrency", str(CONCURRENCY), "--store", store, "--format", "json"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not log.exists() or sum(answered(log).values()) < 12):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = answered(log)
        assert 12 <= sum(first.values()) < N_ITEMS, "the kill did not land mid-eval"

        with Lake.open(store) as lake:
            stored = lake.query("SELECT item_id, count(*) AS n FROM evals GROUP BY 1").to_pylist()
        assert stored and all(r["n"] == 2 for r in stored)  # a group's two samples commit together
        stored_ids = {r["item_id"] for r in stored}
        items = {it["id"]: it for it in load("gsm8k")[:N_ITEMS]}
        prompt_of = {i: next(p for p in first if items[i]["problem"] in p) for i in stored_ids}
        # Answers in flight, or received while the last commit ran, are lost at the kill: how
        # many depends on the commit's latency on a busy machine, so only "some were stored"
        # (rows are committed as groups finish, not at the end) is asserted above.

        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        total = answered(log)

    (result,) = json.loads(out.stdout)
    assert result["progress"]["already_done"] == 2 * len(stored_ids)
    assert result["scores"]["items"] == N_ITEMS and result["scores"]["samples"] == 2
    second = total - first
    assert all(n == 1 for n in second.values())  # each missing problem requested once
    assert not set(prompt_of.values()) & set(second)  # nothing stored was requested again
    assert len(second) == N_ITEMS - len(stored_ids)
    with Lake.open(store) as lake:
        rows = lake.query("SELECT item_id, sample_index, count(*) AS n FROM evals GROUP BY 1, 2").to_pylist()
    assert len(rows) == 2 * N_ITEMS and all(r["n"] == 1 for r in rows)


# -- a problems file and a family's held-out side ------------------------------------------------

# Four problems with the checker each names, and the two scripted answers of each (sample 0, 1).
HELD = [
    ({"problem": "What is 2 + 3?", "answer": 5}, ["The answer is 5.", "The answer is 6."]),
    ({"problem": "What is 7 + 8?", "reference_answer": "15", "problem_id": "p2"}, ["The answer is 15.", "The answer is 15."]),
    ({"problem": "Sort these words alphabetically: pear, apple.", "answer": "apple, pear", "verifier": "sorting"},
     ["Answer: apple, pear", "Answer: pear, apple"]),
    ({"problem": "Using the numbers 2, 3, 4, write an expression that equals 20.",
      "metadata": {"verifier": "countdown", "numbers": [2, 3, 4], "target": 20}}, ["Answer: (2 + 3) * 4", "Answer: 2 * 3 * 4"]),
]


def held_parts(prompt, seed, j):
    """(reasoning, answer) of sample seed + j of the HELD problem in the prompt."""
    answers = next(a for row, a in HELD if row["problem"] in prompt)
    return "Let me think.", answers[int(seed) + j]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
def test_a_problems_file_is_scored_by_each_rows_checker_and_resumes(cli, tmp_path):
    held = write_jsonl(tmp_path / "held.jsonl", [row for row, _ in HELD])
    with TeacherServer(models=["student"], parts=held_parts) as server:
        args = ["eval", "student", "--backend", "openai", "--base-url", server.url, "--problems", str(held), "--samples", "2",
                "--system", "Be brief.", "--template", "Q: {problem}", "--max-tokens", "64", "--format", "json"]
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        (result,) = json.loads(r.stdout)
        # right samples per problem: 1 of 2, 2 of 2, 1 of 2 (wrong order), 1 of 2 (24, not 20)
        assert result["scores"]["metrics"] == pytest.approx({"pass@1": (0.5 + 1 + 0.5 + 0.5) / 4, "pass@2": 1.0})
        assert result["scores"]["statuses"] == {"pass": 5, "fail": 3} and result["scores"]["items"] == 4
        assert re.fullmatch(r"held\.jsonl@[0-9a-f]{8}", result["benchmark"])
        requests = server.completion_requests()
        assert sorted(json.dumps(e["body"]["messages"]) for e in requests) == sorted(
            json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q: {row['problem']}"}]) for row, _ in HELD)

        r = cli(*args)  # everything is stored: nothing is sent again
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)[0]["scores"]["metrics"] == result["scores"]["metrics"]
        assert len(server.completion_requests()) == len(requests)

        # Another file (one reference answer differs) is another eval, never the first one's rows.
        other = write_jsonl(tmp_path / "other.jsonl", [row for row, _ in HELD[:1]] + [{**HELD[1][0], "reference_answer": "16"}]
                            + [row for row, _ in HELD[2:]])
        r = cli(*[str(other) if a == str(held) else a for a in args])
        assert r.exit_code == 0, r.stderr
        (second,) = json.loads(r.stdout)
        assert second["eval_id"] != result["eval_id"] and second["progress"]["already_done"] == 0
        assert second["scores"]["metrics"]["pass@1"] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)

    with Lake.open(str(tmp_path / "store")) as lake:
        rows = lake.query("SELECT benchmark, item_id, prompt_format, reference_answer FROM evals WHERE eval_id = ? ORDER BY item_id",
                          [result["eval_id"]]).to_pylist()
        names = {t["benchmark"] for t in compare(lake)}
    assert names == {result["benchmark"], second["benchmark"]}
    assert {r["prompt_format"] for r in rows} == {"[system]\nBe brief.\n[user]\nQ: {problem}"}
    assert sorted({(r["item_id"], r["reference_answer"]) for r in rows}, key=str) == sorted(
        [(problem_id(HELD[0][0]["problem"]), "5"), ("p2", "15"), (problem_id(HELD[2][0]["problem"]), "apple, pear"),
         (problem_id(HELD[3][0]["problem"]), None)], key=str)
    r = cli("report", "--output", str(tmp_path / "report.html"))
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "report.html").read_text()
    assert result["benchmark"] in page and second["benchmark"] in page


def test_a_bad_problems_file_exits_2_naming_the_line_and_field(cli, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [HELD[0][0], {"problem": "What is 1 + 1?"}, {"answer": 3}])
    r = cli("eval", "student", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--problems", str(bad))
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{bad}:2: field 'answer': missing" in r.stderr and f"{bad}:3: field 'problem'" in r.stderr
    r = cli("eval", "student", "--problems", str(bad), "--family", "addition")
    assert r.exit_code == 2 and "--problems and --family" in r.stderr
    r = cli("eval", "student")
    assert r.exit_code == 2 and "--recipe" in r.stderr


HELD_RECIPE = """name: held
questions:
  - {source: generator, generator: addition, count: 300, difficulty: 3, seed: 2, split: train}
prompt:
  system: "Answer every question with one sentence."
  template: "Question: {problem}"
"""


def sum_parts(prompt, seed, j):
    """Right when the first addend is even, one too many when it is odd."""
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt).groups())
    return "Adding.", f"The answer is {a + b + a % 2}."


@pytest.mark.integration
def test_recipe_eval_draws_the_held_out_side_in_the_recipes_prompt(cli, tmp_path):
    from factory.recipe import load_recipe
    from factory.stages import collect_questions

    recipe = tmp_path / "held.yaml"
    recipe.write_text(HELD_RECIPE)
    trained = {r["problem_id"] for r in collect_questions(load_recipe(recipe).questions, base_dir=tmp_path)}
    with TeacherServer(models=["student"], parts=sum_parts) as server:
        common = ["--backend", "openai", "--base-url", server.url, "--limit", "40", "--temperature", "0", "--max-tokens", "32",
                  "--format", "json"]
        r = cli("eval", "student", "--recipe", str(recipe), *common)
        assert r.exit_code == 0, r.stderr
        (result,) = json.loads(r.stdout)
        requests = [e["body"]["messages"] for e in server.completion_requests()]
        # The same family and prompt named directly is the same eval: nothing is sent again.
        r = cli("eval", "student", "--family", "addition", "--difficulty", "3", "--system", "Answer every question with one sentence.",
                "--template", "Question: {problem}", *common)
        assert r.exit_code == 0, r.stderr
        (direct,) = json.loads(r.stdout)
        assert direct["eval_id"] == result["eval_id"] and direct["progress"]["already_done"] == 40
        assert len(server.completion_requests()) == len(requests)
    assert result["benchmark"] == "addition-d3-test" and result["scores"]["items"] == 40 and len(requests) == 40
    assert all(m[0] == {"role": "system", "content": "Answer every question with one sentence."} for m in requests)
    shown = [m[1]["content"].removeprefix("Question: ") for m in requests]
    assert all(m[1]["content"].startswith("Question: What is ") for m in requests)
    assert all(split_of(p) == "test" for p in shown) and not {problem_id(p) for p in shown} & trained
    even = sum(int(re.search(r"What is (\d+)", p).group(1)) % 2 == 0 for p in shown)
    assert result["scores"]["metrics"]["pass@1"] == pytest.approx(even / 40)
    with Lake.open(str(tmp_path / "store")) as lake:
        items = {r["item_id"] for r in lake.query("SELECT item_id FROM evals").to_pylist()}
    assert len(items) == 40 and not items & trained
    r = cli("report", "--output", str(tmp_path / "report.html"))
    assert r.exit_code == 0 and "addition-d3-test" in (tmp_path / "report.html").read_text()
