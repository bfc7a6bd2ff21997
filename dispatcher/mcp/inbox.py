"""A dispatcher's inbox: a Redis stream named after its instance, where other dispatchers
leave what only this process can act on (an answer to a request it relayed, the retry of a
call it holds). Read from "now" on, for as long as the process lives; a Redis outage is
waited out, never fatal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.shared.aio import raise_if_cancelling

log = logging.getLogger("edgefleet.mcp")

Entries = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


async def read_inbox(client: aioredis.Redis, key: str) -> AsyncIterator[dict[bytes, bytes]]:
    """The fields of every entry added to ``key`` from now on, in order."""
    position = "$"
    while True:
        raise_if_cancelling()
        try:
            found = cast(Entries, await client.xread({key: position}, count=64, block=1000))
        except asyncio.CancelledError:
            raise
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("inbox %s not read: %s", key, exc)
            await asyncio.sleep(1.0)
            continue
        for _stream, entries in found or ():
            for entry_id, fields in entries:
                position = entry_id.decode()
                yield fields
