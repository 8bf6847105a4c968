"""Memory of the loss step: the chunked LM head (`loop.loss_chunk_tokens`) vs all logits at once.

    python benches/trainer_memory.py [--rows 24] [--max-length 1024] [--chunk 256] [--threads 2]

On a tiny random-weight Llama with the real SmolLM2 tokenizer (vocab 49k), R1-style rows packed
into `--max-length` rows, one packed row per micro-batch: the loss + backward of SFT
(cross-entropy) and of logit KD (generalized JSD against a tiny teacher), chunked and not.
Measured: the largest tensor whose last dimension is the vocabulary (logits, log-probs, their
gradients) made by any op in the forward or the backward, in bytes (a TorchDispatchMode sees
every op's output; CPU peak-memory counters are not reliable enough), and tokens/s of the loss
step (real tokens of the micro-batches / seconds of model forward + loss + backward, measured in
separate passes without the watcher, ours and the peer alternating). Peer: the same step with `loss_chunk_tokens: 0` in the
same run. Goal (issue 8, scale): the logits peak bounded by chunk x vocab x 4 bytes whatever the
length; tokens/s within ~10% of the unchunked step (on CPU the chunked step may be slightly
slower: more, smaller matmuls). Results go to benches/results/trainer_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.trainer.conftest import TOKENIZER, r1_rows  # noqa: E402  the same rows the tests use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24, help="R1-style examples to pack")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the micro-batches")
    parser.add_argument("--out", default=str(HERE / "results" / "trainer_memory.json"))
    args = parser.parse_args()

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from trainer import distill
    from trainer.config import DataConfig, ModelConfig, validate
    from trainer.data import tokenize_rows
    from trainer.distributed import DistEnv
    from trainer.model import build_model, load_tokenizer
    from trainer.packing import best_fit_decreasing, collate, step_weights
    from trainer.sft import make_sft_loss

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(TOKENIZER)
    examples, _ = tokenize_rows(r1_rows(args.rows), tok, DataConfig(jsonl="unused.jsonl", max_length=args.max_length))
    rows = [[examples[i] for i in b] for b in best_fit_decreasing([len(e) for e in examples], args.max_length)]
    mcfg = {"tokenizer": str(TOKENIZER), "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "num_heads": 4, "num_kv_heads": 2}
    student = build_model(ModelConfig(**mcfg), tok)
    teacher = build_model(ModelConfig(**mcfg, init_seed=3), tok).requires_grad_(False).eval()
    vocab = student.get_output_embeddings().weight.shape[0]

    class LargestVocabTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == vocab:
                    self.bytes = max(self.bytes, t.numel() * t.element_size())
            return out

    def loss_fn(kind: str, chunk: int):
        if kind == "SFT (cross-entropy)":
            return make_sft_loss(chunk)
        raw = {"model": mcfg, "teacher": mcfg, "data": {"jsonl": "unused.jsonl"}, "loop": {"loss_chunk_tokens": chunk}, "kd": {"loss": "jsd", "beta": 0.5}}
        return distill.make_kd_loss(validate(raw, distill.Config), teacher, tok, DistEnv())

    batches = [(collate([r], tok.pad_token_id), r) for r in rows]

    def step(fn, batch, row):
        denom, weights = step_weights([row], "token")
        student.zero_grad(set_to_none=True)
        res = fn(student, batch, torch.tensor(weights), [row], 0)
        (res.loss_sum / denom).backward()

    results = []
    for kind in ("SFT (cross-entropy)", "logit KD (JSD)"):
        fns = {chunk: loss_fn(kind, chunk) for chunk in (args.chunk, 0)}
        measured = {chunk: {"peak_vocab_tensor_bytes": 0, "tokens": 0, "seconds": 0.0} for chunk in fns}
        for chunk, fn in fns.items():
            for batch, row in batches:
                with LargestVocabTensor() as watch:
                    step(fn, batch, row)
                measured[chunk]["peak_vocab_tensor_bytes"] = max(measured[chunk]["peak_vocab_tensor_bytes"], watch.bytes)
        # Timed passes alternate ours and the peer micro-batch by micro-batch, so the machine's
        # noise (shared cores) falls on both alike.
        for _ in range(args.repeats):
            for batch, row in batches:
                for chunk, fn in fns.items():
                    t0 = time.perf_counter()
                    step(fn, batch, row)
                    measured[chunk]["seconds"] += time.perf_counter() - t0
                    measured[chunk]["tokens"] += batch.n_tokens
        for m in measured.values():
            m["tokens_per_s"] = m["tokens"] / m["seconds"]
        ours, peer = measured[args.chunk], measured[0]
        bound = args.chunk * vocab * 4
        results.append({
            "loss": kind, "measure": "largest [.., vocab] tensor, MB", "ours": round(ours["peak_vocab_tensor_bytes"] / 1e6, 1),
            "peer": round(peer["peak_vocab_tensor_bytes"] / 1e6, 1), "ratio": round(ours["peak_vocab_tensor_bytes"] / peer["peak_vocab_tensor_bytes"], 3),
            "goal": f"<= chunk x vocab x 4 B = {bound / 1e6:.1f} MB", "met": "yes" if ours["peak_vocab_tensor_bytes"] <= bound else "no",
        })
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
        results.append({
            "loss": kind, "measure": "tokens/s of the loss step", "ours": round(ours["tokens_per_s"], 1), "peer": round(peer["tokens_per_s"], 1),
            "ratio": round(ratio, 2), "goal": ">= 0.9x (may be slightly slower)", "met": "yes" if ratio >= 0.9 else "no",
        })

    lengths = [sum(len(e) for e in r) for r in rows]
    cols = ("loss", "measure", "ours", "peer", "ratio", "goal", "met")
    text = [[str(r[c]) for c in cols] for r in results]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    sys.stdout.write(
        f"\nLoss-step memory, ours: loss_chunk_tokens {args.chunk}; peer: loss_chunk_tokens 0 (all logits at once)\n"
        f"{len(rows)} packed rows (max {max(lengths)} tokens), vocab {vocab}, hidden {args.hidden}, {args.threads} thread(s)\n"
    )
    sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
    for t in text:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(t, widths)) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "vocab": vocab, "rows": results, "packed_row_lengths": lengths}, indent=2))


if __name__ == "__main__":
    main()
