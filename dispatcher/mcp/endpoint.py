"""The one MCP endpoint (``/mcp``): transport checks, authentication, and each request
handed to its protocol era (``mcp.modern`` for 2026-07-28, ``mcp.legacy`` for 2025-11-25
sessions) on the same URL.

Raw ASGI on purpose: the per-call path parses with orjson, looks the tool up in the warm
catalog, rewrites the name and forwards bytes. No SDK objects are built per call
(docs/architecture.md: peers that build them pay milliseconds per call).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis.exceptions

from edgefleet.dispatcher.mcp.calls import ToolCalls
from edgefleet.dispatcher.mcp.features import Features
from edgefleet.dispatcher.mcp.legacy import LegacyEra
from edgefleet.dispatcher.mcp.modern import ModernEra
from edgefleet.dispatcher.mcp.request import SCOPE_VIEW, McpRequest
from edgefleet.dispatcher.security.audit import fingerprint
from edgefleet.dispatcher.security.auth import SCOPE_IDENTITY, Authenticator, Identity, bearer, challenge, resource_urls
from edgefleet.shared import jsonrpc
from edgefleet.shared.asgi import (
    SCOPE_DISCONNECTS,
    ClientDisconnected,
    Disconnects,
    Receive,
    Scope,
    Send,
    TrackingSend,
    body_too_large,
    header_map,
    read_body,
    respond,
)
from edgefleet.shared.constants import (
    HEADER_PROTOCOL_VERSION,
    HEADER_SESSION_ID,
    LEGACY_PROTOCOL_VERSIONS,
    MODERN_PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
)
from edgefleet.shared.errors import (
    EdgefleetError,
    ForbiddenOrigin,
    MethodNotFound,
    NotAcceptable,
    RateLimited,
    SessionRequired,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.sessions import SessionStore
    from edgefleet.dispatcher.mcp.subscriptions import Subscriptions
    from edgefleet.dispatcher.security.audit import AuditLog
    from edgefleet.dispatcher.tasks.methods import TaskMethods
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.mcp")


class MCPEndpoint:
    def __init__(
        self,
        settings: DispatcherSettings,
        calls: ToolCalls,
        features: Features,
        sessions: SessionStore,
        subscriptions: Subscriptions,
        auth: Authenticator,
        tasks: TaskMethods | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.auth = auth
        self.audit = audit
        self.modern = ModernEra(calls, features, subscriptions, tasks)
        self.legacy = LegacyEra(calls, features, sessions, subscriptions, tasks)
        self.allowed_origins = tuple(o.rstrip("/") for o in settings.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_map(scope)
        client = scope.get("client")
        peer = client[0] if client else None
        request_id: Any = None
        tracked = TrackingSend(send)
        identity: Identity | None = None
        try:
            self._check_origin(headers)
            identity = scope.get(SCOPE_IDENTITY) or self.auth.authenticate(headers.get("authorization"))
            method = scope["method"]
            view = scope.get(SCOPE_VIEW)
            if view is not None and self.calls.fleet.catalog.view(view) is None:
                raise MethodNotFound(
                    f"Unknown agent {view!r}: /mcp/agents/<agent> serves one agent of the fleet by its own names.",
                    data={"agent": view[:64]},
                )
            if method == "POST":
                await self._post(headers, receive, tracked, peer, identity, view, scope.get(SCOPE_DISCONNECTS))
            elif method == "DELETE":
                await self.legacy.delete(headers, tracked, identity, view)
            elif method == "GET" and headers.get(HEADER_PROTOCOL_VERSION) != MODERN_PROTOCOL_VERSION:
                # A 2025-era session's notification stream (2026-07-28 has none: subscriptions/listen).
                await self.legacy.stream(headers, tracked, receive, identity, view)
            else:
                await respond(tracked, 405, headers=[(b"allow", b"GET, POST, DELETE")], content_type=None)
        except ClientDisconnected:
            return
        except Unauthorized as exc:
            self._audit_refusal("auth.failure", exc, None, peer, headers)
            # RFC 9728: tell the client where to learn how to get a token.
            error = exc.data.pop("auth_error", None)
            header = challenge(resource_urls(self.settings, scope, headers)[1], error)
            await respond(tracked, 401, jsonrpc.error_body(None, exc), headers=[(b"www-authenticate", header.encode())])
        except EdgefleetError as exc:
            if isinstance(exc, (RateLimited, ForbiddenOrigin)):
                self._audit_refusal(
                    "limit.hit" if isinstance(exc, RateLimited) else "access.denied", exc, identity, peer, headers
                )
            if not tracked.started:
                request_id = exc.data.pop("id", None) if "id" in exc.data else None
                extra = (
                    [(b"retry-after", str(exc.data["retry_after_s"]).encode())]
                    if isinstance(exc, RateLimited) and "retry_after_s" in exc.data
                    else []
                )
                await respond(tracked, exc.http_status, jsonrpc.error_body(request_id, exc), headers=extra)
        except redis.exceptions.RedisError as exc:  # sessions, tasks: what needs Redis says so while it is away
            if not tracked.started:
                error = StoreUnavailable(f"Redis cannot be asked right now ({type(exc).__name__}); retry shortly.")
                await respond(
                    tracked, error.http_status, jsonrpc.error_body(None, error), headers=[(b"retry-after", b"1")]
                )
        except Exception:  # a bug must not take the dispatcher down or leak a traceback
            log.exception("unhandled error on /mcp")
            if not tracked.started:
                await respond(tracked, 500, jsonrpc.error_body(None, EdgefleetError()))

    def _audit_refusal(
        self, event: str, exc: EdgefleetError, identity: Identity | None, peer: str | None, headers: dict[str, str]
    ) -> None:
        if self.audit is None or not self.audit.enabled:
            return
        data = exc.data
        self.audit.record(
            event,
            code=exc.code,
            reason=exc.message,
            identity=identity.name if identity else None,
            caller=peer,
            path="/mcp",
            credential=fingerprint(bearer(headers.get("authorization")) or headers.get("authorization"))
            if identity is None
            else None,
            scope=data.get("scope"),
            limit=str(data["limit"]) if "limit" in data else None,
            tool=data.get("tool"),
            origin=headers.get("origin") if isinstance(exc, ForbiddenOrigin) else None,
        )

    # -- transport checks ------------------------------------------------------------------
    def _check_origin(self, headers: dict[str, str]) -> None:
        origin = headers.get("origin")
        if origin is None:
            return
        base = origin.rstrip("/")
        for allowed in self.allowed_origins:
            if base == allowed or (base.startswith(allowed + ":") and base[len(allowed) + 1 :].isdigit()):
                return
        raise ForbiddenOrigin(f"Origin {origin!r} is not allowed; add it to EDGEFLEET_ALLOWED_ORIGINS if it is yours.")

    async def _post(
        self,
        headers: dict[str, str],
        receive: Receive,
        send: TrackingSend,
        peer: str | None,
        identity: Identity,
        view: str | None,
        disconnects: Disconnects | None,
    ) -> None:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise UnsupportedMediaType()
        accept = headers.get("accept", "*/*")
        if not any(t in accept for t in ("application/json", "text/event-stream", "*/*", "application/*")):
            raise NotAcceptable()
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            raise body_too_large(self.settings.max_body_bytes)
        body = await read_body(receive, self.settings.max_body_bytes)
        message = jsonrpc.parse(body)
        version = headers.get(HEADER_PROTOCOL_VERSION)
        request = McpRequest(message, headers, receive, send, peer, identity, view, disconnects)
        # The header decides the era: `initialize` under 2026-07-28 is a method that era removed.
        if version == MODERN_PROTOCOL_VERSION:
            await self.modern.handle(request)
        elif message.method == "initialize":
            await self.legacy.initialize(request)
        elif version in LEGACY_PROTOCOL_VERSIONS or (version is None and HEADER_SESSION_ID in headers):
            await self.legacy.handle(request)
        elif version is None:
            raise SessionRequired(
                "Missing MCP-Protocol-Version header: send '2026-07-28' with per-request _meta, "
                "or initialize a 2025-11-25 session and send its Mcp-Session-Id.",
                data={"id": message.id},
            )
        else:
            raise UnsupportedProtocolVersion(
                "Unsupported protocol version",
                data={"supported": list(SUPPORTED_PROTOCOL_VERSIONS), "requested": version, "id": message.id},
            )
