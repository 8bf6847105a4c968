"""GGUF export of a real student: SmolLM2-135M-Instruct written to f16 and q8_0 and read back.

    python benches/gguf_export.py [--prompts 6] [--max-new-tokens 24] [--threads 2]

The model: the embedded SmolLM2-135M-Instruct (`model.path: smollm2`), loaded by the trainer
(dequantised to fp32) and exported as `factory train` does (export_hf: a safetensors folder).
Peer: that Hugging Face folder, loaded by transformers in the same run. Each GGUF is written by
trainer.gguf_export from the folder and loaded back by transformers (`gguf_file=`). Measured:
file size against the folder's safetensors; max and mean |logit diff| against the folder's over
every position of `--prompts` chat prompts, and how often the top token is the same; greedy
agreement (the same `--max-new-tokens` tokens for how many prompts of N); export wall time.
Goal: f16 gives N of N greedy texts equal; q8_0 about half the f16 size. Results go to
benches/results/gguf_export.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "What is 17 + 25?", "Name the capital of France.", "Write one sentence about the sea.", "What is 6 times 7?",
    "Give a synonym for happy.", "Explain what a prime number is.", "List three colours.", "What is the square root of 81?",
]


def measure(model, tokenizer, prompts: list[str], max_new_tokens: int):
    """(logits of every real position of the chat prompts, greedy token ids per prompt)."""
    import torch

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits[batch["attention_mask"].bool()]
        greedy = []
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            greedy.append(out[0, ids["input_ids"].shape[1]:].tolist())
    return logits, greedy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "gguf_export.json"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.teachers.local import quiet_loading
    from trainer.checkpoint import export_hf
    from trainer.config import ModelConfig
    from trainer.distributed import DistEnv
    from trainer.gguf_export import export_gguf
    from trainer.model import build_model, load_tokenizer

    torch.set_num_threads(args.threads)
    prompts = PROMPTS[: args.prompts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = ModelConfig(path="smollm2")
        tokenizer = load_tokenizer(base.tokenizer_path())
        export_hf(build_model(base, tokenizer), tokenizer, work / "run" / "hf", DistEnv())
        folder = work / "run" / "hf"
        folder_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        with quiet_loading():
            peer = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        peer_tokenizer = AutoTokenizer.from_pretrained(str(folder))
        ref_logits, ref_greedy = measure(peer, peer_tokenizer, prompts, args.max_new_tokens)
        del peer
        rows.append({"format": "HF folder (peer)", "size_mb": round(folder_bytes / 1e6, 1), "size_vs_folder": 1.0, "max_logit_diff": 0.0,
                     "mean_logit_diff": 0.0, "top1_same": "100.0%", "logit_scale": round(ref_logits.abs().max().item(), 1),
                     "greedy_same": f"{len(prompts)}/{len(prompts)}", "export_s": ""})
        for quant in ("f16", "q8_0"):
            result = export_gguf(work / "run", work / f"smollm2-{quant}.gguf", quant)
            with quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=result.path.name, dtype=torch.float32).eval()
                gguf_tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=result.path.name)
            logits, greedy = measure(model, gguf_tokenizer, prompts, args.max_new_tokens)
            same = sum(a == b for a, b in zip(greedy, ref_greedy))
            rows.append({"format": f"GGUF {quant}", "size_mb": round(result.bytes / 1e6, 1), "size_vs_folder": round(result.bytes / folder_bytes, 3),
                         "max_logit_diff": round((logits - ref_logits).abs().max().item(), 5),
                         "mean_logit_diff": round((logits - ref_logits).abs().mean().item(), 5),
                         "top1_same": f"{(logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item():.1%}",
                         "greedy_same": f"{same}/{len(prompts)}",
                         "export_s": round(result.seconds, 1), "kept_f16": len(result.kept_f16)})
            del model

    cols = ("format", "size_mb", "size_vs_folder", "max_logit_diff", "mean_logit_diff", "top1_same", "greedy_same", "export_s")
    text = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    sys.stdout.write(f"\nSmolLM2-135M-Instruct (fp32 folder from the embedded Q4_1 GGUF), {len(prompts)} prompts, "
                     f"{args.max_new_tokens} greedy tokens, {args.threads} thread(s); peer: the HF folder\n")
    sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
    for t in text:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(t, widths)) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
