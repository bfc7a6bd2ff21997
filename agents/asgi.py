"""A thin ASGI wrapper around the agent's MCP app: ``/healthz``, an in-flight counter, and
the call deadline the dispatcher propagates (``Edgefleet-Timeout-Ms``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgefleet.shared.constants import HEADER_TIMEOUT

ASGIApp = Any
log = logging.getLogger("edgefleet.agent")

_TIMEOUT_HEADER = HEADER_TIMEOUT.encode()
# The dispatcher gives up at the deadline itself (closing the connection cancels us);
# the margin lets its clearer error win and only stops work nobody can still be waiting for.
DEADLINE_GRACE_S = 1.0


class InflightCounter:
    """Counts HTTP requests in flight (the load reported in heartbeats), answers /healthz,
    and stops a call that outlives the deadline it arrived with."""

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
            deadline_ms = _deadline_ms(scope)
            if deadline_ms is None:
                await self.app(scope, receive, send)
            else:
                await self._with_deadline(deadline_ms, scope, receive, send)
        finally:
            self.inflight -= 1

    async def _with_deadline(self, deadline_ms: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            async with asyncio.timeout(deadline_ms / 1000 + DEADLINE_GRACE_S):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            log.warning("a call outlived its %d ms deadline and was stopped", deadline_ms)
            if not started:
                await send(
                    {"type": "http.response.start", "status": 504, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": b"deadline exceeded"})


def _deadline_ms(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == _TIMEOUT_HEADER:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None
