"""How a call learns that its client left (cancellation.on_client_gone): from our server's
``Disconnects`` when it is there, else from a task reading ``receive()``, as under any
other ASGI server; in both, only while the call runs."""

from __future__ import annotations

import asyncio
from typing import Any

from edgefleet.dispatcher.mcp.cancellation import on_client_gone
from edgefleet.shared.asgi import Disconnects


class _Client:
    """``receive`` of an ASGI request whose body was read: the next message is the disconnect."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_our_servers_disconnects_call_back_within_the_block_only() -> None:
    disconnects, calls = Disconnects(), []
    with on_client_gone(disconnects, _Client().receive, lambda: calls.append("in")):
        pass
    with on_client_gone(disconnects, _Client().receive, lambda: calls.append("during")):
        disconnects.fire()
    disconnects.fire()
    assert calls == ["during"]
    with on_client_gone(disconnects, _Client().receive, lambda: calls.append("after it was lost")):
        pass  # a connection already lost calls back at once
    assert calls == ["during", "after it was lost"]


async def test_under_another_server_a_task_reads_receive() -> None:
    client, calls = _Client(), []
    with on_client_gone(None, client.receive, lambda: calls.append("gone")):
        await asyncio.sleep(0.01)
        assert calls == []
        client.gone.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == ["gone"]


async def test_under_another_server_leaving_the_block_stops_the_task_without_a_call_back() -> None:
    client, calls = _Client(), []
    with on_client_gone(None, client.receive, lambda: calls.append("gone")):
        await asyncio.sleep(0.01)
    client.gone.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert calls == []
