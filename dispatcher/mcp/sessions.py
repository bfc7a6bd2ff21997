"""2025-era MCP sessions (``Mcp-Session-Id``), kept in Redis so any dispatcher replica
behind a load balancer can serve any session. A local cache keeps the common case (the
session's next request lands on the same dispatcher) free of Redis round trips.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from edgefleet.shared.constants import RedisKeys


@dataclass(slots=True)
class Session:
    id: str
    protocol_version: str
    client_info: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None
    touched: float = 0.0
    owner: str = "anonymous"  # the identity that opened it; nobody else may use it
    view: str | None = None  # the per-agent mount it was opened on (None: /mcp)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "protocol_version": self.protocol_version,
                "client_info": self.client_info,
                "capabilities": self.capabilities,
                "log_level": self.log_level,
                "owner": self.owner,
                "view": self.view,
            }
        )


class SessionStore:
    # Refresh the Redis TTL at most this often per session (not on every call).
    TOUCH_EVERY_S = 30.0

    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, ttl_s: float, cache_size: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self.cache: dict[str, Session] = {}
        self.cache_size = cache_size

    async def create(
        self,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
        *,
        owner: str = "anonymous",
        view: str | None = None,
    ) -> Session:
        session = Session(
            secrets.token_urlsafe(24),
            protocol_version,
            client_info,
            capabilities,
            touched=time.monotonic(),
            owner=owner,
            view=view,
        )
        await self.redis.set(self.keys.session(session.id), session.to_json(), px=self.ttl_ms)
        self._remember(session)
        return session

    async def get(self, session_id: str) -> Session | None:
        session = self.cache.get(session_id)
        now = time.monotonic()
        if session is not None:
            if now - session.touched > self.TOUCH_EVERY_S:
                session.touched = now
                if not await self.redis.pexpire(self.keys.session(session_id), self.ttl_ms):
                    self.cache.pop(session_id, None)  # deleted elsewhere or expired
                    return None
            return session
        if len(session_id) > 128:
            return None
        raw = await self.redis.get(self.keys.session(session_id))
        if raw is None:
            return None
        data = orjson.loads(raw)
        session = Session(
            session_id,
            data["protocol_version"],
            data.get("client_info") or {},
            data.get("capabilities") or {},
            data.get("log_level"),
            touched=now,
            owner=data.get("owner", "anonymous"),
            view=data.get("view"),
        )
        await self.redis.pexpire(self.keys.session(session_id), self.ttl_ms)
        self._remember(session)
        return session

    async def save(self, session: Session) -> None:
        await self.redis.set(self.keys.session(session.id), session.to_json(), px=self.ttl_ms)

    async def delete(self, session_id: str) -> bool:
        self.cache.pop(session_id, None)
        return bool(await self.redis.delete(self.keys.session(session_id)))

    def _remember(self, session: Session) -> None:
        if len(self.cache) >= self.cache_size:
            # Drop the oldest entry (dicts keep insertion order); Redis still has it.
            self.cache.pop(next(iter(self.cache)))
        self.cache[session.id] = session
