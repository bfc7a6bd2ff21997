"""2025-era MCP sessions (``Mcp-Session-Id``), kept in Redis so any dispatcher replica
behind a load balancer can serve any session. A local cache keeps the common case (the
session's next request lands on the same dispatcher) free of Redis round trips.

Bounded whatever clients do (principle 8):

- what a session keeps of its ``initialize`` (``clientInfo`` and ``capabilities``, which
  ride along on every call to agents of the 2026 era) is at most ``MAX_DECLARED_BYTES``;
  more is refused with ``invalid_params``;
- one identity holds at most ``max_per_owner`` sessions across the fleet (a sorted set per
  owner in Redis, by last use): opening one more ends its least recently used session,
  whose next request gets 404 and, as the spec says, opens a new one;
- the local cache holds at most ``cache_size`` sessions and ``cache_bytes`` of them, least
  recently used out first (Redis still has them).

When Redis cannot be asked, a session this dispatcher has cached keeps working (its lease
is renewed once Redis is back); anything that needs Redis gets ``store_unavailable``
(HTTP 503), never a 500.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import InvalidParams, StoreUnavailable

log = logging.getLogger("edgefleet.sessions")

# clientInfo + capabilities as JSON; real clients send a few hundred bytes.
MAX_DECLARED_BYTES = 16 * 1024
# Longest session id looked up in Redis (ours are 32 characters).
MAX_ID_LENGTH = 128

# Store a session and index it under its owner; end the owner's least recently used
# sessions beyond the cap (their keys too). Returns the ids it ended.
# KEYS: session, owner's index ; ARGV: id, json, ttl ms, now ms, cap, session key prefix
_CREATE = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
local ended = {}
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], over)  -- id, score, id, score...
  for i = 1, #popped, 2 do
    redis.call('DEL', ARGV[6] .. popped[i])
    table.insert(ended, popped[i])
  end
end
return ended
"""


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
    size: int = 0  # bytes of its JSON (the cache's budget)

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
    # Refresh the Redis TTL at most this often per session (not on every call); shorter
    # for short session lifetimes, so a session in use never lapses.
    TOUCH_EVERY_S = 30.0

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        ttl_s: float,
        *,
        max_per_owner: int = 1000,
        cache_size: int = 10_000,
        cache_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self.touch_every_s = min(self.TOUCH_EVERY_S, ttl_s / 4)
        self.max_per_owner = max_per_owner
        self.cache: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._create = redis.register_script(_CREATE)
        self._owners_prefix = f"{keys.prefix}:sessions:of:"
        self._warned_at = 0.0

    def owner_key(self, owner: str) -> str:
        """ZSET session id -> last use (ms) of ``owner``'s sessions."""
        return self._owners_prefix + owner

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
        declared = len(orjson.dumps(client_info)) + len(orjson.dumps(capabilities))
        if declared > MAX_DECLARED_BYTES:
            raise InvalidParams(
                f"initialize: clientInfo and capabilities take {declared} bytes; a session keeps at most "
                f"{MAX_DECLARED_BYTES}.",
                data={"max_bytes": MAX_DECLARED_BYTES},
            )
        data = session.to_json()
        session.size = len(data)
        try:
            ended = await self._create(
                keys=[self.keys.session(session.id), self.owner_key(owner)],
                args=[session.id, data, self.ttl_ms, _now_ms(), self.max_per_owner, self.keys.session("")],
            )
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        for old in ended:
            self._forget(old.decode() if isinstance(old, bytes) else str(old))
        if ended:
            log.info(
                "%r opened more than %d sessions: ended its %d least recently used",
                owner,
                self.max_per_owner,
                len(ended),
            )
        self._remember(session)
        return session

    async def get(self, session_id: str) -> Session | None:
        session = self.cache.get(session_id)
        now = time.monotonic()
        if session is not None:
            self.cache.move_to_end(session_id)
            if now - session.touched > self.touch_every_s:
                session.touched = now
                try:
                    alive = await self._touch(session)
                except redis.exceptions.RedisError as exc:
                    # Serve it from here meanwhile: the session is ours to check (owner, view),
                    # and its lease is renewed at the next touch once Redis is back.
                    self._warn(f"session lease not renewed ({exc}); serving sessions cached here")
                    return session
                if not alive:
                    self._forget(session_id)  # ended elsewhere, or expired
                    return None
            return session
        if len(session_id) > MAX_ID_LENGTH:
            return None
        try:
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
                size=len(raw),
            )
            await self._touch(session)
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        self._remember(session)
        return session

    async def save(self, session: Session) -> None:
        data = session.to_json()
        try:
            await self.redis.set(self.keys.session(session.id), data, px=self.ttl_ms)
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        self.cached_bytes += len(data) - session.size
        session.size = len(data)

    async def delete(self, session_id: str) -> bool:
        session = self._forget(session_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.session(session_id))
                if session is not None:
                    pipe.zrem(self.owner_key(session.owner), session_id)
                deleted, *_ = await pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _unavailable(exc) from None
        return bool(deleted)

    async def _touch(self, session: Session) -> bool:
        """Renew the session's lease and its place in its owner's index; False when gone."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(self.keys.session(session.id), self.ttl_ms)
            pipe.zadd(self.owner_key(session.owner), {session.id: _now_ms()}, xx=True)
            pipe.pexpire(self.owner_key(session.owner), self.ttl_ms)
            alive, *_ = await pipe.execute()
        return bool(alive)

    def _remember(self, session: Session) -> None:
        self._forget(session.id)
        self.cache[session.id] = session
        self.cached_bytes += session.size
        while self.cache and (len(self.cache) > self.cache_size or self.cached_bytes > self.cache_bytes):
            _, oldest = self.cache.popitem(last=False)  # Redis still has it
            self.cached_bytes -= oldest.size

    def _forget(self, session_id: str) -> Session | None:
        session = self.cache.pop(session_id, None)
        if session is not None:
            self.cached_bytes -= session.size
        return session

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning(message)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"2025-era sessions live in Redis, which cannot be asked right now ({exc}); retry shortly.")
