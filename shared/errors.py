"""The one error tree of edgefleet.

Every error a client, agent or operator can see has a stable string ``code``, a JSON-RPC
code, an HTTP status and a sentence that says what to do::

    EdgefleetError                      internal              -32603  500
    ├── ProtocolError                   (bad input from an MCP client)
    │   ├── ParseError                  parse_error           -32700  400
    │   ├── InvalidRequest              invalid_request       -32600  400
    │   ├── MethodNotFound              method_not_found      -32601  404
    │   ├── InvalidParams               invalid_params        -32602  400
    │   ├── UnknownTool                 unknown_tool          -32602  200
    │   ├── InvalidRequestState         invalid_request_state -32602  200
    │   ├── TooManySubscriptions        too_many_subscriptions -32602 400 (200 in a 2025 session)
    │   ├── NestingTooDeep              nesting_too_deep      -32602  400
    │   ├── TaskNotFound                task_not_found        -32602  404
    │   ├── TaskFinished                task_finished         -32602  409
    │   ├── MissingClientCapability     missing_client_capability -32021 400
    │   ├── HeaderMismatch              header_mismatch       -32020  400
    │   ├── UnsupportedProtocolVersion  unsupported_protocol_version -32022 400
    │   ├── SessionRequired             session_required      -32600  400
    │   ├── SessionNotFound             session_not_found     -32600  404
    │   ├── NotAcceptable               not_acceptable        -32600  406
    │   ├── UnsupportedMediaType        unsupported_media_type -32600 415
    │   ├── PayloadTooLarge             payload_too_large     -32600  413
    │   └── ForbiddenOrigin             forbidden_origin      -32600  403
    ├── Unauthorized                    unauthorized          -31401  401
    ├── Forbidden                       forbidden             -31402  403
    ├── ToolForbidden                   tool_forbidden        -31403  200
    │   └── RegionForbidden             region_forbidden      -31411  200
    ├── RateLimited                     rate_limited          -31429  429
    │   ├── TooManyTasks                too_many_tasks        -31430  429
    │   ├── TooManyHeldCalls            too_many_held_calls   -31431  429
    │   └── TooManyStreams              too_many_streams      -31432  429
    ├── RegistrationError               invalid_registration  -31422  422
    │   ├── ToolConflict                tool_conflict         -31409  409
    │   ├── AgentUrlForbidden           agent_url_forbidden   -31423  422
    │   ├── NamespaceForbidden          namespace_forbidden   -31425  403
    │   ├── TooManyTools                too_many_tools        -31427  422
    │   ├── ToolTooLarge                tool_too_large        -31428  422
    │   ├── InvalidToolSchema           invalid_tool_schema   -31421  422
    │   ├── AgentAnswerTooLarge         agent_answer_too_large -31426 422
    │   └── AgentUnreachable            agent_unreachable     -31424  424
    ├── NotFound                        not_found             -31404  404
    │   └── RunNotFound                 run_not_found         -31405  404
    ├── NotAnApprover                   not_an_approver       -31406  403
    ├── ApprovalNotPending              approval_not_pending  -31407  409
    ├── ApprovalRejected                approval_rejected     -31408  200 (a pipeline step's error)
    ├── ApprovalExpired                 approval_expired      -31410  200 (a pipeline step's error)
    ├── WorkflowUnavailable             workflow_unavailable  -31008  503
    ├── DispatcherStopping              dispatcher_stopping   -31010  503
    ├── TaskCancelled                   task_cancelled        -31499  409
    ├── AgentUnavailable                agent_unavailable     -31001  200 (JSON-RPC) / 503 (REST)
    ├── BusUnavailable                  bus_unavailable       -31005  503
    ├── StoreUnavailable                store_unavailable     -31011  503
    └── UpstreamError                   upstream_error        -31002  200 / 502
        ├── UpstreamTimeout             upstream_timeout      -31003  200 / 504
        ├── OutcomeUnknown              outcome_unknown       -31004  200 / 502
        ├── ResultTooLarge              result_too_large      -31006  200 / 502
        ├── InvalidToolResult           invalid_tool_result   -31007  200 / 502
        └── RoundLost                   round_lost            -31009  200 / 502

JSON-RPC codes of our own live outside the range -32768..-32000 that JSON-RPC and MCP
reserve. Errors about one tool call travel as a JSON-RPC error inside an HTTP 200 (the
HTTP exchange itself worked); errors about the request or transport use the 4xx the MCP
transport spec names.
"""

from __future__ import annotations

from typing import Any


class EdgefleetError(Exception):
    code = "internal"
    jsonrpc_code = -32603
    http_status = 500
    hint = "This is a bug in edgefleet; the dispatcher log has the details."

    def __init__(self, message: str | None = None, *, data: dict[str, Any] | None = None) -> None:
        self.message = message or self.hint
        self.data = data or {}
        super().__init__(self.message)

    def to_jsonrpc(self) -> dict[str, Any]:
        """The ``error`` member of a JSON-RPC response."""
        data = {"code": self.code, **self.data}
        return {"code": self.jsonrpc_code, "message": self.message, "data": data}

    def to_rest(self) -> dict[str, Any]:
        """The body of a REST error response."""
        return {"error": {"code": self.code, "message": self.message, **({"details": self.data} if self.data else {})}}


class ConfigError(EdgefleetError):
    """Invalid settings at start-up; never sent over the wire."""

    code = "config_error"


# --- bad input from MCP clients --------------------------------------------------------
class ProtocolError(EdgefleetError):
    code = "invalid_request"
    jsonrpc_code = -32600
    http_status = 400


class ParseError(ProtocolError):
    code = "parse_error"
    jsonrpc_code = -32700
    hint = "The body is not valid JSON (UTF-8)."


class InvalidRequest(ProtocolError):
    code = "invalid_request"
    hint = "The body is not a valid JSON-RPC 2.0 request or notification."


class MethodNotFound(ProtocolError):
    code = "method_not_found"
    jsonrpc_code = -32601
    http_status = 404


class InvalidParams(ProtocolError):
    code = "invalid_params"
    jsonrpc_code = -32602


class UnknownTool(InvalidParams):
    code = "unknown_tool"
    http_status = 200


class InvalidRequestState(InvalidParams):
    """A retry's ``requestState`` that this fleet did not mint for this identity and request,
    or that expired. The message is the MCP SDK's frozen one; the reason is only logged."""

    code = "invalid_request_state"
    http_status = 200
    hint = "Invalid or expired requestState"


class TooManySubscriptions(InvalidParams):
    """More resource URIs in one subscriptions/listen, or subscribed by one 2025 session,
    than EDGEFLEET_MAX_RESOURCE_SUBSCRIPTIONS allows."""

    code = "too_many_subscriptions"
    hint = "Too many resource subscriptions (EDGEFLEET_MAX_RESOURCE_SUBSCRIPTIONS): unsubscribe from some, or split them over several streams."


class NestingTooDeep(InvalidParams):
    """A message nests objects/arrays deeper than the dispatcher reads (``jsonrpc.MAX_DEPTH``)."""

    code = "nesting_too_deep"


class TaskNotFound(InvalidParams):
    """No such task, or not one the caller may see (the two are indistinguishable on
    purpose: another identity's task ids must not be probeable). MCP asks for -32602."""

    code = "task_not_found"
    http_status = 404
    hint = "Failed to retrieve task: Task not found (it may have expired, or belong to someone else)."


class TaskFinished(InvalidParams):
    """Cancelling a task that already reached a terminal status (MCP: -32602)."""

    code = "task_finished"
    http_status = 409
    hint = "The task already finished; only working tasks can be cancelled."


class TaskCancelled(EdgefleetError):
    """What ``tasks/result`` of a cancelled task answers (the call did not finish)."""

    code = "task_cancelled"
    jsonrpc_code = -31499
    http_status = 409
    hint = "The task was cancelled before it finished."


class MissingClientCapability(ProtocolError):
    """2026-07-28: the request needs a capability (here: the tasks extension) the client did not declare."""

    code = "missing_client_capability"
    jsonrpc_code = -32021
    hint = "Missing required client capability: declare the io.modelcontextprotocol/tasks extension."


class HeaderMismatch(ProtocolError):
    code = "header_mismatch"
    jsonrpc_code = -32020


class UnsupportedProtocolVersion(ProtocolError):
    code = "unsupported_protocol_version"
    jsonrpc_code = -32022

    def to_jsonrpc(self) -> dict[str, Any]:
        # The spec fixes this error's data shape: {"supported": [...], "requested": ...}.
        return {"code": self.jsonrpc_code, "message": self.message, "data": dict(self.data)}


class SessionRequired(ProtocolError):
    code = "session_required"
    hint = "Send the Mcp-Session-Id returned by initialize, or use protocol 2026-07-28 (stateless)."


class SessionNotFound(ProtocolError):
    code = "session_not_found"
    http_status = 404
    hint = "The session expired or was deleted; send a new initialize request."


class NotAcceptable(ProtocolError):
    code = "not_acceptable"
    http_status = 406
    hint = "The Accept header must list application/json and text/event-stream."


class UnsupportedMediaType(ProtocolError):
    code = "unsupported_media_type"
    http_status = 415
    hint = "POST bodies must be Content-Type: application/json."


class PayloadTooLarge(ProtocolError):
    code = "payload_too_large"
    http_status = 413


class ForbiddenOrigin(ProtocolError):
    code = "forbidden_origin"
    http_status = 403
    hint = "The Origin header is not allowed (DNS rebinding protection); see EDGEFLEET_ALLOWED_ORIGINS."


# --- auth / registry -------------------------------------------------------------------
class Unauthorized(EdgefleetError):
    code = "unauthorized"
    jsonrpc_code = -31401
    http_status = 401
    hint = "Missing or wrong credentials: send 'Authorization: Bearer <fleet token>'."


class Forbidden(EdgefleetError):
    code = "forbidden"
    jsonrpc_code = -31402
    http_status = 403
    hint = "These credentials are valid but not allowed to do this (an operator route needs the fleet token or the admin scope)."


class ToolForbidden(EdgefleetError):
    code = "tool_forbidden"
    jsonrpc_code = -31403
    http_status = 200  # a JSON-RPC error like unknown_tool: the transport worked
    hint = "This identity may not call that tool (its API key or token does not allow it)."


class RegionForbidden(ToolForbidden):
    """A call (a fan-out sub-call, a pipeline step) names a region its caller may not be served in."""

    code = "region_forbidden"
    jsonrpc_code = -31411
    hint = "This identity is bound to regions (API key regions, JWT region: scopes); the call named another."


class RateLimited(EdgefleetError):
    code = "rate_limited"
    jsonrpc_code = -31429
    http_status = 429
    hint = "Too many calls: wait for data.retry_after_s seconds (also in the Retry-After header)."


class TooManyTasks(RateLimited):
    code = "too_many_tasks"
    jsonrpc_code = -31430
    hint = "This identity already has as many unfinished tasks as it may (EDGEFLEET_MAX_OPEN_TASKS); wait for one to end or cancel one."


class TooManyHeldCalls(RateLimited):
    code = "too_many_held_calls"
    jsonrpc_code = -31431
    hint = (
        "This identity already has as many calls waiting for its input as it may "
        "(EDGEFLEET_HELD_CALLS_PER_IDENTITY); answer or abandon one first."
    )


class TooManyStreams(RateLimited):
    """Open notification streams (2026 subscriptions/listen, 2025 GET streams) of one
    identity, or of the whole dispatcher, at their cap."""

    code = "too_many_streams"
    jsonrpc_code = -31432
    hint = "Too many open notification streams (EDGEFLEET_MAX_STREAMS_PER_IDENTITY / EDGEFLEET_MAX_STREAMS): close one first."


class RegistrationError(EdgefleetError):
    code = "invalid_registration"
    jsonrpc_code = -31422
    http_status = 422


class ToolConflict(RegistrationError):
    code = "tool_conflict"
    jsonrpc_code = -31409
    http_status = 409


class AgentUrlForbidden(RegistrationError):
    code = "agent_url_forbidden"
    jsonrpc_code = -31423
    http_status = 422


class NamespaceForbidden(RegistrationError):
    code = "namespace_forbidden"
    jsonrpc_code = -31425
    http_status = 403
    hint = "This agent credential is bound to another agent name: an agent registers tools only in its own namespace."


class TooManyTools(RegistrationError):
    """An agent publishes more tools than ``EDGEFLEET_MAX_TOOLS_PER_AGENT``."""

    code = "too_many_tools"
    jsonrpc_code = -31427
    hint = "The agent publishes more tools than EDGEFLEET_MAX_TOOLS_PER_AGENT allows; split it, or raise the limit."


class ToolTooLarge(RegistrationError):
    """One tool's definition is larger than ``EDGEFLEET_MAX_SCHEMA_BYTES``."""

    code = "tool_too_large"
    jsonrpc_code = -31428
    hint = "A tool's definition is larger than EDGEFLEET_MAX_SCHEMA_BYTES; trim its schema, or raise the limit."


class InvalidToolSchema(RegistrationError):
    """A tool's ``inputSchema`` or ``outputSchema`` is not a JSON Schema object MCP clients can read."""

    code = "invalid_tool_schema"
    jsonrpc_code = -31421
    hint = (
        'A tool\'s inputSchema must be a JSON Schema object with "type": "object" (its outputSchema a JSON Schema '
        "object); fix the agent's tool definition."
    )


class AgentAnswerTooLarge(RegistrationError):
    code = "agent_answer_too_large"
    jsonrpc_code = -31426
    http_status = 422
    hint = (
        "The agent answered a discovery request (server/discover, initialize, tools/list) with more bytes than "
        "EDGEFLEET_MAX_AGENT_ANSWER_BYTES; it was not read further."
    )


class AgentUnreachable(RegistrationError):
    code = "agent_unreachable"
    jsonrpc_code = -31424
    http_status = 424
    hint = "The dispatcher could not reach the agent's MCP URL to discover its tools."


class NotFound(EdgefleetError):
    code = "not_found"
    jsonrpc_code = -31404
    http_status = 404


# --- pipelines on Temporal ---------------------------------------------------------------
class RunNotFound(NotFound):
    """No such pipeline run, or not one the caller may see (indistinguishable on purpose)."""

    code = "run_not_found"
    jsonrpc_code = -31405
    hint = "No such pipeline run (or not yours to see); `edgefleet pipelines list` shows yours."


class NotAnApprover(Forbidden):
    code = "not_an_approver"
    jsonrpc_code = -31406
    hint = "This identity may not decide this approval: it needs the admin scope, the scope approve:<pipeline>, or a name the step's approvers list matches."


class ApprovalNotPending(EdgefleetError):
    code = "approval_not_pending"
    jsonrpc_code = -31407
    http_status = 409
    hint = "That step is not waiting for a decision (not reached yet, already decided, expired, or the run ended)."


class ApprovalRejected(EdgefleetError):
    """An approval step's answer was no: the pipeline stops there and compensates."""

    code = "approval_rejected"
    jsonrpc_code = -31408
    http_status = 200
    hint = "An approver rejected the step; the completed steps were compensated."


class ApprovalExpired(EdgefleetError):
    """Nobody decided an approval step within its declared time."""

    code = "approval_expired"
    jsonrpc_code = -31410
    http_status = 200
    hint = "Nobody approved the step within its timeout; the completed steps were compensated."


class WorkflowUnavailable(EdgefleetError):
    code = "workflow_unavailable"
    jsonrpc_code = -31008
    http_status = 503
    hint = (
        "The dispatcher cannot reach Temporal (EDGEFLEET_TEMPORAL_ADDRESS); pipeline runs already started go on there."
    )


class DispatcherStopping(EdgefleetError):
    """A long-lived stream asked of a dispatcher that is shutting down."""

    code = "dispatcher_stopping"
    jsonrpc_code = -31010
    http_status = 503
    hint = "This dispatcher is shutting down: open the stream again (the load balancer sends you to another one)."


# --- routing / upstream ----------------------------------------------------------------
class AgentUnavailable(EdgefleetError):
    code = "agent_unavailable"
    jsonrpc_code = -31001
    http_status = 503
    hint = "No live, warm replica of this agent right now; retry shortly or check `edgefleet agents list`."


class UpstreamError(EdgefleetError):
    code = "upstream_error"
    jsonrpc_code = -31002
    http_status = 502
    hint = "The agent replica failed to answer the call."


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    jsonrpc_code = -31003
    http_status = 504
    hint = "The agent did not answer within the call's deadline."


class OutcomeUnknown(UpstreamError):
    code = "outcome_unknown"
    jsonrpc_code = -31004
    hint = (
        "The connection to the agent broke after the call was sent; the tool may or may not have run. "
        "It was not retried because the tool does not declare idempotentHint."
    )


class ResultTooLarge(UpstreamError):
    code = "result_too_large"
    jsonrpc_code = -31006
    hint = "The agent's answer is larger than EDGEFLEET_MAX_RESULT_BYTES; it was not relayed."


class InvalidToolResult(UpstreamError):
    code = "invalid_tool_result"
    jsonrpc_code = -31007
    hint = "The agent's structuredContent does not match the tool's outputSchema; it was not relayed."


class RoundLost(UpstreamError):
    code = "round_lost"
    jsonrpc_code = -31009
    hint = (
        "The call waiting for this input is gone (its dispatcher stopped, or the round expired) and the tool "
        "does not declare idempotentHint, so it was not started again: call it again."
    )


# --- bus ---------------------------------------------------------------------------------
class BusUnavailable(EdgefleetError):
    code = "bus_unavailable"
    jsonrpc_code = -31005
    http_status = 503
    hint = "The dispatcher cannot reach its bus (Redis Streams or Kafka); calls on the bus path fail until it is back."


# --- the store ---------------------------------------------------------------------------
class StoreUnavailable(EdgefleetError):
    """Redis (registry, sessions, tasks, audit) cannot be asked right now."""

    code = "store_unavailable"
    jsonrpc_code = -31011
    http_status = 503
    hint = (
        "The dispatcher cannot reach Redis (registry, 2025-era sessions, tasks); retry shortly. "
        "Calls to tools it already knows keep working meanwhile."
    )


def jsonrpc_error_body(request_id: Any, error: EdgefleetError) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "error": error.to_jsonrpc()}
    if request_id is not None:
        body["id"] = request_id
    return body


def stable_codes() -> frozenset[str]:
    """Every ``code`` an edgefleet error can carry (metric labels use only these)."""
    found: set[str] = set()
    pending: list[type[EdgefleetError]] = [EdgefleetError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(found)
