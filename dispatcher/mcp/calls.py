"""``tools/call`` from an MCP client, both eras: from the request to a ``ToolCall`` handed
to the one dispatch point (``paths.dispatch``).

In order: the call's span and observation; the tool looked up in the warm catalog; the
caller's allowlist and rate limits; whether the call meets tasks (``task_mode``); its
arguments checked against the tool's ``inputSchema``; the upstream request built (the
agent's own tool name, per-request ``_meta`` for agents of the other era, trace context);
the route order (caller's location, hint, the identity's regions); then the call runs,
cancellable as its era says (``mcp.cancellation``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from edgefleet.dispatcher.mcp.bridge import NO_LOGS, EraAnswer, RelayContext, log_threshold
from edgefleet.dispatcher.mcp.cancellation import Cancellation
from edgefleet.dispatcher.mcp.capabilities import MISSING_TASKS_EXTENSION, TASKS_LEGACY_VERSION, declares_tasks
from edgefleet.dispatcher.mcp.held import HoldingAnswer, Segment
from edgefleet.dispatcher.mcp.request_state import RoundBinding
from edgefleet.dispatcher.mcp.shim import LegacyShim
from edgefleet.dispatcher.observability.observe import CallObservation
from edgefleet.dispatcher.paths.answer import HttpAnswer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.security.auth import WARM_UP_IDENTITY
from edgefleet.shared import jsonrpc, telemetry
from edgefleet.shared.asgi import Disconnects, Receive, TrackingSend, respond
from edgefleet.shared.constants import (
    HEADER_TIMEOUT,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    MODERN_PROTOCOL_VERSION,
    TASKS_EXTENSION,
)
from edgefleet.shared.errors import (
    EdgefleetError,
    InvalidParams,
    MethodNotFound,
    MissingClientCapability,
    RateLimited,
    RoundLost,
    ToolForbidden,
    UnknownTool,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.mcp.held import HeldCalls
    from edgefleet.dispatcher.mcp.relay import RequestRelay
    from edgefleet.dispatcher.mcp.request_state import RequestStates
    from edgefleet.dispatcher.mcp.sessions import Session
    from edgefleet.dispatcher.observability.metrics import Metrics
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.routing.router import Router
    from edgefleet.dispatcher.security.audit import AuditLog
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.security.rate_limits import RateLimits
    from edgefleet.dispatcher.tasks.model import TaskRecord
    from edgefleet.dispatcher.tasks.runner import TaskRunner
    from edgefleet.shared.settings import DispatcherSettings

_tracer = telemetry.tracer("edgefleet.dispatcher")
log = logging.getLogger("edgefleet.mcp")
DEFAULT_LEGACY_LOG_LEVEL = "info"


@dataclasses.dataclass(slots=True)
class CallRequest:
    """One client's ``tools/call`` as it arrived."""

    message: jsonrpc.Message
    headers: dict[str, str]
    peer: str | None
    identity: Identity
    modern: bool
    receive: Receive | None = None
    session: Session | None = None
    extra_headers: dict[str, str] | None = None  # 2026 Mcp-Param-* headers
    view: str | None = None  # the agent of a per-agent mount (/mcp/agents/<agent>): its own tool names
    disconnects: Disconnects | None = None  # the connection's, when the server tells (asgi.SCOPE_DISCONNECTS)


class ToolCalls:
    def __init__(
        self,
        settings: DispatcherSettings,
        fleet: Fleet,
        router: Router,
        paths: CallPaths,
        limits: RateLimits,
        metrics: Metrics,
        runner: TaskRunner | None = None,
        audit: AuditLog | None = None,
        relay: RequestRelay | None = None,
        states: RequestStates | None = None,
        held: HeldCalls | None = None,
    ) -> None:
        self.relay = relay
        self.states = states
        self.held = held
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.paths = paths
        self.limits = limits
        self.metrics = metrics
        self.runner = runner
        self.audit = audit
        self.cancellation = Cancellation(settings, runner)
        self._visible: dict[tuple[int, tuple[str, ...]], list[dict[str, Any]]] = {}

    def tools_for(self, identity: Identity, view: str | None = None) -> list[dict[str, Any]]:
        """The catalog as this identity may see it (only the tools it may call); on an
        agent's mount, that agent's tools under their own names."""
        catalog = self.fleet.catalog
        if view is None:
            definitions, public = catalog.definitions, [d["name"] for d in catalog.definitions]
        else:
            agent = catalog.view(view)
            if agent is None:
                return []
            definitions, public = agent.definitions, [e.public_name for e in agent.tools.values()]
        if not identity.tools:
            return definitions
        key = (id(definitions), identity.tools)
        found = self._visible.get(key)
        if found is None:
            if len(self._visible) > 1024:
                self._visible.clear()
            found = self._visible[key] = [d for d, p in zip(definitions, public, strict=True) if identity.may_call(p)]
        return found

    def lookup(self, name: str, view: str | None) -> ToolEntry | None:
        """The catalog entry a call names: a public name on /mcp, the agent's own on its mount."""
        if view is None:
            return self.fleet.catalog.get(name)
        agent = self.fleet.catalog.view(view)
        return agent.get(name) if agent is not None else None

    async def handle(self, request: CallRequest, send: TrackingSend) -> None:
        message, headers, identity = request.message, request.headers, request.identity
        params = message.params
        name = params.get("name")
        meta = params.get("_meta")
        # The caller's trace context: _meta.traceparent (MCP), else the HTTP header.
        parent = None
        if "traceparent" in headers or (isinstance(meta, dict) and "traceparent" in meta):
            parent = telemetry.context_from(meta if isinstance(meta, dict) else None, headers)
        known = self.lookup(name, request.view) if isinstance(name, str) else None
        label = known.public_name if known is not None and known.definition else "unknown"
        attributes = None
        if telemetry.tracing():
            # Few attributes on purpose: each costs ~1.5 µs to set and ~3 µs to encode (measured).
            attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": str(name)}
            if request.session is not None:
                attributes["mcp.session.id"] = request.session.id
        with telemetry.current_span(
            _tracer, f"tools/call {label}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            # The start-up exercise of this path is not traffic: no metrics, no info line.
            warm_up = identity is WARM_UP_IDENTITY
            obs = CallObservation(
                None if warm_up else self.metrics,
                span,
                label,
                "direct",
                self.settings.region,
                level=logging.DEBUG if warm_up else logging.INFO,
                audit=None if warm_up else self.audit,
                identity=identity,
                requested=name,
                arguments=params.get("arguments"),
            )
            obs.address = request.peer or "-"
            self.metrics.inflight.inc()
            cancelled = False
            try:
                with self.limits.slot(identity.name):
                    await self._observed(request, send, obs)
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

    async def _observed(self, request: CallRequest, send: TrackingSend, obs: CallObservation) -> None:
        message, identity, modern, session = request.message, request.identity, request.modern, request.session
        params = message.params
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams("tools/call needs params.name (a string).", data={"id": message.id})
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams("tools/call params.arguments must be an object.", data={"id": message.id})
        entry = self.lookup(name, request.view)
        if entry is None:
            await self._refuse(send, message.id, obs, UnknownTool(f"Unknown tool: {name}", data={"tool": name}))
            return
        if not identity.may_call(entry.public_name):
            error = ToolForbidden(
                f"{identity.name!r} may not call {entry.public_name}.", data={"tool": entry.public_name}
            )
            await self._refuse(send, message.id, obs, error)
            return
        await self.limits.admit(identity.name, entry.public_name)  # RateLimited -> HTTP 429 + Retry-After
        mode = self.task_mode(message, entry, modern=modern, session=session)
        problem = entry.validation_error(arguments)
        if problem is not None:
            await self._invalid_arguments(request, send, obs, entry, problem, mode)
            return
        upstream_params = self._upstream_params(request, entry, obs)
        binding = (
            RoundBinding(self.states, identity.name, "tools/call", name, arguments)
            if modern and self.states is not None
            else None
        )
        affinity: str | None = None
        if binding is not None and "requestState" in params:
            # The retry of an input_required round: every round's state is ours (D6, D9).
            claims = binding.open(params["requestState"])
            if claims.get("k") == "held":
                if await self._resume(request, send, obs, entry, binding, claims):
                    return
                upstream_params.pop("requestState", None)  # the held call is gone: start afresh
                upstream_params.pop("inputResponses", None)
            else:
                upstream_params.pop("requestState", None)
                if claims.get("s") is not None:
                    upstream_params["requestState"] = claims["s"]  # the agent's own, byte-exact
                affinity = claims.get("rep") if isinstance(claims.get("rep"), str) else None
        try:
            # An identity bound to regions is served only there.
            order = self.router.order(request.peer, request.headers, self.fleet.regions, allowed=identity.regions)
        except EdgefleetError as exc:  # e.g. an X-Edge-Region naming no region
            obs.failed(exc)
            await respond(send, exc.http_status, jsonrpc.error_body(message.id, exc))
            return
        if affinity is not None:
            order = dataclasses.replace(order, affinity=affinity)
        obs.routed(order)
        era = "modern" if modern else "legacy"
        runner = self.runner

        def make_record(origin: str, ttl_ms: int | None = None) -> TaskRecord:
            assert runner is not None
            return runner.new_record(
                owner=identity, entry=entry, params=upstream_params, era=era, origin=origin, ttl_ms=ttl_ms
            )

        if mode == "create":
            assert runner is not None
            record = make_record("requested", _asked_ttl(params))
            await runner.start_task(record, entry, upstream_params, order, identity)
            obs.path = "task"
            result: dict[str, Any] = {"resultType": "task", **record.modern()} if modern else {"task": record.legacy()}
            await respond(send, 200, jsonrpc.result_body(message.id, result))
            return
        call = ToolCall(
            entry,
            message.id,
            upstream_params,
            order,
            call_deadline(request.headers, self.settings.call_timeout_s),
            obs=obs,
            identity=identity,
            extra_headers=request.extra_headers,
            modern=modern,
            client_capabilities=client_capabilities(message.params, session),
        )
        if mode is None and binding is not None and self._may_ask(call, request):
            # A 2025-era agent may ask this 2026-era client something mid-call: the call
            # runs where it can be held open across input_required rounds (mcp.held).
            assert self.held is not None
            call.may_ask = True
            era_answer = EraAnswer(HttpAnswer(send), modern=True, rounds=binding, log_threshold=_log_threshold(request))
            await self.held.run(
                call, self.paths, HoldingAnswer(Segment(era_answer, message.id), binding, call), request.receive
            )
            return
        relay = (
            RelayContext(self.relay, session.id, identity.name)
            if session is not None and self.relay is not None
            else None
        )
        answer = EraAnswer(
            HttpAnswer(send),
            modern=modern,
            relay=relay,
            rounds=binding,
            log_threshold=_log_threshold(request),
            refuse=self.relay if modern else None,
        )
        if mode == "promote":
            assert request.receive is not None
            await self.cancellation.promotable(call, self.paths, answer, request.receive, make_record)
        elif modern and request.receive is not None:
            await self.cancellation.by_disconnect(call, self.paths, answer, request.receive, request.disconnects)
        else:
            assert session is not None
            # A 2026-era agent's input_required rounds are asked of this 2025-era client (mcp.shim).
            paths = (
                LegacyShim(self.paths, self.relay, client_session=session.id, owner=identity.name)
                if self.relay is not None
                else self.paths
            )
            await self.cancellation.by_notification(
                call,
                paths,
                answer,
                session,
                request.receive,
                make_record if runner is not None else None,
                request.disconnects,
            )

    def _may_ask(self, call: ToolCall, request: CallRequest) -> bool:
        """Can this call's agent ask its client something mid-call (a 2025-era replica, and a
        client that declared sampling, elicitation or roots)?"""
        if self.held is None or request.receive is None:
            return False
        declared = call.client_capabilities or {}
        if not any(declared.get(kind) is not None for kind in ("sampling", "elicitation", "roots")):
            return False
        return any(r.client.era == "legacy" for replicas in call.entry.by_region.values() for r in replicas)

    async def _resume(
        self,
        request: CallRequest,
        send: TrackingSend,
        obs: CallObservation,
        entry: ToolEntry,
        binding: RoundBinding,
        claims: dict[str, Any],
    ) -> bool:
        """The retry of a round of a held call (D6): resumed wherever it is held. False when
        it is gone and the tool may simply run again."""
        responses = request.message.params.get("inputResponses", {})
        if not isinstance(responses, dict):
            raise InvalidParams("params.inputResponses must be an object (answers by inputRequests key).")
        if self.held is not None:
            answer = EraAnswer(HttpAnswer(send), modern=True, rounds=binding, log_threshold=_log_threshold(request))
            if await self.held.resume(claims, responses, answer, request.message.id, request.receive, obs):
                return True
        if not entry.idempotent:
            raise RoundLost(data={"tool": entry.public_name})
        log.info("the held call of %s is gone: it starts afresh (idempotent)", entry.public_name)
        return False

    @staticmethod
    async def _refuse(send: TrackingSend, request_id: Any, obs: CallObservation, error: EdgefleetError) -> None:
        obs.failed(error)
        await respond(send, 200, jsonrpc.error_body(request_id, error))

    async def _invalid_arguments(
        self,
        request: CallRequest,
        send: TrackingSend,
        obs: CallObservation,
        entry: ToolEntry,
        problem: str,
        mode: str | None,
    ) -> None:
        """Spec: input validation failures are tool execution errors the model can fix."""
        message, modern = request.message, request.modern
        obs.outcome, obs.code = "tool_error", "invalid_arguments"
        result: dict[str, Any] = {"content": [{"type": "text", "text": problem}], "isError": True}
        if mode == "create" and self.runner is not None:
            # Asked for a task: the task is created, and completed with that same answer.
            record = self.runner.new_record(
                owner=request.identity,
                entry=entry,
                params=message.params,
                era="modern" if modern else "legacy",
                origin="requested",
                ttl_ms=_asked_ttl(message.params),
            )
            await self.runner.record_answered(record, result)
            result = {"resultType": "task", **record.modern()} if modern else {"task": record.legacy()}
        elif modern:
            result["resultType"] = "complete"
        await respond(send, 200, jsonrpc.result_body(message.id, result))

    @staticmethod
    def _upstream_params(request: CallRequest, entry: ToolEntry, obs: CallObservation) -> dict[str, Any]:
        """The params as the agent gets them: its own tool name, no task (the dispatcher hosts
        tasks), per-request _meta for a 2025 client's call to a 2026 agent, trace context."""
        params = request.message.params
        upstream = dict(params)
        upstream["name"] = entry.upstream_name
        upstream.pop("task", None)
        session = request.session
        if not request.modern and session is not None:
            meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
            meta.setdefault(META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION)
            meta.setdefault(META_CLIENT_CAPABILITIES, session.capabilities)
            if session.client_info:
                meta.setdefault(META_CLIENT_INFO, session.client_info)
            meta.setdefault(META_LOG_LEVEL, session.log_level or DEFAULT_LEGACY_LOG_LEVEL)
            upstream["_meta"] = meta
        if obs.span.get_span_context().is_valid:
            # The next hop's parent is our span (or, tracing off, the caller's own context).
            meta = dict(upstream["_meta"]) if isinstance(upstream.get("_meta"), dict) else {}
            meta.pop("tracestate", None)
            telemetry.inject_into(meta)
            upstream["_meta"] = meta
        return upstream

    def task_mode(
        self, message: jsonrpc.Message, entry: ToolEntry, *, modern: bool, session: Session | None
    ) -> str | None:
        """How this call meets tasks: "create" (answer a task now), "promote" (answer a task
        if it runs long) or None (an ordinary call)."""
        if self.runner is None:
            return None
        if modern:
            if not declares_tasks(message.params.get("_meta")):
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
                raise MethodNotFound(
                    f"{entry.public_name} must be called as a task (execution.taskSupport is required).",
                    data={"id": message.id, "tool": entry.public_name},
                )
            return None
        if not isinstance(task, dict):
            raise InvalidParams(
                "params.task must be an object (optionally with ttl in milliseconds).", data={"id": message.id}
            )
        if entry.task_support == "forbidden":
            raise MethodNotFound(
                f"{entry.public_name} cannot be called as a task (execution.taskSupport is forbidden).",
                data={"id": message.id, "tool": entry.public_name},
            )
        return "create"


def _log_threshold(request: CallRequest) -> int:
    """The least severe log message this client gets: its 2025 session's level (every
    message until it sets one), or a 2026 request's ``_meta`` logLevel (none without it)."""
    if request.session is not None:
        return log_threshold(request.session.log_level) if request.session.log_level else 0
    meta = request.message.params.get("_meta")
    level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
    return log_threshold(level) if level is not None else NO_LOGS


def client_capabilities(params: dict[str, Any], session: Session | None) -> dict[str, Any]:
    """What the client declared it can do: its 2025 session's capabilities, or a 2026
    request's own ``_meta`` clientCapabilities."""
    if session is not None:
        return session.capabilities
    meta = params.get("_meta")
    declared = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
    return declared if isinstance(declared, dict) else {}


def call_deadline(headers: dict[str, str], configured: float) -> float:
    """A request's deadline: the configured one, or less when the client asks for less."""
    asked = headers.get(HEADER_TIMEOUT)
    if asked is not None and asked.isdigit() and int(asked) > 0:
        return min(int(asked) / 1000, configured)
    return configured


def _asked_ttl(params: dict[str, Any]) -> int | None:
    """The retention a 2025-era client asked for in ``params.task.ttl`` (milliseconds)."""
    task = params.get("task")
    ttl = task.get("ttl") if isinstance(task, dict) else None
    return ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None
