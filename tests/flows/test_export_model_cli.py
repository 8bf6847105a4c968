"""`factory export-model` (flows/export_model.py): a tiny trained student written to one GGUF
file that `factory eval FILE.gguf` scores exactly as it scores the Hugging Face folder (the same
completions, hence the same scores), and bad options that exit 2 naming the option."""

from __future__ import annotations

import json

import pytest

from storage import Lake
from tests.trainer.test_gguf_export import save_student, tensor_types

PROBLEMS = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "What is 10 - 4?", "answer": "6"},
            {"problem": "Name a primary colour.", "answer": "red"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_student(run, "llama")
    return run


def test_eval_of_the_gguf_equals_eval_of_the_folder(cli, run_dir, tmp_path):
    out = tmp_path / "student.gguf"
    r = cli("export-model", str(run_dir), "--format", "gguf", "--quant", "f16", "--output", str(out))
    assert r.exit_code == 0, r.stderr
    assert out.is_file() and f"wrote {out}: llama f16" in r.stderr
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    common = ["--problems", str(problems), "--temperature", "0", "--max-tokens", "6", "--device", "cpu", "--format", "json"]
    results = {}
    for model in (str(run_dir / "hf"), str(out)):
        r = cli("eval", model, *common)
        assert r.exit_code == 0, r.stderr
        (results[model],) = json.loads(r.stdout)
    folder, gguf = results.values()
    assert gguf["scores"] == folder["scores"] and gguf["scores"]["items"] == len(PROBLEMS)
    assert gguf["eval_id"] != folder["eval_id"]  # two models, two evals: the equality above is not one eval read twice
    with Lake.open(str(tmp_path / "store")) as lake:
        rows = lake.query("SELECT model, item_id, completion, completion_tokens FROM evals ORDER BY item_id").to_pylist()
    by_model = {m: {(r["item_id"], r["completion"], r["completion_tokens"]) for r in rows if r["model"] == m}
                for m in (str((run_dir / "hf").resolve()), str(out.resolve()))}
    texts = list(by_model.values())
    assert len(texts[0]) == len(PROBLEMS) and texts[0] == texts[1]  # greedy: the same text for every problem
    assert all(completion for _, completion, _ in texts[0])


def test_q8_0_export_from_the_hf_folder(cli, run_dir, tmp_path):
    out = tmp_path / "student-q8.gguf"
    r = cli("export-model", str(run_dir / "hf"), "--quant", "q8_0", "--output", str(out))  # --format gguf is the default
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}: llama q8_0" in r.stderr
    types = {kind for name, kind in tensor_types(out).items() if name.endswith(".weight") and "norm" not in name}
    assert types == {"Q8_0"}


def test_bad_options_exit_2_naming_the_option(cli, run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.jsonl").write_text(json.dumps(PROBLEMS[0]) + "\n")
    (tmp_path / "dir.gguf").mkdir()
    out = str(tmp_path / "s.gguf")
    cases = [
        (["export-model", str(tmp_path / "nope"), "--output", out], "RUN_OR_DIR", "no such folder"),
        (["export-model", str(tmp_path / "empty"), "--output", out], "RUN_OR_DIR", "a folder without config.json"),
        (["export-model", str(run_dir), "--quant", "q4_0", "--output", out], "--quant 'q4_0'", "expected f16 or q8_0"),
        (["export-model", str(run_dir), "--format", "onnx", "--output", out], "--format 'onnx'", "expected gguf"),
        (["export-model", str(run_dir), "--output", str(tmp_path / "missing" / "s.gguf")], "--output", "does not exist"),
        (["export-model", str(run_dir), "--output", str(tmp_path / "dir.gguf")], "--output", "is a directory"),
        (["eval", str(tmp_path / "absent.gguf"), "--problems", str(tmp_path / "p.jsonl")], "absent.gguf", "no such file"),
    ]
    for args, option, expected in cases:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        line = r.stderr.strip()
        assert line.startswith("error: ") and option in line and expected in line and "\n" not in line, line
    assert not (tmp_path / "s.gguf").exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]
