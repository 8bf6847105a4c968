"""Where the tests' real data lives, inside this repository (README.md here: source and licence
of each file). Tests import the paths from here and never look beside the checkout.

    from tests.data import GSM8K_TRAIN, TOKENIZER

Files the package already ships are read from the package, not copied again: the benchmark
copies in factory/benchmarks (factory/benchmarks/README.md) and SmolLM2's tokenizer in
trainer/tokenizers (the default tokenizer of the tiny training recipes).
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Shipped with the package.
BENCHMARKS = REPO / "factory" / "benchmarks"
GSM8K_TEST = BENCHMARKS / "gsm8k_test.jsonl"  # 1319 rows
HUMANEVAL = BENCHMARKS / "humaneval.jsonl.gz"  # 164 rows
MBPP = BENCHMARKS / "mbpp.jsonl"  # 974 rows
TOKENIZER = REPO / "trainer" / "tokenizers" / "smollm2-135m"

# Test-only.
GSM8K_TRAIN = HERE / "gsm8k_train_400.jsonl"  # the first 400 rows of GSM8K's train split
HUMANEVALPACK = HERE / "humanevalpack_python.jsonl"  # 164 rows
VERIFIER_CASES = HERE / "verifier-cases"
LABELLED = VERIFIER_CASES / "gsm8k_model_solutions_labelled.jsonl"  # 1319 rows x 4 solutions

# By file name, for tests that read several of them through one helper.
CODE_FILES = {p.name: p for p in (HUMANEVALPACK, MBPP)}
