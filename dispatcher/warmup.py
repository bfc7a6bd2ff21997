"""Warm the dispatcher's own request path before the first caller arrives.

Pools and catalog are warm once replicas are; what is left cold is our code itself
(first execution of each function, lazily built parser and logging state). Requests
that cannot have an effect are pushed through the real /mcp endpoint in-process a few
times: ``server/discover``, ``tools/list`` and a ``tools/call`` of a tool that does not
exist (it stops before any agent is contacted).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from shared.constants import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION

ASGIApp = Callable[..., Awaitable[None]]
ROUNDS = 20
_META = {META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES: {}}
_REQUESTS = [
    ("server/discover", None, {"_meta": _META}),
    ("tools/list", None, {"_meta": _META}),
    ("tools/call", "edgefleet-warm-up.none", {"name": "edgefleet-warm-up.none", "arguments": {}, "_meta": _META}),
]


async def exercise(app: ASGIApp) -> None:
    for _ in range(ROUNDS):
        for method, name, params in _REQUESTS:
            await _request(app, method, name, params)


async def _request(app: ASGIApp, method: str, name: str | None, params: dict[str, Any]) -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": method, "params": params})
    headers = [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-length", str(len(body)).encode()),
        (b"mcp-protocol-version", MODERN_PROTOCOL_VERSION.encode()),
        (b"mcp-method", method.encode()),
    ]
    if name:
        headers.append((b"mcp-name", name.encode()))
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers, "client": ("127.0.0.1", 0),
             "query_string": b"", "http_version": "1.1", "scheme": "http"}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(_message: dict[str, Any]) -> None:
        return None

    await app(scope, receive, send)
