"""Shared fixtures: real services started once per test session (see tests/services.py)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

# No test may download anything: transformers / huggingface_hub read the cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect: no telemetry, and its home (database, settings) in a temporary folder, not ~/.prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="factory-prefect-home-"))

# `tests.services` must import however pytest is started (`pytest` or `python -m pytest`).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import services

# The slowest files (minutes each: fresh processes loading SmolLM2, Prefect servers, the toy
# loop) run first, so that `pytest -n 2 --dist loadfile --no-loadscope-reorder` (scripts/test.sh)
# does not end with one worker alone on a long file while the other idles. Order within a file
# is kept.
SLOW_FIRST = (
    "tests/flows/test_loop.py",
    "tests/flows/test_server.py",  # beside the loop: schedule+serve mostly waits for the minute
    "tests/flows/test_run_cli.py",
    "tests/factory/questions/test_writer.py",
    "tests/trainer/test_model.py",
    "tests/trainer/test_distill_topk.py",
    "tests/flows/test_export_model_cli.py",
    "tests/flows/test_data.py",
    "tests/factory/teachers/test_local.py",
    "tests/trainer/test_distributed.py",
    "tests/trainer/test_grpo_resume.py",
    "tests/trainer/test_sft.py",
    "tests/factory/test_evaluation.py",
    "tests/flows/test_pipeline.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    root = Path(__file__).resolve().parent.parent

    def key(item):
        path = Path(str(item.fspath)).resolve()
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        return rank.get(rel, len(SLOW_FIRST))

    items.sort(key=key)  # stable: everything else keeps its collection order


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with its own keys: a services.S3Server."""
    with services.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn():
    """A throwaway PostgreSQL server's DSN: postgresql://factory:PASSWORD@127.0.0.1:PORT/lake."""
    with services.postgres() as dsn:
        yield dsn
