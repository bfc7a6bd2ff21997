"""``edgefleet.fanout``: one MCP call runs N sub-tasks in parallel, across agents and
regions, and aggregates them.

Strategies: ``all`` (wait for every sub-task; partial failures reported per sub-task),
``first`` (the first success wins; the others are cancelled), ``quorum:k`` (done once k
succeeded; the rest are cancelled; fails early once k can no longer be reached). Each
sub-task result carries its status, duration, region and replica. A sub-task naming a
``region`` runs only there; otherwise it is routed like the caller's own calls (nearest
healthy region first, with failover).

Its answer is held to EDGEFLEET_MAX_RESULT_BYTES like any other: the sub-results share
that budget (less what the per-sub-task fields take), counted as they arrive; a sub-task
whose answer no longer fits gets ``result_too_large`` instead, and nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from opentelemetry.trace import SpanKind, StatusCode

from edgefleet.dispatcher.builtins.invoker import Invoker, Outcome, ResultBudget
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.shared import telemetry
from edgefleet.shared.constants import MAX_TOOL_NAME
from edgefleet.shared.errors import InvalidParams

NAME = "edgefleet.fanout"
_tracer = telemetry.tracer("edgefleet.dispatcher")
MAX_SUBTASKS = 1000
STRATEGY_RE = re.compile(r"^(all|first|quorum:([1-9][0-9]*))$")
# What the answer holds besides the sub-results: the JSON-RPC envelope (the caller's id,
# up to 256 characters), the text and the summary's counts.
ENVELOPE_BYTES = 4096
# A sub-result's region and replica (names the fleet gave them).
ROUTE_BYTES = 512

DEFINITION: dict[str, Any] = {
    "name": NAME,
    "title": "Fan-out",
    "description": (
        "Run several tool calls in parallel (across agents and regions) and aggregate them. "
        "strategy: 'all' (every result, partial failures reported), 'first' (first success wins, "
        "the rest are cancelled) or 'quorum:k' (k successes). Each result has status, duration, region and replica."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "calls": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_SUBTASKS,
                "items": {
                    "type": "object",
                    "properties": {
                        "tool": {
                            "type": "string",
                            "maxLength": MAX_TOOL_NAME,
                            "description": "Catalog name, e.g. text.keywords",
                        },
                        "arguments": {"type": "object"},
                        "region": {"type": "string", "description": "Run only in this region (optional)."},
                    },
                    "required": ["tool"],
                    "additionalProperties": False,
                },
            },
            "strategy": {"type": "string", "pattern": STRATEGY_RE.pattern, "default": "all"},
            "deadline_ms": {"type": "integer", "minimum": 1, "description": "Deadline for the whole fan-out."},
        },
        "required": ["calls"],
        "additionalProperties": False,
    },
    "annotations": {"readOnlyHint": False, "idempotentHint": False, "openWorldHint": True},
}


async def run(invoker: Invoker, parent: ToolCall) -> dict[str, Any]:
    arguments, order, timeout_s = parent.arguments, parent.order, parent.timeout_s
    calls = arguments["calls"]
    match = STRATEGY_RE.match(arguments.get("strategy", "all"))
    assert match is not None  # the schema was checked before we got here
    strategy = match.group(1)
    need = len(calls) if strategy == "all" else 1 if strategy == "first" else int(match.group(2))
    if need > len(calls):
        raise InvalidParams(f"quorum:{need} needs at least {need} calls, got {len(calls)}")
    if "deadline_ms" in arguments:
        timeout_s = min(timeout_s, arguments["deadline_ms"] / 1000)
    orders = []
    for call in calls:
        if call["tool"] == NAME:
            raise InvalidParams("edgefleet.fanout cannot fan out to itself")
        orders.append(invoker.order_for(order, call.get("region")))  # an unknown region refuses the whole fan-out

    budget = _budget(invoker.fleet.settings.max_result_bytes, calls)
    started = time.monotonic()
    deadline = started + timeout_s
    outcomes: list[Outcome | None] = [None] * len(calls)

    async def sub(index: int, call: dict[str, Any]) -> None:
        remaining = max(0.001, deadline - time.monotonic())
        with _tracer.start_as_current_span(
            "fanout.subtask", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                outcomes[index] = outcome = await invoker.call(
                    call["tool"],
                    call.get("arguments") or {},
                    parent=parent,
                    order=orders[index],
                    timeout_s=remaining,
                    budget=budget,
                )
            except asyncio.CancelledError:
                if span.is_recording():
                    span.set_attributes({"edgefleet.subtask.index": index, "edgefleet.subtask.status": "cancelled"})
                raise
            if span.is_recording():
                span.set_attributes(
                    {
                        "edgefleet.subtask.index": index,
                        "gen_ai.tool.name": call["tool"],
                        "edgefleet.subtask.status": outcome.status,
                        "edgefleet.region": (outcome.route.region if outcome.route else None) or "-",
                    }
                )
                if not outcome.ok:
                    span.set_status(StatusCode.ERROR, outcome.status)

    tasks = [asyncio.create_task(sub(i, c)) for i, c in enumerate(calls)]
    succeeded = failed = 0
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
            succeeded = sum(1 for o in outcomes if o is not None and o.ok)
            failed = sum(1 for o in outcomes if o is not None and not o.ok)
            if strategy != "all" and (succeeded >= need or failed > len(calls) - need):
                break  # decided: enough successes, or they can no longer come
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    results = []
    for index, (call, outcome) in enumerate(zip(calls, outcomes, strict=True)):
        item = outcome.to_json() if outcome is not None else {"tool": call["tool"], "status": "cancelled"}
        results.append({"index": index, **item})
        if invoker.metrics is not None:
            invoker.metrics.subtasks.labels(item["status"]).inc()
    cancelled = sum(1 for r in results if r["status"] == "cancelled")
    satisfied = succeeded >= need
    summary = {
        "strategy": strategy,  # all | first | quorum:k, as asked
        "satisfied": satisfied,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "results": results,
    }
    text = (
        f"{succeeded}/{len(calls)} sub-tasks succeeded ({failed} failed, {cancelled} cancelled) "
        f"in {summary['duration_ms']:.0f} ms; strategy {summary['strategy']} {'satisfied' if satisfied else 'NOT satisfied'}."
    )
    return {"content": [{"type": "text", "text": text}], "structuredContent": summary, "isError": not satisfied}


def _budget(cap: int, calls: list[dict[str, Any]]) -> ResultBudget:
    """The bytes the sub-results may take together: the cap, less the envelope and each
    sub-task's own fields with the refusal it may get instead of its answer (so the answer
    stays under the cap whatever is refused). A fan-out whose fields alone pass it is refused."""
    budget = ResultBudget(0, cap)
    reserved = ENVELOPE_BYTES + sum(_fields_bytes(budget, index, call["tool"]) for index, call in enumerate(calls))
    if reserved >= cap:
        raise InvalidParams(
            f"A fan-out of {len(calls)} sub-tasks does not fit in EDGEFLEET_MAX_RESULT_BYTES ({cap} bytes); "
            "split it into smaller ones.",
            data={"calls": len(calls), "limit_bytes": cap},
        )
    budget.limit = cap - reserved
    return budget


def _fields_bytes(budget: ResultBudget, index: int, tool: str) -> int:
    """The most a sub-result takes besides its own result or error: its fields, with the refusal."""
    item = {
        "index": index,
        "tool": tool,
        "status": "cancelled",
        "duration_ms": 1e9,
        "error": budget.refusal(tool).to_jsonrpc(),
    }
    return len(orjson.dumps(item)) + ROUTE_BYTES
