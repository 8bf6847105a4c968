#!/usr/bin/env bash
# bash benches/gpu_wheels.sh      (here, where PyPI answers; before a GPU check)
#
# Fetches into .whl/ the wheels benches/gpu_check.sh needs on the lent GPU machine, whose image
# (Python 3.12, torch 2.11, transformers, pyarrow, pyyaml) lacks pydantic and duckdb and which
# cannot reach a registry. Pass `.whl` in the device call's carry list; gpu_check.sh installs
# them with --no-index. Versions follow pyproject.toml's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pydantic=$(python3 -c "import pydantic; print(pydantic.VERSION)" 2>/dev/null || echo 2.12.5)
core=$(python3 -c "import pydantic_core; print(pydantic_core.__version__)" 2>/dev/null || echo 2.41.5)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  "duckdb==1.5.5" "pydantic==$pydantic" "pydantic-core==$core" annotated-types typing-inspection
ls -la .whl
