"""The fleet's loops stop when cancelled even if a client library swallowed the cancellation
(redis-py, cancelled at the wrong moment under load, can return normally or raise its own
error instead): found as a dispatcher whose aclose() waited forever for its sync loop."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.fleet.upstream import UpstreamPool
from edgefleet.shared.settings import DispatcherSettings


class SwallowingFleet(Fleet):
    """A sync whose Redis client turns our cancellation into a normal return, or its own error."""

    raise_instead = False

    async def sync(self) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.raise_instead:
                raise redis.exceptions.ConnectionError("Connection closed by server.") from None
            return


async def test_a_swallowed_cancellation_does_not_keep_the_fleet_running(redis_url: str, redis_prefix: str) -> None:
    settings = DispatcherSettings(fleet_token="t", redis_url=redis_url, redis_prefix=redis_prefix)
    client = aioredis.from_url(redis_url)
    for raise_instead in (False, True):
        fleet = SwallowingFleet(settings, client, UpstreamPool(settings))
        fleet.raise_instead = raise_instead
        await fleet.start()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(fleet.aclose(), 5)
        assert all(task.done() for task in fleet._tasks)
    await client.aclose()
