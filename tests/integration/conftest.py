from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.fleet import Fleet


@pytest.fixture
def fleet(redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    """A dispatcher process on a fresh prefix of the shared Redis; add agents per test."""
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher()
        yield fleet
    finally:
        fleet.stop()
