"""A raw 2026-07-28 tools/call over HTTP, returning exactly what the dispatcher sent back."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


async def call(
    session: aiohttp.ClientSession,
    url: str,
    request_id: int,
    tool: str,
    arguments: dict[str, Any],
    meta: dict[str, Any] | None = None,
    timeout_ms: int | None = None,
) -> tuple[dict[str, Any], str, bytes]:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {**META, **(meta or {})}},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    if timeout_ms is not None:
        headers["edgefleet-timeout-ms"] = str(timeout_ms)
    async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=90)) as resp:
        raw = await resp.read()
        route = resp.headers.get("edgefleet-route", "")
    if raw.startswith(b"event:") or b"\ndata:" in raw:
        messages = [orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]
        answers = [m for m in messages if "id" in m]
        assert len(answers) == 1, f"exactly one response per call, got {len(answers)}"
        return answers[0], route, raw
    return orjson.loads(raw), route, raw
