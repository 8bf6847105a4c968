"""The chunked LM head (`loop.loss_chunk_tokens`): on tiny random models with the real SmolLM2
tokenizer (vocab 49k), the chunked SFT and KD losses equal the all-at-once ones, loss, logged
metrics and the gradient of every parameter (float64: 1e-9 relative; fp32: loss 1e-6, gradients
3e-5, see assert_same), on packed batches, for chunk sizes that do and do not divide the
supervised token count, token- and sequence-weighted, on- and off-policy, under FSDP2; and no
tensor of more than one chunk's logits is made in the forward or the backward (every op's output
is watched through a TorchDispatchMode; the all-at-once path is the control that would fail)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer import distill
from trainer.config import DataConfig, ModelConfig, validate
from trainer.data import IGNORE, tokenize_rows
from trainer.distributed import DistEnv
from trainer.model import build_model
from trainer.packing import collate, step_weights
from trainer.sft import make_sft_loss, sft_loss

from .conftest import TOKENIZER, short_r1_rows

STUDENT = {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "num_kv_heads": 2}
TEACHER = {**STUDENT, "init_seed": 3}


@pytest.fixture(scope="module")
def packed(tokenizer):
    """Two packed rows of 5 real R1-style examples (3 + 2 documents, 327 supervised tokens)."""
    examples, _ = tokenize_rows(short_r1_rows(5), tokenizer, DataConfig(jsonl="unused.jsonl", max_length=1024))
    rows = [examples[:3], examples[3:]]
    gen = torch.Generator().manual_seed(0)
    for ex in examples:  # stored sparse top-k (5 of the vocab per supervised token), for sparse KD
        n = sum(1 for j in range(len(ex) - 1) if ex.labels[j + 1] != IGNORE)
        ids = torch.randint(0, len(tokenizer), (n, 5), generator=gen)
        lps = torch.log_softmax(torch.randn(n, 5, generator=gen), -1)
        ex.extra["teacher_topk"] = {"ids": ids.tolist(), "logprobs": lps.tolist()}
    return rows


def supervised_count(rows) -> int:
    return sum(ex.n_supervised for row in rows for ex in row)


def run_loss(loss_fn, model, rows, tokenizer, weighting: str):
    """(loss / denominator, metrics, {param: grad}) of one micro-batch, as the loop computes it."""
    batch = collate(rows, tokenizer.pad_token_id)
    denom, weights = step_weights(rows, weighting)
    model.zero_grad(set_to_none=True)
    res = loss_fn(model, batch, torch.tensor(weights), rows, 0)
    (res.loss_sum / denom).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(res.loss_sum.detach()) / denom, res.metrics, grads


def assert_same(a, b, dtype):
    """Loss, logged metrics and every parameter's gradient (L2, per parameter) of the chunked path
    `a` equal the all-at-once path `b`: to 1e-9 in float64, where rounding cannot hide a wrong
    term; in fp32 the loss and metrics to 1e-6, the gradients to 3e-5, since 1e-6 is below the
    fp32 noise of the all-at-once path itself (against float64 it is off by ~2e-6 on the KD
    gradients, measured; summing tokens in chunks moves the last digits the same way)."""
    rel, grad_rel = (1e-9, 1e-9) if dtype == torch.float64 else (1e-6, 3e-5)
    loss_a, metrics_a, grads_a = a
    loss_b, metrics_b, grads_b = b
    assert loss_a == pytest.approx(loss_b, rel=rel)
    assert metrics_a.keys() == metrics_b.keys()
    for k in metrics_a:
        assert metrics_a[k] == pytest.approx(metrics_b[k], rel=rel), k
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    overall = max(g.norm().item() for g in grads_b.values())
    for name, g in grads_b.items():
        scale = g.norm().item()
        assert scale > 0, name  # every parameter really gets a gradient
        # Floored at 1e-3 of the largest gradient: Qwen2's k_proj bias gets ~1e-4 of the others,
        # left by cancellation (softmax ignores a shift shared by every key), mostly rounding.
        assert (grads_a[name] - g).norm().item() <= grad_rel * max(scale, 1e-3 * overall), name


def build(cfg: dict, tokenizer, dtype, **over):
    return build_model(ModelConfig(**cfg, **over), tokenizer).to(dtype)


def chunk_sizes(n: int) -> list[int]:
    """A size that leaves a ragged last chunk, one that divides n exactly, and one >= n."""
    dividing = next(d for d in range(n // 3, 1, -1) if n % d == 0)
    ragged = next(c for c in range(n // 4, n) if n % c)
    return [ragged, dividing, n + 7]


DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("arch,tied,weighting", [("llama", True, "token"), ("qwen2", False, "sequence")])
def test_chunked_cross_entropy_equals_the_whole_logits_loss_and_gradients(packed, tokenizer, arch, tied, weighting, dtype):
    model = build(STUDENT, tokenizer, dtype, arch=arch, tie_word_embeddings=tied)
    want = run_loss(sft_loss, model, packed, tokenizer, weighting)
    n = supervised_count(packed)
    sizes = chunk_sizes(n)
    assert n % sizes[0] and not n % sizes[1]
    for chunk in sizes:
        assert_same(run_loss(make_sft_loss(chunk), model, packed, tokenizer, weighting), want, dtype)


def kd_config(kd: dict, chunk: int, weighting: str):
    raw = {
        "model": STUDENT,
        "teacher": TEACHER,
        "data": {"jsonl": "unused.jsonl", "max_length": 1024, "loss_weighting": weighting},
        "loop": {"loss_chunk_tokens": chunk},
        "kd": kd,
    }
    return validate(raw, distill.Config)


KDS = [
    ({"loss": "forward_kl"}, "token"),
    ({"loss": "reverse_kl", "temperature": 2.0}, "sequence"),
    ({"loss": "jsd", "beta": 0.5, "ce_weight": 0.3}, "token"),
    ({"mode": "sparse", "ce_weight": 0.2}, "sequence"),
    ({"mode": "sparse", "topk_renormalize": False}, "token"),
]


@pytest.mark.parametrize("kd,weighting", KDS, ids=[f"{k.get('mode', 'logits')}-{k.get('loss', '')}-{w}" for k, w in KDS])
def test_chunked_kd_equals_the_whole_logits_loss_and_gradients(packed, tokenizer, kd, weighting):
    n = supervised_count(packed)
    ragged, dividing, _ = chunk_sizes(n)
    for dtype, chunk in ((torch.float64, ragged), (torch.float32, dividing)):
        student = build(STUDENT, tokenizer, dtype)
        teacher = None
        if kd.get("mode", "logits") == "logits":
            teacher = build(TEACHER, tokenizer, dtype).requires_grad_(False).eval()
        whole = distill.make_kd_loss(kd_config(kd, 0, weighting), teacher, tokenizer, DistEnv())
        want = run_loss(whole, student, packed, tokenizer, weighting)
        assert want[1]["kd"] > 0
        chunked = distill.make_kd_loss(kd_config(kd, chunk, weighting), teacher, tokenizer, DistEnv())
        assert_same(run_loss(chunked, student, packed, tokenizer, weighting), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp64", "fp32"])
def test_chunked_on_policy_kd_equals_the_whole_logits_loss_and_gradients(packed, tokenizer, dtype):
    """GKD's on-policy steps: the student's own samples (seeded alike) scored chunk by chunk."""
    student = build(STUDENT, tokenizer, dtype)
    teacher = build(TEACHER, tokenizer, dtype).requires_grad_(False).eval()
    kd = {"loss": "reverse_kl", "on_policy_fraction": 1.0, "max_new_tokens": 24}
    results = []
    for chunk in (0, 7):
        fn = distill.make_kd_loss(kd_config(kd, chunk, "sequence"), teacher, tokenizer, DistEnv())
        torch.manual_seed(0)
        results.append(run_loss(fn, student, packed, tokenizer, "sequence"))
    assert results[0][1]["kd"] > 0
    assert_same(results[1], results[0], dtype)


class LargestVocabTensor(TorchDispatchMode):
    """Records the largest output (in rows) of any op whose last dimension is the vocabulary:
    logits, log-probs, softmax grads, in the forward and the backward alike."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("mode", ["sft", "jsd"])
def test_no_more_than_one_chunk_of_logits_exists_in_forward_or_backward(packed, tokenizer, mode):
    student = build_model(ModelConfig(**STUDENT), tokenizer)
    vocab = student.get_output_embeddings().weight.shape[0]
    teacher = build_model(ModelConfig(**TEACHER), tokenizer).requires_grad_(False).eval()
    heads: list[int] = []
    for m in (student, teacher):  # what reaches each LM head, in rows of hidden states
        m.get_output_embeddings().register_forward_hook(lambda mod, args, out: heads.append(args[0].numel() // args[0].shape[-1]))
    n, chunk = supervised_count(packed), 64
    assert n > 4 * chunk

    def loss_fn(chunk_tokens):
        if mode == "sft":
            return make_sft_loss(chunk_tokens)
        return distill.make_kd_loss(kd_config({"loss": "jsd"}, chunk_tokens, "token"), teacher, tokenizer, DistEnv())

    peaks = {}
    for chunk_tokens in (chunk, 0):
        heads.clear()
        with LargestVocabTensor(vocab) as watch:
            run_loss(loss_fn(chunk_tokens), student, packed, tokenizer, "token")
        peaks[chunk_tokens] = (watch.rows, max(heads))
    assert peaks[chunk] == (chunk, chunk)  # forward and backward: one chunk at a time
    # The control: all at once, every supervised position's logits exist together.
    assert peaks[0][0] >= n and peaks[0][1] >= n


def test_loss_chunk_tokens_defaults_on_and_rejects_negatives():
    assert distill.Config.model_fields["loop"].default.loss_chunk_tokens == 4096
    from storage.errors import BadInput

    with pytest.raises(BadInput, match="loop.loss_chunk_tokens"):
        kd_config({"loss": "jsd"}, -1, "token")


@pytest.mark.integration
def test_chunked_logit_kd_under_fsdp2_with_two_gloo_processes_matches_one_process(tmp_path):
    """The teacher's chunk logits are made inside its (FSDP2-sharded) forward, from its gathered
    head: 2 processes give the losses and gradient norms of 1 process with accumulation."""
    import os
    import subprocess
    import sys

    import yaml

    from trainer.metrics import read_metrics

    from .conftest import tiny_sft_config

    rows = short_r1_rows(8)
    logs = {}
    for name, nproc in (("one", 1), ("two", 2)):
        (tmp_path / name).mkdir()
        raw = tiny_sft_config(tmp_path / name, rows, data__max_length=256, loop={"batch_size": 2, "max_steps": 2, "loss_chunk_tokens": 48})
        raw.update({"teacher": TEACHER, "kd": {"loss": "jsd", "beta": 0.5, "ce_weight": 0.2}})
        path = tmp_path / name / "cfg.yaml"
        path.write_text(yaml.safe_dump(raw))
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2"] if nproc == 2 else []
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, *launcher, "-m", "trainer.distill", str(path)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
        logs[name] = read_metrics(tmp_path / name / "out" / "metrics.csv")
    assert len(logs["one"]) == len(logs["two"]) == 2
    for a, b in zip(logs["one"], logs["two"]):
        assert a["kd"] > 0 and b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["kd"] == pytest.approx(a["kd"], rel=1e-4) and b["ce"] == pytest.approx(a["ce"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
