"""Small asyncio helpers shared by the services' long-running loops."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Stop a loop whose cancellation a client library swallowed: redis-py, cancelled at the
    wrong moment under load, can return normally or raise its own error instead, and the loop
    would run on (a dispatcher's shutdown then waits for it forever). Called once per turn of
    every loop that talks to Redis or the bus."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
