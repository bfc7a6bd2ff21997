"""A raw 2026-07-28 tools/call over HTTP: the request (``tools_call``), and a call returning
exactly what the dispatcher sent back (``call``)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def tools_call(
    tool: str,
    arguments: dict[str, Any],
    *,
    request_id: int = 1,
    meta: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a 2026-07-28 ``tools/call`` (``headers``: more of them)."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {**META, **(meta or {})}},
    }
    return orjson.dumps(body), {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
        **(headers or {}),
    }


async def call(
    session: aiohttp.ClientSession,
    url: str,
    request_id: int,
    tool: str,
    arguments: dict[str, Any],
    meta: dict[str, Any] | None = None,
    timeout_ms: int | None = None,
) -> tuple[dict[str, Any], str, bytes]:
    extra = {"edgefleet-timeout-ms": str(timeout_ms)} if timeout_ms is not None else None
    body, headers = tools_call(tool, arguments, request_id=request_id, meta=meta, headers=extra)
    async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=90)) as resp:
        raw = await resp.read()
        route = resp.headers.get("edgefleet-route", "")
    if raw.startswith(b"event:") or b"\ndata:" in raw:
        messages = [orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]
        answers = [m for m in messages if "id" in m]
        assert len(answers) == 1, f"exactly one response per call, got {len(answers)}"
        return answers[0], route, raw
    return orjson.loads(raw), route, raw
