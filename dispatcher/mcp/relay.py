"""Server->client requests of 2025-era calls (sampling, elicitation, roots), relayed to the
client that made the call, and its answers taken back to the server that asked.

An upstream session is shared by every client of one capability set, and its request ids
are its own: relayed as they are, two clients' answers could cross, and an answer landing
on another dispatcher replica would be lost (it used to be: acknowledged with 202 and
dropped, and the call hung). So each relayed request gets an id of ours,
``ef.<instance>.<nonce>.<n>``, that names the dispatcher instance holding the upstream
stream (docs/design-mcp-surface.md, D8). The client's answer is checked against the
session and identity the request was sent to, then posted on the upstream session with
the upstream's own id: here, or through the owning instance's Redis stream when the
answer reached another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.mcp.inbox import read_inbox
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.shared.constants import RedisKeys

log = logging.getLogger("edgefleet.relay")

# A relayed request not answered within this long is forgotten (the call's own deadline
# usually ends it first; a person answering an elicitation takes minutes at most).
PENDING_TTL_S = 600.0
MAX_PENDING = 10_000
STREAM_MAXLEN = 10_000
ANSWER_TIMEOUT_S = 10.0


# What a client must have declared before it is asked each kind of request.
NEEDS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


def askable(method: Any, capabilities: dict[str, Any] | None) -> bool:
    """May a client with these capabilities be asked ``method``?"""
    needed = NEEDS.get(method) if isinstance(method, str) else None
    return needed is not None and capabilities is not None and capabilities.get(needed) is not None


@dataclass(slots=True)
class Pending:
    replica: str  # the replica id that asked
    session: str  # our upstream session with it
    upstream_id: Any  # the id it gave its request
    client_session: str  # the client's session the request was sent to
    owner: str  # the identity of that session
    expires: float
    # Set when the dispatcher itself waits for the answer (a 2026-era agent's input_required
    # round asked of a 2025-era client, mcp.shim) instead of a 2025-era upstream session.
    waiter: asyncio.Future[dict[str, Any]] | None = None


class RequestRelay:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, instance: str, fleet: Fleet) -> None:
        self.redis = redis
        self.keys = keys
        self.instance = instance
        self.fleet = fleet
        self.pending: dict[str, Pending] = {}
        self._nonce = secrets.token_hex(4)
        self._next = itertools.count(1)
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="relay-answers")

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    # -- the request, on its way to the client ------------------------------------------------
    def adopt(
        self, message: dict[str, Any], *, replica: str, session: str, client_session: str, owner: str
    ) -> dict[str, Any]:
        """The upstream's request under an id of ours, remembered until answered."""
        now = time.monotonic()
        if len(self.pending) >= MAX_PENDING:
            self._expire(now)
        ours = f"ef.{self.instance}.{self._nonce}.{next(self._next)}"
        self.pending[ours] = Pending(replica, session, message.get("id"), client_session, owner, now + PENDING_TTL_S)
        return {**message, "id": ours}

    def expect(self, *, client_session: str, owner: str) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A request of the dispatcher's own to a client (under an id of ours), and the
        future its answer lands in, whichever replica the client answers on."""
        now = time.monotonic()
        if len(self.pending) >= MAX_PENDING:
            self._expire(now)
        ours = f"ef.{self.instance}.{self._nonce}.{next(self._next)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ours] = Pending("", "", None, client_session, owner, now + PENDING_TTL_S, waiter)
        return ours, waiter

    async def reply_upstream(
        self, request: dict[str, Any], *, replica: str, session: str, reason: str | None = None, code: int = -32601
    ) -> None:
        """Answer an agent's request ourselves: ``ping`` with an empty result, anything else
        with ``reason`` (-32601: the client cannot be asked it on this call)."""
        found = self.fleet.replicas.get(replica)
        if found is None:
            return
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
        if request.get("method") == "ping":
            message["result"] = {}
        else:
            message["error"] = {"code": code, "message": reason or "The client cannot be asked this."}
            log.info("%s asked %s of a client that cannot be asked it: %s", replica, request.get("method"), reason)
        try:
            await found.client.send_response(session, message, timeout=ANSWER_TIMEOUT_S)
        except EdgefleetError as exc:
            log.warning("answer to %s's %s not delivered: %s", replica, request.get("method"), exc.message)

    def owns(self, request_id: Any) -> bool:
        """Is this one of the requests we sent (its id already one of ours)?"""
        return isinstance(request_id, str) and request_id in self.pending

    def release(self, ids: list[str]) -> None:
        """The call ended: its unanswered requests can no longer be answered."""
        for ours in ids:
            self.pending.pop(ours, None)

    # -- the answer, on its way back ------------------------------------------------------
    async def answer(self, message: dict[str, Any], *, client_session: str, owner: str) -> bool:
        """Take a client's JSON-RPC response back to the server that asked; False when the
        response answers nothing we relayed (it is then dropped, as before)."""
        ours = message.get("id")
        if not isinstance(ours, str) or not ours.startswith("ef."):
            return False
        parts = ours.split(".")
        if len(parts) != 4:
            return False
        instance = parts[1]
        if instance == self.instance:
            await self.deliver(ours, message, client_session, owner)
            return True
        entry = {"message": orjson.dumps(message), "client_session": client_session, "owner": owner}
        try:
            await self.redis.xadd(self.keys.relay(instance), cast(Any, entry), maxlen=STREAM_MAXLEN, approximate=True)
            await self.redis.expire(self.keys.relay(instance), int(PENDING_TTL_S))
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("answer to %s not handed to %s: %s", ours, instance, exc)
        return True

    async def deliver(self, ours: str, message: dict[str, Any], client_session: str, owner: str) -> None:
        pending = self.pending.get(ours)
        if pending is None or pending.client_session != client_session or pending.owner != owner:
            log.info("answer to %s dropped: no such request outstanding for that session", ours)
            return
        del self.pending[ours]
        if pending.waiter is not None:
            if not pending.waiter.done():
                pending.waiter.set_result(message)
            return
        replica = self.fleet.replicas.get(pending.replica)
        if replica is None:
            log.warning("answer to %s dropped: replica %s left the fleet", ours, pending.replica)
            return
        upstream = {k: v for k, v in message.items() if k in ("jsonrpc", "result", "error")}
        upstream["id"] = pending.upstream_id
        try:
            await replica.client.send_response(pending.session, upstream, timeout=ANSWER_TIMEOUT_S)
        except EdgefleetError as exc:
            log.warning("answer to %s not delivered to %s: %s", ours, replica.id, exc.message)

    async def _listen(self) -> None:
        async for fields in read_inbox(self.redis, self.keys.relay(self.instance)):
            with contextlib.suppress(KeyError, ValueError, orjson.JSONDecodeError):
                message = orjson.loads(fields[b"message"])
                await self.deliver(
                    str(message.get("id")),
                    message,
                    fields[b"client_session"].decode(),
                    fields[b"owner"].decode(),
                )

    def _expire(self, now: float) -> None:
        for ours in [k for k, p in self.pending.items() if p.expires < now]:
            del self.pending[ours]
        while len(self.pending) >= MAX_PENDING:  # still full: the oldest go
            self.pending.pop(next(iter(self.pending)))
