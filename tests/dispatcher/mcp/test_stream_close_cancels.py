"""2026-07-28: a client closing its call's response stream IS the cancel (the transport
spec). Through a real dispatcher process, the agent's handler sees the cancellation, and
the dispatcher counts the call cancelled (it learns of the closed connection from its own
server, issue 19, not from a task per call)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.calls import tools_call
from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration


async def _logged(proc: Proc, line: str, times: int, timeout: float = 10.0) -> None:
    """Wait until ``proc`` has logged ``line`` ``times`` times."""
    deadline = time.monotonic() + timeout
    while proc.output().count(line) < times:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {line!r} x{times}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("padding", [0, 300_000], ids=["small", "over-64KiB-body"])
async def test_closing_the_stream_cancels_the_agents_handler(fleet: Fleet, padding: int) -> None:
    """Also with a body over uvicorn's 64 KiB read buffer: uvicorn stops reading the
    connection until the application reads again, and a call does not; the dispatcher's
    server reads on once the body is whole, so it still sees the client leave."""
    agent = fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
    dispatcher = fleet.dispatchers[0][1]
    port = int(fleet.mcp_url.rsplit(":", 1)[1].split("/", 1)[0])
    body, headers = tools_call("echo.wait", {"seconds": 60}, meta={"padding": "x" * padding} if padding else None)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    for attempt in range(2):  # twice on one dispatcher: the first cancel leaves nothing behind
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body)
        await writer.drain()
        await _logged(agent, "wait started", attempt + 1)
        writer.close()  # the client goes away: the call is cancelled, as the 2026 spec says
        await _logged(agent, "wait cancelled", attempt + 1)
        await _logged(dispatcher, "client closed the stream of echo.wait", attempt + 1)
        del reader
