"""One tool call on its way to an agent: everything a path needs, built once by whoever
accepted the call (the MCP endpoint, the dispatcher's own tools, the task runner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.observability.observe import CallObservation
    from edgefleet.dispatcher.routing.router import RouteOrder
    from edgefleet.dispatcher.security.auth import Identity


@dataclass(slots=True)
class ToolCall:
    entry: ToolEntry
    request_id: Any  # the caller's JSON-RPC id: every answer carries it back
    params: dict[str, Any]  # tools/call params as the agent gets them (its own tool name, _meta)
    order: RouteOrder  # regions, nearest first
    timeout_s: float  # the whole call's deadline, from now
    obs: CallObservation | None = None
    identity: Identity | None = None  # who asked (the dispatcher's own tools call others on its behalf)
    extra_headers: dict[str, str] | None = None  # e.g. 2026 Mcp-Param-* headers, passed on as they came
    modern: bool = True  # the caller speaks 2026-07-28 (results carry resultType)
    # A forwarded request that is not a tool call (resources/read, prompts/get,
    # completion/complete) names its method and what it targets (its Mcp-Name).
    method: str = "tools/call"
    target: str | None = None
    # What the client declared it can do (sampling, elicitation, roots): a 2025-era
    # upstream session is chosen by it. None: the dispatcher's own calls.
    client_capabilities: dict[str, Any] | None = None
    # A 2026-era client whose call a 2025-era agent may ask things mid-call: the dispatcher
    # holds the call and asks in input_required rounds (mcp.held); otherwise such an agent
    # gets a session that lets it ask nothing.
    may_ask: bool = False

    @property
    def arguments(self) -> dict[str, Any]:
        arguments = self.params.get("arguments")
        return arguments if isinstance(arguments, dict) else {}

    @property
    def name(self) -> str:
        """What the request names upstream: the tool, or the target of another method."""
        return self.entry.upstream_name if self.method == "tools/call" else self.target or ""

    def body(self) -> bytes:
        """The JSON-RPC request as the agent receives it."""
        return orjson.dumps({"jsonrpc": "2.0", "id": self.request_id, "method": self.method, "params": self.params})
