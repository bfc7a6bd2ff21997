"""One attempt's answer on its way from a replica to the caller (the direct path's relay):
checked to be the call's JSON-RPC response, size counted, result checked, relayed as a JSON
body or event by event, and the outcome classified for the call's observation.

What an agent answers is not trusted: a body that is not the call's JSON-RPC response (another
id, no result nor error, not JSON) never reaches the client, which matches answers by id
(a wrong one left an official SDK client waiting forever); an agent's HTTP status that is
about the dispatcher's request (401, 403, 404 without method-not-found, 429...) is not
relayed as if it were about the client's.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher import http1
from edgefleet.dispatcher.paths.answer import Answer, fail, json_into_stream
from edgefleet.dispatcher.paths.checks import ResultChecks
from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import EdgefleetError, UpstreamError

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.replica import Replica
    from edgefleet.dispatcher.observability.observe import CallObservation
    from edgefleet.dispatcher.paths.call import ToolCall


class NotStarted(Exception):
    """The attempt provably never ran on the replica: the next candidate may take the call."""

    def __init__(self, error: EdgefleetError) -> None:
        self.error = error


class MaybeStarted(Exception):
    """The call may have run on the replica: retried elsewhere only for idempotent tools."""

    def __init__(self, error: EdgefleetError) -> None:
        self.error = error


class Relay:
    """One attempt's answer on its way to the caller: size counted, result checked,
    outcome classified for the call's observation."""

    __slots__ = ("answer", "answered", "call", "checks", "rename", "replica", "route", "schema")

    def __init__(
        self,
        call: ToolCall,
        replica: Replica,
        answer: Answer,
        route: Route,
        checks: ResultChecks,
        rename: IdRename | None,
    ) -> None:
        self.call = call
        self.replica = replica
        self.answer = answer
        self.route = route
        self.checks = checks
        self.rename = rename
        self.schema = checks.has_schema(call.entry)
        self.answered = False  # the call's response reached the caller (a break after it is no failure)

    async def refuse(self, error: EdgefleetError) -> None:
        if self.call.obs is not None:
            self.call.obs.failed(error)
        await fail(self.answer, self.call.request_id, error)

    async def json(self, resp: http1.Response) -> None:
        try:
            # Refused by its Content-Length unread, else counted as it arrives; the connection
            # is dropped past the limit (the transfer and the agent's work stop, nothing drains).
            data = await resp.read(self.checks.limit)
        except http1.BodyTooLarge:
            await self.refuse(self.checks.too_large(self.call.entry, replica=self.replica.id))
            return
        except http1.HTTP1Error as exc:
            raise MaybeStarted(
                UpstreamError(f"replica {self.replica.id} broke off its answer: {type(exc).__name__}")
            ) from None
        if self.rename is not None:
            data = self.rename.incoming(data)
        message, problem, whole = jsonrpc.checked_response(data, self.call.request_id)
        if not whole and message is not None:  # notifications before it on their own lines: the response alone
            data = orjson.dumps(message)
        if message is None:
            # Relayed as it came, a wrong id left an SDK client waiting forever and a body that
            # is not JSON-RPC broke it: the replica failed this call (retried if idempotent).
            failure = UpstreamError(f"replica {self.replica.id} answered HTTP {resp.status} with {problem}")
            raise (NotStarted if resp.status >= 400 else MaybeStarted)(failure)
        status = _client_status(resp.status, message, modern=self.call.modern)
        if status is None:  # the agent refused what it was sent (auth, method, size...): not the client's
            error = message.get("error") or {}
            raise NotStarted(
                UpstreamError(
                    f"replica {self.replica.id} answered HTTP {resp.status}: {str(error.get('message', ''))[:200]}"
                )
            )
        obs = self.call.obs
        if obs is not None:
            _classify_message(obs, message)
        if self.schema and status == 200:
            invalid = self.checks.invalid_response(self.call.entry, message, replica=self.replica.id)
            if invalid is not None:
                await self.refuse(invalid)
                return
        if self.answer.started:
            await json_into_stream(self.answer, self.call.request_id, data)
        else:
            await self.answer.send_json(status, data, self.route)

    async def stream(self, resp: http1.Response) -> None:
        """Relay the agent's SSE event by event (never half an event, so a retry after a
        break starts on a clean line); a stream that breaks or ends before the answer is a
        MaybeStarted (retried for idempotent tools, else outcome_unknown). A stream that
        grows past the size limit (progress included) is cut off."""
        splitter = sse.Splitter()
        received = 0
        try:
            while chunk := await resp.next_chunk():
                received += len(chunk)
                if received > self.checks.limit:
                    resp.close()  # the agent's handler stops when its connection goes
                    if self.answered:
                        break  # the caller has its answer; whatever follows it is dropped
                    await self.refuse(self.checks.too_large(self.call.entry, replica=self.replica.id))
                    return
                events = splitter.feed(chunk)
                if not events:
                    continue
                if self.rename is not None:
                    events = self.rename.incoming_events(events)
                if not self.answered:
                    self.answered, accepted = await self._accept(events)
                    if not accepted:
                        return
                await self._forward(events)
                if self.answered:  # the response ends the stream: whatever the agent sends after it is dropped
                    await self.answer.close_stream()
                    await _settle(resp, self.checks.limit - received)
                    return
        except http1.HTTP1Error as exc:
            if not self.answered:
                raise MaybeStarted(
                    UpstreamError(f"replica {self.replica.id} broke off its stream: {type(exc).__name__}")
                ) from None
        else:
            last = splitter.rest()  # a last event without its blank line
            if self.rename is not None and last:
                last = self.rename.incoming_events(last)
            if not self.answered and last:
                self.answered, accepted = await self._accept(last)
                if not accepted:
                    return
                if self.answered:
                    await self._forward(last)
            if not self.answered:
                raise MaybeStarted(UpstreamError(f"replica {self.replica.id} ended its stream without an answer"))
        await self.answer.close_stream()

    async def _accept(self, events: bytes) -> tuple[bool, bool]:
        """(answered, accepted): does ``events`` hold the call's response, and did it pass
        the checks (when it did not, the caller got the error instead)."""
        response = _response_in(events)
        if response is None:
            return False, True
        wrong = jsonrpc.response_problem(response, self.call.request_id)
        if wrong is not None:
            raise MaybeStarted(UpstreamError(f"replica {self.replica.id} answered on its stream with {wrong}"))
        if self.call.obs is not None:
            _classify_message(self.call.obs, response)
        problem = (
            self.checks.invalid_response(self.call.entry, response, replica=self.replica.id) if self.schema else None
        )
        if problem is not None:
            await self.refuse(problem)
            return True, False
        return True, True

    async def _forward(self, events: bytes) -> None:
        await self.answer.open_stream(self.route)
        await self.answer.send_events(events)


# Agent statuses that can be about the client's call (its arguments; a method the agent lacks).
CLIENT_STATUSES = frozenset({400, 404})
SETTLE_S = 0.05  # how long the end of a stream is awaited after its response, for the connection's reuse


async def _settle(resp: http1.Response, room: int) -> None:
    """After a stream's response: read (and drop) what the agent still sends for a moment,
    so a stream that ends as it should (its last chunk often a write of its own) leaves its
    connection whole for the next call; one that goes on, or past ``room`` bytes, is cut."""
    try:
        async with asyncio.timeout(SETTLE_S):
            while chunk := await resp.next_chunk():
                room -= len(chunk)
                if room < 0:
                    break
            else:
                return  # ended: the pool keeps the connection
    except (TimeoutError, http1.HTTP1Error):
        pass
    resp.close()


def _client_status(status: int, message: dict[str, Any], *, modern: bool) -> int | None:
    """The HTTP status a client gets for an agent's JSON-RPC response, or None when the
    agent's status is about the dispatcher's request, not the client's call: a relayed 401
    would send the client to re-authenticate with us, a 404 a 2025 client to drop its session."""
    if status < 300:
        return 200
    if "error" not in message:
        return None  # a result under an error status: which one to believe is unknowable
    if status == 400:  # the call's own arguments or headers, as the agent validated them
        return 400
    if status == 404 and message["error"].get("code") == -32601:  # method not found (2026 transport)
        return 404 if modern else 200
    return None


def _classify_message(obs: CallObservation, message: dict[str, Any]) -> None:
    if not jsonrpc.is_response(message):
        return  # notifications (progress, logs) say nothing about the outcome
    if "error" in message:
        obs.answered_with_error(message["error"])
    elif isinstance(message.get("result"), dict) and message["result"].get("isError") is True:
        obs.outcome = "tool_error"


def _response_in(events: bytes) -> dict[str, Any] | None:
    """The JSON-RPC response (the call's answer) among these complete SSE events, if any."""
    if b'"id"' not in events:
        return None
    return next((m for m in sse.messages(events) if jsonrpc.is_response(m)), None)


class IdRename:
    """A per-attempt unique JSON-RPC id toward a shared legacy upstream session."""

    _next = itertools.count(1)

    def __init__(self, client_id: Any) -> None:
        self.client_id = client_id
        self.upstream_id = f"edgefleet-{next(self._next)}"

    def outgoing(self, body: bytes) -> bytes:
        message = orjson.loads(body)
        message["id"] = self.upstream_id
        return orjson.dumps(message)

    def incoming(self, body: bytes) -> bytes:
        """A JSON body with our id put back to the client's."""
        return self._swap(body)

    def incoming_events(self, data: bytes) -> bytes:
        """Complete SSE events with our id put back to the client's (by the content type, not
        by sniffing: a JSON answer may hold the text "data:", an image's data: URL)."""
        lines = []
        for line in data.replace(b"\r\n", b"\n").split(b"\n"):
            lines.append(b"data: " + self._swap(line[5:].strip()) if line.startswith(b"data:") else line)
        return b"\n".join(lines)

    def _swap(self, payload: bytes) -> bytes:
        if self.upstream_id.encode() not in payload:
            return payload
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if isinstance(message, dict) and message.get("id") == self.upstream_id:
            message["id"] = self.client_id
            return orjson.dumps(message)
        return payload
