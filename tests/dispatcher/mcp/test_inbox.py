"""A dispatcher's inbox reader stops when cancelled even if redis-py swallowed the
cancellation (returned normally, or raised its own error): an in-process dispatcher's
aclose() once waited for such a loop until the test's timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions

from edgefleet.dispatcher.mcp.inbox import read_inbox


class SwallowingRedis:
    """An ``xread`` that turns our cancellation into an empty read, or its own error."""

    def __init__(self, raise_instead: bool) -> None:
        self.raise_instead = raise_instead
        self.reads = 0

    async def xread(self, streams: dict[str, str], count: int, block: int) -> Any:
        self.reads += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.raise_instead:
                raise redis.exceptions.ConnectionError("Connection closed by server.") from None
            return []


@pytest.mark.parametrize("raise_instead", [False, True], ids=["returns", "raises"])
async def test_a_swallowed_cancellation_ends_the_inbox_reader(raise_instead: bool) -> None:
    client = SwallowingRedis(raise_instead)

    async def consume() -> None:
        async for _fields in read_inbox(client, "inbox"):  # type: ignore[arg-type]
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done() and task.cancelled() and client.reads == 1
