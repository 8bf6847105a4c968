"""The SFT recipe end to end on a tiny random Llama with the real tokenizer: config errors,
an overfit run on 8 examples, the Hugging Face export reloading and generating, metrics files."""

import collections
import math

import pytest
import torch

from storage.errors import BadInput
from trainer import sft
from trainer.config import validate
from trainer.data import IGNORE, tokenize_rows
from trainer.metrics import read_metrics

from .conftest import short_r1_rows, tiny_sft_config


def test_load_config_names_the_file_the_key_path_and_what_was_expected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  jsonl: rows.jsonl\n  max_length: many\nloop:\n  batch_size: 2\n  bogus: 1\n")
    with pytest.raises(BadInput) as exc:
        sft.load_config(bad)
    msg = str(exc.value)
    assert f"{bad}:3: data.max_length: Input should be a valid integer" in msg
    assert f"{bad}:6: loop.bogus: Extra inputs are not permitted" in msg
    (tmp_path / "nodata.yaml").write_text("output_dir: x\n")
    with pytest.raises(BadInput, match="nodata.yaml:1: data: Field required"):
        sft.load_config(tmp_path / "nodata.yaml")
    (tmp_path / "yaml.yaml").write_text("data: [\n")
    with pytest.raises(BadInput, match="yaml.yaml:2: not valid YAML"):
        sft.load_config(tmp_path / "yaml.yaml")
    with pytest.raises(BadInput, match="no such config file"):
        sft.load_config(tmp_path / "absent.yaml")


def test_the_shipped_recipes_parse():
    from pathlib import Path

    from trainer import distill

    root = Path(__file__).resolve().parents[2] / "recipes" / "train"
    for path in sorted([*root.glob("sft*.yaml"), *root.glob("distill*.yaml")]):
        module = distill if path.name.startswith("distill") else sft
        module.load_config(path)
        header = path.read_text().splitlines()[0]
        assert header.startswith("# ") and ("-m trainer." in header), f"{path.name}: the first line is the launch command"


def test_sft_overfits_8_examples_then_exports_a_model_transformers_reloads_and_generates(tmp_path, tokenizer):
    rows = short_r1_rows(8)
    raw = tiny_sft_config(
        tmp_path,
        rows,
        data={"jsonl": str(tmp_path / "rows.jsonl"), "max_length": 1024},
        loop={"batch_size": 1, "epochs": 24},
        optim={"lr": 1e-2, "schedule": "constant", "max_grad_norm": 1.0},
        checkpoint={"export_hf": True, "keep_last": 1},
    )
    raw["model"].update(hidden_size=64, intermediate_size=128)
    config = validate(raw, sft.Config)
    result = sft.train(config)

    # The stated bound: below the unigram entropy of the supervised tokens, which is the best
    # loss a model that only learned token frequencies can reach; so the model fits the data in
    # context, starting from uniform (ln 49152 = 10.8).
    examples, _ = tokenize_rows(rows, tokenizer, config.data)
    counts = collections.Counter(t for e in examples for t in e.labels if t != IGNORE)
    n = sum(counts.values())
    unigram_entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    curve = [m["loss"] for m in read_metrics(tmp_path / "out" / "metrics.csv")]
    assert len(curve) == 24 and curve[0] > 10.0
    assert curve[-1] < unigram_entropy, (curve, unigram_entropy)
    assert curve[-1] < 0.4 * curve[0]
    assert result["supervised_tokens"] == n and result["padding_waste"] < 0.05

    # The export: transformers reloads it and generates with the chat template.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = tmp_path / "out" / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    prompt = tok.apply_chat_template(rows[0]["messages"], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # The weights are the trained ones, not a fresh init: same logits as the checkpoint's model.
    trained = sft.build_model(config.model, tokenizer)
    from trainer.checkpoint import latest_checkpoint, load_checkpoint
    from trainer.distributed import DistEnv
    from trainer.loop import build_optimizer, build_scheduler

    opt = build_optimizer(trained, config.optim)
    load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"), trained, opt, build_scheduler(opt, config.optim, 24), DistEnv())
    with torch.no_grad():
        a = model(**ids).logits
        b = trained(**ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert (tmp_path / "out" / "metrics.csv").exists()


def test_batch_size_must_divide_over_micro_batches_and_ranks(tmp_path):
    raw = tiny_sft_config(tmp_path, short_r1_rows(4), loop={"batch_size": 3, "micro_batch_size": 2})
    with pytest.raises(BadInput, match="loop.batch_size 3: expected a multiple of micro_batch_size"):
        sft.train(validate(raw, sft.Config))


def test_lora_trains_only_the_adapters(tmp_path, tokenizer):
    pytest.importorskip("peft")
    raw = tiny_sft_config(tmp_path, short_r1_rows(4), loop={"batch_size": 1, "max_steps": 2}, data__packing=False)
    raw["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config = validate(raw, sft.Config)
    model = sft.build_model(config.model, tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    result = sft.train(config)
    assert result["step"] == 2 and math.isfinite(result["loss"])
