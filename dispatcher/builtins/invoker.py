"""Calls the dispatcher makes on its own behalf (fan-out sub-tasks, pipeline steps):
the same catalog lookup, validation, routing, path choice (direct or bus) and failover
as a client's call, with the answer captured instead of streamed to a client.

Each one is held to what its caller may do, exactly as the caller's own calls are (this
is the one boundary every built-in tool goes through): the tool allowlist, the regions
the identity is bound to, and the rate limits of the identity and of the tool. A call
without a caller is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanKind

from edgefleet.dispatcher.observability.observe import CallObservation
from edgefleet.dispatcher.paths.answer import CapturedAnswer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.routing.router import RouteOrder
from edgefleet.dispatcher.tasks.sink import read_response
from edgefleet.shared import jsonrpc, telemetry
from edgefleet.shared.constants import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION
from edgefleet.shared.errors import (
    EdgefleetError,
    InvalidParams,
    InvalidToolResult,
    RegionForbidden,
    ResultTooLarge,
    ToolForbidden,
    UnknownTool,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.observability.metrics import Metrics
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.routing.router import Router
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.security.rate_limits import RateLimits

_tracer = telemetry.tracer("edgefleet.dispatcher")


@dataclass
class Outcome:
    """One internal call's answer: ``result`` (a CallToolResult dict) or ``error``."""

    tool: str
    status: str  # ok | tool_error | error | timeout | cancelled
    duration_ms: float = 0.0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    route: Route | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tool": self.tool, "status": self.status, "duration_ms": round(self.duration_ms, 3)}
        if self.route is not None:
            out.update(self.route.fields())
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class ResultBudget(CapturedAnswer.Budget):
    """What the sub-calls of one fan-out may hold and answer together: their answers are
    counted as they arrive (``CapturedAnswer``), then what is kept of each (its result or
    error, as it will be written again) is. A sub-call past it gets ``refusal`` instead."""

    __slots__ = ("cap",)

    def __init__(self, limit: int, cap: int) -> None:
        super().__init__(limit)
        self.cap = cap  # EDGEFLEET_MAX_RESULT_BYTES, which the refusal names

    def refusal(self, tool: str) -> ResultTooLarge:
        return ResultTooLarge(
            f"The fan-out's results together would be larger than {self.cap} bytes (EDGEFLEET_MAX_RESULT_BYTES); "
            f"the answer of {tool} was not kept.",
            data={"tool": tool, "limit_bytes": self.cap},
        )

    def keep(self, outcome: Outcome) -> Outcome:
        """``outcome`` when what it carries fits in what is left, else the refusal in its place
        (what it carried is dropped with it)."""
        payload = outcome.result if outcome.result is not None else outcome.error
        if payload is None or self.take(len(orjson.dumps(payload))):
            return outcome
        return Outcome(outcome.tool, "error", error=self.refusal(outcome.tool).to_jsonrpc(), route=outcome.route)


class Invoker:
    def __init__(
        self,
        fleet: Fleet,
        router: Router,
        paths: CallPaths,
        metrics: Metrics | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.fleet = fleet
        self.router = router
        self.paths = paths
        self.metrics = metrics
        self.limits = limits

    def order_for(self, base: RouteOrder, region: str | None) -> RouteOrder:
        """The caller's order, or only ``region`` when a sub-task names one (a region the
        fleet or the region table knows: it becomes a metric label)."""
        if region is None:
            return base
        if region not in self.fleet.regions and not self.router.table.knows(region):
            raise InvalidParams(
                f"Unknown region {region!r}; the fleet serves {sorted(self.fleet.regions)}.", data={"region": region}
            )
        return RouteOrder((region,), base.caller_region, "hint", base.address, only=True)

    def _bounded(self, order: RouteOrder, identity: Identity) -> RouteOrder:
        """``order`` held to the identity's regions: a sub-call that names only regions
        outside them is refused (it asked for what the caller may not have); one that names
        none is routed like the caller's own calls, in its regions only."""
        if not identity.regions:
            return order
        if order.only and order.regions and not any(r in identity.regions for r in order.regions):
            raise RegionForbidden(
                f"{identity.name!r} may be served only in {', '.join(identity.regions)}, "
                f"not in {', '.join(order.regions)}.",
                data={"regions": list(order.regions), "allowed": list(identity.regions)},
            )
        return self.router.restricted(order, identity.regions)

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        parent: ToolCall,
        order: RouteOrder,
        timeout_s: float,
        budget: ResultBudget | None = None,
    ) -> Outcome:
        """One internal call on behalf of ``parent``'s caller: its own span (a child of the
        fan-out's or pipeline step's), metrics and a debug-level log line (the client's call
        has the info line). With a ``budget``, its answer is held and kept only within it."""
        started = time.monotonic()
        entry = self.fleet.catalog.get(tool)
        label = tool if entry is not None else "unknown"
        with _tracer.start_as_current_span(
            f"tools/call {label}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "edgefleet.internal": True}
                )
            obs = CallObservation(self.metrics, span, label, "direct", self.fleet.settings.region, level=logging.DEBUG)
            try:
                outcome = await self._call(tool, arguments, parent, order, timeout_s, obs, budget)
            except EdgefleetError as exc:
                obs.failed(exc)
                status = "timeout" if exc.code == "upstream_timeout" else "error"
                outcome = Outcome(tool, status, error=exc.to_jsonrpc())
            except asyncio.CancelledError:
                obs.finish(cancelled=True)
                raise
            if budget is not None:
                outcome = budget.keep(outcome)  # a refusal is counted below like any error answer
            if outcome.status == "tool_error":
                obs.outcome = "tool_error"
            elif outcome.status in ("error", "timeout") and obs.outcome == "ok":
                obs.answered_with_error(outcome.error or {})
            obs.finish()
        outcome.duration_ms = (time.monotonic() - started) * 1000
        return outcome

    async def _call(
        self,
        tool: str,
        arguments: dict[str, Any],
        parent: ToolCall,
        order: RouteOrder,
        timeout_s: float,
        obs: CallObservation,
        budget: ResultBudget | None,
    ) -> Outcome:
        entry = self.fleet.catalog.get(tool)
        if entry is None or entry.path == "builtin":
            raise UnknownTool(f"Unknown tool: {tool}", data={"tool": tool})
        identity = parent.identity
        if identity is None:  # every caller of a built-in tool passes one; without it, nothing runs
            raise ToolForbidden(f"{tool}: an internal call without a caller is refused.", data={"tool": tool})
        if not identity.may_call(entry.public_name):
            raise ToolForbidden(
                f"{identity.name!r} may not call {entry.public_name}.", data={"tool": entry.public_name}
            )
        order = self._bounded(order, identity)
        obs.routed(order)
        if self.limits is not None:
            await self.limits.admit(identity.name, entry.public_name)  # RateLimited: this sub-call's error
        problem = entry.validation_error(arguments)
        if problem is not None:
            raise InvalidParams(problem, data={"tool": tool})
        meta: dict[str, Any] = {META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES: {}}
        telemetry.inject_into(meta)  # the agent's parent: this call's span (or the attempt's)
        params = {"name": entry.upstream_name, "arguments": arguments, "_meta": meta}
        call = ToolCall(entry, 1, params, order, timeout_s, obs=obs, identity=parent.identity)
        answer = CapturedAnswer(budget)
        try:
            await self.paths.call(call, answer)
            if answer.overflowed and budget is not None:
                return Outcome(tool, "error", error=budget.refusal(tool).to_jsonrpc(), route=answer.route)
            response = answer.response()
        finally:
            answer.release()  # parsed (or cancelled): the raw bytes are no longer held
        if response is not None and jsonrpc.nested_deeper(response, jsonrpc.MAX_RESULT_DEPTH):
            # It would break the fan-out's or pipeline's own answer when written again.
            error = InvalidToolResult(
                f"The answer of {tool} nests objects and arrays more than {jsonrpc.MAX_RESULT_DEPTH} levels deep; "
                "it was not kept.",
                data={"tool": tool, "max_depth": jsonrpc.MAX_RESULT_DEPTH},
            )
            return Outcome(tool, "error", error=error.to_jsonrpc(), route=answer.route)
        return _outcome(tool, response, call.request_id, answer.route)


def _outcome(tool: str, response: dict[str, Any] | None, request_id: Any, route: Route | None) -> Outcome:
    """The agent's answer, read as a task's is (``read_response``): a success only for a
    response to this call with an object result (a malformed one must not satisfy a
    ``first`` or ``quorum``); its error only as a bounded JSON-RPC error object."""
    if response is None:
        return Outcome(tool, "error", error=UpstreamError("No answer from the agent.").to_jsonrpc(), route=route)
    result, error = read_response(response, request_id)
    if result is None:
        error = error or UpstreamError("No answer from the agent.").to_jsonrpc()
        status = "timeout" if error["code"] == UpstreamTimeout.jsonrpc_code else "error"
        return Outcome(tool, status, error=error, route=route)
    return Outcome(tool, "tool_error" if result.get("isError") else "ok", result=result, route=route)
