"""Fixtures for the trainer tests: the real SmolLM2 tokenizer, R1-style rows made from GSM8K
(question -> user turn, worked solution -> reasoning, final value -> answer), tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.data import GSM8K_TRAIN as GSM8K
from tests.data import TOKENIZER

# The test machine's cores are shared: one thread per process is faster than contending ones.
torch.set_num_threads(1)


def r1_rows(n: int, start: int = 0) -> list[dict]:
    """n R1-style sample rows (messages, reasoning, answer) built from real GSM8K solutions."""
    rows = []
    with GSM8K.open() as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            if len(rows) >= n:
                break
            item = json.loads(line)
            reasoning, _, answer = item["answer"].rpartition("####")
            rows.append(
                {
                    "sample_id": f"gsm8k-{i}",
                    "messages": [
                        {"role": "system", "content": "Reason step by step inside <think></think>, then answer."},
                        {"role": "user", "content": item["question"]},
                    ],
                    "reasoning": reasoning.strip(),
                    "answer": f"The answer is \\boxed{{{answer.strip()}}}.",
                }
            )
    if len(rows) < n:  # the copy in tests/data is a prefix of the train split
        raise ValueError(f"{GSM8K} has {len(rows)} rows from row {start}: asked for {n}")
    return rows


def short_r1_rows(n: int, pool: int = 400) -> list[dict]:
    """The n rows with the shortest solutions among the first `pool` (cheap training tests)."""
    rows = r1_rows(pool)
    return sorted(rows, key=lambda r: (len(r["reasoning"]) + len(r["messages"][1]["content"]), r["sample_id"]))[:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from trainer.model import load_tokenizer

    return load_tokenizer(TOKENIZER)


def tiny_sft_config(tmp: Path, rows: list[dict], **over) -> dict:
    """A raw SFT config dict for a 2-layer hidden-32 Llama on `rows` (written as JSONL)."""
    data = write_jsonl(tmp / "rows.jsonl", rows)
    cfg = {
        "output_dir": str(tmp / "out"),
        "model": {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "num_kv_heads": 2},
        "data": {"jsonl": str(data), "max_length": 512},
        "optim": {"lr": 1e-3, "max_grad_norm": 1.0},
        "loop": {"batch_size": 2, "micro_batch_size": 1, "max_steps": 4},
        "checkpoint": {"export_hf": False},
        "metrics": {"tensorboard": False},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    return cfg
