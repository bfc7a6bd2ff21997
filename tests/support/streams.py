"""Raw notification streams of the MCP endpoint, read as a client sees them: every SSE
comment and JSON-RPC message in arrival order (for the tests the official clients cannot
express: a 2025 GET stream on another dispatcher, keep-alives, how a stream ends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
LEGACY = "2025-11-25"


@dataclass
class Stream:
    """What arrived on one stream so far; ``ended`` once the server closed it."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    comments: int = 0
    body: bytes = b""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def wait_ended(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)


@contextlib.asynccontextmanager
async def open_stream(
    method: str, url: str, headers: dict[str, str], body: dict[str, Any] | None = None
) -> AsyncIterator[Stream]:
    """The stream read in the background while the block runs; leaving closes it (the
    client going away)."""
    stream = Stream()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
            client.stream(
                method, url, headers=headers, content=orjson.dumps(body) if body is not None else None
            ) as resp,
        ):
            stream.status, stream.headers = resp.status_code, dict(resp.headers)
            stream.opened.set()
            buffer = b""
            async for chunk in resp.aiter_bytes():
                stream.body += chunk
                buffer = (buffer + chunk).replace(b"\r\n", b"\n")  # a CR may end one chunk: kept by the next
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if line.startswith(b":"):
                            stream.comments += 1
                        elif line.startswith(b"data:"):
                            stream.messages.put_nowait(orjson.loads(line[5:]))
            if buffer.strip() and not resp.headers.get("content-type", "").startswith("text/event-stream"):
                stream.messages.put_nowait(orjson.loads(buffer))
        stream.ended.set()

    task = asyncio.create_task(read())
    try:
        await asyncio.wait({task, asyncio.ensure_future(stream.opened.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raise what went wrong
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task


def listen_request(request_id: Any, **notifications: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and body of a 2026-07-28 ``subscriptions/listen``."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "subscriptions/listen",
    }
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "subscriptions/listen",
        "params": {"_meta": META, "notifications": notifications},
    }
    return headers, body


def open_session(url: str, capabilities: dict[str, Any] | None = None) -> dict[str, str]:
    """A 2025-11-25 session opened at ``url``: the headers that use it."""
    init = httpx.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": capabilities or {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers={"accept": "application/json, text/event-stream"},
        timeout=30,
    )
    assert init.status_code == 200, init.text
    return {
        "mcp-session-id": init.headers["mcp-session-id"],
        "mcp-protocol-version": LEGACY,
        "accept": "application/json, text/event-stream",
    }


def legacy_request(
    url: str, session: dict[str, str], method: str, params: dict[str, Any], request_id: int = 7
) -> dict[str, Any]:
    """One request in a 2025 session: its JSON-RPC response."""
    resp = httpx.post(
        url, json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, headers=session, timeout=30
    )
    assert resp.status_code == 200, resp.text
    if resp.headers["content-type"].startswith("text/event-stream"):
        data = [orjson.loads(line[5:]) for line in resp.content.splitlines() if line.startswith(b"data:")]
        return next(m for m in data if "id" in m)
    answer: dict[str, Any] = resp.json()
    return answer


def touch(url: str, tool: str, uri: str) -> dict[str, Any]:
    """Make an agent announce that ``uri`` changed (its ``touch`` tool, called through ``url``)."""
    body = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"uri": uri}, "_meta": META},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    resp = httpx.post(url, json=body, headers=headers, timeout=30)
    raw = resp.content
    if resp.headers["content-type"].startswith("text/event-stream"):
        message = next(
            orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:") and b'"id"' in line
        )
    else:
        message = orjson.loads(raw)
    assert "result" in message, message
    structured: dict[str, Any] = message["result"]["structuredContent"]
    return structured
