"""Models and tokenizers for the recipes: a base model to start from (the embedded SmolLM2-135M
GGUF, any .gguf file, a local Hugging Face folder), or a tiny random-weight Llama/Qwen2 built
from a config (tests and smoke runs). Nothing is downloaded.

    from trainer.config import ModelConfig
    from trainer.model import load_tokenizer, build_model
    tok = load_tokenizer(ModelConfig().tokenizer_path())     # SmolLM2's tokenizer + chat template
    model = build_model(ModelConfig(arch="qwen2", hidden_size=32), tok)
    base = ModelConfig(path="smollm2")                       # SmolLM2-135M-Instruct, fp32 (~20 s)
    model = build_model(base, load_tokenizer(base.tokenizer_path()))

A GGUF is dequantised by transformers (the gguf package) to `dtype` as it loads: a Q4_1 file
trains in fp32 from its dequantised values, and exports as an ordinary safetensors folder.

Not covered: tokenizers without a fast (Rust) backend; models that are not causal LMs; hub ids
(copy the model into a folder first).
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase, Qwen2Config

from factory.teachers.local import quiet_loading
from storage.errors import BadInput, require

from .config import LoraConfig, ModelConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A local tokenizer folder with its chat template (chat_template.jinja is read when the
    tokenizer config lacks one); pad falls back to eos."""
    path = Path(path)
    if path.suffix == ".gguf" and path.is_file():  # the GGUF's own tokenizer and chat template
        require_gguf()
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    elif (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        raise BadInput(f"tokenizer {path}: expected a folder with tokenizer.json (and chat_template.jinja), or a .gguf file")
    if not getattr(tok, "chat_template", None) and (path / "chat_template.jinja").exists():
        tok.chat_template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if not getattr(tok, "chat_template", None):
        raise BadInput(f"tokenizer {path}: no chat template (expected chat_template.jinja or tokenizer_config.json's chat_template)")
    if tok.eos_token_id is None:
        raise BadInput(f"tokenizer {path}: no eos_token (the end-of-turn token the loss mask must include)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase):
    """A transformers config for a random-weight model of the given sizes and the tokenizer's vocab."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.arch == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def require_gguf() -> None:
    """transformers reads GGUF files through the gguf package and (5.x) accelerate."""
    from factory.teachers.local import require

    require(["gguf", "accelerate"])


def gguf_options(gguf_file: str) -> dict:
    """from_pretrained's options for a GGUF to train: every weight unpacked to a dense tensor.
    Newer transformers (GgufConfig) may otherwise keep quantised blocks behind GGUF matmul
    kernels where the `kernels` package has one for the device: fine for inference, not trainable."""
    require_gguf()
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always unpacks GGUF weights
        return {"gguf_file": gguf_file}
    if "dequantize" not in inspect.signature(GgufConfig).parameters:
        return {"gguf_file": gguf_file}
    return {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def dense_weights(model: torch.nn.Module) -> None:
    """Forget that the weights came from a quantised file: transformers keeps its GGUF quantizer
    on the model, whose save_pretrained then refuses ("quantized with gguf and is not
    serializable") and whose config would carry a quantization_config into the export."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def build_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device | str = "cpu", *, field: str = "model"
) -> torch.nn.Module:
    """The causal LM of `cfg` on `device`: loaded from `cfg.path` (see ModelConfig), or random
    from `cfg.init_seed`. `field` is the config section named in errors (model, teacher)."""
    dtype = DTYPES[cfg.dtype]
    if cfg.path:
        folder, gguf = cfg.source(field)
        started = time.perf_counter()
        with quiet_loading():  # no de-quantising bar in the trainer's log
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, local_files_only=True, attn_implementation=cfg.attn_implementation, **(gguf_options(gguf) if gguf else {})
            )
        if gguf:
            dense_weights(model)
        log.info("%s: loaded %s (%.0fM parameters, %s) in %.1fs", field, cfg.path, count_parameters(model) / 1e6, cfg.dtype, time.perf_counter() - started)
    else:
        # Seeded on a private generator state so building a model never shifts the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(tiny_config(cfg, tokenizer), dtype=dtype, attn_implementation=cfg.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise BadInput(f"model {cfg.path or cfg.arch}: vocab {model.get_input_embeddings().num_embeddings} is smaller than the tokenizer's {len(tokenizer)}")
    model.config.use_cache = False
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    return model.to(device)


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Wrap `model` with peft LoRA adapters; only they require grad."""
    peft = require("peft", "pip install 'reasoning-factory[train]'")
    config = peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (the FSDP and activation-checkpointing unit), through a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through peft
    base = getattr(inner, "model", inner)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise BadInput(f"{type(inner).__name__}: no .model.layers to shard (expected a Llama/Qwen2-style causal LM)")
    return list(layers)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
