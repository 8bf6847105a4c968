"""Prefect's test harness, started once for the flow tests (a temporary server on 127.0.0.1)."""

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """The harness's API URL: in-process flows use it, and subprocesses get it as PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
