"""SFT throughput: our trainer vs TRL's SFTTrainer on the same tiny model, data and CPU threads.

    python benches/trainer_sft.py [--rows 128] [--threads 2] [--max-length 1024] [--batch 4]

Both train one epoch on the same R1-style rows (GSM8K questions, worked solutions as the
reasoning, loss on the assistant turn only) with the real SmolLM2 tokenizer, starting from the
same random-weight 2-layer Llama, AdamW, fp32, on `--threads` CPU threads. Measured: tokens/s
(real, non-pad input tokens per second of training, data preparation excluded) and padding
waste (pad slots / all slots fed to the model). Peers: TRL SFTTrainer with BFD packing
(`packing=True`, the same idea as ours) and without packing (padded batches, TRL's default).
Goal: ours >= 1.0x TRL packed tokens/s (stretch 1.5x); padding waste <= 5% with packing.
Results go to benches/results/trainer_sft.json. A benchmark, not a test: on a shared, noisy
machine the ratio moves; run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from tests.trainer.conftest import TOKENIZER, r1_rows  # noqa: E402  the same rows the tests use


def model_cfg(args) -> dict:
    return {"tokenizer": str(TOKENIZER), "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_heads": 4, "num_kv_heads": 2, "num_layers": 2}


def run_ours(args, rows, workdir: Path) -> dict:
    from trainer import sft
    from trainer.config import validate
    from trainer.metrics import read_metrics

    (workdir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = validate(
        {
            "output_dir": str(workdir / "ours"),
            "model": model_cfg(args),
            "data": {"jsonl": str(workdir / "rows.jsonl"), "max_length": args.max_length, "packing": True},
            "optim": {"lr": 1e-4, "schedule": "constant"},
            "loop": {"batch_size": args.batch, "micro_batch_size": 1, "epochs": 1},
            "checkpoint": {"export_hf": False, "every_steps": 0, "resume": False, "keep_last": 1},
            "metrics": {"tensorboard": False},
        },
        sft.Config,
    )
    sft.train(config)
    m = read_metrics(workdir / "ours" / "metrics.csv")
    tokens = sum(r["tokens"] for r in m)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in m)
    slots = sum(r["tokens"] / (1 - r["padding_waste"]) for r in m)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "padding_waste": 1 - tokens / slots, "steps": len(m)}


def run_trl(args, rows, workdir: Path, packing: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trainer.config import ModelConfig
    from trainer.data import ASSISTANT_FORMAT
    from trainer.model import build_model, load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    model = build_model(ModelConfig(**model_cfg(args)), tok)
    data = Dataset.from_list(
        [
            {
                "prompt": r["messages"],
                "completion": [{"role": "assistant", "content": ASSISTANT_FORMAT.format(reasoning=r["reasoning"], answer=r["answer"])}],
            }
            for r in rows
        ]
    )
    # The same micro-batch shape as ours (one packed row of max_length per forward, accumulated to
    # `--batch` rows per step); unpacked: 4 examples per forward (~ the same tokens), same steps.
    per_device = 1 if packing else 4
    cfg = SFTConfig(
        output_dir=str(workdir / ("trl-packed" if packing else "trl-padded")),
        max_length=args.max_length,
        packing=packing,
        completion_only_loss=True,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=args.batch,
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
    # Real tokens and fed slots, counted on the exact batches TRL builds.
    real = slots = 0
    for batch in trainer.get_train_dataloader():
        ids = batch["input_ids"]
        slots += ids.numel()
        if "attention_mask" in batch:
            real += int(batch["attention_mask"].sum())
        else:
            real += int((ids != tok.pad_token_id).sum()) + int(((ids == tok.pad_token_id) & (batch["labels"] != -100)).sum())
    import torch

    torch.set_num_threads(args.threads)  # in case the Trainer/accelerate setup changed it
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"tokens": real, "seconds": seconds, "tokens_per_s": real / seconds, "padding_waste": 1 - real / max(slots, 1), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4, help="packed rows per optimizer step")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", default=str(HERE / "results" / "trainer_sft.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = r1_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = run_ours(args, rows, work)
        trl_packed = run_trl(args, rows, work, packing=True)
        trl_padded = run_trl(args, rows, work, packing=False)

    results = [
        {"measure": "tokens/s, ours (BFD packing)", "ours": round(ours["tokens_per_s"], 1), "peer": round(trl_packed["tokens_per_s"], 1),
         "peer_name": "TRL SFTTrainer packing=True", "ratio": round(ours["tokens_per_s"] / trl_packed["tokens_per_s"], 2), "goal": ">= 1.0x (stretch 1.5x)"},
        {"measure": "tokens/s vs TRL unpacked", "ours": round(ours["tokens_per_s"], 1), "peer": round(trl_padded["tokens_per_s"], 1),
         "peer_name": "TRL SFTTrainer packing=False", "ratio": round(ours["tokens_per_s"] / trl_padded["tokens_per_s"], 2), "goal": ">= 1.0x"},
        {"measure": "padding waste", "ours": f"{ours['padding_waste']:.1%}",
         "peer": f"{trl_packed['padding_waste']:.1%} packed / {trl_padded['padding_waste']:.1%} padded",
         "peer_name": "TRL", "ratio": "", "goal": "<= 5% (ours)"},
    ]
    for r in results[:2]:
        r["met"] = "yes" if r["ratio"] >= 1.0 else "no"
    results[2]["met"] = "yes" if ours["padding_waste"] <= 0.05 else "no"
    cols = ("measure", "ours", "peer", "peer_name", "ratio", "goal", "met")
    text = [[str(r.get(c, "")) for c in cols] for r in results]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    sys.stdout.write(f"\nSFT, {args.rows} rows, max_length {args.max_length}, hidden {args.hidden}, {args.threads} thread(s)\n")
    sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
    for t in text:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(t, widths)) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": results, "ours": ours, "trl_packed": trl_packed, "trl_padded": trl_padded}, indent=2))


if __name__ == "__main__":
    main()
