"""One tool call as the operator sees it: its span, its metrics and its log line.

The call paths (direct executor, bus, built-in tools, cache) fill in where the call went
and how it ended; ``finish`` then records the metrics and writes the one info line per
call, inside the call's span so the line carries its trace and span ids.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import AttributeValue

from edgefleet.shared import logsetup
from edgefleet.shared.errors import EdgefleetError, UpstreamTimeout, stable_codes

STABLE_CODES = stable_codes()

if TYPE_CHECKING:
    from edgefleet.dispatcher.observability.metrics import Metrics
    from edgefleet.dispatcher.security.audit import AuditLog
    from edgefleet.dispatcher.security.auth import Identity

log = logging.getLogger("edgefleet.calls")


class RouteFacts(Protocol):
    """What routing decided for a call (``routing.router.RouteOrder`` has these fields)."""

    @property
    def regions(self) -> tuple[str, ...]: ...
    @property
    def caller_region(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def address(self) -> str | None: ...


def error_label(error: object) -> tuple[str, str]:
    """(outcome, code) for a JSON-RPC error object from elsewhere: our stable string code
    when it carries one (data.code), else ``agent_error``; never the agent's own free text
    or numbers (metric labels must stay a small, known set)."""
    data = error.get("data") if isinstance(error, dict) else None
    code = data.get("code") if isinstance(data, dict) else None
    if code in STABLE_CODES:
        return ("timeout" if code == "upstream_timeout" else "error"), code
    if isinstance(error, dict) and error.get("code") == UpstreamTimeout.jsonrpc_code:
        return "timeout", "upstream_timeout"
    return "error", "agent_error"


class CallObservation:
    __slots__ = (
        "metrics",
        "span",
        "tool",
        "path",
        "region",
        "replica",
        "attempts",
        "reason",
        "caller_region",
        "address",
        "outcome",
        "code",
        "started",
        "level",
        "regions",
        "audit",
        "identity",
        "requested",
        "arguments",
    )

    def __init__(
        self,
        metrics: Metrics | None,
        span: Span,
        tool: str,
        path: str,
        region: str,
        *,
        level: int = logging.INFO,
        audit: AuditLog | None = None,
        identity: Identity | None = None,
        requested: object = None,
        arguments: object = None,
    ) -> None:
        self.metrics = metrics
        self.span = span
        self.tool = tool
        self.path = path
        self.region = region  # where it was served; the dispatcher's own for builtins and cache hits
        self.replica = "-"
        self.attempts = 0
        self.reason = "-"
        self.caller_region = "-"
        self.address = "-"
        self.outcome = "ok"
        self.code = ""
        self.started = time.perf_counter()
        self.level = level
        self.regions: tuple[str, ...] = ()
        # For the audit stream: who asked, for what (the name as asked, even when unknown).
        self.audit = audit
        self.identity = identity
        self.requested = requested
        self.arguments = arguments

    def routed(self, order: RouteFacts) -> None:
        self.reason = order.reason
        self.caller_region = order.caller_region or "-"
        self.address = order.address or "-"
        self.regions = order.regions
        if self.metrics is not None:
            self.metrics.route(self.caller_region, order.regions[0] if order.regions else "-", order.reason)

    def attempt(self, agent: str, replica: str, region: str) -> None:
        """A try on one replica; from the second on, a failover (to a replica or a region)."""
        self.attempts += 1
        if self.attempts > 1:
            scope = "region" if region != self.region else "replica"
            if self.metrics is not None:
                self.metrics.failovers.labels(agent, scope).inc()
            if self.span.is_recording():
                self.span.add_event(
                    "failover",
                    {
                        "from.replica": self.replica,
                        "from.region": self.region,
                        "to.replica": replica,
                        "to.region": region,
                        "attempt": self.attempts,
                    },
                )
        self.replica = replica
        self.region = region

    def failed(self, error: EdgefleetError) -> None:
        self.outcome = "timeout" if error.code == "upstream_timeout" else "error"
        self.code = error.code

    def answered_with_error(self, error: object) -> None:
        """The agent (or the bus worker) answered with a JSON-RPC error object."""
        self.outcome, self.code = error_label(error)

    def finish(self, *, cancelled: bool = False) -> None:
        seconds = time.perf_counter() - self.started
        if cancelled:
            self.outcome, self.code = "cancelled", ""
        if self.metrics is not None:
            self.metrics.call(self.tool, self.region, self.path, self.outcome, self.code, seconds)
        span = self.span
        if span.is_recording():
            # One call with everything (each set_attributes call costs a lock and validation).
            # The routing decision: where the caller is, why, where it was served.
            attributes: dict[str, AttributeValue] = {
                "edgefleet.path": self.path,
                "edgefleet.region": self.region,
                "edgefleet.replica": self.replica,
                "edgefleet.caller.region": self.caller_region,
                "edgefleet.route.reason": self.reason,
                "client.address": self.address,
            }
            if self.attempts > 1:
                attributes.update(
                    {"edgefleet.attempts": self.attempts, "edgefleet.route.regions": list(self.regions[:4])}
                )
            if self.outcome != "ok":
                attributes["edgefleet.outcome"] = self.outcome
            span.set_attributes(attributes)
            if self.outcome in ("error", "timeout"):
                span.set_attribute("error.type", self.code)
                span.set_status(StatusCode.ERROR, self.code)
            elif self.outcome == "tool_error":
                span.set_attribute("error.type", "tool_error")
                span.set_status(StatusCode.ERROR)
        if self.audit is not None and self.audit.enabled:
            self._audit(seconds)
        if log.isEnabledFor(self.level):
            self._log_line(seconds)

    def _log_line(self, seconds: float) -> None:
        """The one line per call (batched: shared.logsetup.line), with the call's trace ids."""
        context = self.span.get_span_context()
        ids = (format(context.trace_id, "032x"), format(context.span_id, "016x")) if context.is_valid else None
        duration_ms = seconds * 1000
        code = self.code
        logsetup.line(
            log,
            self.level,
            f"call {self.tool} -> {self.replica} region={self.region} caller={self.address} "
            f"caller_region={self.caller_region} reason={self.reason} path={self.path} attempts={self.attempts} "
            f"{duration_ms:.2f} ms {self.outcome}{' ' + code if code else ''}",
            {
                "tool": self.tool,
                "replica": self.replica,
                "region": self.region,
                "path": self.path,
                "outcome": self.outcome,
                "code": code or None,
                "duration_ms": round(duration_ms, 3),
                "attempts": self.attempts,
                "caller_region": self.caller_region,
                "reason": self.reason,
            },
            ids,
        )

    def _audit(self, seconds: float) -> None:
        assert self.audit is not None
        context = self.span.get_span_context()
        requested = self.requested if isinstance(self.requested, str) else repr(self.requested)
        self.audit.record(
            "call",
            identity=self.identity.name if self.identity else None,
            auth=self.identity.method if self.identity else None,
            tool=requested[:200],
            outcome=self.outcome,
            code=self.code or None,
            path=self.path,
            region=self.region,
            replica=self.replica,
            attempts=self.attempts,
            duration_ms=round(seconds * 1000, 3),
            caller=self.address,
            caller_region=self.caller_region,
            trace_id=format(context.trace_id, "032x") if context.is_valid else None,
            **self.audit.call_arguments(self.arguments),
        )
