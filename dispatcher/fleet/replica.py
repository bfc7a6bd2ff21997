"""One agent replica as this dispatcher sees it: its registry record, its control-plane
client, its circuit breaker, whether its pool is warm, and its load and latency (what the
balancing policies rank by)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from edgefleet.dispatcher.fleet.breaker import OPEN, CircuitBreaker
from edgefleet.dispatcher.fleet.surface import Surface
from edgefleet.dispatcher.fleet.upstream import ReplicaClient
from edgefleet.shared.models import ReplicaRecord

# Weight of the newest latency sample in the EWMA (about the last 5 calls dominate).
EWMA_ALPHA = 0.3


@dataclass(eq=False)
class Replica:
    record: ReplicaRecord
    client: ReplicaClient
    breaker: CircuitBreaker
    warm: bool = False
    inflight: int = 0
    latency_ewma_ms: float = 0.0
    last_error: str | None = None
    tool_names: frozenset[str] = field(default_factory=frozenset)
    warm_task: asyncio.Task[None] | None = None
    surface: Surface = field(default_factory=Surface)  # prompts, resources, what the server says of itself

    def admits(self) -> bool:
        """May a call go here now? (Warm, and the breaker is closed or has a trial free.)"""
        return self.warm and self.breaker.admits()

    @property
    def healthy(self) -> bool:
        return self.breaker.state != OPEN

    @property
    def routable(self) -> bool:
        return self.warm and self.healthy

    def observe_latency(self, ms: float) -> None:
        self.latency_ewma_ms = (
            ms if self.latency_ewma_ms == 0.0 else self.latency_ewma_ms + EWMA_ALPHA * (ms - self.latency_ewma_ms)
        )

    @property
    def id(self) -> str:
        return self.record.replica_id
