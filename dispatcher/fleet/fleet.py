"""This dispatcher's live view of the fleet: replicas, their warmth and health, the catalog.

Each dispatcher replica keeps its own view (pools and health are local facts) built from
the shared Redis registry. A replica enters the catalog only once this dispatcher has
opened warm keep-alive connections to it, and leaves it when its lease expires. Whether
it takes calls meanwhile is its circuit breaker's call (``edgefleet.dispatcher.fleet.breaker``), fed by
active probes and by the outcome of every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.fleet.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker
from edgefleet.dispatcher.fleet.catalog import Catalog, Prepared, ToolEntry, check_tool_limits
from edgefleet.dispatcher.fleet.registry import Registry, tools_hash
from edgefleet.dispatcher.fleet.replica import Replica
from edgefleet.dispatcher.fleet.surface import fetch_surface
from edgefleet.dispatcher.fleet.upstream import ReplicaClient, UpstreamPool
from edgefleet.dispatcher.observability.metrics import ReplicaState
from edgefleet.shared.aio import raise_if_cancelling
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import EdgefleetError, ToolConflict
from edgefleet.shared.models import ReplicaRecord
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.fleet")
BREAKER_LEVEL = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def _known_era(record: ReplicaRecord) -> str | None:
    # Legacy replicas need their upstream session opened; a static server added while it
    # was down has an unknown era (its tools are empty), so it is probed as well.
    if record.era == "legacy" or (record.static and not record.tools):
        return None
    return record.era


class Fleet:
    def __init__(
        self,
        settings: DispatcherSettings,
        redis: aioredis.Redis,
        pool: UpstreamPool,
        *,
        on_warm: Callable[[Replica], Awaitable[None]] | None = None,
        on_leave: Callable[[Replica], None] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.keys = RedisKeys(settings.redis_prefix)
        self.registry = Registry(redis, self.keys, settings.heartbeat_ttl_s)
        self.replicas: dict[str, Replica] = {}
        self.catalog = Catalog.empty()
        self.regions: frozenset[str] = frozenset()
        self.builtins: list[ToolEntry] = []  # the dispatcher's own tools (add_builtin)
        self._prepared: dict[tuple[str, str], Prepared] = {}  # agents' tool lists made ready, by tools_hash
        self.breaker_policy = BreakerPolicy(
            consecutive_failures=settings.unhealthy_after,
            error_rate=settings.eject_error_rate,
            min_calls=settings.eject_min_calls,
            window_s=settings.eject_window_s,
            base_s=settings.eject_base_s,
            max_s=settings.eject_max_s,
        )
        self.synced = asyncio.Event()  # the registry was read once
        self.loaded = asyncio.Event()  # ready: see _check_loaded
        self.waiting_for: set[str] = set()  # agents the loaded catalog still lacks
        self._expected: set[str] | None = None
        self._started = time.monotonic()
        self.registry_ok = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        # Runs once a replica's pool is warm, before it enters the catalog (see warmup.py).
        self.on_warm = on_warm
        # Called when a replica leaves the fleet (its per-replica metric series are dropped).
        self.on_leave = on_leave
        # Called with each new catalog, synchronously (list-change notifications compare it).
        self.on_rebuild: list[Callable[[Catalog], None]] = []

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="fleet-sync"),
            asyncio.create_task(self._listen_loop(), name="fleet-listen"),
            asyncio.create_task(self._probe_loop(), name="fleet-probe"),
            asyncio.create_task(self._surface_loop(), name="fleet-surface"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for replica in self.replicas.values():
            if replica.warm_task:
                replica.warm_task.cancel()
        await asyncio.gather(
            *self._tasks, *(r.warm_task for r in self.replicas.values() if r.warm_task), return_exceptions=True
        )

    async def wait_loaded(self, timeout: float) -> None:
        """Wait until the catalog holds what the registry says the fleet has (``loaded``)."""
        await asyncio.wait_for(self.loaded.wait(), timeout)

    def _check_loaded(self) -> None:
        """Loaded (this dispatcher is ready) once every agent the registry has seen in the
        last day has a warm replica here, or ``ready_wait_s`` after the start, whichever
        comes first; then for good (a dispatcher that served stays ready: see /readyz).

        Agents whose leases lapsed while no dispatcher took their heartbeats (a restart
        longer than the lease) come back by registering again, a few seconds after the
        dispatcher is up: until then their tools would be unknown (issue 16: 78 calls got
        "Unknown tool" while /readyz said 200)."""
        if self.loaded.is_set() or self._expected is None:
            return
        present = {r.record.agent for r in self.replicas.values() if r.warm}
        self.waiting_for = self._expected - present
        waited = time.monotonic() - self._started
        if self.waiting_for and waited < self.settings.ready_wait_s:
            return
        if self.waiting_for:
            log.warning(
                "ready after %.1f s without %s (seen in the fleet within a day, not back; EDGEFLEET_READY_WAIT_S)",
                waited,
                ", ".join(sorted(self.waiting_for)),
            )
        else:
            log.info("catalog loaded in %.1f s: %d agents, %d tools", waited, len(present), len(self.catalog.entries))
        self.loaded.set()

    def wake(self) -> None:
        """Resync now (a registration happened on this dispatcher)."""
        self._wake.set()

    # -- registry sync -------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync()
                self.registry_ok = True
            except (redis.exceptions.RedisError, OSError) as exc:
                if self.registry_ok:
                    log.error("registry unreachable (%s); keeping the last known fleet", exc)
                self.registry_ok = False
            except Exception:
                log.exception("fleet sync failed; retrying")
            self._check_loaded()  # also while Redis is away: the wait for agents is bounded
            raise_if_cancelling()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.registry_sync_s)
            self._wake.clear()

    async def _listen_loop(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.fleet_changed)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except (redis.exceptions.RedisError, OSError):
                raise_if_cancelling()
                await asyncio.sleep(1.0)

    async def sync(self) -> None:
        records = {r.replica_id: r for r in await self.registry.live()}
        changed = False
        for replica_id in list(self.replicas):
            if replica_id not in records:
                replica = self.replicas.pop(replica_id)
                if replica.warm_task:
                    replica.warm_task.cancel()
                if self.on_leave is not None:
                    self.on_leave(replica)
                log.info("replica %s (%s, %s) left the fleet", replica_id, replica.record.agent, replica.record.region)
                changed = True
        for replica_id, record in records.items():
            known = self.replicas.get(replica_id)
            if known is None:
                client = ReplicaClient(self.pool, record.url, era=_known_era(record))
                fresh = Replica(record=record, client=client, breaker=CircuitBreaker(self.breaker_policy))
                fresh.tool_names = frozenset(t["name"] for t in record.tools)
                self.replicas[replica_id] = fresh
                fresh.warm_task = asyncio.create_task(self._warm(fresh), name=f"warm-{replica_id}")
            else:
                if record.tools_hash != known.record.tools_hash or record.version != known.record.version:
                    known.tool_names = frozenset(t["name"] for t in record.tools)
                    if known.warm:
                        await self._prepare(record)
                    changed = True
                known.record = record
        if changed:
            self.rebuild()
        if self._expected is None:  # the first sync: which agents should be back before we are ready
            self._expected = await self.registry.seen() | {r.agent for r in records.values()}
        self.synced.set()
        self._check_loaded()

    async def _warm(self, replica: Replica) -> None:
        """Open the pool to a new replica; only then does it become routable."""
        backoff = 0.2
        while True:
            try:
                started = time.perf_counter()
                if replica.client.era is None or not replica.client.advertised:
                    await replica.client.connect(timeout=self.settings.probe_timeout_s * 3)
                if replica.record.static and not replica.record.tools:
                    await self._refresh_static_tools(replica)
                replica.surface = await fetch_surface(replica.client, timeout=self.settings.probe_timeout_s * 3)
                await replica.client.warm(self.settings.warm_connections, timeout=self.settings.probe_timeout_s * 3)
                if self.on_warm is not None:
                    try:
                        await self.on_warm(replica)
                    except Exception:
                        log.exception("warm-up exercise against %s failed", replica.id)
                await self._prepare(replica.record)  # its tools compiled off the critical path
                # Warm and in the catalog in one step (no await between): whoever sees it
                # routable in /v1/agents can call its tools.
                replica.warm = True
                log.info(
                    "replica %s (%s, %s) warm: %d connections in %.1f ms",
                    replica.id,
                    replica.record.agent,
                    replica.record.region,
                    self.settings.warm_connections,
                    (time.perf_counter() - started) * 1000,
                )
                self.rebuild()
                self._check_loaded()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "not warm yet"; keep trying
                replica.last_error = str(exc)
                log.warning("warming %s failed (%s); retrying", replica.id, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.probe_interval_s * 2)

    async def _prepare(self, record: ReplicaRecord) -> None:
        """Make the replica's tool list ready for the catalog (compiled schemas) unless this
        dispatcher has it already, yielding to the event loop as it goes: the rebuild that
        follows then compiles nothing (issue 16: a wide tool list stalled every call)."""
        key = (record.agent, record.tools_hash)
        if record.tools_hash and key not in self._prepared:
            with contextlib.suppress(ToolConflict):  # the rebuild leaves the agent out, and says so
                self._prepared[key] = await Prepared.prepare(record.agent, record.tools, self.settings.bus_tools)

    async def _refresh_static_tools(self, replica: Replica) -> None:
        tools = await replica.client.list_tools(timeout=self.settings.probe_timeout_s * 3)
        check_tool_limits(  # a static server is held to what a registering agent is (issue 16)
            replica.record.agent,
            tools,
            max_tools=self.settings.max_tools_per_agent,
            max_tool_bytes=self.settings.max_schema_bytes,
        )
        replica.record.tools = tools
        replica.record.tools_hash = tools_hash(tools)
        replica.record.era = "legacy" if replica.client.era == "legacy" else "modern"
        replica.tool_names = frozenset(t["name"] for t in tools)
        await self.registry.put(replica.record)

    # -- health --------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            # An open breaker is left alone until its ejection time is over; then the
            # probe is its half-open trial (so a client call need not be the guinea pig).
            due = [r for r in self.replicas.values() if r.admits()]
            if due:
                await asyncio.gather(*(self._probe(r) for r in due))

    async def _surface_loop(self) -> None:
        """Prompts and resources change while an agent runs: re-read them now and then, one
        replica per agent (they serve the same lists), and rebuild when something changed."""
        while True:
            await asyncio.sleep(self.settings.surface_refresh_s)
            leads: dict[str, Replica] = {}
            for replica in self.replicas.values():
                if replica.admits() and replica.surface.capabilities and replica.record.agent not in leads:
                    leads[replica.record.agent] = replica
            changed = False
            for agent, lead in leads.items():
                try:
                    fresh = await fetch_surface(lead.client, timeout=self.settings.probe_timeout_s * 3)
                except (EdgefleetError, OSError) as exc:
                    log.debug("surface of %s not refreshed: %s", agent, exc)
                    continue
                for replica in self.replicas.values():
                    if replica.record.agent == agent and replica.surface != fresh:
                        replica.surface = fresh
                        changed = True
            if changed:
                self.rebuild()

    async def _probe(self, replica: Replica) -> None:
        trial = replica.breaker.begin()
        if trial is None:
            return  # a call holds the half-open trial; its outcome decides
        try:
            await replica.client.probe(timeout=self.settings.probe_timeout_s)
        except asyncio.CancelledError:
            replica.breaker.release(trial)
            raise
        except (TimeoutError, EdgefleetError, OSError, Exception) as exc:  # noqa: BLE001 - any failure counts
            self.report_failure(replica, f"probe: {type(exc).__name__}: {exc}", trial=trial)
        else:
            self.report_success(replica, trial=trial)

    def report_failure(self, replica: Replica, error: str, *, decisive: bool = False, trial: bool = False) -> None:
        """A failed probe or call; ``decisive`` (connection refused) opens the breaker at once."""
        replica.last_error = error
        if replica.breaker.failure(decisive=decisive, trial=trial):
            snap = replica.breaker.snapshot()
            log.warning(
                "replica %s (%s, %s) ejected for %.1f s (ejection %d): %s",
                replica.id,
                replica.record.agent,
                replica.record.region,
                snap["retry_in_s"],
                snap["ejections"],
                error,
            )

    def report_success(self, replica: Replica, *, trial: bool = False) -> None:
        if replica.breaker.success(trial):
            log.info(
                "replica %s (%s, %s) healthy again: breaker closed",
                replica.id,
                replica.record.agent,
                replica.record.region,
            )

    def add_builtin(self, entry: ToolEntry) -> None:
        """One of the dispatcher's own tools (fan-out, a pipeline) joins the catalog."""
        self.builtins.append(entry)
        self.rebuild()

    def replica_states(self) -> list[ReplicaState]:
        """Every replica's health and load, for /metrics (read at scrape time)."""
        return [
            ReplicaState(
                r.record.agent,
                r.record.region,
                r.id,
                BREAKER_LEVEL.get(r.breaker.state, 2),
                r.warm,
                r.inflight,
                r.latency_ewma_ms / 1000,
            )
            for r in list(self.replicas.values())
        ]

    def rebuild(self) -> None:
        self.catalog = Catalog.build(self.replicas.values(), self.settings.bus_tools, self.builtins, self._prepared)
        self.regions = frozenset(r.record.region for r in self.replicas.values() if r.warm)
        for listener in self.on_rebuild:
            try:
                listener(self.catalog)
            except Exception:  # a listener's bug must not stop the fleet from being rebuilt
                log.exception("catalog listener failed")
