"""The side effects of a run, as Temporal activities run by every dispatcher's worker.

``call``: one tool call of a step (or of a compensation) through the dispatcher's normal
routing (``Invoker``: catalog, validation, region order, replica choice, failover, result
checks, tracing), as the run's caller: its tool allowlist is checked here, on every call,
and its regions bound the route. While the call runs the activity heartbeats, so a
dispatcher killed mid-call is noticed within ``EDGEFLEET_TEMPORAL_HEARTBEAT_S``; a run
cancelled meanwhile cancels the call (the agent's handler is cancelled with it).

``settle``: a run that belongs to an MCP task writes its outcome to the task store (the
store refuses a second terminal move, so a retried settle is harmless).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanKind
from temporalio import activity
from temporalio.exceptions import ApplicationError

from edgefleet.dispatcher.builtins.workflows import policy
from edgefleet.dispatcher.builtins.workflows.model import (
    CALL_ACTIVITY,
    SETTLE_ACTIVITY,
    Caller,
    CallInput,
    Order,
    Settlement,
)
from edgefleet.dispatcher.fleet.catalog import builtin_entry
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.routing.router import RouteOrder
from edgefleet.dispatcher.security.auth import Identity
from edgefleet.dispatcher.tasks.model import CANCELLED
from edgefleet.shared import telemetry
from edgefleet.shared.errors import EdgefleetError, ResultTooLarge, TaskCancelled, ToolForbidden

if TYPE_CHECKING:
    from edgefleet.dispatcher.builtins.invoker import Invoker, Outcome
    from edgefleet.dispatcher.tasks.runner import TaskRunner

_tracer = telemetry.tracer("edgefleet.dispatcher")


def identity_of(caller: Caller) -> Identity:
    return Identity(caller.name, frozenset(caller.scopes), tuple(caller.tools), tuple(caller.regions), caller.method)


def caller_of(identity: Identity) -> Caller:
    return Caller(identity.name, sorted(identity.scopes), list(identity.tools), list(identity.regions), identity.method)


def order_of(order: Order, identity: Identity) -> RouteOrder:
    route = RouteOrder(tuple(order.regions), order.caller_region, order.reason, order.address, order.only)
    if identity.regions:  # an identity bound to regions is served only there (as mcp.calls does)
        allowed = tuple(r for r in route.regions if r in identity.regions) or tuple(identity.regions)
        route = dataclasses.replace(route, regions=allowed, only=True)
    return route


def wire_order(order: RouteOrder) -> Order:
    return Order(list(order.regions), order.caller_region, order.reason, order.address, order.only)


def refused(error: EdgefleetError) -> ApplicationError:
    """A failure of a call as the workflow reads it: its stable code is the error's type."""
    return ApplicationError(
        error.message, error.to_jsonrpc(), type=error.code, non_retryable=error.code in policy.PERMANENT
    )


async def _not_called(call: ToolCall) -> dict[str, Any]:
    raise AssertionError("the pipeline step carrier is never dispatched")


class PipelineActivities:
    def __init__(self, invoker: Invoker, runner: TaskRunner) -> None:
        self.invoker = invoker
        self.runner = runner
        # The parent of a step's call carries only the caller's identity (Invoker reads
        # nothing else of it); the run, not a client request, is what asked.
        self._carrier = builtin_entry(
            {"name": "edgefleet.pipeline-step", "inputSchema": {"type": "object"}}, _not_called
        )

    @activity.defn(name=CALL_ACTIVITY)
    async def call(self, request: CallInput) -> dict[str, Any]:
        identity = identity_of(request.caller)
        if not identity.may_call(request.tool):
            raise refused(
                ToolForbidden(
                    f"{identity.name!r} may not call {request.tool} (step {request.step} of {request.pipeline}).",
                    data={"tool": request.tool, "step": request.step},
                )
            )
        try:
            order = self.invoker.order_for(order_of(request.order, identity), request.region)
        except EdgefleetError as exc:
            raise refused(exc) from None
        parent = ToolCall(self._carrier, 0, {}, order, request.timeout_s, identity=identity)
        context = telemetry.context_from({"traceparent": request.traceparent}) if request.traceparent else None
        name = f"pipeline.{'compensate' if request.compensation else 'step'} {request.step}"
        info = activity.info()
        with _tracer.start_as_current_span(
            name, context=context, kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "edgefleet.pipeline": request.pipeline,
                        "edgefleet.step": request.step,
                        "gen_ai.tool.name": request.tool,
                        "edgefleet.run": request.run_id,
                        "edgefleet.step.attempt": info.attempt,
                    }
                )
            outcome = await self._heartbeating(
                self.invoker.call(
                    request.tool, request.arguments, parent=parent, order=order, timeout_s=request.timeout_s
                ),
                info.heartbeat_timeout,
            )
        if outcome.ok:
            result = outcome.result or {}
            size = len(orjson.dumps(result))
            if size > policy.MAX_STEP_RESULT_BYTES:
                raise refused(
                    ResultTooLarge(
                        f"{request.tool} answered {size} bytes; a pipeline step's result may be at most "
                        f"{policy.MAX_STEP_RESULT_BYTES} (it is kept in the run's history).",
                        data={"tool": request.tool, "step": request.step},
                    )
                )
            route = outcome.route.fields() if outcome.route is not None else {}
            return {"result": result, "attempt": info.attempt, "duration_ms": round(outcome.duration_ms, 3), **route}
        raise self._failure(outcome)

    @staticmethod
    async def _heartbeating(call: Any, every: Any) -> Outcome:
        """Await the call, heartbeating meanwhile: the heartbeat is how Temporal learns that
        this dispatcher still runs the step, and how a cancel of the run reaches it."""
        interval = every.total_seconds() / 4 if every else 1.0
        work: asyncio.Task[Outcome] = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=interval)
                if done:
                    return work.result()
                activity.heartbeat()
        except asyncio.CancelledError:
            work.cancel()  # closes the upstream call: the agent's handler is cancelled too
            await asyncio.gather(work, return_exceptions=True)
            raise

    @staticmethod
    def _failure(outcome: Outcome) -> ApplicationError:
        if outcome.status == "tool_error":
            content = (outcome.result or {}).get("content") or []
            text = next((c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"), None)
            error: dict[str, Any] = {"code": "tool_error", "message": text or "the tool reported an error"}
            return ApplicationError(error["message"], error, type=policy.TOOL_ERROR)
        error = outcome.error or {"code": -31002, "message": "no answer", "data": {"code": "upstream_error"}}
        kind = policy.error_kind(error)
        return ApplicationError(
            str(error.get("message", kind)), error, type=kind, non_retryable=kind in policy.PERMANENT
        )

    @activity.defn(name=SETTLE_ACTIVITY)
    async def settle(self, settlement: Settlement) -> str:
        if settlement.status == "cancelled":
            return await self.runner.store.transition(
                settlement.task_id,
                CANCELLED,
                message="Cancelled; completed steps compensated.",
                error=TaskCancelled().to_jsonrpc(),
            )
        return await self.runner.finish(settlement.task_id, settlement.result, None)
