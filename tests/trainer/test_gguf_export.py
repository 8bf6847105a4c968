"""trainer/gguf_export.py: tiny random-weight Llama and Qwen2 students, exported the way
`factory train` does (export_hf), written to f16 and q8_0 GGUF files and read back by
transformers: the same logits, greedy text, tokenizer and chat template as the Hugging Face
folder; the file's tensor types; the q8_0 fallback to f16; refusals that leave nothing behind."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from storage.errors import BadInput
from trainer import gguf_export
from trainer.checkpoint import export_hf
from trainer.config import ModelConfig
from trainer.distributed import DistEnv
from trainer.gguf_export import export_gguf
from trainer.model import build_model, load_tokenizer

PROMPTS = ["What is 12 + 7?", "Write a haiku about the sea.", "List three primes."]
TEXTS = ["Hello world, 12345 + 678 = 13023!", "  two spaces\nand a newline\ttab", "café naïve — “quotes” 🙂",
         "<|im_start|>user\nhi<|im_end|>", "<think>maybe</think> done"]
F16_TOLERANCE = 1e-3  # max |logit diff|, f16 file vs the folder's fp32 (measured: ~4e-4)
Q8_TOLERANCE = 0.05  # max |logit diff|, q8_0 (measured: 0.009-0.011 on these students, logits up to ~1.4)


def save_student(run_dir: Path, arch: str = "llama", tie: bool = True, **sizes) -> Path:
    """A random-weight student of `arch` exported as `factory train` does: run_dir/hf."""
    tokenizer = load_tokenizer(ModelConfig().tokenizer_path())
    cfg = ModelConfig(arch=arch, tie_word_embeddings=tie, **{"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, **sizes})
    model = build_model(cfg, tokenizer)
    export_hf(model, tokenizer, run_dir / "hf", DistEnv())
    return run_dir / "hf"


def load_gguf(path: Path):
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                       for p in PROMPTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch).logits
    return out[batch["attention_mask"].bool()]  # the real positions only


def greedy(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def read_header(path: Path) -> tuple[dict, dict[str, tuple[str, int]]]:
    """(metadata without its arrays, {tensor: (GGML type name, bytes)}): a few ms, where
    gguf.GGUFReader takes seconds to parse the 49k-token vocabulary."""
    import struct

    with open(path, "rb") as fh:
        blob = fh.read()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, blob, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return blob[pos - n:pos].decode()

    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            inner, count = take("IQ")
            return [value(inner) for _ in range(count)] if inner in (8, 9) else take(scalars[inner] * count) if count else []
        return take(scalars[kind])

    assert blob[:4] == b"GGUF"
    pos = 4
    _version, n_tensors, n_kv = take("IQQ")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("I"))
    tensors = {}
    for _ in range(n_tensors):
        name = string()
        dims = take("Q" * take("I"))
        qtype, _offset = take("IQ")
        kind = gguf.GGMLQuantizationType(qtype)
        block, size = gguf.GGML_QUANT_SIZES[kind]
        tensors[name] = (kind.name, int(np.prod(dims)) // block * size)
    return meta, tensors


def tensor_types(path: Path) -> dict[str, str]:
    return {name: kind for name, (kind, _) in read_header(path)[1].items()}


class Student:
    """A student's HF folder (model, tokenizer) and its GGUF files, each loaded once."""

    def __init__(self, arch: str, tie: bool, run: Path):
        self.arch, self.tie = arch, tie
        self.folder = save_student(run, arch, tie)
        self.files = {q: export_gguf(run, run / f"student-{q}.gguf", q).path for q in gguf_export.QUANTS}  # the run dir: its hf/
        self.model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self._loaded: dict[str, torch.nn.Module] = {}

    def gguf_model(self, quant: str):
        if quant not in self._loaded:
            self._loaded[quant] = load_gguf(self.files[quant])
        return self._loaded[quant]


@pytest.fixture(scope="module", params=[("llama", True), ("qwen2", False)], ids=["llama-tied", "qwen2-untied"])
def student(request, tmp_path_factory):
    arch, tie = request.param
    return Student(arch, tie, tmp_path_factory.mktemp(arch))


def test_f16_reloads_with_the_same_logits_and_greedy_text(student):
    model, tokenizer = student.model, student.tokenizer
    reloaded = student.gguf_model("f16")
    assert type(reloaded) is type(model) and reloaded.config.tie_word_embeddings is student.tie
    ref, got = logits(model, tokenizer), logits(reloaded, tokenizer)
    diff = (got - ref).abs().max().item()
    # Without llama.cpp's q/k row permutation the Llama's diff here is ~1e-2 (measured): this fails.
    assert diff < F16_TOLERANCE, diff
    assert ref.abs().max().item() > 100 * F16_TOLERANCE  # the tolerance is small against the logits themselves
    for prompt in PROMPTS:
        assert greedy(reloaded, tokenizer, prompt) == greedy(model, tokenizer, prompt), prompt


def test_q8_0_is_smaller_and_close(student):
    files, tokenizer = student.files, student.tokenizer
    diff = (logits(student.gguf_model("q8_0"), tokenizer) - logits(student.model, tokenizer)).abs().max().item()
    assert F16_TOLERANCE < diff < Q8_TOLERANCE, diff  # really quantised, and still close
    weights = {q: sum(n for _, n in read_header(path)[1].values()) for q, path in files.items()}
    assert weights["q8_0"] < 0.6 * weights["f16"]  # 34 bytes per 32 values against 64 (the tokenizer is the same in both)


def test_tensor_types_and_names(student):
    arch, tie, files, tokenizer = student.arch, student.tie, student.files, student.tokenizer
    for quant, matrix in (("f16", "F16"), ("q8_0", "Q8_0")):
        types = tensor_types(files[quant])
        assert ("output.weight" in types) is (not tie)
        assert {n for n, t in types.items() if t == "F32"} == {n for n in types if n.endswith(("_norm.weight", ".bias"))}
        assert {t for n, t in types.items() if n.endswith(".weight") and "norm" not in n} == {matrix}
        biases = {n for n in types if n.endswith(".bias")}
        assert biases == ({f"blk.{i}.attn_{x}.bias" for i in range(2) for x in "qkv"} if arch == "qwen2" else set())
    meta, _ = read_header(files["q8_0"])
    assert meta["general.architecture"] == arch and meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(student.model.config.rope_parameters["rope_theta"])
    assert meta["tokenizer.ggml.tokens"] == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]


def test_tokenizer_and_chat_template_read_back_equal(student):
    tokenizer, path = student.tokenizer, student.files["f16"]
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert back.get_vocab() == tokenizer.get_vocab()
    assert back.chat_template == tokenizer.chat_template and back.chat_template
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(back, name) == getattr(tokenizer, name), name
    for text in TEXTS:
        assert back(text).input_ids == tokenizer(text).input_ids, text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert back.apply_chat_template(chat, add_generation_prompt=True) == tokenizer.apply_chat_template(chat, add_generation_prompt=True)


def test_q8_0_keeps_f16_where_rows_are_not_whole_blocks(tmp_path, caplog):
    # hidden 48: every matrix that reads the hidden state has 48-value rows (not 32-blocks);
    # ffn_down reads the 64-wide MLP state, so it alone is Q8_0.
    folder = save_student(tmp_path, "llama", hidden_size=48, intermediate_size=64)
    with caplog.at_level(logging.WARNING, logger="trainer.gguf_export"):
        result = export_gguf(folder, tmp_path / "odd.gguf", "q8_0")
    types = tensor_types(result.path)
    matrices = {n: t for n, t in types.items() if n.endswith(".weight") and "norm" not in n}
    assert {n for n, t in matrices.items() if t == "Q8_0"} == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}
    assert sorted(result.kept_f16) == sorted(n for n, t in matrices.items() if t == "F16") and len(result.kept_f16) == 13
    assert "kept in f16" in caplog.text and "blk.0.attn_q.weight" in caplog.text and "token_embd.weight" in caplog.text
    model, tokenizer = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(str(folder))
    assert (logits(load_gguf(result.path), tokenizer) - logits(model, tokenizer)).abs().max().item() < Q8_TOLERANCE


def test_refusals_name_the_input_and_leave_nothing(tmp_path):
    folder = save_student(tmp_path / "run", "llama", hidden_size=32, num_layers=1)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (lambda: export_gguf(tmp_path / "nope", out / "a.gguf"), "RUN_OR_DIR .*nope: no such folder"),
        (lambda: export_gguf(out, out / "a.gguf"), "RUN_OR_DIR .*out: a folder without config.json"),
        (lambda: export_gguf(folder, out / "a.gguf", "q4_k"), "--quant 'q4_k': expected f16 or q8_0"),
        (lambda: export_gguf(folder, out / "missing" / "a.gguf"), "--output .*missing/a.gguf: the folder .* does not exist"),
        (lambda: export_gguf(folder, out, "f16"), "--output .*: expected a file name ending in .gguf"),
        (lambda: export_gguf(folder, tmp_path / "dir.gguf"), "--output .*dir.gguf: is a directory"),
    ]
    (tmp_path / "dir.gguf").mkdir()
    for call, message in cases:
        with pytest.raises(BadInput, match=message):
            call()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(BadInput, match="architecture 'gpt2' is not supported; expected llama or qwen2"):
        export_gguf(folder, out / "a.gguf")
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(BadInput, match="rope scaling"):
        export_gguf(folder, out / "a.gguf")
    assert list(out.iterdir()) == []


def test_a_failure_while_writing_leaves_no_file(tmp_path):
    """A truncated checkpoint (a layer's tensor missing) fails after the header was started:
    neither the output nor its temporary file remains, and an older output is kept whole."""
    from safetensors.torch import load_file, save_file

    folder = save_student(tmp_path / "run", "llama", hidden_size=32, num_layers=1)
    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(str(weights))
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "student.gguf").write_bytes(b"old")
    with pytest.raises(BadInput, match="missing 1 tensor.*blk.0.ffn_up.weight"):
        export_gguf(folder, out / "student.gguf")
    assert [p.name for p in out.iterdir()] == ["student.gguf"] and (out / "student.gguf").read_bytes() == b"old"


def test_permutation_matches_transformers_inverse():
    """The row order written for llama is what transformers' reader undoes (its own code)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    class Config:
        model_type, num_attention_heads, num_key_value_heads = "llama", 4, 2

    rows = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)  # 4 heads of head_dim 8
    reader = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    q = gguf_export._permuted("blk.0.attn_q.weight", rows, Config)
    assert not np.array_equal(q, rows)
    assert np.array_equal(reader.process(q, "blk.0.attn_q.weight").weights, rows)
    k = gguf_export._permuted("blk.0.attn_k.weight", rows[:16], Config)  # 2 kv heads
    assert np.array_equal(reader.process(k, "blk.0.attn_k.weight").weights, rows[:16])
