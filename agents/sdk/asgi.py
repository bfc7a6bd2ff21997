"""A thin ASGI wrapper around the agent's MCP app: ``/healthz`` and an in-flight counter."""

from __future__ import annotations

from typing import Any

ASGIApp = Any


class InflightCounter:
    """Counts HTTP requests in flight (the load reported in heartbeats) and answers /healthz."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inflight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
