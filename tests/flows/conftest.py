"""One temporary local Prefect server for the flow tests that run a flow in-process (started once: ~20 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    pytest.importorskip("prefect")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():  # stopped inside the test session
        yield
