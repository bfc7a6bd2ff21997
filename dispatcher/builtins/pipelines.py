"""Pipelines: multi-step tools declared in the config file, each exposed as the MCP tool
``edgefleet.<name>``. Steps run in sequence; a ``parallel`` group runs its steps at
once. Every step has a tool, arguments mapped from the input and earlier results, a
timeout, a retry policy with exponential backoff (tenacity) and an optional compensation.
When a step fails for good, the compensations of the steps that completed run in reverse
order (a saga), and the result is a per-step trace that names the failing step.

An ``approval`` step waits for a person (approve or reject, with a comment) for up to its
``timeout_s``; waiting that long needs a durable engine, so pipelines with approval steps
run only on Temporal (``builtins.workflows``), which also runs every other pipeline when
``EDGEFLEET_TEMPORAL_ADDRESS`` is set. Here, in-process, a pipeline is not crash-proof.

Argument mapping: a string that is exactly ``${path}`` becomes the value at ``path`` (any
JSON type); ``${path}`` inside a longer string is interpolated as text. Paths start at
``input`` (the pipeline's arguments) or ``steps.<name>`` (that step's CallToolResult:
``.structuredContent.x``, ``.content.0.text``, or ``.text``, the first text block).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import tenacity
from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.dispatcher.builtins.invoker import Invoker, Outcome
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.shared import telemetry
from edgefleet.shared.constants import TOOL_NAME_RE
from edgefleet.shared.errors import ConfigError, InvalidParams, MethodNotFound, NotFound

PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Failures no retry can fix: the call was refused before any agent ran it.
PERMANENT_CODES = frozenset({InvalidParams.jsonrpc_code, MethodNotFound.jsonrpc_code, NotFound.jsonrpc_code})
# Compensations still running for pipelines whose caller went away.
_BACKGROUND: set[asyncio.Future[Any]] = set()
_tracer = telemetry.tracer("edgefleet.dispatcher")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(1, ge=1, le=20)
    backoff_s: float = Field(0.2, ge=0)
    max_backoff_s: float = Field(5.0, ge=0)


class Compensation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str
    arguments: dict[str, Any] = {}
    timeout_s: float = Field(30.0, gt=0)


class Approval(BaseModel):
    """A step that waits for a person's decision instead of calling a tool."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(86400.0, gt=0, le=30 * 86400)
    # Globs over identity names that may decide (admins and the scope approve:<pipeline> always may).
    approvers: list[str] = []
    prompt: str = ""  # shown to approvers; ${...} mapped like arguments


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    tool: str = ""
    arguments: dict[str, Any] = {}
    timeout_s: float = Field(60.0, gt=0)
    retry: RetryPolicy = RetryPolicy()
    compensate: Compensation | None = None
    region: str | None = None
    approval: Approval | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not STEP_NAME.match(value):
            raise ValueError("step names are letters, digits, '_' or '-', starting with a letter")
        return value

    @model_validator(mode="after")
    def _kind(self) -> Step:
        if self.approval is None and not self.tool:
            raise ValueError(f"step {self.name!r} needs a tool (or is an approval step)")
        if self.approval is not None and (self.tool or self.arguments or self.compensate or self.region):
            raise ValueError(f"step {self.name!r} is an approval step: no tool, arguments, compensate or region")
        return self


class ParallelGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parallel: list[Step] = Field(min_length=1)


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    steps: list[Step | ParallelGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineSpec:
        names = [s.name for group in self.groups() for s in group]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"step names must be unique, repeated: {duplicates}")
        if any(s.approval is not None for item in self.steps if isinstance(item, ParallelGroup) for s in item.parallel):
            raise ValueError("approval steps stand on their own, not inside a parallel group")
        return self

    def groups(self) -> list[list[Step]]:
        return [item.parallel if isinstance(item, ParallelGroup) else [item] for item in self.steps]

    def approvals(self) -> list[Step]:
        return [s for group in self.groups() for s in group if s.approval is not None]

    def tools(self) -> set[str]:
        """Every tool a run may call: steps and compensations (the caller must be allowed each)."""
        return {t for g in self.groups() for s in g for t in (s.tool, s.compensate.tool if s.compensate else "") if t}


def tool_name(pipeline: str) -> str:
    name = f"edgefleet.{pipeline}"
    if not TOOL_NAME_RE.match(name):
        raise ValueError(f"pipeline name {pipeline!r} does not make a valid tool name")
    return name


def definition(pipeline: str, spec: PipelineSpec) -> dict[str, Any]:
    steps = " -> ".join(
        "[" + " | ".join(s.name for s in g) + "]"
        if len(g) > 1
        else g[0].name + (" (approval)" if g[0].approval else "")
        for g in spec.groups()
    )
    return {
        "name": tool_name(pipeline),
        "title": f"Pipeline {pipeline}",
        "description": (spec.description + "\n\n" if spec.description else "") + f"Pipeline steps: {steps}. "
        "The result has a per-step trace (status, attempts, duration, error).",
        "inputSchema": spec.input_schema,
        "annotations": {"readOnlyHint": False, "idempotentHint": False, "openWorldHint": True},
    }


# -- argument mapping -------------------------------------------------------------------
def lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.strip().split("."):
        if isinstance(value, dict) and part == "text" and part not in value and isinstance(value.get("content"), list):
            value = next(
                (c.get("text") for c in value["content"] if isinstance(c, dict) and c.get("type") == "text"), None
            )
        elif isinstance(value, dict):
            if part not in value:
                raise KeyError(path)
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def render(template: Any, context: dict[str, Any]) -> Any:
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole:
            return lookup(context, whole.group(1))
        return PLACEHOLDER.sub(lambda m: str(lookup(context, m.group(1))), template)
    if isinstance(template, dict):
        return {k: render(v, context) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, context) for v in template]
    return template


# -- running ----------------------------------------------------------------------------
class _Failed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


async def run(invoker: Invoker, pipeline: str, spec: PipelineSpec, call: ToolCall) -> dict[str, Any]:
    arguments = call.arguments
    started = time.monotonic()
    deadline = started + call.timeout_s
    context: dict[str, Any] = {"input": arguments, "steps": {}}
    trace: list[dict[str, Any]] = []
    completed: list[Step] = []  # in completion order, for the saga
    failed: dict[str, Any] | None = None

    async def run_step(step: Step) -> None:
        entry: dict[str, Any] = {"name": step.name, "tool": step.tool, "status": "running", "attempts": 0}
        trace.append(entry)
        # One span per step; each attempt is a call span under it.
        with _tracer.start_as_current_span(
            f"pipeline.step {step.name}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                await _run_step(step, entry)
            except asyncio.CancelledError:
                entry["status"] = "cancelled"
                raise
            finally:
                if invoker.metrics is not None:
                    invoker.metrics.steps.labels(pipeline, entry["status"]).inc()
                if span.is_recording():
                    span.set_attributes(
                        {
                            "edgefleet.pipeline": pipeline,
                            "edgefleet.step": step.name,
                            "gen_ai.tool.name": step.tool,
                            "edgefleet.step.status": entry["status"],
                            "edgefleet.step.attempts": entry["attempts"],
                        }
                    )
                    if entry["status"] == "failed":
                        span.set_status(StatusCode.ERROR, str((entry.get("error") or {}).get("message", "failed")))

    async def _run_step(step: Step, entry: dict[str, Any]) -> None:
        step_started = time.monotonic()
        if step.approval is not None:  # refused at start-up without Temporal; a person's decision is never skipped
            error = ConfigError("approval steps need EDGEFLEET_TEMPORAL_ADDRESS").to_jsonrpc()
            entry.update(status="failed", error=error)
            raise _Failed(Outcome(step.name, "error", error=entry["error"]))
        try:
            arguments = render(step.arguments, context)
        except KeyError as exc:
            entry.update(
                status="failed", error=InvalidParams(f"argument mapping: no value at {exc.args[0]}").to_jsonrpc()
            )
            raise _Failed(Outcome(step.tool, "error", error=entry["error"])) from None
        outcome = await _with_retries(invoker, step, arguments, call, deadline, entry)
        entry["duration_ms"] = round((time.monotonic() - step_started) * 1000, 3)
        if outcome.route is not None:
            entry.update(outcome.route.fields())
        if outcome.ok:
            entry["status"] = "completed"
            context["steps"][step.name] = outcome.result or {}
            completed.append(step)
            return
        entry["status"] = "failed"
        entry["error"] = outcome.error or _tool_error(outcome)
        raise _Failed(outcome)

    try:
        for group in spec.groups():
            results = await asyncio.gather(*(run_step(s) for s in group), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                unexpected = [e for e in errors if not isinstance(e, _Failed)]
                if unexpected:
                    raise unexpected[0]
                first = next(e for e in trace if e["status"] == "failed")
                failed = {"step": first["name"], "tool": first["tool"], "error": first.get("error")}
                break
    except BaseException:
        # Cancelled (the client went away) or a bug: what completed is still undone, and
        # nobody can wait for that, so the compensations run on their own (shielded).
        if completed:
            undo = asyncio.ensure_future(_compensate(invoker, list(completed), context, call))
            _BACKGROUND.add(undo)  # keep it alive after we are gone
            undo.add_done_callback(_BACKGROUND.discard)
            with contextlib.suppress(BaseException):
                await asyncio.shield(undo)
        raise
    finally:
        # Steps never started are part of the trace too, so the picture is complete.
        seen = {t["name"] for t in trace}
        trace.extend(
            {"name": s.name, "tool": s.tool, "status": "skipped", "attempts": 0}
            for g in spec.groups()
            for s in g
            if s.name not in seen
        )

    compensations = await _compensate(invoker, completed, context, call) if failed else []
    if invoker.metrics is not None:
        for item in compensations:
            invoker.metrics.compensations.labels(pipeline, item["status"]).inc()
    last_group = spec.groups()[-1]
    output = context["steps"].get(last_group[-1].name) if not failed else None
    summary: dict[str, Any] = {
        "pipeline": pipeline,
        "status": "failed" if failed else "completed",
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "steps": trace,
    }
    if failed:
        summary["failed_step"] = failed
        summary["compensations"] = compensations
    else:
        summary["output"] = (output or {}).get("structuredContent", output)
    if failed:
        message = (failed.get("error") or {}).get("message", "failed")
        text = (
            f"Pipeline {pipeline} failed at step {failed['step']} ({failed['tool']}): {message}. "
            f"Compensated: {', '.join(c['step'] for c in compensations) or 'nothing'}."
        )
    else:
        text = f"Pipeline {pipeline} completed {len(trace)} steps in {summary['duration_ms']:.0f} ms."
    return {"content": [{"type": "text", "text": text}], "structuredContent": summary, "isError": bool(failed)}


async def _with_retries(
    invoker: Invoker, step: Step, arguments: dict[str, Any], parent: ToolCall, deadline: float, entry: dict[str, Any]
) -> Outcome:
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(step.retry.attempts),
        wait=tenacity.wait_exponential(multiplier=step.retry.backoff_s, max=step.retry.max_backoff_s),
        retry=tenacity.retry_if_result(lambda o: not o.ok and _retryable(o) and time.monotonic() < deadline),
        # Out of attempts: end the loop with the last outcome (it is traced), don't raise.
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    outcome: Outcome | None = None
    async for attempt in retrying:
        with attempt:
            entry["attempts"] += 1
            if entry["attempts"] > 1:
                trace_api.get_current_span().add_event("retry", {"attempt": entry["attempts"]})
            remaining = max(0.001, min(step.timeout_s, deadline - time.monotonic()))
            outcome = await invoker.call(
                step.tool,
                arguments,
                parent=parent,
                order=invoker.order_for(parent.order, step.region),
                timeout_s=remaining,
            )
        if attempt.retry_state.outcome is not None and not attempt.retry_state.outcome.failed:
            attempt.retry_state.set_result(outcome)
    assert outcome is not None
    return outcome


def _retryable(outcome: Outcome) -> bool:
    code = (outcome.error or {}).get("code")
    return code not in PERMANENT_CODES


def _tool_error(outcome: Outcome) -> dict[str, Any]:
    content = (outcome.result or {}).get("content") or []
    text = next((c.get("text") for c in content if isinstance(c, dict) and c.get("type") == "text"), None)
    return {"code": "tool_error", "message": text or "the tool reported an error"}


async def _compensate(
    invoker: Invoker, completed: list[Step], context: dict[str, Any], parent: ToolCall
) -> list[dict[str, Any]]:
    """Undo completed steps, last completed first. A failing compensation is recorded and
    the others still run (there is no one left to undo it for us)."""
    done = []
    for step in reversed(completed):
        if step.compensate is None:
            continue
        item: dict[str, Any] = {"step": step.name, "tool": step.compensate.tool}
        try:
            arguments = render(step.compensate.arguments, context)
        except KeyError as exc:
            item.update(status="failed", error={"message": f"argument mapping: no value at {exc.args[0]}"})
            done.append(item)
            continue
        # The undo goes where the step ran (a step pinned to a region is undone there).
        with _tracer.start_as_current_span(
            f"pipeline.compensate {step.name}",
            kind=SpanKind.INTERNAL,
            attributes={"edgefleet.step": step.name, "gen_ai.tool.name": step.compensate.tool},
        ):
            outcome = await invoker.call(
                step.compensate.tool,
                arguments,
                parent=parent,
                order=invoker.order_for(parent.order, step.region),
                timeout_s=step.compensate.timeout_s,
            )
        item.update(status="completed" if outcome.ok else "failed", duration_ms=round(outcome.duration_ms, 3))
        if not outcome.ok:
            item["error"] = outcome.error or _tool_error(outcome)
        done.append(item)
    return done
