"""What crosses the workflow engine: plain dataclasses (Temporal's JSON converter), no
I/O, importable inside the workflow sandbox.

A run's input carries everything its steps need on any dispatcher: the pipeline's spec as
it was when the run started (a config change never alters a running run), the caller's
identity (auth rules are checked per step) and route order, and which tools are
idempotent (it decides how a step lost with its worker is handled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WORKFLOW_NAME = "edgefleet.pipeline"
CALL_ACTIVITY = "edgefleet.pipeline.call"
SETTLE_ACTIVITY = "edgefleet.pipeline.settle"
DECIDE_SIGNAL = "decide"
ATTACH_SIGNAL = "attach_task"
STATUS_QUERY = "status"


@dataclass
class Caller:
    """The identity a run acts as (``security.auth.Identity`` without its cache)."""

    name: str
    scopes: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    method: str = "none"


@dataclass
class Order:
    """The caller's route order (``routing.router.RouteOrder``), as the call computed it."""

    regions: list[str]
    caller_region: str | None = None
    reason: str = "default"
    address: str | None = None
    only: bool = False


@dataclass
class RunInput:
    pipeline: str
    spec: dict[str, Any]  # PipelineSpec.model_dump(): the spec this run follows to its end
    arguments: dict[str, Any]
    caller: Caller
    order: Order
    idempotent: list[str] = field(default_factory=list)  # tools declaring idempotentHint when the run started
    heartbeat_s: float = 5.0  # a step's worker silent this long is taken for dead
    task_id: str | None = None  # the MCP task this run settles when it ends
    traceparent: str | None = None  # the pipeline call's trace context: every step joins that trace


@dataclass
class CallInput:
    """One tool call of a run (a step, or a step's compensation)."""

    run_id: str
    pipeline: str
    step: str
    tool: str
    arguments: dict[str, Any]
    timeout_s: float
    caller: Caller
    order: Order
    region: str | None = None
    compensation: bool = False
    traceparent: str | None = None


@dataclass
class Decision:
    """An approve/reject of an approval step, by an identity the dispatcher authorised."""

    step: str
    approve: bool
    by: str
    comment: str = ""


@dataclass
class Settlement:
    """How a run ended, written to its MCP task."""

    task_id: str
    status: str  # completed | cancelled
    result: dict[str, Any] | None = None
