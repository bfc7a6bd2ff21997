"""The one MCP endpoint (``/mcp``), serving both protocol eras on the same URL.

- 2026-07-28 (modern): every POST stands alone; version, client info and capabilities are
  in ``params._meta`` and mirrored in ``MCP-Protocol-Version`` / ``Mcp-Method`` /
  ``Mcp-Name`` headers, which must agree with the body. Closing the response stream
  cancels the call.
- 2025-11-25 and earlier (legacy): ``initialize`` opens a session (``Mcp-Session-Id``,
  stored in Redis so any dispatcher replica can serve it); ``notifications/cancelled``
  cancels a call; GET (standalone stream) answers 405, DELETE ends the session.

Raw ASGI on purpose: the per-call path parses with orjson, looks the tool up in the warm
catalog, rewrites the name and forwards bytes. No SDK objects are built per call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from opentelemetry.trace import SpanKind

from edgefleet.dispatcher import __version__
from edgefleet.shared import jsonrpc
from edgefleet.dispatcher.security.auth import SCOPE_IDENTITY, WARM_UP_IDENTITY, Authenticator, Identity, challenge, resource_urls
from edgefleet.dispatcher.security.audit import AuditLog, bearer, fingerprint
from edgefleet.shared.asgi import ClientDisconnected, Receive, body_too_large, Scope, Send, TrackingSend, header_map, read_body, respond
from edgefleet.dispatcher.paths.bus import BusPath
from edgefleet.dispatcher.paths.direct import Executor
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.observability.metrics import Metrics
from edgefleet.dispatcher.observability.observe import CallObservation
from edgefleet.dispatcher.security.rate_limits import RateLimits
from edgefleet.dispatcher.paths.cache import ResultCache, final_result
from edgefleet.dispatcher.routing.router import Router
from edgefleet.dispatcher.mcp.sessions import Session, SessionStore
from edgefleet.dispatcher.tasks.methods import TaskMethods
from edgefleet.dispatcher.tasks.model import TaskRecord
from edgefleet.dispatcher.tasks.runner import TaskRunner
from edgefleet.dispatcher.tasks.sink import TaskSink
from edgefleet.shared.constants import (
    HEADER_METHOD,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    HEADER_ROUTE,
    HEADER_SESSION_ID,
    HEADER_TIMEOUT,
    LATEST_LEGACY_VERSION,
    LEGACY_PROTOCOL_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN_PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    TASKS_EXTENSION,
)
from edgefleet.shared.errors import (
    EdgefleetError,
    ForbiddenOrigin,
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    MissingClientCapability,
    NotAcceptable,
    SessionNotFound,
    RateLimited,
    SessionRequired,
    TooManyTasks,
    ToolForbidden,
    Unauthorized,
    UnknownTool,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
)
from edgefleet.shared import telemetry
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.mcp")
_tracer = telemetry.tracer("edgefleet.dispatcher")

SERVER_INFO = {"name": "edgefleet", "title": "edgefleet MCP edge dispatcher", "version": __version__}
INSTRUCTIONS = (
    "Tools of every agent in the fleet, named 'agent.tool'. Calls are routed to the nearest healthy replica."
)
CAPABILITIES = {"tools": {"listChanged": False}, "logging": {}}
# SEP-1686 tasks exist from 2025-11-25 on; older sessions get no tasks capability.
TASKS_LEGACY_VERSION = "2025-11-25"
LEGACY_TASK_CAPABILITIES = {**CAPABILITIES, "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}
# SEP-2663: the tasks extension, declared in server/discover.
MODERN_CAPABILITIES = {**CAPABILITIES, "extensions": {TASKS_EXTENSION: {}}}
MISSING_TASKS_EXTENSION = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
# JSON-RPC-level errors in the legacy era ride an HTTP 200 (the HTTP exchange worked).
LEGACY_RPC_LEVEL = (MethodNotFound, InvalidParams)
DEFAULT_LEGACY_LOG_LEVEL = "info"


class MCPEndpoint:
    def __init__(
        self,
        settings: DispatcherSettings,
        fleet: Fleet,
        sessions: SessionStore,
        executor: Executor,
        router: Router,
        cache: ResultCache,
        bus_path: BusPath | None = None,
        metrics: Metrics | None = None,
        auth: Authenticator | None = None,
        limits: RateLimits | None = None,
        runner: TaskRunner | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.sessions = sessions
        self.executor = executor
        self.router = router
        self.cache = cache
        self.bus_path = bus_path
        self.metrics = metrics or Metrics()
        self.auth = auth or Authenticator.from_settings(settings)
        self.limits = limits or RateLimits(settings)
        self.runner = runner
        self.audit = audit
        self.tasks = TaskMethods(runner.store, runner, limits=self.limits) if runner is not None else None
        self._visible: dict[tuple[int, tuple[str, ...]], list[dict[str, Any]]] = {}
        self.allowed_origins = tuple(o.rstrip("/") for o in settings.allowed_origins)
        # (session id, request id) -> task running that call, for notifications/cancelled.
        self.legacy_inflight: dict[tuple[str, Any], asyncio.Task[None]] = {}

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
            if method == "POST":
                await self._post(headers, receive, tracked, peer, identity)
            elif method == "DELETE":
                await self._delete(headers, tracked, identity)
            else:
                # No standalone GET stream: the spec lets a server answer 405 instead.
                await respond(tracked, 405, headers=[(b"allow", b"POST, DELETE")], content_type=None)
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
                self._audit_refusal("limit.hit" if isinstance(exc, RateLimited) else "access.denied", exc, identity, peer, headers)
            if not tracked.started:
                request_id = exc.data.pop("id", None) if "id" in exc.data else None
                extra = [(b"retry-after", str(exc.data["retry_after_s"]).encode())] if isinstance(exc, RateLimited) else []
                await respond(tracked, exc.http_status, jsonrpc.error_body(request_id, exc), headers=extra)
        except Exception:  # a bug must not take the dispatcher down or leak a traceback
            log.exception("unhandled error on /mcp")
            if not tracked.started:
                await respond(tracked, 500, jsonrpc.error_body(None, EdgefleetError()))

    def _audit_refusal(self, event: str, exc: EdgefleetError, identity: Identity | None, peer: str | None, headers: dict[str, str]) -> None:
        if self.audit is None or not self.audit.enabled:
            return
        data = exc.data
        self.audit.record(
            event, code=exc.code, reason=exc.message, identity=identity.name if identity else None, caller=peer, path="/mcp",
            credential=fingerprint(bearer(headers.get("authorization"))) if identity is None else None,
            scope=data.get("scope"), limit=str(data["limit"]) if "limit" in data else None, tool=data.get("tool"),
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

    async def _post(self, headers: dict[str, str], receive: Receive, send: TrackingSend, peer: str | None, identity: Identity) -> None:
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
        if message.method == "initialize":
            await self._initialize(message, send, identity)
        elif version in (MODERN_PROTOCOL_VERSION,):
            await self._modern(message, headers, receive, send, peer, identity)
        elif version in LEGACY_PROTOCOL_VERSIONS or (version is None and HEADER_SESSION_ID in headers):
            await self._legacy(message, headers, receive, send, peer, identity)
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

    async def _delete(self, headers: dict[str, str], send: Send, identity: Identity) -> None:
        session_id = headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise SessionRequired("DELETE ends a 2025-era session: send its Mcp-Session-Id.")
        session = await self.sessions.get(session_id)
        if session is None or session.owner != identity.name or not await self.sessions.delete(session_id):
            raise SessionNotFound()
        await respond(send, 200, content_type=None)

    # -- modern era ------------------------------------------------------------------------
    async def _modern(
        self, message: jsonrpc.Message, headers: dict[str, str], receive: Receive, send: TrackingSend, peer: str | None,
        identity: Identity,
    ) -> None:
        if message.kind == "response":
            raise InvalidRequest("Clients do not send JSON-RPC responses on protocol 2026-07-28.")
        meta = message.params.get("_meta")
        if not isinstance(meta, dict) or META_PROTOCOL_VERSION not in meta or META_CLIENT_CAPABILITIES not in meta:
            raise InvalidParams(
                f"Requests on {MODERN_PROTOCOL_VERSION} must carry params._meta with "
                f"'{META_PROTOCOL_VERSION}' and '{META_CLIENT_CAPABILITIES}'.",
                data={"id": message.id},
            )
        if meta[META_PROTOCOL_VERSION] != MODERN_PROTOCOL_VERSION:
            raise HeaderMismatch(
                f"Header mismatch: MCP-Protocol-Version header {MODERN_PROTOCOL_VERSION!r} does not match "
                f"body value {meta[META_PROTOCOL_VERSION]!r}",
                data={"id": message.id},
            )
        if headers.get(HEADER_METHOD) != message.method:
            raise HeaderMismatch(
                f"Header mismatch: Mcp-Method header {headers.get(HEADER_METHOD)!r} does not match body value {message.method!r}",
                data={"id": message.id},
            )
        if message.kind == "notification":
            await respond(send, 202, content_type=None)
            return
        method = message.method
        if method == "tools/call":
            name = message.params.get("name")
            header_name = _decode_header(headers.get(HEADER_NAME))
            if header_name != name:
                raise HeaderMismatch(
                    f"Header mismatch: Mcp-Name header {header_name!r} does not match body value {name!r}",
                    data={"id": message.id},
                )
            forwarded = {k: v for k, v in headers.items() if k.startswith("mcp-param-")}
            await self._call(message, send, headers, peer, identity, modern=True, receive=receive, extra_headers=forwarded or None)
        elif method == "tools/list":
            result = {"resultType": "complete", "tools": self._tools_for(identity), "ttlMs": 0, "cacheScope": "private"}
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        elif method in ("tasks/get", "tasks/update", "tasks/cancel"):
            try:
                result = await self._modern_task_method(message, headers, identity)
            except InvalidParams as exc:  # unknown task, finished task: a JSON-RPC answer, not an HTTP failure
                await respond(send, 200, jsonrpc.error_body(message.id, exc))
                return
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        elif method == "server/discover":
            result = {
                "resultType": "complete",
                "supportedVersions": list(SUPPORTED_PROTOCOL_VERSIONS),
                "capabilities": MODERN_CAPABILITIES if self.tasks is not None else CAPABILITIES,
                "instructions": INSTRUCTIONS,
                "ttlMs": 0,
                "cacheScope": "public",
                "_meta": {META_SERVER_INFO: SERVER_INFO},
            }
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        else:
            raise MethodNotFound(f"Method not found: {method}", data={"id": message.id})

    async def _modern_task_method(self, message: jsonrpc.Message, headers: dict[str, str], identity: Identity) -> dict[str, Any]:
        if self.tasks is None:
            raise MethodNotFound(f"Method not found: {message.method} (tasks need the task store)", data={"id": message.id})
        if not _declares_tasks(message.params.get("_meta")):
            raise MissingClientCapability(
                f"{message.method} needs the {TASKS_EXTENSION} extension in the request's client capabilities.",
                data={"id": message.id, **MISSING_TASKS_EXTENSION},
            )
        header_name = _decode_header(headers.get(HEADER_NAME))
        if header_name is not None and header_name != message.params.get("taskId"):
            raise HeaderMismatch(
                f"Header mismatch: Mcp-Name header {header_name!r} does not match body taskId {message.params.get('taskId')!r}",
                data={"id": message.id},
            )
        try:
            if message.method == "tasks/get":
                return await self.tasks.modern_get(message.params, identity)
            if message.method == "tasks/cancel":
                return await self.tasks.modern_cancel(message.params, identity)
            return await self.tasks.modern_update(message.params, identity)
        except EdgefleetError as exc:
            exc.data.setdefault("id", message.id)
            raise

    # -- legacy era ------------------------------------------------------------------------
    async def _initialize(self, message: jsonrpc.Message, send: Send, identity: Identity) -> None:
        if message.kind != "request":
            raise InvalidRequest("initialize must be a request (with an id).")
        params = message.params
        requested = params.get("protocolVersion")
        negotiated = requested if requested in LEGACY_PROTOCOL_VERSIONS else LATEST_LEGACY_VERSION
        client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
        capabilities = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        session = await self.sessions.create(negotiated, client_info, capabilities, owner=identity.name)
        offered = LEGACY_TASK_CAPABILITIES if negotiated == TASKS_LEGACY_VERSION and self.tasks is not None else CAPABILITIES
        result = {"protocolVersion": negotiated, "capabilities": offered, "serverInfo": SERVER_INFO, "instructions": INSTRUCTIONS}
        await respond(send, 200, jsonrpc.result_body(message.id, result), headers=[(HEADER_SESSION_ID.encode(), session.id.encode())])

    async def _legacy(
        self, message: jsonrpc.Message, headers: dict[str, str], receive: Receive, send: TrackingSend, peer: str | None,
        identity: Identity,
    ) -> None:
        session_id = headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise SessionRequired(data={"id": message.id})
        session = await self.sessions.get(session_id)
        # A session belongs to the identity that opened it; to anyone else it does not exist.
        if session is None or session.owner != identity.name:
            raise SessionNotFound(data={"id": message.id})
        if message.kind != "request":
            request_id = message.params.get("requestId")
            if message.method == "notifications/cancelled" and isinstance(request_id, (str, int)):
                task = self.legacy_inflight.get((session.id, request_id))
                if task is not None:
                    task.cancel()
            await respond(send, 202, content_type=None)
            return
        try:
            await self._legacy_request(message, session, receive, send, headers, peer, identity)
        except LEGACY_RPC_LEVEL as exc:
            await respond(send, 200, jsonrpc.error_body(message.id, exc))

    async def _legacy_request(
        self, message: jsonrpc.Message, session: Session, receive: Receive, send: TrackingSend, headers: dict[str, str],
        peer: str | None, identity: Identity,
    ) -> None:
        method = message.method
        if method == "tools/call":
            await self._call(message, send, headers, peer, identity, modern=False, receive=receive, session=session)
        elif method.startswith("tasks/") and self.tasks is not None and session.protocol_version == TASKS_LEGACY_VERSION:
            # tasks/result may block for long: stop waiting when the client goes away.
            work = asyncio.ensure_future(self._legacy_task_method(message, identity, headers, send))
            gone = asyncio.create_task(_disconnected(receive))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():
                    work.cancel()
            if not work.cancelled():
                work.result()
        elif method == "tools/list":
            await respond(send, 200, jsonrpc.result_body(message.id, {"tools": self._tools_for(identity)}))
        elif method == "ping":
            await respond(send, 200, jsonrpc.result_body(message.id, {}))
        elif method == "logging/setLevel":
            level = message.params.get("level")
            if level not in ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"):
                raise InvalidParams(f"Unknown log level {level!r}.")
            session.log_level = level
            await self.sessions.save(session)
            await respond(send, 200, jsonrpc.result_body(message.id, {}))
        else:
            raise MethodNotFound(f"Method not found: {method}")

    async def _legacy_task_method(self, message: jsonrpc.Message, identity: Identity, headers: dict[str, str], send: TrackingSend) -> None:
        try:
            await self._legacy_task_answer(message, identity, headers, send)
        except EdgefleetError as exc:
            exc.data.setdefault("id", message.id)  # e.g. a rate-limit refusal: the client matches it to its request
            raise

    async def _legacy_task_answer(self, message: jsonrpc.Message, identity: Identity, headers: dict[str, str], send: TrackingSend) -> None:
        assert self.tasks is not None
        method, params = message.method, message.params
        if method == "tasks/get":
            result = await self.tasks.legacy_get(params, identity)
        elif method == "tasks/list":
            result = await self.tasks.legacy_list(params, identity)
        elif method == "tasks/cancel":
            result = await self.tasks.legacy_cancel(params, identity)
        elif method == "tasks/result":
            await self.tasks.legacy_result(message.id, params, identity, send, sse="text/event-stream" in headers.get("accept", ""))
            return
        else:
            raise MethodNotFound(f"Method not found: {method}")
        await respond(send, 200, jsonrpc.result_body(message.id, result))

    # -- tools/call, both eras -------------------------------------------------------------
    async def _call(
        self,
        message: jsonrpc.Message,
        send: TrackingSend,
        headers: dict[str, str],
        peer: str | None,
        identity: Identity,
        *,
        modern: bool,
        receive: Receive | None = None,
        session: Session | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        params = message.params
        name = params.get("name")
        meta = params.get("_meta")
        # The caller's trace context: _meta.traceparent (MCP), else the HTTP header.
        parent = None
        if "traceparent" in headers or (isinstance(meta, dict) and "traceparent" in meta):
            parent = telemetry.context_from(meta if isinstance(meta, dict) else None, headers)
        label = name if isinstance(name, str) and self.fleet.catalog.get(name) is not None else "unknown"
        attributes = None
        if telemetry.tracing():
            # Few attributes on purpose: each costs ~1.5 µs to set and ~3 µs to encode (measured).
            attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": str(name)}
            if session is not None:
                attributes["mcp.session.id"] = session.id
        with _tracer.start_as_current_span(f"tools/call {label}", context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                           record_exception=False, set_status_on_exception=False) as span:
            # The start-up exercise of this path is not traffic: no metrics, no info line.
            warm_up = identity is WARM_UP_IDENTITY
            obs = CallObservation(None if warm_up else self.metrics, span, label, "direct", self.settings.region,
                                  level=logging.DEBUG if warm_up else logging.INFO, audit=None if warm_up else self.audit,
                                  identity=identity, requested=name, arguments=params.get("arguments"))
            obs.address = peer or "-"
            self.metrics.inflight.inc()
            cancelled = False
            try:
                with self.limits.slot(identity.name):
                    await self._call_observed(message, send, headers, peer, obs, identity, modern=modern, receive=receive,
                                              session=session, extra_headers=extra_headers)
            except asyncio.CancelledError:
                cancelled = True
                raise
            except EdgefleetError as exc:
                obs.failed(exc)
                exc.data.setdefault("id", message.id)
                if isinstance(exc, RateLimited):
                    exc.data.setdefault("tool", label)
                raise
            finally:
                self.metrics.inflight.dec()
                obs.finish(cancelled=cancelled or obs.outcome == "cancelled")

    async def _call_observed(
        self,
        message: jsonrpc.Message,
        send: TrackingSend,
        headers: dict[str, str],
        peer: str | None,
        obs: CallObservation,
        identity: Identity,
        *,
        modern: bool,
        receive: Receive | None,
        session: Session | None,
        extra_headers: dict[str, str] | None,
    ) -> None:
        params = message.params
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams('tools/call needs params.name (a string).', data={"id": message.id})
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams("tools/call params.arguments must be an object.", data={"id": message.id})
        entry = self.fleet.catalog.get(name)
        if entry is None:
            error: EdgefleetError = UnknownTool(f"Unknown tool: {name}", data={"tool": name})
            obs.failed(error)
            await respond(send, 200, jsonrpc.error_body(message.id, error))
            return
        if not identity.may_call(entry.public_name):
            error = ToolForbidden(f"{identity.name!r} may not call {entry.public_name}.", data={"tool": entry.public_name})
            obs.failed(error)
            await respond(send, 200, jsonrpc.error_body(message.id, error))
            return
        await self.limits.admit(identity.name, entry.public_name)  # RateLimited -> HTTP 429 + Retry-After
        mode = self._task_mode(message, entry, modern=modern, session=session)
        problem = entry.validation_error(arguments)
        if problem is not None:
            # Spec: input validation failures are tool execution errors the model can fix.
            obs.outcome, obs.code = "tool_error", "invalid_arguments"
            result: dict[str, Any] = {"content": [{"type": "text", "text": problem}], "isError": True}
            if mode == "create" and self.runner is not None:
                # Asked for a task: the task is created, and completed with that same answer.
                record = self.runner.new_record(owner=identity.name, entry=entry, params=params, era="modern" if modern else "legacy",
                                                origin="requested", ttl_ms=_asked_ttl(params))
                await self.runner.record_answered(record, result)
                result = {"resultType": "task", **record.modern()} if modern else {"task": record.legacy()}
            elif modern:
                result["resultType"] = "complete"
            await respond(send, 200, jsonrpc.result_body(message.id, result))
            return
        upstream_params = dict(params)
        upstream_params["name"] = entry.upstream_name
        if not modern and session is not None:
            # A legacy client's request reaching a modern agent needs the per-request fields.
            meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
            meta.setdefault(META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION)
            meta.setdefault(META_CLIENT_CAPABILITIES, session.capabilities)
            if session.client_info:
                meta.setdefault(META_CLIENT_INFO, session.client_info)
            meta.setdefault(META_LOG_LEVEL, session.log_level or DEFAULT_LEGACY_LOG_LEVEL)
            upstream_params["_meta"] = meta
        if obs.span.get_span_context().is_valid:
            # The next hop's parent is our span (or, tracing off, the caller's own context).
            meta = dict(upstream_params["_meta"]) if isinstance(upstream_params.get("_meta"), dict) else {}
            meta.pop("tracestate", None)
            telemetry.inject_into(meta)
            upstream_params["_meta"] = meta
        try:
            order = self.router.order(peer, headers, self.fleet.regions)
        except EdgefleetError as exc:  # e.g. an X-Edge-Region naming no region
            obs.failed(exc)
            await respond(send, exc.http_status, jsonrpc.error_body(message.id, exc))
            return
        if identity.regions:  # an identity bound to regions is served only there
            allowed = tuple(r for r in order.regions if r in identity.regions) or tuple(identity.regions)
            order = dataclasses.replace(order, regions=allowed, only=True)
        obs.routed(order)
        upstream_params.pop("task", None)  # agents do not host tasks: the dispatcher does
        era = "modern" if modern else "legacy"
        runner = self.runner

        def make_record(origin: str, ttl_ms: int | None = None) -> TaskRecord:
            assert runner is not None
            return runner.new_record(owner=identity.name, entry=entry, params=upstream_params, era=era, origin=origin, ttl_ms=ttl_ms)

        if mode == "create":
            assert runner is not None
            record = make_record("requested", _asked_ttl(params))
            await runner.start_task(record, entry, upstream_params, order)
            obs.path = "task"
            result: dict[str, Any] = {"resultType": "task", **record.modern()} if modern else {"task": record.legacy()}
            await respond(send, 200, jsonrpc.result_body(message.id, result))
            return
        timeout_s = self._timeout(headers)
        invoke: Callable[[Send], Awaitable[None]]
        if entry.handler is not None:  # the dispatcher's own tools (fan-out, pipelines)
            handler = entry.handler
            obs.path = "builtin"

            async def invoke(out: Send) -> None:
                result = await handler(arguments, order=order, timeout_s=timeout_s)
                if result.get("isError"):
                    obs.outcome = "tool_error"
                if modern:
                    result = {**result, "resultType": "complete"}
                await respond(out, 200, jsonrpc.result_body(message.id, result))

        elif entry.path == "bus" and self.bus_path is not None and self.bus_path.serves(entry):
            bus_path = self.bus_path
            obs.path = "bus"

            async def invoke(out: Send) -> None:
                await bus_path.call(entry, message.id, upstream_params, out, order=order, timeout_s=timeout_s, obs=obs)

        else:
            # A caller pinned to regions (X-Edge-Region: ...;only) must not get a result computed elsewhere.
            cacheable = entry.cache_ttl_s and self.cache.enabled and not order.only
            cache_key = self.cache.key(entry.public_name, arguments) if cacheable else None
            if cache_key is not None:
                cached = self.cache.get(cache_key)
                if cached is not None:
                    obs.path = "cache"
                    answer = b'{"jsonrpc":"2.0","id":' + orjson.dumps(message.id) + b',"result":' + cached + b"}"
                    await respond(send, 200, answer, headers=[(HEADER_ROUTE.encode(), b"cache=hit")])
                    return
            body = orjson.dumps({"jsonrpc": "2.0", "id": message.id, "method": "tools/call", "params": upstream_params})

            async def invoke(out: Send) -> None:
                captured = await self.executor.call(
                    entry, message.id, body, out,
                    order=order, timeout_s=timeout_s, extra_headers=extra_headers, capture=cache_key is not None, obs=obs,
                )
                if captured is not None and cache_key is not None:
                    result = final_result(captured[1], sse=captured[0])
                    if result is not None:
                        self.cache.put(cache_key, entry.cache_ttl_s, result)

        if mode == "promote":
            assert receive is not None
            await self._call_promotable(entry, message.id, invoke, send, receive, obs, make_record)
        elif modern and receive is not None:
            await self._call_cancellable_by_disconnect(entry, message.id, lambda: invoke(send), send, receive, obs)
        else:
            assert session is not None
            await self._call_cancellable_by_notification(message.id, invoke, send, session, obs, receive,
                                                         make_record if runner is not None else None)

    def _task_mode(self, message: jsonrpc.Message, entry: Any, *, modern: bool, session: Session | None) -> str | None:
        """How this call meets tasks: "create" (answer a task now), "promote" (answer a task
        if it runs long) or None (an ordinary call)."""
        if self.runner is None:
            return None
        if modern:
            declared = _declares_tasks(message.params.get("_meta"))
            if not declared:
                if entry.task_support == "required":
                    raise MissingClientCapability(
                        f"{entry.public_name} runs only as a task: declare the {TASKS_EXTENSION} extension.",
                        data={"id": message.id, **MISSING_TASKS_EXTENSION},
                    )
                return None
            if entry.task_support == "required" or entry.long_running:
                return "create"
            return "promote" if self.settings.task_after_ms > 0 and entry.task_support != "forbidden" else None
        if session is None or session.protocol_version != TASKS_LEGACY_VERSION:
            return None  # no tasks capability was offered: params.task is ignored (SEP-1686)
        task = message.params.get("task")
        if task is None:
            if entry.task_support == "required":
                raise MethodNotFound(f"{entry.public_name} must be called as a task (execution.taskSupport is required).",
                                     data={"id": message.id, "tool": entry.public_name})
            return None
        if not isinstance(task, dict):
            raise InvalidParams("params.task must be an object (optionally with ttl in milliseconds).", data={"id": message.id})
        if entry.task_support == "forbidden":
            raise MethodNotFound(f"{entry.public_name} cannot be called as a task (execution.taskSupport is forbidden).",
                                 data={"id": message.id, "tool": entry.public_name})
        return "create"

    def _tools_for(self, identity: Identity) -> list[dict[str, Any]]:
        """The catalog as this identity may see it (only the tools it may call)."""
        definitions = self.fleet.catalog.definitions
        if not identity.tools:
            return definitions
        key = (id(definitions), identity.tools)
        found = self._visible.get(key)
        if found is None:
            if len(self._visible) > 1024:
                self._visible.clear()
            found = self._visible[key] = [d for d in definitions if identity.may_call(d["name"])]
        return found

    def _timeout(self, headers: dict[str, str]) -> float:
        """The call's deadline: the configured one, or less when the client asks for less."""
        asked = headers.get(HEADER_TIMEOUT)
        if asked is not None and asked.isdigit() and int(asked) > 0:
            return min(int(asked) / 1000, self.settings.call_timeout_s)
        return self.settings.call_timeout_s

    async def _call_cancellable_by_disconnect(
        self, entry: Any, request_id: Any, invoke: Callable[[], Awaitable[None]], send: TrackingSend, receive: Receive,
        obs: CallObservation,
    ) -> None:
        # One watcher per call: when the client closes the stream (2026 cancellation),
        # cancel the forwarding, which closes the upstream connection, which cancels the agent.
        current = asyncio.current_task()
        assert current is not None
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            if not send.finished:
                disconnected = True
                current.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self._run_call(request_id, invoke, send, obs)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            obs.outcome = "cancelled"
            current.uncancel()  # we consumed our own cancel; a later one (shutdown) must still land
            log.info("client closed the stream of %s: call cancelled", entry.public_name)
        finally:
            watcher.cancel()

    async def _call_cancellable_by_notification(
        self, request_id: Any, invoke: Callable[[Send], Awaitable[None]], send: TrackingSend, session: Session,
        obs: CallObservation, receive: Receive | None, make_record: Callable[[str], TaskRecord] | None,
    ) -> None:
        """2025 era: ``notifications/cancelled`` cancels; a dropped connection does not
        (the spec: disconnection is not cancellation). A call whose client went away keeps
        running as a task of the same owner, found again with tasks/list or /v1/tasks."""
        key = (session.id, request_id)
        sink = TaskSink(forward=send)
        task = asyncio.ensure_future(self._run_call(request_id, lambda: invoke(sink), sink, obs))
        self.legacy_inflight[key] = task
        watcher = asyncio.create_task(_disconnected(receive)) if receive is not None and make_record is not None else None
        try:
            await asyncio.wait({task} if watcher is None else {task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            forward = await sink.take_over() if not task.done() and make_record is not None else None
            if forward is not None:
                assert make_record is not None and self.runner is not None
                self.legacy_inflight.pop(key, None)  # from now on it is cancelled as a task (tasks/cancel)
                record = make_record("detached")
                try:
                    await self.runner.adopt(record, sink, task)
                except Exception as exc:  # noqa: BLE001 - e.g. Redis down: no task, the call just runs to its end
                    _adopt_failed(record.tool, exc)
                    await sink.give_back(forward)
                    await asyncio.shield(task)
                    return
                obs.outcome = "detached"
                log.info("the client of %s went away: the call goes on as task %s", record.tool, record.id)
                return
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                task.cancel()  # the HTTP request itself went away with the server shutting down
                raise
            obs.outcome = "cancelled"
            # notifications/cancelled: the spec says no response follows; close the stream cleanly.
            if not send.started:
                await respond(send, 200, b"", content_type=None, headers=[(b"content-type", b"text/event-stream")])
            elif not send.finished:
                await send({"type": "http.response.body", "body": b""})
        finally:
            self.legacy_inflight.pop(key, None)
            if watcher is not None:
                watcher.cancel()

    async def _call_promotable(
        self, entry: Any, request_id: Any, invoke: Callable[[Send], Awaitable[None]], send: TrackingSend, receive: Receive,
        obs: CallObservation, make_record: Callable[[str], TaskRecord],
    ) -> None:
        """2026 era, client declared the tasks extension: an ordinary call, relayed as it
        runs, unless it is still running after ``task_after_ms`` - then its answer is a task
        (``resultType: "task"``) and the work goes on. Before that, closing the stream
        cancels, as the 2026 transport says."""
        sink = TaskSink(forward=send)
        work = asyncio.ensure_future(self._run_call(request_id, lambda: invoke(sink), sink, obs))
        watcher = asyncio.create_task(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({work, watcher}, timeout=self.settings.task_after_ms / 1000,
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                obs.outcome = "cancelled"
                log.info("client closed the stream of %s: call cancelled", entry.public_name)
                return
            if not work.done():
                forward = await sink.take_over()
                if forward is not None:
                    record = make_record("promoted")
                    assert self.runner is not None
                    try:
                        await self.runner.adopt(record, sink, work)
                    except Exception as exc:  # noqa: BLE001 - e.g. Redis down: the client keeps its ordinary answer
                        _adopt_failed(entry.public_name, exc)
                        await sink.give_back(forward)
                        await asyncio.shield(work)
                        return
                    obs.outcome = "task"
                    answer = jsonrpc.result_body(request_id, {"resultType": "task", **record.modern()})
                    if sink.started:  # an SSE stream is open: the task is its last event
                        await forward({"type": "http.response.body", "body": b"event: message\ndata: " + answer + b"\n\n", "more_body": True})
                        await forward({"type": "http.response.body", "body": b""})
                    else:
                        await respond(forward, 200, answer)
                    return
            await asyncio.shield(work)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watcher.cancel()

    async def _run_call(self, request_id: Any, invoke: Callable[[], Awaitable[None]], send: Any, obs: CallObservation) -> None:
        try:
            await invoke()
        except EdgefleetError as exc:
            obs.failed(exc)
            if send.started:
                raise
            await respond(send, 200, jsonrpc.error_body(request_id, exc))


def _adopt_failed(tool: str, exc: Exception) -> None:
    """A call that could not become a task runs on as an ordinary call: at the open-task cap
    that is the rule working, anything else (Redis down) deserves the traceback."""
    if isinstance(exc, TooManyTasks):
        log.info("the call of %s could not become a task (%s): it stays an ordinary call", tool, exc.message)
    else:
        log.error("the call of %s could not become a task: it stays an ordinary call", tool, exc_info=exc)


def _asked_ttl(params: dict[str, Any]) -> int | None:
    """The retention a 2025-era client asked for in ``params.task.ttl`` (milliseconds)."""
    task = params.get("task")
    ttl = task.get("ttl") if isinstance(task, dict) else None
    return ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _declares_tasks(meta: Any) -> bool:
    """Did this 2026-era request declare the tasks extension in its client capabilities?"""
    if not isinstance(meta, dict):
        return False
    capabilities = meta.get(META_CLIENT_CAPABILITIES)
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and isinstance(extensions.get(TASKS_EXTENSION), dict)


def _decode_header(value: str | None) -> str | None:
    """Undo the spec's ``=?base64?...?=`` sentinel (strictly: bad base64 never matches)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    return None
