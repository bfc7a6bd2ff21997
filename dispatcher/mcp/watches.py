"""Upstream resource subscriptions, held by this dispatcher for the client streams it
serves and shared between them (docs/design-mcp-surface.md, D11).

A *watch* is one agent resource URI this dispatcher wants ``notifications/resources/updated``
for, held while at least one local client stream (``mcp.streams.ClientStream``) holds it,
and torn down when the last one lets go. How it is obtained depends on what the agent
offers (its declared ``resources.subscribe``, per era) and on the client's era (era
affinity, D3):

- ``listen``: a 2026-07-28 ``subscriptions/listen`` with ``resourceSubscriptions: [uri]``,
  one long-lived stream per watched URI;
- ``session``: ``resources/subscribe`` on our 2025-era upstream session of the client's
  capability set (D4), and that session's GET stream, which carries the updates of every
  URI subscribed on it (one GET stream per agent and capability set).

A watch lives on one replica at a time (the nearest healthy one); when its stream ends or
its replica leaves or is ejected, it moves to another (updates in between are lost: no
replay, as the spec says of subscriptions). An agent that refuses a subscription (its
JSON-RPC error) fails the watch at once, so the client gets the agent's answer.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.fleet.streams import MessageReader, StreamFailed
from edgefleet.dispatcher.fleet.upstream import CapabilityKey, modern_meta
from edgefleet.dispatcher.mcp.features import AgentError
from edgefleet.dispatcher.mcp.offers import LISTEN, SESSION, offers
from edgefleet.shared import jsonrpc
from edgefleet.shared.constants import HEADER_PROTOCOL_VERSION, HEADER_SESSION_ID
from edgefleet.shared.errors import EdgefleetError, InvalidParams, TooManySubscriptions, UpstreamError

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.fleet.replica import Replica
    from edgefleet.dispatcher.fleet.streams import Opened, StreamClient
    from edgefleet.dispatcher.mcp.streams import ClientStream
    from edgefleet.dispatcher.routing.router import Router
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.watches")

# (agent, the agent's own URI, LISTEN | SESSION, capability set of the upstream session)
WatchKey = tuple[str, str, str, CapabilityKey]
UPDATED = "notifications/resources/updated"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
BACKOFF_S = (0.2, 10.0)  # first and longest pause between attempts to (re)open a watch's stream
CONFLICT_RETRIES = 3  # GET streams refused with 409 before a link takes a fresh 2025 session
ERROR_BODY_LIMIT = 64 * 1024
_ids = itertools.count(1)


class Watch:
    __slots__ = ("holders", "key", "ready")

    def __init__(self, key: WatchKey) -> None:
        self.key = key
        self.holders: set[ClientStream] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # An acquirer that gave up leaves nobody to read a refusal: never "never retrieved".
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    @property
    def uri(self) -> str:
        return self.key[1]

    def settle(self, error: BaseException | None = None) -> None:
        if not self.ready.done():
            if error is None:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(error)


class Watches:
    def __init__(
        self, settings: DispatcherSettings, fleet: Fleet, router: Router, client: StreamClient, *, timeout_s: float
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.client = client
        self.timeout_s = timeout_s  # an acquirer waits this long for the agent's first answer
        self.watches: dict[WatchKey, Watch] = {}
        self.links: dict[tuple[str, ...], _Link] = {}
        self.over_limit = 0  # watches refused at EDGEFLEET_MAX_UPSTREAM_SUBSCRIPTIONS
        self._checker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._checker = asyncio.create_task(self._check_loop(), name="watches-check")

    async def aclose(self) -> None:
        tasks = [task for link in self.links.values() if (task := link.stop()) is not None]
        if self._checker is not None:
            self._checker.cancel()
            tasks.append(self._checker)
        self.links.clear()
        self.watches.clear()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- holders ------------------------------------------------------------------------
    async def acquire(self, key: WatchKey, stream: ClientStream, named: str) -> None:
        """Hold ``key`` for ``stream`` (``named``: the URI as its client wrote it); returns once
        the agent accepted the subscription, raises its refusal (``AgentError``) or a
        timeout, having let go again."""
        watch = self.watches.get(key)
        if watch is None:
            limit = self.settings.max_upstream_subscriptions
            if len(self.watches) >= limit:
                self.over_limit += 1
                raise TooManySubscriptions(
                    f"This dispatcher holds {limit} upstream resource subscriptions already.",
                    data={"uri": named, "scope": "dispatcher", "limit": limit},
                )
            watch = self.watches[key] = Watch(key)
            self._link_for(key).add(watch)
        watch.holders.add(stream)
        stream.watched[key] = named
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.shield(watch.ready)
        except BaseException:
            self.release(key, stream)
            raise

    def release(self, key: WatchKey, stream: ClientStream) -> None:
        stream.watched.pop(key, None)
        watch = self.watches.get(key)
        if watch is None or stream not in watch.holders:
            return
        watch.holders.discard(stream)
        if not watch.holders:
            self._drop(watch)

    def release_all(self, stream: ClientStream) -> None:
        for key in list(stream.watched):
            self.release(key, stream)

    def counts(self) -> tuple[int, int]:
        """(watched URIs, upstream streams) held by this dispatcher."""
        return len(self.watches), sum(1 for link in self.links.values() if link.opened is not None)

    # -- links ----------------------------------------------------------------------------
    def _link_for(self, key: WatchKey) -> _Link:
        agent, _uri, mode, caps = key
        link_key = _link_key(key)
        link = self.links.get(link_key)
        if link is None:
            link = self.links[link_key] = (
                _ListenLink(self, agent, link_key) if mode == LISTEN else _SessionLink(self, agent, link_key, caps)
            )
        return link

    def _drop(self, watch: Watch) -> None:
        if self.watches.get(watch.key) is watch:
            del self.watches[watch.key]
        link_key = _link_key(watch.key)
        link = self.links.get(link_key)
        if link is not None and link.watches.get(watch.uri) is watch:
            link.remove(watch)
            if not link.watches:
                del self.links[link_key]
                link.stop()

    def refused(self, watch: Watch, error: BaseException) -> None:
        """The agent refused this subscription: its acquirers get the refusal, the watch goes."""
        watch.settle(error)
        self._drop(watch)

    def dispatch(self, watches: list[Watch], uri: str) -> None:
        """An update for ``uri`` reached the streams holding these watches (each once)."""
        seen: set[ClientStream] = set()
        for watch in watches:
            for stream in list(watch.holders):
                if stream not in seen:
                    seen.add(stream)
                    stream.resource_updated(watch.key, uri)

    def replica_for(self, agent: str, mode: str) -> Replica | None:
        """The nearest healthy replica of ``agent`` that offers updates that way."""
        view = self.fleet.catalog.view(agent)
        if view is None:
            return None
        order = self.router.order(None, {}, self.fleet.regions)
        return next((r for r in self.router.candidates(view.entry(), order) if offers(r, mode)), None)

    async def _check_loop(self) -> None:
        """A watch whose replica left the fleet or was ejected moves to another one."""
        while True:
            await asyncio.sleep(self.settings.stream_keepalive_s)
            for link in list(self.links.values()):
                link.check(self.fleet)


def _link_key(key: WatchKey) -> tuple[str, ...]:
    """A listen stream per watched URI; a session's GET stream per agent and capability set."""
    agent, uri, mode, caps = key
    return (agent, mode, uri) if mode == LISTEN else (agent, mode, *caps)


class _Link(abc.ABC):
    """One upstream stream carrying updates for one or more watches."""

    def __init__(self, owner: Watches, agent: str, key: tuple[str, ...]) -> None:
        self.owner = owner
        self.agent = agent
        self.key = key
        self.watches: dict[str, Watch] = {}  # the agent's URI -> its watch
        self.replica: Replica | None = None
        self.opened: Opened | None = None
        self.mode = LISTEN
        self.task: asyncio.Task[None] | None = None

    def add(self, watch: Watch) -> None:
        self.watches[watch.uri] = watch
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"watch-{self.agent}")

    def remove(self, watch: Watch) -> None:
        self.watches.pop(watch.uri, None)

    def stop(self) -> asyncio.Task[None] | None:
        if self.task is not None:
            self.task.cancel()
        return self.task

    def check(self, fleet: Fleet) -> None:
        replica = self.replica
        if (
            self.opened is not None
            and replica is not None
            and (fleet.replicas.get(replica.id) is not replica or not replica.routable)
        ):
            log.info("watch on %s moves: replica %s left or was ejected", self.agent, replica.id)
            self.opened.close()

    async def _run(self) -> None:
        pause = BACKOFF_S[0]
        while self.watches:
            replica = self.owner.replica_for(self.agent, self.mode)
            if replica is not None:
                try:
                    if await self._once(replica):
                        pause = BACKOFF_S[0]  # it worked for a while: the next try is quick
                except StreamFailed as exc:
                    log.info("watch on %s (%s): %s", self.agent, replica.id, exc)
                    if not exc.opened:  # refused or timed out: as decisive as for a call
                        self.owner.fleet.report_failure(replica, f"stream: {exc}", decisive=True)
                except EdgefleetError as exc:
                    log.info("watch on %s (%s): %s", self.agent, replica.id, exc.message)
                except (OSError, ValueError) as exc:  # what an odd agent can make the client raise
                    log.warning("watch on %s (%s): %s: %s", self.agent, replica.id, type(exc).__name__, exc)
                finally:
                    self.opened = self.replica = None
            # Waiting to try again is the work here: the replica or the agent is not there yet.
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_S[1])

    @abc.abstractmethod
    async def _once(self, replica: Replica) -> bool:
        """One upstream stream until it ends; True when it delivered (was acknowledged)."""

    async def _refusal(self, opened: Opened) -> BaseException:
        """What an error answer to the stream request means for the watches."""
        body = await opened.read(ERROR_BODY_LIMIT)
        message = jsonrpc.last_response(body, stream=opened.content_type.startswith("text/event-stream"))
        error = message.get("error") if message else None
        if isinstance(error, dict):
            return AgentError(error)
        return UpstreamError(
            f"{self.agent} answered HTTP {opened.status} to a subscription", data={"agent": self.agent}
        )


class _ListenLink(_Link):
    """A 2026-07-28 ``subscriptions/listen`` for one URI."""

    async def _once(self, replica: Replica) -> bool:
        watch = next(iter(self.watches.values()), None)
        if watch is None:
            return False
        request_id = f"edgefleet-watch-{next(_ids)}"
        params = {"_meta": modern_meta(), "notifications": {"resourceSubscriptions": [watch.uri]}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "subscriptions/listen", "params": params})
        headers = replica.client.call_headers("subscriptions/listen", None)
        async with self.owner.client.open("POST", replica.record.url, headers, body) as opened:
            self.opened, self.replica = opened, replica
            if opened.status >= 400:
                error = await self._refusal(opened)
                if not watch.ready.done():
                    self.owner.refused(watch, error)
                raise StreamFailed(f"subscriptions/listen refused: HTTP {opened.status}", opened=True)
            reader = MessageReader(opened.content_type, self.owner.settings.max_event_bytes, replica.id)
            acknowledged = False
            async for chunk in opened.chunks():
                for message in reader.feed(chunk):
                    if not acknowledged:
                        acknowledged = self._acknowledged(watch, message)
                    elif message.get("method") == UPDATED:
                        uri = _uri_of(message)
                        if uri is not None:
                            self.owner.dispatch([watch], uri)
                    elif jsonrpc.is_response(message):
                        return True  # the agent ended it (shutting down): another replica takes over
            return acknowledged

    def _acknowledged(self, watch: Watch, message: dict[str, Any]) -> bool:
        if message.get("method") == ACKNOWLEDGED:
            params = message.get("params")
            honored = params.get("notifications") if isinstance(params, dict) else None
            uris = honored.get("resourceSubscriptions") if isinstance(honored, dict) else None
            if not isinstance(uris, list) or watch.uri not in uris:
                error = InvalidParams(
                    f"Agent {self.agent!r} does not send updates for this resource.",
                    data={"uri": watch.uri, "agent": self.agent},
                )
                self.owner.refused(watch, error)
                raise StreamFailed("the agent did not honour the subscription", opened=True)
            watch.settle()
            return True
        if jsonrpc.is_response(message) and isinstance(message.get("error"), dict):
            if not watch.ready.done():
                self.owner.refused(watch, AgentError(message["error"]))
            raise StreamFailed("subscriptions/listen answered with an error", opened=True)
        return False  # anything before the acknowledgment is not for us


class _SessionLink(_Link):
    """``resources/subscribe`` on our 2025-era session of one capability set, and the
    session's GET stream, which carries the updates of every URI subscribed on it."""

    def __init__(self, owner: Watches, agent: str, key: tuple[str, ...], caps: CapabilityKey) -> None:
        super().__init__(owner, agent, key)
        self.mode = SESSION
        self.caps = caps
        self.session: str | None = None  # the session the live GET stream belongs to
        self.subscribed: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self.conflicts = 0  # GET streams refused in a row because the session still had one

    def add(self, watch: Watch) -> None:
        super().add(watch)
        if self.session is not None and self.replica is not None:
            self._spawn(self._subscribe(self.replica, self.session, watch))

    def remove(self, watch: Watch) -> None:
        super().remove(watch)
        if self.session is not None and self.replica is not None and watch.uri in self.subscribed:
            self.subscribed.discard(watch.uri)
            self._spawn(self._unsubscribe(self.replica, self.session, watch.uri))

    def check(self, fleet: Fleet) -> None:
        replica = self.replica
        if (
            self.opened is not None
            and replica is not None
            and replica.client.legacy_sessions.get(self.caps) != self.session
        ):
            self.opened.close()  # the agent forgot the session (restarted): subscribe again on a new one
        else:
            super().check(fleet)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _once(self, replica: Replica) -> bool:
        error: BaseException
        client = replica.client
        timeout = self.owner.settings.probe_timeout_s * 3
        session = await client.session_for(self.caps, timeout=timeout)
        if not session:
            error = InvalidParams(
                f"Agent {self.agent!r} keeps no sessions: it cannot send resource updates.", data={"agent": self.agent}
            )
            for watch in list(self.watches.values()):
                self.owner.refused(watch, error)
            return False
        headers = {
            "accept": "text/event-stream",
            HEADER_PROTOCOL_VERSION: client.legacy_version,
            HEADER_SESSION_ID: session,
        }
        async with self.owner.client.open("GET", replica.record.url, headers) as opened:
            self.opened, self.replica = opened, replica
            if opened.status == 404:
                client.forget_session(self.caps)
                raise StreamFailed("the agent forgot our session", opened=True)
            if opened.status == 409:
                # One GET stream per session (the SDKs' servers): the stream of a link that just
                # ended is not gone on the agent's side yet. Try again shortly; if it stays, take
                # a fresh session for this capability set rather than refuse the client.
                self.conflicts += 1
                if self.conflicts > CONFLICT_RETRIES:
                    self.conflicts = 0
                    client.forget_session(self.caps)
                raise StreamFailed("the session's GET stream is still held on the agent (HTTP 409)", opened=True)
            self.conflicts = 0
            if opened.status >= 400:
                error = await self._refusal(opened)
                for watch in list(self.watches.values()):
                    if not watch.ready.done():
                        self.owner.refused(watch, error)
                raise StreamFailed(f"GET stream refused: HTTP {opened.status}", opened=True)
            # The stream is open before anything is subscribed: no update can slip between.
            self.session, self.subscribed = session, set()
            try:
                await asyncio.gather(*(self._subscribe(replica, session, w) for w in list(self.watches.values())))
                reader = MessageReader(opened.content_type, self.owner.settings.max_event_bytes, replica.id)
                async for chunk in opened.chunks():
                    for message in reader.feed(chunk):
                        await self._received(replica, session, message)
            finally:
                self.session = None
            return bool(self.subscribed)

    async def _subscribe(self, replica: Replica, session: str, watch: Watch) -> None:
        try:
            await replica.client.session_rpc(
                session, "resources/subscribe", {"uri": watch.uri}, timeout=self.owner.settings.probe_timeout_s * 3
            )
        except EdgefleetError as exc:
            upstream = exc.data.get("upstream_error")
            if isinstance(upstream, dict):  # the agent's own refusal: the client gets it
                self.owner.refused(watch, AgentError(upstream))
            elif not watch.ready.done():
                log.info("subscribing to %s on %s failed: %s", watch.uri, replica.id, exc.message)
            return
        if self.watches.get(watch.uri) is watch:
            self.subscribed.add(watch.uri)
            watch.settle()

    async def _unsubscribe(self, replica: Replica, session: str, uri: str) -> None:
        with contextlib.suppress(EdgefleetError):
            await replica.client.session_rpc(
                session, "resources/unsubscribe", {"uri": uri}, timeout=self.owner.settings.probe_timeout_s * 3
            )

    async def _received(self, replica: Replica, session: str, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == UPDATED:
            uri = _uri_of(message)
            if uri is None:
                return
            exact = self.watches.get(uri)
            # The spec lets an update name a resource under the one subscribed to.
            found = [exact] if exact is not None else [w for u, w in self.watches.items() if uri.startswith(u)]
            if found:
                self.owner.dispatch(found, uri)
        elif isinstance(method, str) and "id" in message:
            # A request on a session shared by many clients cannot go to any one of them.
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
            if method == "ping":
                answer["result"] = {}
            else:
                answer["error"] = {"code": -32603, "message": "not routable through edgefleet (shared session stream)"}
            with contextlib.suppress(EdgefleetError):
                await replica.client.send_response(session, answer, timeout=self.owner.settings.probe_timeout_s * 3)


def _uri_of(message: dict[str, Any]) -> str | None:
    params = message.get("params")
    uri = params.get("uri") if isinstance(params, dict) else None
    return uri if isinstance(uri, str) else None
