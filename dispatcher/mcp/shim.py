"""A 2026-era agent's ``input_required`` rounds, asked of a 2025-era client as the requests
that era knows (docs/design-mcp-surface.md, D7: the TypeScript SDK v2 server's "legacy shim",
done by the dispatcher).

A 2025-era client cannot receive an ``input_required`` result; it answers server->client
requests (sampling, elicitation, roots) sent on the call's response stream. So when the
agent answers a 2025 client's call with a round, the round never reaches the client: each
of its ``inputRequests`` goes out as a request on the call's SSE stream under an id of ours
(``mcp.relay``: the answer may reach any dispatcher of the fleet and is routed back here),
and with every answer in, the call is sent again - same params, plus ``inputResponses`` and
the agent's ``requestState`` byte-exact - to the replica that minted that state while it
is healthy. The final result goes to the client under its own request id, on the stream
that is still open.

Bounds: ``MAX_ROUNDS`` rounds (the official clients' own cap), the call's deadline across
all of them; a JSON-RPC error from the client ends the call with that error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.paths.answer import ForwardingAnswer, fail, send_result
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import UpstreamTimeout

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.relay import RequestRelay
    from edgefleet.dispatcher.paths.answer import Answer
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.paths.route import Route

log = logging.getLogger("edgefleet.rounds")
MAX_ROUNDS = 10
REQUEST_STATE_ONLY_PAUSE_S = 0.25
_INPUT_REQUIRED = b'"input_required"'
# What a round may ask of a client (the spec's InputRequests values).
ASKABLE = frozenset({"elicitation/create", "sampling/createMessage", "roots/list"})


class LegacyShim:
    """Paths for one 2025-era client's call: the dispatch point, with the agent's rounds
    asked of the client in between."""

    def __init__(self, paths: CallPaths, relay: RequestRelay, *, client_session: str, owner: str) -> None:
        self.paths = paths
        self.relay = relay
        self.client_session = client_session
        self.owner = owner

    async def call(self, call: ToolCall, answer: Answer) -> None:
        deadline = time.monotonic() + call.timeout_s
        for rounds in range(MAX_ROUNDS + 1):
            catcher = _RoundCatcher(answer)
            await self.paths.call(call, catcher)
            asked = catcher.asked
            if asked is None:
                return
            if rounds == MAX_ROUNDS:
                text = f"{call.entry.public_name} asked for input more than {MAX_ROUNDS} times; the call was ended."
                await send_result(
                    answer,
                    call.request_id,
                    {"content": [{"type": "text", "text": text}], "isError": True},
                    catcher.route,
                )
                return
            responses = await self._ask(call, asked.get("inputRequests"), answer, catcher.route, deadline)
            if responses is None:
                return
            params = {**call.params, "inputResponses": responses}
            params.pop("requestState", None)
            if "requestState" in asked:
                params["requestState"] = asked["requestState"]  # byte-exact, as the spec asks
            replica = catcher.route.replica if catcher.route is not None else None
            order = dataclasses.replace(call.order, affinity=replica) if replica else call.order
            call = dataclasses.replace(call, params=params, order=order, timeout_s=deadline - time.monotonic())
            if call.timeout_s <= 0:
                await fail(answer, call.request_id, UpstreamTimeout(data={"tool": call.entry.public_name}))
                return

    async def _ask(
        self, call: ToolCall, requests: Any, answer: Answer, route: Route | None, deadline: float
    ) -> dict[str, Any] | None:
        """The round's requests sent to the client; its answers by key, or None when the
        call ended instead (the client answered with an error, or too late)."""
        if not isinstance(requests, dict) or not requests:
            # A round of requestState only: nothing to ask, the call is sent again after a
            # short pause (what the official clients do: 50-250 ms).
            await asyncio.sleep(REQUEST_STATE_ONLY_PAUSE_S)
            return {}
        waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        await answer.open_stream(route)
        try:
            for key, request in requests.items():
                if not isinstance(request, dict) or request.get("method") not in ASKABLE:
                    log.warning("%s asked for %r in a round: not a client request", call.entry.public_name, request)
                    continue
                message = {"jsonrpc": "2.0", "method": request["method"], "params": request.get("params") or {}}
                ours, answered = self.relay.expect(client_session=self.client_session, owner=self.owner)
                waiting[key] = (ours, answered)
                await answer.send_events(sse.frame(orjson.dumps({**message, "id": ours})))
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                    results = await asyncio.gather(*(answered for _, answered in waiting.values()))
            except TimeoutError:
                await fail(answer, call.request_id, UpstreamTimeout(data={"tool": call.entry.public_name}))
                return None
        finally:
            self.relay.release([ours for ours, _ in waiting.values()])
        responses: dict[str, Any] = {}
        for key, result in zip(waiting, results, strict=True):
            error = result.get("error")
            if error is not None:
                # The client refused: the call ends with its error, as a 2025 server's would.
                await answer.send_events(sse.frame(jsonrpc.relayed_error_body(call.request_id, error)))
                await answer.close_stream()
                return None
            responses[key] = result.get("result")
        return responses


class _RoundCatcher(ForwardingAnswer):
    """Passes one attempt's answer on, except an ``input_required`` result: kept for the
    shim (and the stream it came on left open)."""

    __slots__ = ("asked", "route")

    def __init__(self, inner: Answer) -> None:
        super().__init__(inner)
        self.asked: dict[str, Any] | None = None
        self.route: Route | None = None

    async def open_stream(self, route: Route | None) -> None:
        self.route = route
        await self.inner.open_stream(route)

    async def send_events(self, events: bytes) -> None:
        if _INPUT_REQUIRED in events:
            kept = []
            for name, data in sse.events(events):
                if name == "message" and self._caught(data):
                    continue
                kept.append(
                    sse.frame(data) if name == "message" else b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
                )
            events = b"".join(kept)
            if not events:
                return
        await self.inner.send_events(events)

    async def close_stream(self) -> None:
        if self.asked is None:
            await self.inner.close_stream()

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        if _INPUT_REQUIRED in body and self._caught(body):
            self.route = route
            return
        await self.inner.send_json(status, body, route)

    def _caught(self, payload: bytes) -> bool:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        result = message.get("result") if isinstance(message, dict) and jsonrpc.is_response(message) else None
        if isinstance(result, dict) and result.get("resultType") == "input_required":
            self.asked = result
            return True
        return False
