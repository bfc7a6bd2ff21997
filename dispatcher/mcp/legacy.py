"""The 2025-11-25 era (and earlier) on ``/mcp``: ``initialize`` opens a session
(``Mcp-Session-Id``, stored in Redis so any dispatcher replica can serve it);
``notifications/cancelled`` cancels a call; DELETE ends the session."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from edgefleet.dispatcher.mcp import bridge
from edgefleet.dispatcher.mcp.bridge import EraAnswer
from edgefleet.dispatcher.mcp.calls import CallRequest
from edgefleet.dispatcher.mcp.cancellation import disconnected
from edgefleet.dispatcher.mcp.capabilities import TASK_CAPABILITIES, TASKS_LEGACY_VERSION
from edgefleet.dispatcher.mcp.features import METHODS as FEATURE_METHODS
from edgefleet.dispatcher.mcp.features import AgentError, Features
from edgefleet.dispatcher.mcp.request import McpRequest
from edgefleet.dispatcher.paths.answer import HttpAnswer
from edgefleet.shared import jsonrpc
from edgefleet.shared.asgi import Receive, TrackingSend, respond
from edgefleet.shared.constants import HEADER_SESSION_ID, LATEST_LEGACY_VERSION, LEGACY_PROTOCOL_VERSIONS
from edgefleet.shared.errors import (
    EdgefleetError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    SessionNotFound,
    SessionRequired,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.calls import ToolCalls
    from edgefleet.dispatcher.mcp.sessions import Session, SessionStore
    from edgefleet.dispatcher.mcp.subscriptions import Subscriptions
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.tasks.methods import TaskMethods

# JSON-RPC-level errors in this era ride an HTTP 200 (the HTTP exchange worked).
RPC_LEVEL = (MethodNotFound, InvalidParams)


class LegacyEra:
    def __init__(
        self,
        calls: ToolCalls,
        features: Features,
        sessions: SessionStore,
        subscriptions: Subscriptions,
        tasks: TaskMethods | None,
    ) -> None:
        self.calls = calls
        self.features = features
        self.sessions = sessions
        self.subscriptions = subscriptions
        self.tasks = tasks

    async def initialize(self, request: McpRequest) -> None:
        message, send, identity = request.message, request.send, request.identity
        if message.kind != "request":
            raise InvalidRequest("initialize must be a request (with an id).")
        params = message.params
        requested = params.get("protocolVersion")
        negotiated = requested if requested in LEGACY_PROTOCOL_VERSIONS else LATEST_LEGACY_VERSION
        info, declared = params.get("clientInfo"), params.get("capabilities")
        client_info: dict[str, Any] = info if isinstance(info, dict) else {}
        capabilities: dict[str, Any] = declared if isinstance(declared, dict) else {}
        session = await self.sessions.create(
            negotiated, client_info, capabilities, owner=identity.name, view=request.view
        )
        tasks = TASK_CAPABILITIES if negotiated == TASKS_LEGACY_VERSION and self.tasks is not None else {}
        capabilities, info, instructions = self.features.describe(request.view, tasks, modern=False)
        result: dict[str, Any] = {"protocolVersion": negotiated, "capabilities": capabilities, "serverInfo": info}
        if instructions:
            result["instructions"] = instructions
        await respond(
            send,
            200,
            jsonrpc.result_body(message.id, result),
            headers=[(HEADER_SESSION_ID.encode(), session.id.encode())],
        )

    async def delete(self, headers: dict[str, str], send: TrackingSend, identity: Identity, view: str | None) -> None:
        session_id = headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise SessionRequired("DELETE ends a 2025-era session: send its Mcp-Session-Id.")
        session = await self.sessions.get(session_id)
        if session is None or session.owner != identity.name or session.view != view:
            raise SessionNotFound()
        if not await self.sessions.delete(session_id):
            raise SessionNotFound()
        await self.subscriptions.session_closed(session_id)
        await respond(send, 200, content_type=None)

    async def stream(
        self, headers: dict[str, str], send: TrackingSend, receive: Receive, identity: Identity, view: str | None
    ) -> None:
        """GET: the session's stream of notifications (list changes, resource updates)."""
        await self.subscriptions.get_stream(headers, send, receive, identity, view)

    async def handle(self, request: McpRequest) -> None:
        message, headers, send, identity = request.message, request.headers, request.send, request.identity
        session_id = headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise SessionRequired(data={"id": message.id})
        session = await self.sessions.get(session_id)
        # A session belongs to the identity that opened it, on the URL it was opened on (its
        # names are that mount's); to anyone else, or elsewhere, it does not exist.
        if session is None or session.owner != identity.name or session.view != request.view:
            raise SessionNotFound(data={"id": message.id})
        if message.kind == "response":
            # The client answering a request an upstream sent on one of its calls' streams.
            if self.calls.relay is not None:
                await self.calls.relay.answer(message.raw, client_session=session.id, owner=identity.name)
            await respond(send, 202, content_type=None)
            return
        if message.kind != "request":
            request_id = message.params.get("requestId")
            if message.method == "notifications/cancelled" and isinstance(request_id, (str, int)):
                self.calls.cancellation.cancel_legacy(session.id, request_id)
            await respond(send, 202, content_type=None)
            return
        try:
            await self._request(request, session)
        except RPC_LEVEL as exc:
            await respond(send, 200, jsonrpc.error_body(message.id, exc))

    async def _request(self, request: McpRequest, session: Session) -> None:
        message, headers, receive, send, identity = (
            request.message,
            request.headers,
            request.receive,
            request.send,
            request.identity,
        )
        method = message.method
        if method in FEATURE_METHODS:
            try:
                result = await self.features.answer(request, modern=False, session=session)
            except AgentError as exc:  # the agent's own error, as it gave it
                await respond(send, 200, jsonrpc.relayed_error_body(message.id, exc.error))
                return
            await respond(send, 200, jsonrpc.result_body(message.id, bridge.for_legacy_result(result)))
        elif method in ("resources/subscribe", "resources/unsubscribe"):
            try:
                if method == "resources/subscribe":
                    answered = await self.subscriptions.subscribe(request, session)
                else:
                    answered = await self.subscriptions.unsubscribe(request, session)
            except AgentError as exc:  # the agent refused the subscription: its answer, as it gave it
                await respond(send, 200, jsonrpc.relayed_error_body(message.id, exc.error))
                return
            await respond(send, 200, jsonrpc.result_body(message.id, answered))
        elif method == "tools/call":
            call = CallRequest(
                message,
                headers,
                request.peer,
                identity,
                modern=False,
                receive=receive,
                session=session,
                view=request.view,
                disconnects=request.disconnects,
            )
            await self.calls.handle(call, send)
        elif (
            method is not None
            and method.startswith("tasks/")
            and self.tasks is not None
            and session.protocol_version == TASKS_LEGACY_VERSION
        ):
            # tasks/result may block for long: stop waiting when the client goes away.
            work = asyncio.ensure_future(self._task_method(message, identity, headers, send))
            gone = asyncio.create_task(disconnected(receive))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():
                    work.cancel()
            if not work.cancelled():
                work.result()
        elif method == "tools/list":
            if request.view is None:
                listed: dict[str, Any] = {"tools": self.calls.tools_for(identity)}
            else:
                try:
                    listed = await self.features.mount_tools(request, modern=False, session=session)
                except AgentError as exc:
                    await respond(send, 200, jsonrpc.relayed_error_body(message.id, exc.error))
                    return
            await respond(send, 200, jsonrpc.result_body(message.id, bridge.for_legacy_result(listed)))
        elif method == "ping":
            await respond(send, 200, jsonrpc.result_body(message.id, {}))
        elif method == "logging/setLevel":
            level = message.params.get("level")
            if level not in bridge.LOG_LEVELS:
                raise InvalidParams(f"Unknown log level {level!r}.")
            session.log_level = level
            await self.sessions.save(session)
            await respond(send, 200, jsonrpc.result_body(message.id, {}))
        else:
            raise MethodNotFound(f"Method not found: {method}")

    async def _task_method(
        self, message: jsonrpc.Message, identity: Identity, headers: dict[str, str], send: TrackingSend
    ) -> None:
        assert self.tasks is not None
        method, params = message.method, message.params
        try:
            if method == "tasks/get":
                result = await self.tasks.legacy_get(params, identity)
            elif method == "tasks/list":
                result = await self.tasks.legacy_list(params, identity)
            elif method == "tasks/cancel":
                result = await self.tasks.legacy_cancel(params, identity)
            elif method == "tasks/result":
                stream = "text/event-stream" in headers.get("accept", "")
                answer = EraAnswer(HttpAnswer(send), modern=False)
                await self.tasks.legacy_result(message.id, params, identity, answer, stream=stream)
                return
            else:
                raise MethodNotFound(f"Method not found: {method}")
        except EdgefleetError as exc:
            exc.data.setdefault("id", message.id)  # e.g. a rate-limit refusal: the client matches it to its request
            raise
        await respond(send, 200, jsonrpc.result_body(message.id, result))
