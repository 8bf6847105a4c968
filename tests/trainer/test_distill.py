"""The distillation recipe on tiny random models sharing the real tokenizer: sequence mode is SFT,
logit KD vanishes when the teacher is the student, sparse KD reads the teacher's stored top-k
aligned with the supervised tokens, and the config rejects inconsistent settings."""

import json

import pytest
import torch

from storage.errors import BadInput
from trainer import distill, sft
from trainer.config import ModelConfig, validate
from trainer.data import IGNORE, tokenize_rows
from trainer.losses import sparse_kd
from trainer.metrics import read_metrics
from trainer.model import build_model
from trainer.packing import plan_steps

from .conftest import TOKENIZER, short_r1_rows, tiny_sft_config, write_jsonl

TEACHER = {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "init_seed": 3}


def distill_config(tmp_path, rows, kd, teacher=TEACHER, **over):
    over = {"data__packing": False, "loop": {"batch_size": 2, "max_steps": 2}, **over}
    raw = tiny_sft_config(tmp_path, rows, **over)
    if teacher is not None:
        raw["teacher"] = teacher
    raw["kd"] = kd
    return validate(raw, distill.Config)


def test_sequence_mode_is_sft(tmp_path):
    rows = short_r1_rows(4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d = distill.train(distill_config(tmp_path / "a", rows, {"mode": "sequence"}, teacher=None))
    s = sft.train(validate(tiny_sft_config(tmp_path / "b", rows, data__packing=False, loop={"batch_size": 2, "max_steps": 2}), sft.Config))
    assert d["loss"] == pytest.approx(s["loss"], abs=1e-7) and d["step"] == s["step"] == 2


def test_logit_kd_vanishes_when_the_teacher_is_the_student(tmp_path):
    student = {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "init_seed": 0}
    same = distill_config(tmp_path, short_r1_rows(4), {"loss": "forward_kl"}, teacher=student)
    distill.train(same)
    first = read_metrics(tmp_path / "out" / "metrics.csv")[0]
    assert first["kd"] < 1e-6 and first["grad_norm"] < 1e-5
    (tmp_path / "other").mkdir()
    other = distill_config(tmp_path / "other", short_r1_rows(4), {"loss": "jsd", "beta": 0.5})
    distill.train(other)
    first = read_metrics(tmp_path / "other" / "out" / "metrics.csv")[0]
    assert first["kd"] > 1e-4 and first["grad_norm"] > 0


def test_sparse_kd_uses_the_stored_top_k_at_the_supervised_tokens(tmp_path, tokenizer):
    rows = short_r1_rows(4)
    probe = distill_config(tmp_path, rows, {"mode": "sparse"}, teacher=None)
    examples, _ = tokenize_rows(rows, tokenizer, probe.data)
    teacher = build_model(ModelConfig(**TEACHER), tokenizer).eval()
    k = 5
    for row, ex in zip(rows, examples):
        with torch.no_grad():
            logp = torch.log_softmax(teacher(input_ids=torch.tensor([ex.input_ids])).logits[0], -1)
        positions = [j for j in range(len(ex) - 1) if ex.labels[j + 1] != IGNORE]
        top = logp[positions].topk(k, dim=-1)
        row["metadata"] = json.dumps({"teacher_topk": {"ids": top.indices.tolist(), "logprobs": top.values.tolist()}})
    write_jsonl(tmp_path / "rows.jsonl", rows)
    result = distill.train(probe)

    # Step 1 by hand: the untouched student against the stored top-k over the step's examples.
    student = build_model(probe.model, tokenizer).eval()
    first_step = plan_steps(examples, capacity=probe.data.max_length, packing=False, batch_size=2, seed=0, epochs=1)[0]
    total = count = 0.0
    for (i,) in first_step:
        ex, meta = examples[i], json.loads(rows[i]["metadata"])["teacher_topk"]
        positions = [j for j in range(len(ex) - 1) if ex.labels[j + 1] != IGNORE]
        with torch.no_grad():
            logits = student(input_ids=torch.tensor([ex.input_ids])).logits[0, positions]
        total += sparse_kd(logits, torch.tensor(meta["ids"]), torch.tensor(meta["logprobs"])).sum().item()
        count += len(positions)
    first = read_metrics(tmp_path / "out" / "metrics.csv")[0]
    assert first["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["step"] == 2


def test_sparse_kd_rejects_top_k_that_does_not_cover_the_supervised_tokens(tmp_path):
    rows = short_r1_rows(2)
    for row in rows:
        row["metadata"] = json.dumps({"teacher_topk": {"ids": [[1, 2]], "logprobs": [[-0.1, -2.0]]}})
    cfg = distill_config(tmp_path, rows, {"mode": "sparse"}, teacher=None, loop={"batch_size": 1, "max_steps": 1})
    with pytest.raises(BadInput, match="teacher_topk has 1 positions; expected one per supervised token"):
        distill.train(cfg)


def test_sparse_kd_rejects_top_k_ids_outside_the_students_vocabulary(tmp_path, tokenizer):
    rows = short_r1_rows(2)
    probe = distill_config(tmp_path, rows, {"mode": "sparse"}, teacher=None, loop={"batch_size": 1, "max_steps": 1})
    examples, _ = tokenize_rows(rows, tokenizer, probe.data)
    for row, ex in zip(rows, examples):
        n = sum(1 for j in range(len(ex) - 1) if ex.labels[j + 1] != IGNORE)
        ids = [[1, 2]] * n
        ids[n - 1] = [1, len(tokenizer) + 7]  # a teacher with a larger vocabulary
        row["metadata"] = json.dumps({"teacher_topk": {"ids": ids, "logprobs": [[-0.1, -2.0]] * n}})
    write_jsonl(tmp_path / "rows.jsonl", rows)
    expected = rf"row 0 \(sample_id [^)]+\): teacher top-k id {len(tokenizer) + 7} at supervised token \d+ is outside the student's vocabulary"
    with pytest.raises(BadInput, match=expected):
        distill.train(probe)
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_config_rejects_inconsistent_kd_settings(tmp_path):
    with pytest.raises(BadInput, match="kd.mode logits needs a teacher"):
        distill_config(tmp_path, short_r1_rows(1), {"mode": "logits"}, teacher=None)
    with pytest.raises(BadInput, match="kd: Value error, on_policy_fraction needs mode: logits"):
        distill_config(tmp_path, short_r1_rows(1), {"mode": "sparse", "on_policy_fraction": 0.5}, teacher=None)
    with pytest.raises(BadInput, match=r"kd: Value error, beta 1.5: expected a number in \[0, 1\]"):
        distill_config(tmp_path, short_r1_rows(1), {"beta": 1.5})
