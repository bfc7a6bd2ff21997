"""The state bus: Redis Streams, Kafka or in-process memory behind one ``Bus`` interface,
chosen by URL scheme. Stream and topic names come from ``shared.constants.BusNames``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from edgefleet.bus.base import Bus, Delivery
from edgefleet.shared.errors import ConfigError

SCHEMES = {
    "redis": "Redis Streams",
    "rediss": "Redis Streams over TLS",
    "unix": "Redis Streams over a Unix socket",
    "kafka": "Kafka (kafka://host:port[,host:port])",
    "memory": "in-process memory (unit tests only)",
}


def connect(url: str, **options: Any) -> Bus:
    """The backend for ``url``; nothing is contacted until ``start()``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        from edgefleet.bus.redis_streams import RedisStreamsBus

        return RedisStreamsBus(url, **options)
    if scheme == "kafka":
        from edgefleet.bus.kafka import KafkaBus

        return KafkaBus(url, **options)
    if scheme == "memory":
        from edgefleet.bus.memory import MemoryBus

        return MemoryBus(url)
    accepted = ", ".join(f"{s}:// ({what})" for s, what in SCHEMES.items())
    raise ConfigError(f"bus URL {url!r}: unsupported scheme {scheme or '(none)'!r}; accepted: {accepted}")


__all__ = ["Bus", "Delivery", "connect", "SCHEMES"]
