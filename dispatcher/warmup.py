"""Warm the dispatcher's own request path before the first caller arrives.

Pools and catalog are warm once replicas are; what is left cold is our code itself
(first execution of each function, lazily built parser, relay and logging state).
Requests that cannot have an effect are pushed through it a few times:

- through the real /mcp endpoint, in-process: ``server/discover``, ``tools/list`` and a
  ``tools/call`` of a tool that does not exist (it stops before any agent is contacted);
- through the executor to one warm replica: a ``tools/call`` of a tool the replica does
  not have (every MCP server answers that with an error and does nothing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edgefleet.dispatcher.fleet.catalog import ToolEntry
from edgefleet.dispatcher.fleet.replica import Replica
from edgefleet.dispatcher.paths.answer import CapturedAnswer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.direct import DirectPath
from edgefleet.dispatcher.routing.router import RouteOrder
from edgefleet.dispatcher.security.auth import SCOPE_IDENTITY, WARM_UP_IDENTITY
from edgefleet.shared.constants import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION
from edgefleet.shared.errors import EdgefleetError

log = logging.getLogger("edgefleet.warmup")
# Random per process: no agent can have a tool by this name by accident.
WARM_UP_TOOL = f"edgefleet-warm-up-{uuid.uuid4().hex[:12]}"
ASGIApp = Callable[..., Awaitable[None]]
ROUNDS = 20
_META: dict[str, Any] = {META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES: {}}
_REQUESTS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("server/discover", None, {"_meta": _META}),
    ("tools/list", None, {"_meta": _META}),
    ("tools/call", "edgefleet-warm-up.none", {"name": "edgefleet-warm-up.none", "arguments": {}, "_meta": _META}),
]


async def exercise_endpoint(app: ASGIApp) -> None:
    for _ in range(ROUNDS):
        for method, name, params in _REQUESTS:
            await _request(app, method, name, params)


async def exercise_replica(direct: DirectPath, replica: Replica) -> None:
    """Run the direct path whole against a replica that just became warm (before it
    enters the catalog): the first real call to it then finds nothing left to set up."""
    if replica.client.era != "modern" or WARM_UP_TOOL in replica.tool_names:
        return  # a 2025-era server's unknown-tool answer would go through its upstream session
    entry = ToolEntry(
        public_name=WARM_UP_TOOL,
        agent=replica.record.agent,
        upstream_name=WARM_UP_TOOL,
        definition={},
        idempotent=True,
        validator=None,
        replicas=[replica],
    )
    order = RouteOrder((replica.record.region,), None, "warm-up", None)
    call = ToolCall(entry, 0, {"name": WARM_UP_TOOL, "arguments": {}, "_meta": _META}, order, 2.0)
    for _ in range(ROUNDS):
        try:
            # The replica is not routable yet (it is being warmed): address it directly.
            await direct.call(call, CapturedAnswer(), replicas=[replica])
        except EdgefleetError as exc:  # an optimisation only: never a reason not to start
            log.debug("warm-up call to %s failed: %s", replica.id, exc.message)
            return


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
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        # Set in-process only (no client can put keys in an ASGI scope): the warm-up
        # runs the authenticated path without holding a credential.
        SCOPE_IDENTITY: WARM_UP_IDENTITY,
    }
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
