"""Recipes: the issue's example shape validates; bad recipes name the file, line, key path and
what was expected; the hash follows meaning, not spelling; the shipped recipes load."""

from pathlib import Path

import pytest

from factory.recipe import load_recipe, recipe_hash
from factory.stages import collect_questions
from storage import BadInput

ROOT = Path(__file__).resolve().parents[2]

EXAMPLE = """\
name: gsm8k-r1
questions:
  - {source: jsonl, path: data/gsm8k_test.jsonl, fields: {problem: question, answer: answer}, limit: 200}
teacher:
  backend: openai            # openai | vllm | transformers
  base_url: http://127.0.0.1:8000/v1
  model: deepseek-r1
  samples_per_problem: 4
  sampling: {temperature: 0.6, max_tokens: 4096}
verify: [math]
filters: [think_format, language, repetition, truncation]
dedup: {threshold: 0.8}
dataset: {name: gsm8k-r1}
"""


def write(tmp_path: Path, text: str) -> Path:
    """The recipe, beside the seed file EXAMPLE names (seed paths are checked at load)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "gsm8k_test.jsonl").write_text('{"question": "1 + 1?", "answer": "2"}\n')
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_the_issue_example_validates(tmp_path):
    r = load_recipe(write(tmp_path, EXAMPLE))
    cfg = r.teacher.to_config()
    assert cfg.backend == "openai" and cfg.endpoints[0].url == "http://127.0.0.1:8000/v1" and cfg.name == "deepseek-r1"
    assert r.teacher.samples_per_problem == 4 and r.teacher.sampling.max_tokens == 4096
    assert r.dataset_name == "gsm8k-r1" and r.dedup.threshold == 0.8


@pytest.mark.parametrize(
    "old,new,line,expected",
    [
        ("temperature: 0.6", "temperature: 5", 9, r"teacher.sampling.temperature: Input should be less than or equal to 2"),
        ("verify: [math]", "verify: [maths]", 10, r"verify: unknown verifier\(s\) \['maths'\]"),
        ("  model: deepseek-r1\n", "  model: deepseek-r1\n  modle: x\n", 8, r"teacher.modle: Extra inputs are not permitted"),
        ("source: jsonl", "source: jsonx", 3, r"questions\[0\]"),
        ("  base_url: http://127.0.0.1:8000/v1\n", "", 4, r"teacher: .*needs base_url"),
        ("filters: [think_format", "filters: [think_fromat", 11, r"filters: unknown filter"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 1.8}", 12, r"dedup.threshold"),
        # a dataset name is a name, not a path: refused at load, before any teacher request
        ("dataset: {name: gsm8k-r1}", "dataset: {name: ../../evil/x}", 13, r"dataset.name: '../../evil/x': expected a name"),
        ("name: gsm8k-r1\n", "name: .hidden\n", 1, r"name: '.hidden': expected a name"),
        ("path: data/gsm8k_test.jsonl", "path: data/missing.jsonl", 3, r"questions\[0\].path: .*data/missing.jsonl does not exist"),
        ("max_tokens: 4096", "max_tokens: 99999999999999999999999", 9, r"teacher.sampling.max_tokens: expected an integer of at most 64 bits"),
        ("max_tokens: 4096", "max_tokens: " + "9" * 5000, 9, r"a number of more than 4300 digits"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\nbudget: {max_usd: .inf}", 13, r"budget.max_usd: expected a finite number"),
        ("samples_per_problem: 4", "samples_per_problem: 4\n  context_window: 4096", 10,
         r"teacher.sampling.max_tokens: expected fewer than context_window \(4096\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\nadaptive: {accepted_per_problem: 20}", 13,
         r"adaptive.accepted_per_problem: expected at most max_samples_per_problem \(16\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\nadaptive: {accepted_per_problem: 2, max_samples_per_problem: 2}", 13,
         r"adaptive.max_samples_per_problem: expected at least teacher.samples_per_problem \(4\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\nfilter_config: {min_words: 50, max_words: 10}", 13,
         r"filter_config.min_words: expected at most max_words \(10\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\nverify_timeout_s: 1e9", 13, r"verify_timeout_s: Input should be less than or equal to 86400"),
        ("  model: deepseek-r1\n", "  model: deepseek-r1\n  model: other\n", 8, r"duplicate key 'model' \(first at line 7\)"),
        ("verify: [math]", "verify: [math]\nverify: [code]", 11, r"duplicate key 'verify' \(first at line 10\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\ntruncation: {max_tokens_cap: 4096}", 13,
         r"truncation.max_tokens_cap: expected more than teacher.sampling.max_tokens \(4096\)"),
        ("dedup: {threshold: 0.8}", "dedup: {threshold: 0.8}\ntruncation: {retry_max_tokens_factor: 1}", 13,
         r"truncation.retry_max_tokens_factor: Input should be greater than 1"),
    ],
)
def test_bad_recipes_name_file_line_key_and_expectation(tmp_path, old, new, line, expected):
    assert old in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(old, new))
    with pytest.raises(BadInput, match=expected) as exc:
        load_recipe(path)
    assert f"{path}:{line}:" in str(exc.value)


def test_the_truncation_cap_must_fit_the_context_window(tmp_path):
    text = EXAMPLE.replace("samples_per_problem: 4", "samples_per_problem: 4\n  context_window: 8192") + "truncation: {}\n"
    with pytest.raises(BadInput, match=r"recipe.yaml:15: truncation.max_tokens_cap: expected fewer than context_window \(8192\)"):
        load_recipe(write(tmp_path, text))


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(BadInput, match=r"recipe.yaml:2: not valid YAML"):
        load_recipe(write(tmp_path, "name: x\n  - : [\n"))
    with pytest.raises(BadInput, match="expected a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(BadInput, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_hash_follows_meaning_not_spelling(tmp_path):
    a = recipe_hash(load_recipe(write(tmp_path, EXAMPLE)))
    b = recipe_hash(load_recipe(write(tmp_path, EXAMPLE.replace("# openai | vllm | transformers", "") + "\n# a comment\n")))
    c = recipe_hash(load_recipe(write(tmp_path, EXAMPLE.replace("temperature: 0.6", "temperature: 0.7"))))
    assert a == b != c


def test_a_recipe_written_before_give_up_after_s_keeps_its_hash(tmp_path):
    # The hash the code before `give_up_after_s` gave EXAMPLE (commit 06a1aa5): stored runs and
    # datasets stay reachable from their recipe.
    assert recipe_hash(load_recipe(write(tmp_path, EXAMPLE))) == "ad1485652b42a8d088dabeb526480998"
    changed = load_recipe(write(tmp_path, EXAMPLE.replace("  model: deepseek-r1\n", "  model: deepseek-r1\n  give_up_after_s: 30\n")))
    assert recipe_hash(changed) != "ad1485652b42a8d088dabeb526480998"
    assert changed.teacher.to_config().give_up_after_s == 30.0
    with pytest.raises(BadInput, match=r"teacher.give_up_after_s: Input should be greater than 0"):
        load_recipe(write(tmp_path, EXAMPLE.replace("  model: deepseek-r1\n", "  model: deepseek-r1\n  give_up_after_s: 0\n")))


def test_compaction_left_at_its_defaults_keeps_the_hash(tmp_path):
    # The same pinned hash as above, from before `compaction`: unset or spelled at its defaults.
    for extra in ("", "compaction: {max_files: 512, keep_s: 3600}\n"):
        assert recipe_hash(load_recipe(write(tmp_path, EXAMPLE + extra))) == "ad1485652b42a8d088dabeb526480998"
    changed = load_recipe(write(tmp_path, EXAMPLE + "compaction: {max_files: 0}\n"))
    assert changed.compaction.max_files == 0 and recipe_hash(changed) != "ad1485652b42a8d088dabeb526480998"
    with pytest.raises(BadInput, match=r"compaction.max_files: Input should be greater than or equal to 0"):
        load_recipe(write(tmp_path, EXAMPLE + "compaction: {max_files: -1}\n"))


# Hashes of the shipped recipes computed before `truncation` existed: a run of an unchanged recipe
# resumes (the run id is found by recipe hash) and its dataset keeps its recipe hash.
SHIPPED_HASHES = {"quickstart": "d9b3048c3398a09655f1a61880dd46d4", "r1_math_vllm": "d5a7350d53d1152340ff86f80cc57186",
                  "code_mbpp": "996c4e9c789fe1fac1778eab2d2305b2"}


@pytest.mark.parametrize("name", sorted(SHIPPED_HASHES))
def test_a_recipe_without_the_new_options_keeps_its_hash(name):
    assert recipe_hash(load_recipe(ROOT / "recipes" / f"{name}.yaml")) == SHIPPED_HASHES[name]


def test_truncation_escalation_is_off_unless_set_and_changes_the_hash(tmp_path):
    plain = load_recipe(write(tmp_path, EXAMPLE))
    assert plain.truncation is None
    on = load_recipe(write(tmp_path, EXAMPLE + "truncation: {max_tokens_cap: 16384}\n"))
    assert on.truncation.escalation().max_tokens(4096) == 8192 and on.truncation.escalation().max_tokens(10000) == 16384
    assert recipe_hash(on) != recipe_hash(plain)


@pytest.mark.parametrize("name", ["quickstart", "r1_math_vllm", "code_mbpp"])
def test_shipped_recipes_load_and_their_sources_read(name):
    r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    rows = collect_questions(r.questions, base_dir=ROOT / "recipes", limit=5)
    assert rows and all(row["problem_id"] and row["problem"] for row in rows)


def test_hashes_of_recipes_without_the_top_k_options_are_unchanged(tmp_path):
    # The literal is EXAMPLE's hash on the code before `sampling.top_logprobs` and
    # `teacher.logprob_token_ids` existed: runs and datasets of old recipes keep matching.
    assert recipe_hash(load_recipe(write(tmp_path, EXAMPLE))) == "ad1485652b42a8d088dabeb526480998"
    topk = recipe_hash(load_recipe(write(tmp_path, EXAMPLE.replace("max_tokens: 4096}", "max_tokens: 4096, top_logprobs: 20}"))))
    ids = recipe_hash(load_recipe(write(tmp_path, EXAMPLE.replace("  model: deepseek-r1", "  model: deepseek-r1\n  logprob_token_ids: true"))))
    assert len({topk, ids, "ad1485652b42a8d088dabeb526480998"}) == 3


def test_docs_recipes_names_every_key():
    """docs/recipes.md documents every key of the recipe models and the question sources."""
    from pydantic import BaseModel

    from factory import questions, recipe
    from factory.teachers.base import Sampling

    doc = (ROOT / "docs" / "recipes.md").read_text()
    models = [recipe.Recipe, recipe.TeacherSpec, recipe.PromptSpec, recipe.AdaptiveSpec, recipe.DecontaminateSpec,
              recipe.DedupSpec, recipe.DatasetSpec, recipe.BudgetSpec, recipe.TruncationSpec, recipe.RunnerSpec, recipe.CompactionSpec, Sampling,
              questions.SeedSource, questions.GeneratorSource, questions.TeacherWrittenSource]
    missing = []
    for m in models:
        assert issubclass(m, BaseModel)
        for name, field in m.model_fields.items():
            key = field.alias or name
            if f"`{key}`" not in doc and key != "source":
                missing.append(f"{m.__name__}.{key}")
    assert not missing, f"docs/recipes.md does not name: {missing}"


def test_a_folder_and_deep_nesting_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match=r": is a folder; expected a recipe file"):
        load_recipe(tmp_path)
    with pytest.raises(BadInput, match="nested too deeply"):
        load_recipe(write(tmp_path, EXAMPLE + "filter_config: " + "[" * 5000 + "]" * 5000 + "\n"))


def test_the_same_key_in_two_mappings_is_not_a_duplicate(tmp_path):
    r = load_recipe(write(tmp_path, EXAMPLE.replace("dataset: {name: gsm8k-r1}", "dataset: {name: gsm8k-r1, description: x}\nbudget: {max_tokens: 5}")))
    assert r.dataset.description == "x" and r.budget.max_tokens == 5
