"""Notification streams to clients, both eras: the response of a 2026-07-28
``subscriptions/listen`` (every frame tagged with the listen request's id) or the GET
stream of a 2025-11-25 session (docs/design-mcp-surface.md, D11).

A stream is one ASGI response kept open: whoever has an event pushes it (never blocking:
a catalog rebuild or an agent's update must not wait for a slow client), and the
response's own coroutine writes what is queued, an SSE comment when nothing was sent for
``keepalive_s``, and the end. Bounded per stream: list changes of a kind and updates of a
URI waiting to be sent are coalesced (they are level triggers: the client re-reads), and a
client that stops reading past ``MAX_BACKLOG`` loses its stream (it re-listens and
re-reads; there is no replay to lose). No ``id:`` lines: there is no resumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.fleet.naming import public_uri
from edgefleet.dispatcher.mcp.cancellation import disconnected
from edgefleet.shared import sse
from edgefleet.shared.constants import META_SUBSCRIPTION_ID

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.sessions import Session
    from edgefleet.dispatcher.mcp.watches import WatchKey
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.shared.asgi import Receive, Send

log = logging.getLogger("edgefleet.mcp")

# Messages waiting for a client that does not read before its stream is ended.
MAX_BACKLOG = 256
LIST_KINDS = ("tools", "prompts", "resources")
KEEPALIVE = b":\n\n"
# How a stream ends: the client went away, the server ended it with the listen's completion
# response (2026 "graceful closure"; a GET stream just ends), or without it ("abrupt": the
# client re-listens).
CLOSED, GRACEFUL, ABRUPT = "closed", "graceful", "abrupt"
_serial = itertools.count(1)


class ClientStream:
    """One open notification stream of one client on this dispatcher."""

    __slots__ = (
        "_gone",
        "_queue",
        "_wake",
        "end",
        "identity",
        "keepalive_s",
        "kind",
        "lists",
        "nonce",
        "pending",
        "request_id",
        "sent",
        "session",
        "view",
        "watched",
    )

    def __init__(
        self,
        kind: str,
        identity: Identity,
        view: str | None,
        *,
        keepalive_s: float,
        request_id: Any = None,
        session: Session | None = None,
        lists: frozenset[str] = frozenset(),
    ) -> None:
        self.kind = kind  # "listen" (ours), "relay" (a mount's listen forwarded to its agent), "get" (2025)
        self.identity = identity
        self.view = view  # the agent of a per-agent mount; None on /mcp
        self.keepalive_s = keepalive_s
        self.request_id = request_id  # the listen request's id, as the client sent it
        self.session = session  # the 2025 session of a GET stream
        self.lists = lists  # the list changes it gets: tools | prompts | resources
        self.nonce = f"{secrets.token_hex(4)}.{next(_serial)}"
        # Upstream resource watches it holds -> the URI as the client named it.
        self.watched: dict[WatchKey, str] = {}
        self.pending: set[str] = set()  # coalescing keys of what is queued
        self.end: str | None = None
        self.sent = 0  # messages written
        self._queue: deque[tuple[str | None, bytes]] = deque()
        self._wake = asyncio.Event()
        self._gone = False

    def over(self) -> bool:
        """Ended, or ending (nothing more is sent)."""
        return self.end is not None

    # -- what others push (never blocks) --------------------------------------------------
    def list_changed(self, kind: str) -> None:
        if kind in self.lists:
            self._push(f"list:{kind}", {"method": f"notifications/{kind}/list_changed", "params": {}})

    def resource_updated(self, key: WatchKey, uri: str) -> None:
        """An agent's ``notifications/resources/updated`` for a watch this stream holds, with
        ``uri`` as the agent sent it (the watched URI or one under it)."""
        named = self.watched.get(key)
        if named is None:
            return  # released meanwhile
        agent, watched_uri = key[0], key[1]
        if uri != watched_uri:
            named = uri if self.view is not None else (public_uri(agent, uri) or uri)
        self._push(f"uri:{named}", {"method": "notifications/resources/updated", "params": {"uri": named}})

    def relayed(self, message: dict[str, Any]) -> None:
        """A notification of the agent's own listen stream, as it is (a mount's relay)."""
        self._put(None, self.frame(message))

    def finish(self, how: str) -> None:
        """End the stream: GRACEFUL (the listen's completion response) or ABRUPT."""
        if self.end is None:
            self.end = how
        self._wake.set()

    # -- framing ------------------------------------------------------------------------
    def frame(self, message: dict[str, Any]) -> bytes:
        """One SSE event; on a listen stream, tagged with the listen's id."""
        message = {"jsonrpc": "2.0", **message}
        if self.kind != "get":
            params = message.get("params")
            params = dict(params) if isinstance(params, dict) else {}
            meta = params.get("_meta")
            params["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SUBSCRIPTION_ID: self.request_id}
            message["params"] = params
        return sse.frame(orjson.dumps(message))

    def completion(self) -> bytes:
        """The listen request's response that ends the subscription gracefully (spec)."""
        result = {"resultType": "complete", "_meta": {META_SUBSCRIPTION_ID: self.request_id}}
        return sse.frame(orjson.dumps({"jsonrpc": "2.0", "id": self.request_id, "result": result}))

    def _push(self, key: str, message: dict[str, Any]) -> None:
        if key in self.pending:
            return  # the same change is already waiting: one is enough
        self._put(key, self.frame(message))

    def _put(self, key: str | None, frame: bytes) -> None:
        if self.end is not None:
            return
        if len(self._queue) >= MAX_BACKLOG:
            log.info(
                "%s stream of %s ended: its client stopped reading (%d waiting)",
                self.kind,
                self.identity.name,
                MAX_BACKLOG,
            )
            self.finish(ABRUPT)
            return
        if key is not None:
            self.pending.add(key)
        self._queue.append((key, frame))
        self._wake.set()

    # -- the response -------------------------------------------------------------------
    async def run(
        self,
        send: Send,
        receive: Receive,
        opening: bytes,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Write the stream until it ends: ``opening`` first (a listen's acknowledgment),
        then what is pushed, keep-alive comments in between (``on_tick`` runs with each)."""
        await send({"type": "http.response.start", "status": 200, "headers": headers or sse.HEADERS})
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        watcher = asyncio.create_task(self._watch(receive))
        try:
            while True:
                self._wake.clear()
                if self._queue:
                    frames = []
                    while self._queue:
                        key, frame = self._queue.popleft()
                        if key is not None:
                            self.pending.discard(key)
                        frames.append(frame)
                    self.sent += len(frames)
                    await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                if self.end is not None:
                    break
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        await self._wake.wait()
                except TimeoutError:
                    if self._gone:
                        break
                    await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                    if on_tick is not None:
                        await on_tick()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self.end == CLOSED:
            return  # nobody is reading any more
        last = self.completion() if self.end == GRACEFUL and self.kind != "get" else b""
        await send({"type": "http.response.body", "body": last})

    async def _watch(self, receive: Receive) -> None:
        await disconnected(receive)
        self._gone = True
        self.finish(CLOSED)
