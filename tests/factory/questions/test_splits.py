"""factory/questions/splits.py and `split:` on generator sources: the side is a stable hash of the
normalised text (the same in another process, whatever PYTHONHASHSEED), train and test never
share a problem across thousands of problems and several seeds, the test share holds, and a
recipe's `split: train` source makes `count` distinct train-side problems or says the family is
too small."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.questions import iter_problems, parse_source
from factory.questions.generators import generate
from factory.questions.splits import generate_split, on_side, split_of, split_position
from factory.recipe import load_recipe, recipe_hash
from factory.stages import collect_questions
from storage import BadInput

ROOT = Path(__file__).resolve().parents[3]


def many_problems() -> list[str]:
    """About 8000 distinct problems of four families."""
    texts = {r["problem"] for name in ("arithmetic", "linear", "sorting") for r in generate(name, count=2000, difficulty=3, seed=5)}
    texts |= {r["problem"] for r in generate("addition", count=2000, difficulty=4, seed=5)}
    return sorted(texts)


def test_the_side_is_blake2b_of_the_normalised_text_and_the_same_in_another_process():
    text = "What is 31 + 8?"
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"factory-split").digest()
    assert split_position(text) == int.from_bytes(digest, "big") / 2**64
    assert split_position("  What is\t31 +  8? \n") == split_position(text)  # normalised like problem ids
    problems = many_problems()[:300]
    here = [split_of(p) for p in problems]
    code = ("import json, sys; from factory.questions.splits import split_of; "
            "print(json.dumps([split_of(p) for p in json.load(sys.stdin)]))")
    for hashseed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(problems), capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": hashseed}, check=True)
        assert json.loads(out.stdout) == here


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_train_and_test_are_disjoint_and_the_share_holds(share):
    problems = many_problems()
    assert len(problems) > 7000
    test = {p for p in problems if split_of(p, share) == "test"}
    train = {p for p in problems if split_of(p, share) == "train"}
    assert not test & train and len(test) + len(train) == len(problems)
    assert abs(len(test) / len(problems) - share) < 0.02  # 4 standard deviations at n = 7000
    if share == 0.2:  # the sides nest: a smaller test side is inside a larger one
        assert test <= {p for p in problems if split_of(p, 0.3) == "test"}


def test_generated_sides_are_disjoint_across_seeds_and_distinct():
    train = [r for seed in (0, 1, 2) for r in generate_split("arithmetic", count=1000, difficulty=2, seed=seed, split="train")]
    test = [r for seed in (0, 7) for r in generate_split("arithmetic", count=400, difficulty=2, seed=seed, split="test")]
    assert len({r["problem_id"] for r in test}) >= 700  # two seeds share few problems; each seed's 400 are distinct
    assert all(len({r["problem_id"] for r in generate_split("linear", count=300, difficulty=1, seed=s, split="test")}) == 300 for s in (0, 1))
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in test}
    assert all(on_side(r["problem"], "train") for r in train) and all(on_side(r["problem"], "test") for r in test)
    # The first N of a larger count are the N of a smaller one (an eval's --limit extends it).
    assert [r["problem_id"] for r in generate_split("addition", count=20, difficulty=3, split="test")] == \
        [r["problem_id"] for r in generate_split("addition", count=50, difficulty=3, split="test")[:20]]


RECIPE = """name: heldout
questions:
  - {{source: generator, generator: {generator}, count: {count}, difficulty: {difficulty}, seed: 3{extra}}}
"""


def write(tmp_path, generator="addition", count=300, difficulty=3, extra=", split: train"):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(generator=generator, count=count, difficulty=difficulty, extra=extra))
    return path


def test_a_split_train_source_makes_count_distinct_train_side_problems(tmp_path):
    path = write(tmp_path)
    recipe = load_recipe(path)
    rows = collect_questions(recipe.questions, base_dir=tmp_path)
    assert len(rows) == 300 and len({r["problem_id"] for r in rows}) == 300
    assert all(split_of(r["problem"]) == "train" for r in rows)
    everything = list(generate("addition", count=len(rows), difficulty=3, seed=3))
    assert any(split_of(r["problem"]) == "test" for r in everything)  # without the split, test-side problems come too
    shared = list(iter_problems(parse_source({"source": "generator", "generator": "addition", "count": 300, "difficulty": 3, "seed": 3,
                                              "split": "train", "test_share": 0.5}), base_dir=tmp_path))
    assert all(split_of(r["problem"], 0.5) == "train" for r in shared) and len(shared) == 300


def test_a_family_too_small_for_count_is_bad_input_naming_count(tmp_path):
    recipe = load_recipe(write(tmp_path, count=70, difficulty=1))  # 81 one-digit sums, about 65 on the train side
    with pytest.raises(BadInput) as exc:
        collect_questions(recipe.questions, base_dir=tmp_path)
    msg = str(exc.value)
    train_side = sum(split_of(f"What is {a} + {b}?") == "train" for a in range(1, 10) for b in range(1, 10))
    assert "count 70" in msg and f"only {train_side} distinct train-side problems" in msg and "gen-addition" in msg
    rows = collect_questions(load_recipe(write(tmp_path, count=train_side, difficulty=1)).questions, base_dir=tmp_path)
    assert len(rows) == train_side  # the whole train side can be asked for


@pytest.mark.parametrize("extra, key, expected", [
    (", split: tset", "questions[0].split", "'all', 'train' or 'test'"),
    (", split: train, test_share: 1.0", "questions[0].test_share", "less than 1"),
    (", split: test, test_share: 0", "questions[0].test_share", "greater than 0"),
    (", test_share: 0.3", "questions[0]", "test_share is only for split: train or split: test"),
])
def test_bad_split_keys_name_the_key(tmp_path, extra, key, expected):
    with pytest.raises(BadInput) as exc:
        load_recipe(write(tmp_path, extra=extra))
    assert f"r.yaml:3: {key}: " in str(exc.value) and expected in str(exc.value)


def test_recipes_without_a_split_keep_their_hash(tmp_path):
    plain = parse_source({"source": "generator", "generator": "addition", "count": 3})
    assert "split" not in plain.model_dump() and "test_share" not in plain.model_dump()  # hashed as before splits existed
    held = parse_source({"source": "generator", "generator": "addition", "count": 3, "split": "train"})
    assert held.model_dump()["split"] == "train" and held.model_dump()["test_share"] == 0.2
    hashes = {recipe_hash(load_recipe(write(tmp_path, extra=e))) for e in ("", ", split: train", ", split: train, test_share: 0.3")}
    assert len(hashes) == 3
