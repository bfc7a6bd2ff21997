"""The 2026-07-28 era on ``/mcp``: every POST stands alone. Version, client info and
capabilities are in ``params._meta`` and mirrored in ``MCP-Protocol-Version`` /
``Mcp-Method`` / ``Mcp-Name`` headers, which must agree with the body; closing the
response stream cancels the call."""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import TYPE_CHECKING, Any

from edgefleet.dispatcher.mcp.calls import CallRequest
from edgefleet.dispatcher.mcp.capabilities import (
    MISSING_TASKS_EXTENSION,
    declares_tasks,
)
from edgefleet.dispatcher.mcp.features import LISTS, AgentError, Features
from edgefleet.dispatcher.mcp.features import METHODS as FEATURE_METHODS
from edgefleet.dispatcher.mcp.request import McpRequest
from edgefleet.shared import jsonrpc
from edgefleet.shared.asgi import respond
from edgefleet.shared.constants import (
    HEADER_METHOD,
    HEADER_NAME,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN_PROTOCOL_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    TASKS_EXTENSION,
)
from edgefleet.shared.errors import (
    EdgefleetError,
    HeaderMismatch,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    MissingClientCapability,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.calls import ToolCalls
    from edgefleet.dispatcher.mcp.subscriptions import Subscriptions
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.tasks.methods import TaskMethods

TASK_METHODS = ("tasks/get", "tasks/update", "tasks/cancel")
METHODS = frozenset(
    {"tools/call", "tools/list", "server/discover", "subscriptions/listen", *TASK_METHODS, *FEATURE_METHODS}
)


class ModernEra:
    def __init__(
        self, calls: ToolCalls, features: Features, subscriptions: Subscriptions, tasks: TaskMethods | None
    ) -> None:
        self.calls = calls
        self.features = features
        self.subscriptions = subscriptions
        self.features_methods = FEATURE_METHODS
        self.tasks = tasks

    async def handle(self, request: McpRequest) -> None:
        message, headers, send, identity = request.message, request.headers, request.send, request.identity
        if message.kind == "response":
            raise InvalidRequest("Clients do not send JSON-RPC responses on protocol 2026-07-28.")
        if message.kind == "request" and message.method not in METHODS:
            # Before the envelope checks: a method this era does not have (initialize, ping...)
            # is 404 + -32601 whatever else the request carries (transport spec).
            raise MethodNotFound(f"Method not found: {message.method}", data={"id": message.id})
        self._check_envelope(message, headers)
        if message.kind == "notification":
            await respond(send, 202, content_type=None)
            return
        method = message.method
        if method == "tools/call":
            name = message.params.get("name")
            _check_name_header(headers, name, message.id, "body value")
            forwarded = {k: v for k, v in headers.items() if k.startswith("mcp-param-")}
            call = CallRequest(
                message,
                headers,
                request.peer,
                identity,
                modern=True,
                receive=request.receive,
                extra_headers=forwarded or None,
                view=request.view,
                disconnects=request.disconnects,
            )
            await self.calls.handle(call, send)
        elif method == "tools/list":
            if request.view is None:
                tools: dict[str, Any] = {"tools": self.calls.tools_for(identity)}
            else:
                try:
                    tools = await self.features.mount_tools(request, modern=True)
                except AgentError as exc:
                    await respond(send, 200, jsonrpc.relayed_error_body(message.id, exc.error))
                    return
            result = {"resultType": "complete", **tools, "ttlMs": 0, "cacheScope": "private"}
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        elif method == "subscriptions/listen":
            # A long-lived stream: the acknowledgment, then notifications until either side ends it.
            await self.subscriptions.listen(request)
        elif method in TASK_METHODS:
            try:
                result = await self._task_method(message, headers, identity)
            except InvalidParams as exc:  # unknown task, finished task: a JSON-RPC answer, not an HTTP failure
                await respond(send, 200, jsonrpc.error_body(message.id, exc))
                return
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        elif method in self.features_methods:
            try:
                found = await self.features.answer(request, modern=True)
            except InvalidParams as exc:  # unknown resource or prompt: a JSON-RPC answer, not an HTTP failure
                await respond(send, 200, jsonrpc.error_body(message.id, exc))
                return
            except AgentError as exc:  # the agent's own error, as it gave it
                await respond(send, 200, jsonrpc.relayed_error_body(message.id, exc.error))
                return
            result = {"resultType": "complete", **found}
            if method in LISTS:
                # Lists are the fleet's (or the agent's) as this identity may see them.
                result.update(ttlMs=0, cacheScope="private")
            elif method == "resources/read" and result["resultType"] == "complete":
                # The 2026 read result carries cache hints (2025 agents give none): the agent's, else none.
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        elif method == "server/discover":
            tasks: dict[str, Any] = {"extensions": {TASKS_EXTENSION: {}}} if self.tasks is not None else {}
            capabilities, info, instructions = self.features.describe(request.view, tasks, modern=True)
            result = {
                "resultType": "complete",
                "supportedVersions": list(SUPPORTED_PROTOCOL_VERSIONS),
                "capabilities": capabilities,
                "ttlMs": 0,
                "cacheScope": "public",
                "_meta": {META_SERVER_INFO: info},
            }
            if instructions:
                result["instructions"] = instructions
            await respond(send, 200, jsonrpc.result_body(message.id, result))
        else:
            raise MethodNotFound(f"Method not found: {method}", data={"id": message.id})

    @staticmethod
    def _check_envelope(message: jsonrpc.Message, headers: dict[str, str]) -> None:
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

    async def _task_method(
        self, message: jsonrpc.Message, headers: dict[str, str], identity: Identity
    ) -> dict[str, Any]:
        if self.tasks is None:
            raise MethodNotFound(
                f"Method not found: {message.method} (tasks need the task store)", data={"id": message.id}
            )
        if not declares_tasks(message.params.get("_meta")):
            raise MissingClientCapability(
                f"{message.method} needs the {TASKS_EXTENSION} extension in the request's client capabilities.",
                data={"id": message.id, **MISSING_TASKS_EXTENSION},
            )
        if headers.get(HEADER_NAME) is not None:
            _check_name_header(headers, message.params.get("taskId"), message.id, "body taskId")
        try:
            if message.method == "tasks/get":
                return await self.tasks.modern_get(message.params, identity)
            if message.method == "tasks/cancel":
                return await self.tasks.modern_cancel(message.params, identity)
            return await self.tasks.modern_update(message.params, identity)
        except EdgefleetError as exc:
            exc.data.setdefault("id", message.id)
            raise


def _check_name_header(headers: dict[str, str], expected: Any, request_id: Any, what: str) -> None:
    header_name = decode_header(headers.get(HEADER_NAME))
    if header_name != expected:
        raise HeaderMismatch(
            f"Header mismatch: Mcp-Name header {header_name!r} does not match {what} {expected!r}",
            data={"id": request_id},
        )


def decode_header(value: str | None) -> str | None:
    """Undo the spec's ``=?base64?...?=`` sentinel (strictly: bad base64 never matches)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    return None
