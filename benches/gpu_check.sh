#!/usr/bin/env bash
# bash benches/gpu_check.sh [SIZE]      (on a CUDA machine, from anywhere; SIZE: 0.5b | 1.5b, default 1.5b)
#
# One-call GPU check of the trainer: SFT steps and logit-KD steps in bf16 on CUDA through the
# real recipe loop (trainer/loop.py: FSDP2 fully_shard with a bf16 MixedPrecisionPolicy,
# activation checkpointing, packed rows with per-document positions), printing tokens/s and
# MFU per run. Random-weight Qwen2-shaped models built from a config and synthetic token data:
# nothing is downloaded, no tokenizer file is needed. Needs no network: Python packages the
# machine lacks come from wheels carried in .whl/ (benches/gpu_wheels.sh fetches them).
# Output: a table on stdout, and benches/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-1.5b}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible"; exit 1; }
NGPU=$(nvidia-smi --list-gpus | wc -l)

# The lent GPU machine has no network and its own Python (3.12, torch 2.11): nothing is ever
# installed from a registry here. What its image lacks travels as wheels in .whl/ (fetched on a
# machine with PyPI by `bash benches/gpu_wheels.sh`, carried with the working tree) and is
# installed from that folder alone, into a temporary target.
if ! "$PY" -c "import torch, transformers, pydantic, yaml, duckdb, pyarrow" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing the carried wheels from .whl/ (no index)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rf-site .whl/*.whl
    export PYTHONPATH="/tmp/rf-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('torch', 'transformers', 'pydantic', 'yaml', 'duckdb', 'pyarrow') if u.find_spec(m) is None))")
  if [ -n "$missing" ]; then
    echo "missing Python packages: $missing. Run 'bash benches/gpu_wheels.sh' where PyPI answers and carry .whl/" >&2
    exit 1
  fi
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/run.py" <<'EOF'
import json, os, random, sys, time
from pathlib import Path
import torch
sys.path.insert(0, os.getcwd())
from transformers import AutoModelForCausalLM, Qwen2Config
from trainer.config import validate
from trainer.data import IGNORE, Example
from trainer.distributed import init_distributed, shard_model, close_distributed
from trainer.loop import fit
from trainer.metrics import read_metrics
from trainer import sft, distill

mode, size, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
SIZES = {  # Qwen2.5 shapes
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960),
}
VOCAB, MAXLEN = 151936, 8192

class Tok:  # what fit() needs of a tokenizer when nothing is exported
    pad_token_id, eos_token_id = 151643, 151645
    def __len__(self): return VOCAB

def make_model(seed, device):
    cfg = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, tie_word_embeddings=False, **SIZES[size])
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    m.config.use_cache = False
    return m

def examples(n):
    rng = random.Random(0)
    out = []
    for i in range(n):
        L = rng.randint(1024, MAXLEN)  # long-CoT-like lengths
        ids = [rng.randrange(1000, 150000) for _ in range(L)]
        p = L // 10
        out.append(Example(ids, [IGNORE] * p + ids[p:], p, i))
    return out

world = int(os.environ.get("WORLD_SIZE", "1"))
raw = {"output_dir": str(out), "data": {"jsonl": "synthetic", "max_length": MAXLEN},
       "optim": {"lr": 1e-5}, "loop": {"batch_size": 8 * world, "micro_batch_size": 1, "max_steps": 6},
       "checkpoint": {"export_hf": False, "resume": False, "every_steps": 1000}, "metrics": {"tensorboard": False},
       "distributed": {"strategy": "fsdp", "mixed_precision": "bf16", "activation_checkpointing": True}}
env = init_distributed(validate(raw, sft.Config).distributed)
student = shard_model(make_model(0, env.device), env, validate(raw, sft.Config).distributed)
cfg_s = Qwen2Config(vocab_size=VOCAB, **SIZES[size])
d, L, ff = cfg_s.hidden_size, cfg_s.num_hidden_layers, cfg_s.intermediate_size
kv = d * cfg_s.num_key_value_heads // cfg_s.num_attention_heads
N = L * (2 * d * d + 2 * d * kv + 3 * d * ff) + 2 * VOCAB * d  # matmul params (embedding lookup excluded, LM head included)
exs = examples(80)
avg_len = sum(len(e) for e in exs) / len(exs)
if mode == "sft":
    result = fit(validate(raw, sft.Config), env, student, Tok(), exs, sft.sft_loss)
    flops_per_token = 6 * N + 6 * L * d * avg_len  # fwd+bwd, causal attention ~ half of 12*L*d*seq
else:
    raw["kd"] = {"mode": "logits", "loss": "forward_kl"}
    raw["teacher"] = {"hidden_size": 32}  # placeholder: the teacher below is built directly
    config = validate(raw, distill.Config)
    teacher = make_model(1, env.device).requires_grad_(False).eval()
    teacher = shard_model(teacher, env, config.distributed, trainable=False)
    result = fit(config, env, student, Tok(), exs, distill.make_kd_loss(config, teacher, Tok(), env))
    flops_per_token = 6 * N + 2 * N + 8 * L * d * avg_len  # student fwd+bwd, teacher fwd
if env.is_main:
    rows = read_metrics(out / "metrics.csv")[1:]  # the first step warms up kernels and the allocator
    tps = sum(r["tokens"] for r in rows) / sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    name = torch.cuda.get_device_name()
    peak = float(os.environ.get("PEAK_TFLOPS", 0)) or (989.0 if ("H100" in name or "H200" in name) else 312.0 if "A100" in name else 0.0)
    mfu = tps * flops_per_token / (peak * 1e12 * env.world_size) if peak else float("nan")
    rec = {"mode": mode, "size": size, "gpus": env.world_size, "gpu": name, "tokens_per_s": round(tps, 1),
           "tokens_per_s_per_gpu": round(tps / env.world_size, 1), "mfu": round(mfu, 4), "peak_tflops": peak,
           "loss_first": read_metrics(out / "metrics.csv")[0]["loss"], "loss_last": rows[-1]["loss"],
           "padding_waste": rows[-1]["padding_waste"], "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    (out / "summary.json").write_text(json.dumps(rec))
    print(json.dumps(rec), flush=True)
close_distributed()
EOF

for MODE in sft kd; do
  echo "== $MODE, $SIZE, $NGPU GPU(s), bf16, FSDP2, activation checkpointing"
  "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node "$NGPU" "$WORK/run.py" "$MODE" "$SIZE" "$WORK/$MODE" 2>&1 | grep -E '^\{|step [0-9]+/|Error|error' || true
done

mkdir -p benches/results
"$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
rows = [json.loads((work / m / "summary.json").read_text()) for m in ("sft", "kd") if (work / m / "summary.json").exists()]
cols = ("mode", "size", "gpus", "gpu", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "loss_first", "loss_last", "max_mem_gib")
print("\n" + "  ".join(cols))
for r in rows:
    print("  ".join(str(round(r[c], 3) if isinstance(r[c], float) else r[c]) for c in cols))
Path("benches/results/gpu_check.json").write_text(json.dumps(rows, indent=2))
sys.exit(0 if len(rows) == 2 else 1)
EOF
