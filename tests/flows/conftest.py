"""Fixtures of the flow tests: Prefect's test harness (a temporary server on 127.0.0.1, started
once) and `cli`, the factory command in-process against a store in the test's folder."""

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.fixture(scope="session")
def prefect_api():
    """The harness's API URL: in-process flows use it, and subprocesses get it as PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("FACTORY_CATALOG", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke
