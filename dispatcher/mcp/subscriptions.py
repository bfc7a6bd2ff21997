"""Subscriptions and list-change notifications through the dispatcher, both eras
(docs/design-mcp-surface.md, D11).

- 2026-07-28 ``subscriptions/listen``: on ``/mcp`` answered by the dispatcher (the
  acknowledgment with the honoured subset first, every frame tagged with the listen's id);
  on a per-agent mount forwarded to one replica of the agent and relayed event by event
  (``mcp.relay_listen``), or answered here too when the agent speaks only 2025-11-25.
- 2025-11-25: ``resources/subscribe|unsubscribe`` record the session's URIs in Redis (with
  the session's TTL), and the session's GET stream carries the notifications.
- List changes are the dispatcher's own: after every catalog rebuild the lists are
  compared by content (never by the version counter), per ``/mcp`` and per agent mount.
- Resource updates come from the agents through ``mcp.watches`` (held by this dispatcher
  for its local streams, shared, refcounted, torn down with the last holder).

Where state lives: listen streams are local (a listen is one HTTP response). A 2025
session's subscriptions are in Redis; the dispatcher holding the session's GET stream
holds the upstream subscriptions for them, so events never cross dispatchers: what does
is the pub/sub channel ``{prefix}:mcp-events`` telling the holder that the subscriptions
changed (a subscribe that reached another dispatcher), that a newer GET stream of the
session opened elsewhere (one GET stream per session: the newest wins) or that the session
was deleted. Lossy by design, like the spec's subscriptions: a missed message is caught
up when the pub/sub connection comes back, and a GET stream that reconnects anywhere
re-reads the session's subscriptions from Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.mcp.offers import forwards_listen, watch_mode
from edgefleet.dispatcher.mcp.relay_listen import ListenRelay
from edgefleet.dispatcher.mcp.streams import ABRUPT, GRACEFUL, LIST_KINDS, ClientStream
from edgefleet.dispatcher.mcp.watches import Watches
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.constants import (
    HEADER_SESSION_ID,
    META_CLIENT_CAPABILITIES,
    RedisKeys,
)
from edgefleet.shared.errors import (
    AgentUnavailable,
    DispatcherStopping,
    EdgefleetError,
    InvalidParams,
    MethodNotFound,
    NotAcceptable,
    SessionNotFound,
    SessionRequired,
    ToolForbidden,
    TooManyStreams,
    TooManySubscriptions,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import AgentView, Catalog
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.fleet.streams import StreamClient
    from edgefleet.dispatcher.mcp.features import Features
    from edgefleet.dispatcher.mcp.request import McpRequest
    from edgefleet.dispatcher.mcp.sessions import Session, SessionStore
    from edgefleet.dispatcher.mcp.watches import WatchKey
    from edgefleet.dispatcher.routing.router import Router
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.shared.asgi import Receive, Send
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.subscriptions")

ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
# How long a listen (or a 2025 subscribe) waits for the agents to accept its resource
# subscriptions before answering without the ones still missing.
ACK_TIMEOUT_S = 5.0
_FLAGS = (("tools", "toolsListChanged"), ("prompts", "promptsListChanged"), ("resources", "resourcesListChanged"))


@dataclass(slots=True)
class Wanted:
    """A listen request's ``notifications`` filter."""

    lists: frozenset[str]
    uris: list[str]


def wanted(params: dict[str, Any], request_id: Any, limit: int) -> Wanted:
    """The filter of a ``subscriptions/listen`` (bad ones: -32602 with the request's id)."""
    found = params.get("notifications")
    if not isinstance(found, dict):
        raise InvalidParams(
            'subscriptions/listen needs params.notifications: an object such as {"toolsListChanged": true}.',
            data={"id": request_id},
        )
    uris = found.get("resourceSubscriptions", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise InvalidParams(
            "notifications.resourceSubscriptions must be a list of resource URIs (strings).", data={"id": request_id}
        )
    uris = list(dict.fromkeys(uris))
    if len(uris) > limit:
        raise TooManySubscriptions(
            f"subscriptions/listen asks for {len(uris)} resources; at most {limit} per stream.",
            data={"id": request_id, "limit": limit},
        )
    lists = frozenset(kind for kind, flag in _FLAGS if found.get(flag) is True)
    return Wanted(lists, uris)


class Subscriptions:
    def __init__(
        self,
        settings: DispatcherSettings,
        fleet: Fleet,
        router: Router,
        features: Features,
        sessions: SessionStore,
        redis: aioredis.Redis,
        keys: RedisKeys,
        client: StreamClient,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.features = features
        self.sessions = sessions
        self.redis = redis
        self.keys = keys
        self.watches = Watches(settings, fleet, router, client, timeout_s=ACK_TIMEOUT_S)
        self.relay = ListenRelay(settings, fleet, router, client, timeout_s=ACK_TIMEOUT_S)
        self.streams: set[ClientStream] = set()
        self.held: Counter[str] = Counter()  # open streams per identity
        self.get_streams: dict[str, ClientStream] = {}  # 2025 session id -> its GET stream here
        self.refused: Counter[str] = Counter()  # streams | subscriptions refused by a bound
        self.digests: dict[str | None, dict[str, bytes]] = {}
        self.stopping = False
        self._locks: dict[ClientStream, asyncio.Lock] = {}  # one reconciliation at a time per GET stream
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._connected_once = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.watches.start()
        self._listener = asyncio.create_task(self._control_loop(), name="mcp-events")
        self.catalog_rebuilt(self.fleet.catalog)

    def stop(self) -> None:
        """The dispatcher is shutting down: every listen stream gets its completion response
        (the spec's graceful closure), every GET stream ends, no new stream is taken."""
        if not self.stopping:
            log.info("ending %d notification streams: the dispatcher is shutting down", len(self.streams))
        self.stopping = True
        for stream in list(self.streams):
            stream.finish(GRACEFUL)

    async def aclose(self) -> None:
        self.stop()
        pending = [t for t in (self._listener, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.watches.aclose()

    def refusals(self) -> dict[str, int]:
        """Requests refused by a bound, by scope (for /metrics)."""
        return {**self.refused, "subscriptions": self.refused["subscriptions"] + self.watches.over_limit}

    def counts(self) -> dict[str, int]:
        """Open streams by kind, and the upstream side (for /metrics)."""
        found = Counter(stream.kind for stream in self.streams)
        watched, upstream = self.watches.counts()
        return {
            "listen": found["listen"],
            "relay": found["relay"],
            "get": found["get"],
            "watched_uris": watched,
            "upstream": upstream + self.relay.upstream,
        }

    # -- bounds ---------------------------------------------------------------------------
    def _admit(self, identity: Identity, *, request_id: Any = None, replacing: bool = False) -> None:
        data: dict[str, Any] = {} if request_id is None else {"id": request_id}
        if self.stopping:
            raise DispatcherStopping(data=data)
        if replacing:
            return  # a reconnecting GET stream takes its predecessor's place
        if len(self.streams) >= self.settings.max_streams:
            self.refused["streams"] += 1
            raise TooManyStreams(
                f"This dispatcher serves {self.settings.max_streams} notification streams already.",
                data={**data, "scope": "dispatcher", "limit": self.settings.max_streams},
            )
        if self.held[identity.name] >= self.settings.max_streams_per_identity:
            self.refused["streams"] += 1
            raise TooManyStreams(
                f"{identity.name!r} holds {self.settings.max_streams_per_identity} notification streams on this "
                "dispatcher already: close one first.",
                data={**data, "scope": "identity", "limit": self.settings.max_streams_per_identity},
            )

    def _opened(self, stream: ClientStream) -> None:
        self.streams.add(stream)
        self.held[stream.identity.name] += 1

    def _closed(self, stream: ClientStream) -> None:
        self.watches.release_all(stream)
        if stream in self.streams:
            self.streams.discard(stream)
            self.held[stream.identity.name] -= 1
            if self.held[stream.identity.name] <= 0:
                del self.held[stream.identity.name]

    # -- 2026-07-28: subscriptions/listen ---------------------------------------------------
    async def listen(self, request: McpRequest) -> None:
        message, identity = request.message, request.identity
        filter_ = wanted(message.params, message.id, self.settings.max_resource_subscriptions)
        if request.view is not None:
            agent = self._mount(request.view, identity, message.id)
            if forwards_listen(agent):
                self._admit(identity, request_id=message.id)
                stream = self._stream("relay", request, lists=frozenset())
                self._opened(stream)
                try:
                    await self.relay.forward(request, agent, stream)
                finally:
                    self._closed(stream)
                return
        self._admit(identity, request_id=message.id)
        stream = self._stream("listen", request, lists=filter_.lists)
        self._opened(stream)
        try:
            meta = message.params.get("_meta")
            capabilities = meta.get(META_CLIENT_CAPABILITIES) if isinstance(meta, dict) else None
            honored = await self._hold(stream, filter_.uris, modern=True, capabilities=capabilities)
            notifications: dict[str, Any] = {flag: True for kind, flag in _FLAGS if kind in filter_.lists}
            if honored:
                notifications["resourceSubscriptions"] = honored
            ack = stream.frame({"method": ACKNOWLEDGED, "params": {"notifications": notifications}})
            await stream.run(request.send, request.receive, ack)
        finally:
            self._closed(stream)

    def _stream(self, kind: str, request: McpRequest, *, lists: frozenset[str]) -> ClientStream:
        return ClientStream(
            kind,
            request.identity,
            request.view,
            keepalive_s=self.settings.stream_keepalive_s,
            request_id=request.message.id,
            lists=lists,
        )

    async def _hold(self, stream: ClientStream, uris: list[str], *, modern: bool, capabilities: Any) -> list[str]:
        """Acquire the watches of ``uris`` for ``stream``: the URIs the agents accepted."""
        keyed: list[tuple[str, WatchKey]] = []
        for uri in uris:
            try:
                key = self._resolve(uri, stream.view, stream.identity, modern=modern, capabilities=capabilities)
                keyed.append((uri, key))
            except EdgefleetError as exc:
                log.debug("listen of %s: %s not honoured: %s", stream.identity.name, uri, exc.message)
        outcomes = await asyncio.gather(
            *(self.watches.acquire(key, stream, uri) for uri, key in keyed), return_exceptions=True
        )
        honored = []
        for (uri, _key), outcome in zip(keyed, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.info("listen of %s: %s not honoured: %s", stream.identity.name, uri, _reason(outcome))
            else:
                honored.append(uri)
        return honored

    def _resolve(self, uri: str, view: str | None, identity: Identity, *, modern: bool, capabilities: Any) -> WatchKey:
        """The watch behind ``uri`` for a client on ``view`` (errors say why there is none)."""
        agent: AgentView
        if view is None:
            agent, own = self.features.owner_of_uri(uri)
        else:
            found = self.fleet.catalog.view(view)
            if found is None:
                raise InvalidParams(f"Agent {view!r} is not in the fleet any more.", data={"uri": uri})
            agent, own = found, uri
        if not identity.may_use(agent.agent):
            raise ToolForbidden(f"{identity.name!r} may not use agent {agent.agent!r}.", data={"agent": agent.agent})
        mode = watch_mode(agent, modern_client=modern, capabilities=capabilities)
        if mode is None:
            raise InvalidParams(
                f"Agent {agent.agent!r} offers no resource subscriptions.", data={"uri": uri, "agent": agent.agent}
            )
        return agent.agent, own, mode[0], mode[1]

    def _mount(self, view: str, identity: Identity, request_id: Any) -> AgentView:
        agent = self.fleet.catalog.view(view)
        if agent is None:
            raise MethodNotFound(f"Unknown agent {view!r}.", data={"id": request_id})
        if not identity.may_use(agent.agent):
            raise ToolForbidden(f"{identity.name!r} may not use agent {agent.agent!r}.", data={"id": request_id})
        return agent

    # -- 2025-11-25: the GET stream of a session ------------------------------------------
    async def get_stream(
        self, headers: dict[str, str], send: Send, receive: Receive, identity: Identity, view: str | None
    ) -> None:
        session_id = headers.get(HEADER_SESSION_ID)
        if not session_id:
            raise SessionRequired(
                "GET opens the notification stream of a 2025-11-25 session: send its Mcp-Session-Id "
                "(2026-07-28 clients use subscriptions/listen)."
            )
        accept = headers.get("accept", "*/*")
        if not any(t in accept for t in ("text/event-stream", "*/*", "text/*")):
            raise NotAcceptable("GET opens an SSE stream: the Accept header must list text/event-stream.")
        session = await self.sessions.get(session_id)
        if session is None or session.owner != identity.name or session.view != view:
            raise SessionNotFound()
        old = self.get_streams.get(session_id)
        self._admit(identity, replacing=old is not None)
        if old is not None:
            old.finish(ABRUPT)  # one GET stream per session: the newest wins
        stream = ClientStream(
            "get",
            identity,
            view,
            keepalive_s=self.settings.stream_keepalive_s,
            session=session,
            lists=frozenset(LIST_KINDS),
        )
        self._opened(stream)
        self.get_streams[session_id] = stream
        self._spawn(self._publish("take", session_id, stream.nonce))
        self._spawn(self._reconcile(stream))
        try:
            await stream.run(send, receive, b":\n\n", on_tick=lambda: self._tick(stream))
        finally:
            if self.get_streams.get(session_id) is stream:
                del self.get_streams[session_id]
            self._locks.pop(stream, None)
            self._closed(stream)

    async def _tick(self, stream: ClientStream) -> None:
        """Every keep-alive of a GET stream: its session stays alive while it is open (and the
        stream ends when the session is gone); missed pub/sub messages are caught up."""
        session = stream.session
        assert session is not None
        try:
            if await self.sessions.get(session.id) is None:
                stream.finish(ABRUPT)
                return
            await self.redis.pexpire(self.keys.subscriptions(session.id), self.sessions.ttl_ms)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("GET stream of a session not refreshed: %s", exc)

    async def _reconcile(self, stream: ClientStream, *, verdict_for: str | None = None) -> BaseException | None:
        """Make the watches ``stream`` holds match its session's subscriptions in Redis; the
        outcome for ``verdict_for`` (a subscribe being answered) when it failed."""
        session = stream.session
        assert session is not None
        if stream.over():
            return None  # ended before this ran: nothing to hold
        lock = self._locks.setdefault(stream, asyncio.Lock())
        async with lock:
            try:
                members = await self.redis.smembers(self.keys.subscriptions(session.id))
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("subscriptions of a session not read: %s", exc)
                return None
            if stream.over():
                return None
            keys: dict[WatchKey, str] = {}
            for raw in members:
                uri = raw.decode() if isinstance(raw, bytes) else str(raw)
                try:
                    key = self._resolve(
                        uri, stream.view, stream.identity, modern=False, capabilities=session.capabilities
                    )
                    keys[key] = uri
                except EdgefleetError as exc:
                    log.info("subscription to %s not held: %s", uri, exc.message)
            for key in [k for k in stream.watched if k not in keys]:
                self.watches.release(key, stream)
            new = [(key, uri) for key, uri in keys.items() if key not in stream.watched]
            outcomes = await asyncio.gather(
                *(self.watches.acquire(key, stream, uri) for key, uri in new), return_exceptions=True
            )
            verdict: BaseException | None = None
            for (_key, uri), outcome in zip(new, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.info("subscription to %s not held: %s", uri, _reason(outcome))
                    if uri == verdict_for:
                        verdict = outcome
            if stream.over():
                self.watches.release_all(stream)  # it ended while the agents answered
            return verdict

    # -- 2025-11-25: resources/subscribe | unsubscribe -----------------------------------
    async def subscribe(self, request: McpRequest, session: Session) -> dict[str, Any]:
        uri = _uri_param(request.message.params)
        # What cannot be subscribed to is refused here, never recorded.
        self._resolve(uri, request.view, request.identity, modern=False, capabilities=session.capabilities)
        key = self.keys.subscriptions(session.id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sismember(key, uri)
            pipe.scard(key)
            member, count = await pipe.execute()
        limit = self.settings.max_resource_subscriptions
        if not member and count >= limit:
            self.refused["subscriptions"] += 1
            raise TooManySubscriptions(
                f"This session has {count} resource subscriptions; at most {limit}.", data={"limit": limit}
            )
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, uri)
            pipe.pexpire(key, self.sessions.ttl_ms)
            await pipe.execute()
        stream = self.get_streams.get(session.id)
        if stream is None:
            # No GET stream here: whoever holds it subscribes upstream; with none open,
            # nothing is (there is nobody to deliver to) until one opens.
            await self._publish("subs", session.id)
            return {}
        failed = await self._reconcile(stream, verdict_for=uri)
        if failed is not None:
            await self.redis.srem(key, uri)
            if isinstance(failed, TimeoutError):
                raise AgentUnavailable(
                    f"The agent did not accept the subscription within {ACK_TIMEOUT_S:g} s.", data={"uri": uri}
                )
            raise failed
        return {}

    async def unsubscribe(self, request: McpRequest, session: Session) -> dict[str, Any]:
        uri = _uri_param(request.message.params)
        await self.redis.srem(self.keys.subscriptions(session.id), uri)
        stream = self.get_streams.get(session.id)
        if stream is None:
            await self._publish("subs", session.id)
        else:
            await self._reconcile(stream)
        return {}

    async def session_closed(self, session_id: str) -> None:
        """The session was deleted (DELETE): its subscriptions and its GET stream end."""
        try:
            await self.redis.delete(self.keys.subscriptions(session_id))
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("subscriptions of a deleted session not removed: %s", exc)
        stream = self.get_streams.get(session_id)
        if stream is not None:
            stream.finish(ABRUPT)
        await self._publish("close", session_id)

    # -- between dispatchers -------------------------------------------------------------
    async def _publish(self, kind: str, session_id: str, nonce: str | None = None) -> None:
        message = {"k": kind, "s": session_id, **({"n": nonce} if nonce else {})}
        try:
            await self.redis.publish(self.keys.mcp_events, orjson.dumps(message))
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("mcp event %s not published: %s", kind, exc)

    async def _control_loop(self) -> None:
        while True:
            raise_if_cancelling()
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.mcp_events)
                    if self._connected_once:
                        # Messages sent while we were away are lost: read every session again.
                        for stream in list(self.get_streams.values()):
                            self._spawn(self._reconcile(stream))
                    self._connected_once = True
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._control(message.get("data"))
            except (redis.exceptions.RedisError, OSError) as exc:
                log.debug("mcp events channel lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)  # Redis is away: try again in a moment

    def _control(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            return
        if not isinstance(message, dict):
            return
        stream = self.get_streams.get(str(message.get("s")))
        if stream is None:
            return
        kind = message.get("k")
        if kind == "subs":
            self._spawn(self._reconcile(stream))
        elif kind == "close" or (kind == "take" and message.get("n") != stream.nonce):
            stream.finish(ABRUPT)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- list changes -------------------------------------------------------------------
    def catalog_rebuilt(self, catalog: Catalog) -> None:
        """After every catalog rebuild: the lists whose content changed, per /mcp and per
        agent mount, are announced to the streams that asked for them."""
        fresh = _digests(catalog)
        previous, self.digests = self.digests, fresh
        if not previous:
            return  # the first catalog: nothing to compare with
        changed: dict[str | None, list[str]] = {}
        for view in fresh.keys() | previous.keys():
            now, before = fresh.get(view, {}), previous.get(view, {})
            kinds = [kind for kind in LIST_KINDS if now.get(kind, _EMPTY) != before.get(kind, _EMPTY)]
            if kinds:
                changed[view] = kinds
        if not changed:
            return
        for stream in list(self.streams):
            if stream.kind != "relay":
                for kind in changed.get(stream.view, ()):
                    stream.list_changed(kind)


def _digest(items: list[dict[str, Any]]) -> bytes:
    return hashlib.blake2b(orjson.dumps(items, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


_EMPTY = _digest([])


def _digests(catalog: Catalog) -> dict[str | None, dict[str, bytes]]:
    federation = catalog.federation
    out: dict[str | None, dict[str, bytes]] = {
        None: {
            "tools": _digest(catalog.definitions),
            "prompts": _digest(federation.prompts),
            "resources": _digest([*federation.resources, *federation.templates]),
        }
    }
    for agent, view in catalog.views.items():
        surface = view.surface
        out[agent] = {
            "tools": _digest(view.definitions),
            "prompts": _digest(surface.prompts),
            "resources": _digest([*surface.resources, *surface.templates]),
        }
    return out


def _uri_param(params: dict[str, Any]) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str) or not uri:
        raise InvalidParams("params.uri (a resource URI, a string) is required.")
    return uri


def _reason(error: BaseException) -> str:
    if isinstance(error, EdgefleetError):
        return error.message
    if isinstance(error, TimeoutError):
        return f"no answer from the agent within {ACK_TIMEOUT_S:g} s"
    return f"{type(error).__name__}: {error}"
