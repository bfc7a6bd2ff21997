"""The dispatcher's Prometheus metrics (served at ``/metrics``).

prometheus_client rather than the OpenTelemetry metrics SDK on the per-call path: measured
on this machine, a labelled counter increment costs ~1.4 µs there against ~8-12 µs in the
OTel SDK (1.45), and a call records several. State that already lives in memory (breakers,
pools, cache size, catalog) is read at scrape time by a collector, so it costs nothing per
call. Labels are bounded: tools come from the catalog (anything else is ``unknown``),
regions and replicas from the registry, error codes from the stable list; never task ids
or argument values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; tool calls span a millisecond echo to minutes of work.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
UPSTREAM_OUTCOMES = ("ok", "connect_error", "timeout", "error")
REFUSAL_SCOPES = ("identity", "tool", "concurrency", "task", "open_tasks", "streams", "subscriptions")
# Notification streams: to clients (listen | relay | get), and what they hold upstream.
STREAM_KINDS = ("listen", "relay", "get", "watched_uris", "upstream")


class ReplicaState(NamedTuple):
    """One replica as /metrics shows it (read at scrape time, never per call)."""

    agent: str
    region: str
    replica: str
    breaker: int  # 0 closed, 1 half-open, 2 open
    warm: bool
    inflight: int
    latency_ewma_s: float


@dataclass
class StateSources:
    """Where the scrape-time gauges come from; each component hands in a reader, so this
    module needs to know none of them."""

    replicas: Callable[[], Iterable[ReplicaState]] = lambda: ()
    pool: Callable[[], tuple[int, int]] = lambda: (0, 0)  # idle, active connections
    stale_resends: Callable[[], int] = lambda: 0  # requests resent after the keep-alive race
    cache: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)  # hits, misses, entries
    catalog_tools: Callable[[], int] = lambda: 0
    refused: list[Callable[[], dict[str, int]]] = field(default_factory=list)  # requests refused by a limit, by scope
    streams: Callable[[], dict[str, int]] = dict  # open notification streams, by STREAM_KINDS


class Metrics:
    """One registry per dispatcher (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.calls = Counter(
            "edgefleet_calls",
            "Tool calls answered, by tool, serving region, path and outcome "
            "(ok | error | timeout | cancelled; code = the stable error code).",
            ["tool", "region", "path", "outcome", "code"],
            registry=r,
        )
        self.call_duration = Histogram(
            "edgefleet_call_duration_seconds",
            "Time from request to the end of the answer, by tool, serving region and path.",
            ["tool", "region", "path"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("edgefleet_calls_inflight", "Tool calls in progress.", registry=r)
        self.task_transitions = Counter(
            "edgefleet_task_transitions",
            "Tasks entering a status (working = created) through this dispatcher.",
            ["status"],
            registry=r,
        )
        self.tasks_running = Gauge(
            "edgefleet_tasks_running", "Tasks whose work runs inside this dispatcher process.", registry=r
        )
        self.upstream = Counter(
            "edgefleet_upstream_requests",
            "Direct-path attempts to replicas (ok | connect_error | timeout | error).",
            ["agent", "region", "replica", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "edgefleet_upstream_duration_seconds",
            "Time to a replica's response headers, per replica.",
            ["agent", "region", "replica"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.routes = Counter(
            "edgefleet_route_decisions",
            "Routing decisions: caller's region, first-choice region, reason.",
            ["caller_region", "region", "reason"],
            registry=r,
        )
        self.failovers = Counter(
            "edgefleet_failovers",
            "Calls moved to another replica (scope=replica) or another region (scope=region).",
            ["agent", "scope"],
            registry=r,
        )
        self.bus_pending = Gauge(
            "edgefleet_bus_pending",
            "Calls delivered to a consumer and not yet acknowledged, per calls stream/topic.",
            ["stream"],
            registry=r,
        )
        self.bus_lag = Gauge(
            "edgefleet_bus_lag",
            "Calls not yet delivered to any consumer, per calls stream/topic.",
            ["stream"],
            registry=r,
        )
        self.bus_replies = Counter(
            "edgefleet_bus_replies",
            "Replies read from the bus (result | error | progress | duplicate | too_large).",
            ["kind"],
            registry=r,
        )
        self.subtasks = Counter("edgefleet_fanout_subtasks", "Fan-out sub-tasks by status.", ["status"], registry=r)
        self.steps = Counter(
            "edgefleet_pipeline_steps",
            "Pipeline steps by pipeline and status (attempts counted once per step).",
            ["pipeline", "status"],
            registry=r,
        )
        self.compensations = Counter(
            "edgefleet_pipeline_compensations",
            "Compensations run, by pipeline and status.",
            ["pipeline", "status"],
            registry=r,
        )
        # Children cached by label tuple: .labels() costs ~1.5 µs (validation, a lock), a dict
        # lookup ~0.05 µs. Bounded: label values come from the catalog and the registry.
        self._call_children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._route_children: dict[tuple[str, str, str], Any] = {}
        self._upstream_children: dict[tuple[str, ...], Any] = {}

    def watch(self, sources: StateSources) -> None:
        self.registry.register(_StateCollector(sources))

    def forget_replica(self, agent: str, region: str, replica: str) -> None:
        """Drop a departed replica's series (ids are new on every restart: they would pile up)."""
        series = (agent, region, replica)
        for key in [key for key in self._upstream_children if key[:3] == series]:
            del self._upstream_children[key]  # a cached child of a removed series would count for nobody
        for outcome in UPSTREAM_OUTCOMES:
            with contextlib.suppress(KeyError):
                self.upstream.remove(agent, region, replica, outcome)
        with contextlib.suppress(KeyError):
            self.upstream_duration.remove(agent, region, replica)

    def call(self, tool: str, region: str, path: str, outcome: str, code: str, seconds: float) -> None:
        key = (tool, region, path, outcome, code)
        children = self._call_children.get(key)
        if children is None:
            children = (self.calls.labels(*key), self.call_duration.labels(tool, region, path))
            if len(self._call_children) < 10_000:
                self._call_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_outcome(self, agent: str, region: str, replica: str, outcome: str) -> None:
        """One attempt on a replica (``edgefleet_upstream_requests``)."""
        self._upstream_child(self.upstream, (agent, region, replica, outcome)).inc()

    def upstream_latency(self, agent: str, region: str, replica: str, seconds: float) -> None:
        """Until a replica's answer started (``edgefleet_upstream_duration_seconds``)."""
        self._upstream_child(self.upstream_duration, (agent, region, replica)).observe(seconds)

    def _upstream_child(self, metric: Any, key: tuple[str, ...]) -> Any:
        child = self._upstream_children.get(key)
        if child is None:
            child = metric.labels(*key)
            if len(self._upstream_children) >= 10_000:
                # Replica ids change on every restart: start afresh rather than keep dead ones.
                self._upstream_children.clear()
            self._upstream_children[key] = child
        return child

    def route(self, caller_region: str, region: str, reason: str) -> None:
        """One routing decision (``edgefleet_route_decisions``)."""
        key = (caller_region, region, reason)
        child = self._route_children.get(key)
        if child is None:
            child = self.routes.labels(*key)
            if len(self._route_children) < 10_000:
                self._route_children[key] = child
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Breakers, replica load and latency, pools, cache and catalog, read when scraped."""

    def __init__(self, sources: StateSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["agent", "region", "replica"]
        state = GaugeMetricFamily(
            "edgefleet_breaker_state",
            "Circuit breaker per replica: 0 closed, 1 half-open, 2 open (ejected).",
            labels=labels,
        )
        warm = GaugeMetricFamily(
            "edgefleet_replica_warm", "1 once the replica's pool is warm and it takes calls.", labels=labels
        )
        inflight = GaugeMetricFamily(
            "edgefleet_replica_inflight", "Direct-path calls in flight per replica.", labels=labels
        )
        ewma = GaugeMetricFamily(
            "edgefleet_replica_latency_ewma_seconds", "Latency EWMA the balancer uses, per replica.", labels=labels
        )
        for replica in self.sources.replicas():
            values = [replica.agent, replica.region, replica.replica]
            state.add_metric(values, replica.breaker)
            warm.add_metric(values, 1 if replica.warm else 0)
            inflight.add_metric(values, replica.inflight)
            ewma.add_metric(values, replica.latency_ewma_s)
        yield from (state, warm, inflight, ewma)
        pool = GaugeMetricFamily(
            "edgefleet_pool_connections", "Upstream keep-alive connections (idle | active).", labels=["state"]
        )
        idle, active = self.sources.pool()
        pool.add_metric(["idle"], idle)
        pool.add_metric(["active"], active)
        yield pool
        yield CounterMetricFamily(
            "edgefleet_upstream_stale_resends",
            "Requests resent on a fresh connection because the replica had just closed the idle one "
            "they were written on (the keep-alive race; provably never received).",
            value=self.sources.stale_resends(),
        )
        hits, misses, entries = self.sources.cache()
        lookups = CounterMetricFamily(
            "edgefleet_cache_requests", "Result-cache lookups (hit | miss).", labels=["result"]
        )
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["miss"], misses)
        yield lookups
        yield GaugeMetricFamily("edgefleet_cache_entries", "Results held in the result cache.", value=entries)
        yield GaugeMetricFamily("edgefleet_catalog_tools", "Tools in the catalog.", value=self.sources.catalog_tools())
        refused = CounterMetricFamily(
            "edgefleet_rate_limited",
            "Requests refused by a limit (identity | tool | concurrency | task | open_tasks | streams | subscriptions).",
            labels=["scope"],
        )
        counts: dict[str, int] = {}
        for source in self.sources.refused:
            for scope, count in source().items():
                counts[scope] = counts.get(scope, 0) + count
        for scope in REFUSAL_SCOPES:
            refused.add_metric([scope], counts.get(scope, 0))
        yield refused
        streams = GaugeMetricFamily(
            "edgefleet_mcp_streams",
            "Notification streams: open to clients (listen: subscriptions/listen served here, relay: forwarded to "
            "a mounted agent, get: 2025 GET streams), resource URIs watched upstream, upstream streams open.",
            labels=["kind"],
        )
        open_now = self.sources.streams()
        for kind in STREAM_KINDS:
            streams.add_metric([kind], open_now.get(kind, 0))
        yield streams


__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "Metrics", "ReplicaState", "StateSources"]
