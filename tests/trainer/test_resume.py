"""Resume reproduces the uninterrupted loss curve exactly (data position, optimizer, scheduler,
RNG), from the local folder and from the lake's artifact store."""

import shutil

import pytest

from trainer import distill, sft
from trainer.checkpoint import latest_checkpoint, list_checkpoints
from trainer.config import validate
from trainer.metrics import read_metrics

from .conftest import TOKENIZER, short_r1_rows, tiny_sft_config

pytestmark = pytest.mark.integration


def curve(out):
    return [(int(m["step"]), m["loss"], m["grad_norm"], m["lr"]) for m in read_metrics(out / "metrics.csv")]


def test_sft_resume_matches_the_uninterrupted_curve_via_the_artifact_store(tmp_path):
    rows = short_r1_rows(12)
    common = dict(data__packing=False, loop={"batch_size": 2, "max_steps": 6, "seed": 5}, optim={"lr": 5e-3, "warmup_steps": 2})
    (tmp_path / "a").mkdir()
    straight = validate(tiny_sft_config(tmp_path / "a", rows, **common), sft.Config)
    sft.train(straight)

    (tmp_path / "b").mkdir()
    raw = tiny_sft_config(tmp_path / "b", rows, **common)
    raw["checkpoint"].update(store=str(tmp_path / "lake"), every_steps=2)
    broken = validate(raw, sft.Config)
    first = sft.train(broken, stop_after_steps=3)
    assert first["stopped_early"] and first["step"] == 3
    out = tmp_path / "b" / "out"
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-2", "step-3"]
    # Lose the local checkpoints: resume must come from the store (uploaded after each save).
    shutil.rmtree(out / "checkpoints")
    assert (tmp_path / "lake" / "artifacts" / "checkpoints" / "out" / "step-3" / "COMPLETE").exists()
    second = sft.train(broken)
    assert second["step"] == 6

    want, got = curve(tmp_path / "a" / "out"), curve(out)
    assert [s for s, *_ in got] == [1, 2, 3, 4, 5, 6]
    for (s, l1, g1, lr1), (_, l2, g2, lr2) in zip(want, got):
        assert l2 == pytest.approx(l1, abs=1e-6), f"step {s}"
        assert g2 == pytest.approx(g1, rel=1e-5), f"step {s}"
        assert lr2 == pytest.approx(lr1, rel=1e-9), f"step {s}"
    assert latest_checkpoint(out / "checkpoints").name == "step-6"


def test_on_policy_distillation_resumes_with_the_same_samples(tmp_path):
    """On-policy steps sample from the student: equal curves after resume need the RNG restored."""
    rows = short_r1_rows(8)

    def config(name):
        (tmp_path / name).mkdir()
        raw = tiny_sft_config(tmp_path / name, rows, data__packing=False, loop={"batch_size": 2, "max_steps": 4, "seed": 0})
        raw["teacher"] = {"tokenizer": str(TOKENIZER), "hidden_size": 32, "intermediate_size": 64, "init_seed": 9}
        raw["kd"] = {"loss": "reverse_kl", "on_policy_fraction": 0.6, "max_new_tokens": 4, "ce_weight": 0.2}
        return validate(raw, distill.Config)

    distill.train(config("a"))
    b = config("b")
    distill.train(b, stop_after_steps=2)
    distill.train(b)
    want, got = read_metrics(tmp_path / "a" / "out" / "metrics.csv"), read_metrics(tmp_path / "b" / "out" / "metrics.csv")
    assert [m["on_policy"] for m in want] == [m["on_policy"] for m in got]
    # Seed 0 samples at steps 2 and 4: one before the stop (the RNG moves) and one after it
    # (it must be restored to match), with an offline step in between.
    assert [m["on_policy"] for m in want] == [0.0, 1.0, 0.0, 1.0]
    for m1, m2 in zip(want, got):
        assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-6)
        assert m2["tokens"] == m1["tokens"]


def test_checkpoints_go_to_s3_and_resume_from_there(tmp_path, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    rows = short_r1_rows(8)
    raw = tiny_sft_config(tmp_path, rows, data__packing=False, loop={"batch_size": 2, "max_steps": 4})
    raw["checkpoint"].update(store="s3://trainer-ckpt/run1", prefix="checkpoints/tiny")
    config = validate(raw, sft.Config)
    sft.train(config, stop_after_steps=2)
    keys = s3_server.client().list_objects_v2(Bucket="trainer-ckpt", Prefix="run1/artifacts/checkpoints/tiny/step-2/")["Contents"]
    names = {k["Key"].rsplit("/", 1)[1] for k in keys}
    assert {"COMPLETE", "trainer_state.json", "rng-rank0.pt", ".metadata"} <= names
    shutil.rmtree(tmp_path / "out" / "checkpoints")
    result = sft.train(config)
    assert result["step"] == 4
    assert [int(m["step"]) for m in read_metrics(tmp_path / "out" / "metrics.csv")] == [1, 2, 3, 4]
