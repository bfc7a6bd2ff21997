"""Raw ASGI in front of the REST routes: request bodies are bounded, and read only once the
credentials of the route were accepted.

FastAPI reads and parses a route's whole body before it runs the route's dependencies,
where authentication is: an unauthenticated client could make the dispatcher buffer any
body before it answered 401 (four chunked 250 MB bodies took it from 249 MB to 2.4 GB of
RSS, and stalled the event loop until every replica failed its probe). Here, before any
body byte is read, the credentials are checked (``gate``) and a declared Content-Length
over ``EDGEFLEET_MAX_BODY_BYTES`` is refused; a chunked body is refused as soon as its count
passes the bound. Either way the answer is 413 with the REST error body, as on /mcp; the
server discards the rest of the body (within EDGEFLEET_BODY_TIMEOUT_S) without keeping it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.shared.asgi import ClientDisconnected, body_too_large, read_body
from edgefleet.shared.errors import EdgefleetError

# Raises the error a route's own authentication would raise (Unauthorized, Forbidden).
Gate = Callable[[Request], None]
# The REST answer to an error (the app's exception handler: status, headers, audit).
Refuse = Callable[[Request, EdgefleetError], Response]


class BodyGuard:
    def __init__(self, app: ASGIApp, *, limit: int, gate: Gate, refuse: Refuse) -> None:
        self.app = app
        self.limit = limit
        self.gate = gate
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_length(scope) if scope["type"] == "http" else 0
        if declared == 0:  # no body: nothing to bound (and GET streams keep their receive())
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            self.gate(request)
            if declared is not None and declared > self.limit:
                raise body_too_large(self.limit)
            body = await read_body(receive, self.limit)
        except ClientDisconnected:
            return
        except EdgefleetError as exc:
            await self.refuse(request, exc)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _declared_length(scope: Scope) -> int | None:
    """The body's Content-Length; None when its length is not declared (chunked) or
    unreadable (then it is read under the bound like a chunked one); 0 without a body."""
    length: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = value
    if length is None:
        return 0
    if not length.isdigit():
        return None
    # Past 18 digits it is over any bound (and int() refuses a few thousand digits).
    return int(length) if len(length) <= 18 else sys.maxsize


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the routes: the body already read, then the connection's own messages
    (a streaming response still learns of the client's disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
