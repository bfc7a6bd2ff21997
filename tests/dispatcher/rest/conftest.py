"""An in-process dispatcher for the REST surface: constructed (no I/O), not started; its
Redis is the tests' shared one, for the routes that read it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edgefleet.dispatcher.app import Dispatcher
from edgefleet.shared.settings import DispatcherSettings

FLEET_TOKEN = "rest-fleet-token"
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture
async def dispatcher(redis_url: str, redis_prefix: str) -> AsyncIterator[Dispatcher]:
    settings = DispatcherSettings(
        fleet_token=FLEET_TOKEN,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        region="eu-west",
        jwt_secret="rest-tests-jwt-secret-of-32-bytes-or-more",
        max_body_bytes=MAX_BODY_BYTES,
        log_format="text",
    )
    app = Dispatcher(settings)
    try:
        yield app
    finally:
        await app.redis.aclose()
