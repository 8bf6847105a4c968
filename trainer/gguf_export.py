"""A trained student as one GGUF file: weights, tokenizer and chat template, laid out as
llama.cpp's converter writes them (for llama.cpp, Ollama, LM Studio), and read back by
transformers (`from_pretrained(folder, gguf_file=name)`) and `factory eval`.

    factory export-model runs/x/hf --format gguf --quant q8_0 --output student.gguf
    factory eval student.gguf --problems heldout.jsonl --temperature 0

    from trainer.gguf_export import export_gguf
    result = export_gguf("runs/x", "student.gguf", quant="f16")   # a run's output_dir or its hf/ folder

The source is the Hugging Face folder `factory train` writes (trainer/checkpoint.py `export_hf`:
config.json, safetensors, tokenizer with its chat template), of a Llama or Qwen2 causal LM (the
architectures trainer/model.py builds). What is written, and why:
- Tensors under llama.cpp's names (blk.N.attn_q, ffn_gate, ...). `output.weight` only when the
  head is not tied to the embeddings: a reader ties them when it is absent.
- Llama's attn_q/attn_k rows are permuted the way llama.cpp's converter does (its rotary
  embedding pairs neighbouring dimensions, Hugging Face's the two halves of a head); readers,
  transformers included, undo it for `llama` files. Qwen2 is written as is: neither llama.cpp's
  converter nor transformers' reader permutes it.
- f16: every matrix in float16. q8_0: every matrix in 8-bit blocks of 32 values with a scale,
  except one whose rows are not a multiple of 32 long, which stays float16 (logged by name).
  Norm weights and biases stay float32 in both, as llama.cpp writes them.
- The tokenizer as llama.cpp's byte-level BPE (`gpt2`): tokens in id order, their types
  (control for special added tokens, user-defined for the other added ones), the merges, the
  bos/eos/unk/pad ids, whether a BOS is added, and `tokenizer.chat_template`. The pre-tokenizer
  is named so that transformers rebuilds the same split (plain GPT-2 byte-level: `gpt2`; the
  Qwen2 and Llama-3 regexes: `qwen2`, `llama-bpe`).
The file is written beside the output under a temporary name and renamed when complete, so a
failure leaves nothing.

Not covered: rope scaling, sliding-window attention, Llama with attention or MLP biases (none of
these survive transformers' GGUF reader), sentencepiece tokenizers, LoRA adapters not merged
(export_hf merges them), k-quants (q4_k, ...: the gguf package has no quantiser for them), and a
tokenizer normaliser (Qwen2's NFC), which neither llama.cpp nor the reader applies.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from storage.errors import BadInput
from storage.files import atomic_output, check_output

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0")
FORMATS = ("gguf",)
ARCHS = ("llama", "qwen2")  # config.json model_type == the GGUF architecture name
Q8_BLOCK = 32  # values per Q8_0 block: a row must hold a whole number of them

# Hugging Face parameter names (below model.layers.N.) -> llama.cpp tensor names (below blk.N.).
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


@dataclass
class GGUFExport:
    """What export_gguf wrote."""

    path: Path
    quant: str
    architecture: str
    tensors: int
    bytes: int
    seconds: float
    kept_f16: list[str] = field(default_factory=list)  # q8_0: matrices whose rows are not a multiple of 32


def hf_folder(run_or_dir: str | Path) -> Path:
    """The Hugging Face folder of `run_or_dir`: itself when it holds config.json, else its `hf/`
    subfolder (a run's output_dir); BadInput naming what was expected otherwise."""
    path = Path(run_or_dir).expanduser()
    expected = "expected a Hugging Face folder with config.json (such as runs/x/hf) or a run's output_dir holding one in hf/"
    if not path.is_dir():
        raise BadInput(f"RUN_OR_DIR {run_or_dir}: no such folder; {expected}")
    for folder in (path, path / "hf"):
        if (folder / "config.json").is_file():
            return folder
    raise BadInput(f"RUN_OR_DIR {run_or_dir}: a folder without config.json (nor hf/config.json); {expected}")


def check_options(output: str | Path, quant: str, format: str = "gguf") -> Path:
    """BadInput for a bad --format, --quant or --output, before any work."""
    if format not in FORMATS:
        raise BadInput(f"--format {format!r}: expected {' or '.join(FORMATS)}")
    if quant not in QUANTS:
        raise BadInput(f"--quant {quant!r}: expected {' or '.join(QUANTS)}")
    out = Path(output)
    if out.suffix != ".gguf":
        raise BadInput(f"--output {output}: expected a file name ending in .gguf (how `factory eval` and llama.cpp recognise one)")
    try:
        return check_output(out)
    except BadInput as exc:
        raise BadInput(f"--{exc}") from None  # "output X: ..." -> "--output X: ...", the option's own name


def export_gguf(run_or_dir: str | Path, output: str | Path, quant: str = "f16") -> GGUFExport:
    """Write the model in `run_or_dir` (see hf_folder) to `output` as one GGUF file."""
    from transformers import AutoConfig

    from .model import load_tokenizer

    out = check_options(output, quant)
    folder = hf_folder(run_or_dir)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, OSError) as exc:
        raise BadInput(f"RUN_OR_DIR {folder}/config.json: {exc}") from None
    check_architecture(config, folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadInput(f"RUN_OR_DIR {folder}: no .safetensors weights (expected the folder `factory train` exports)")
    tokenizer = load_tokenizer(folder)
    return write_gguf(config, _safetensors(files), tokenizer, out, quant, name=_model_name(folder))


def check_architecture(config, where: str | Path) -> None:
    """BadInput unless `config` is a Llama or Qwen2 that a GGUF reader rebuilds exactly."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHS:
        raise BadInput(f"RUN_OR_DIR {where}: architecture {arch!r} is not supported; expected {' or '.join(ARCHS)} (config.json model_type)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    unsupported = {
        "rope scaling": rope.get("rope_type", rope.get("type", "default")) not in ("default", None),
        "hidden_act other than silu": getattr(config, "hidden_act", "silu") != "silu",
        "attention_bias": arch == "llama" and getattr(config, "attention_bias", False),
        "mlp_bias": arch == "llama" and getattr(config, "mlp_bias", False),
        "sliding-window attention": getattr(config, "use_sliding_window", False),
        "head_dim other than hidden_size / num_attention_heads": arch == "qwen2" and _head_dim(config) * config.num_attention_heads != config.hidden_size,
    }
    bad = [what for what, present in unsupported.items() if present]
    if bad:
        raise BadInput(f"RUN_OR_DIR {where}: {', '.join(bad)}: not expressible in a {arch} GGUF that transformers and llama.cpp read back")


def write_gguf(config, tensors: Iterator[tuple[str, torch.Tensor]], tokenizer, output: str | Path, quant: str = "f16",
               name: str | None = None) -> GGUFExport:
    """Write Hugging Face `tensors` (name, tensor) of a model with `config`, and `tokenizer`,
    to `output` as one GGUF file (see the module docstring)."""
    import gguf

    out = check_options(output, quant)
    check_architecture(config, name or output)
    started = time.perf_counter()
    arch = config.model_type
    kept_f16: list[str] = []
    count = 0
    with atomic_output(out) as tmp:
        # use_temp_file: tensors wait on disk, not in memory, until the header is written.
        writer = gguf.GGUFWriter(str(tmp), arch, use_temp_file=True)
        try:
            _write_metadata(writer, config, quant, name)
            vocab_size = _write_tokenizer(writer, tokenizer, config.vocab_size)
            writer.add_vocab_size(vocab_size)
            seen = set()
            for hf_name, tensor in tensors:
                target = _gguf_name(hf_name, config)
                if target is None:
                    continue
                array = _permuted(target, tensor.detach().to("cpu", torch.float32).numpy(), config)
                data, qtype = _encode(array, quant)
                if quant == "q8_0" and array.ndim == 2 and qtype != gguf.GGMLQuantizationType.Q8_0:
                    kept_f16.append(target)
                writer.add_tensor(target, data, raw_dtype=qtype)  # a Q8_0 shape is read off its bytes
                seen.add(target)
                count += 1
            _check_complete(seen, config)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    if kept_f16:
        log.warning("q8_0: %d matri%s kept in f16 (rows not a multiple of %d values): %s", len(kept_f16),
                    "x" if len(kept_f16) == 1 else "ces", Q8_BLOCK, ", ".join(kept_f16))
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    log.info("wrote %s: %s %s, %d tensors, %.1f MB in %.1fs", out, arch, quant, count, size / 1e6, seconds)
    return GGUFExport(path=out, quant=quant, architecture=arch, tensors=count, bytes=size, seconds=seconds, kept_f16=kept_f16)


# -- tensors ---------------------------------------------------------------------------------


def _safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the (possibly sharded) safetensors files, one at a time."""
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key)


def _gguf_name(hf_name: str, config) -> str | None:
    """The GGUF name of a Hugging Face parameter; None for one a GGUF does not hold (a tied head,
    rotary caches); BadInput for one it cannot (an unmerged LoRA adapter, another architecture)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    base, _, kind = hf_name.rpartition(".")
    if base in TOP_TENSORS and kind == "weight":
        if base == "lm_head" and getattr(config, "tie_word_embeddings", False):
            return None  # the head is the embedding matrix: readers tie it when output.weight is absent
        return f"{TOP_TENSORS[base]}.weight"
    m = _LAYER.fullmatch(hf_name)
    if m and m[2] in LAYER_TENSORS and (kind == "weight" or m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
        return f"blk.{m[1]}.{LAYER_TENSORS[m[2]]}.{kind}"
    raise BadInput(f"tensor {hf_name}: not a {config.model_type} weight a GGUF holds (a LoRA adapter not merged? export_hf merges them)")


def _check_complete(seen: set[str], config) -> None:
    """BadInput when the weights lack a tensor the architecture needs (a truncated shard)."""
    needed = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if not getattr(config, "tie_word_embeddings", False) else set())
    for i in range(config.num_hidden_layers):
        needed |= {f"blk.{i}.{t}.weight" for t in LAYER_TENSORS.values()}
        if config.model_type == "qwen2":
            needed |= {f"blk.{i}.attn_{t}.bias" for t in "qkv"}
    missing = sorted(needed - seen)
    if missing:
        raise BadInput(f"weights: missing {len(missing)} tensor(s) a {config.model_type} needs, e.g. {', '.join(missing[:3])}")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _permuted(name: str, array: np.ndarray, config) -> np.ndarray:
    """Llama's q/k rows in llama.cpp's order: within each head, rows (i, i + d/2) become
    neighbours (2i, 2i+1), matching its interleaved rotary embedding. transformers' reader
    (LlamaTensorProcessor) applies the inverse when it loads a `llama` file."""
    if config.model_type != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return array
    heads = config.num_attention_heads if ".attn_q." in name else config.num_key_value_heads
    return array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _encode(array: np.ndarray, quant: str):
    """(data, GGML type) of one tensor: vectors in float32; matrices in f16, or q8_0 where each
    row is a whole number of 32-value blocks."""
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim < 2:
        return array.astype(np.float32), T.F32
    if quant == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(array, T.Q8_0), T.Q8_0
    return array.astype(np.float16), T.F16


# -- metadata and tokenizer ----------------------------------------------------------------


def _write_metadata(writer, config, quant: str, name: str | None) -> None:
    import gguf

    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    writer.add_type("model")
    if name:
        writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(_head_dim(config))  # transformers reads a llama file's head_dim from it


def _pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, chosen so that transformers' GGUF
    reader rebuilds the same split; BadInput for a split it cannot rebuild."""
    kind = (spec or {}).get("type")
    if kind == "ByteLevel" and spec.get("use_regex", True):
        return "gpt2"  # the GPT-2 regex: the reader's default for a byte-level vocabulary
    if kind == "Sequence":
        steps = spec.get("pretokenizers", [])
        split = [s for s in steps if s.get("type") == "Split"]
        if len(steps) == 2 and len(split) == 1 and steps[1].get("type") == "ByteLevel":
            regex = split[0].get("pattern", {}).get("Regex")
            for name, known in _known_splits().items():
                if regex == known:
                    return name
        if [s.get("type") for s in steps] == ["Digits", "ByteLevel"]:
            log.warning("tokenizer: digits split one by one (SmolLM2's hub tokenizer) is written as llama.cpp's `smollm`; "
                        "transformers' GGUF reader does not split digits so")
            return "smollm"
    raise BadInput(f"tokenizer: pre-tokenizer {json.dumps(spec)[:200]} has no GGUF name that transformers reads back "
                   "(expected GPT-2 byte-level, or the Qwen2 or Llama-3 split)")


def _known_splits() -> dict[str, str]:
    """Pre-tokenizer name -> regex, as transformers' GGUF reader rebuilds them (its own table
    where this transformers has one, so what is written is what it reads)."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    splits = {"qwen2": PRETOKENIZE_REGEX}
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:
        return splits
    for name in ("qwen2", "llama-bpe"):  # the canonical names first; the table has aliases
        if name in GGUF_PRE_TOKENIZER_SPLITS:
            splits[name] = GGUF_PRE_TOKENIZER_SPLITS[name]
    return splits


def _write_tokenizer(writer, tokenizer, model_vocab: int) -> int:
    """The tokenizer as llama.cpp's byte-level BPE; the vocabulary size written (the model's
    embedding rows, padded with unused tokens where they outnumber the tokenizer's)."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise BadInput(f"tokenizer: a {model.get('type')} model with a {(spec.get('decoder') or {}).get('type')} decoder; "
                       "expected byte-level BPE (SmolLM2, Qwen2, Llama 3)")
    if spec.get("normalizer"):
        log.warning("tokenizer: its normaliser (%s) is not written: GGUF readers do not apply one", spec["normalizer"].get("type"))
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    size = max(model_vocab, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]  # llama.cpp's filler for embedding rows without a token
    types = [gguf.TokenType.UNUSED] * size
    for token, i in vocab.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise BadInput("tokenizer: expected one chat template (a string), not a set of named ones")

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    # Whether plain encoding adds BOS/EOS, read off the tokenizer's behaviour (its post-processor).
    plain, bare = tokenizer("a").input_ids, tokenizer("a", add_special_tokens=False).input_ids
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and plain[:1] == [tokenizer.bos_token_id] and bare[:1] != plain[:1])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and plain[-1:] == [tokenizer.eos_token_id] and bare[-1:] != plain[-1:])
    writer.add_add_space_prefix(False)
    writer.add_chat_template(template)
    return size


def _model_name(folder: Path) -> str:
    """general.name: the run's folder name (runs/x/hf -> x)."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "hf" else folder.name
