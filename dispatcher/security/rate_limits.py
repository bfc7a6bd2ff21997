"""Per-identity and per-tool rate limits shared by every dispatcher replica (Redis), a
per-identity limit on the task methods (``tasks/*``, ``/v1/tasks``), and a per-identity
concurrency cap (per dispatcher process).

The ``limits`` library's moving-window limiter (an atomic Lua script on Redis) does the
counting, so two dispatchers on one Redis enforce one budget. Limits are written like
``600/minute`` or ``10/second``. If Redis cannot be asked, calls are let through and a
warning is logged: the limiter must not turn a Redis blip into an outage.

The per-call hit sends the library's own moving-window script with its own keys, but
through ``redis_script.ScriptClient`` (one pipelined connection) instead of redis-py's
pool: the same count in Redis for a third of the dispatcher's CPU (issue 19). The library
still answers the rare questions (the window's reset time of a refused call). A busy key
asks Redis for its next ~100 ms of hits at once (``rate_lease``: Redis never counts over
the budget, at most 1 % of the limit is leased at a time).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.bridge import RedisBridge
from limits.aio.strategies import MovingWindowRateLimiter

from edgefleet.dispatcher.security import redis_script
from edgefleet.dispatcher.security.rate_lease import Leases
from edgefleet.shared.errors import ConfigError, RateLimited
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.limits")
# The task-method limit counts in its own keys: polling tasks/get must not spend the
# identity's budget for tool calls, nor the other way round.
TASK_NAMESPACE = "TASKS"


def _parse(spec: str, setting: str) -> RateLimitItem:
    try:
        return parse(spec)
    except ValueError:
        raise ConfigError(f"{setting}: {spec!r} is not a rate like 600/minute or 10/second") from None


class RateLimits:
    def __init__(self, settings: DispatcherSettings) -> None:
        self.per_identity = _parse(settings.rate_limit, "EDGEFLEET_RATE_LIMIT") if settings.rate_limit else None
        self.per_tool: list[tuple[str, RateLimitItem]] = []
        for item in settings.tool_rate_limits:
            pattern, sep, spec = item.partition("=")
            if not sep:
                raise ConfigError(f"EDGEFLEET_TOOL_RATE_LIMITS: {item!r} must look like 'text.*=10/second'")
            self.per_tool.append((pattern.strip(), _parse(spec.strip(), "EDGEFLEET_TOOL_RATE_LIMITS")))
        self.per_task_method: RateLimitItem | None = None
        if settings.task_rate_limit:
            rate = _parse(settings.task_rate_limit, "EDGEFLEET_TASK_RATE_LIMIT")
            self.per_task_method = type(rate)(rate.amount, rate.multiples, namespace=TASK_NAMESPACE)
        self.max_concurrent = settings.max_concurrent_calls
        self.inflight: dict[str, int] = defaultdict(int)
        self.limiter: MovingWindowRateLimiter | None = None
        self.script: redis_script.ScriptClient | None = None
        self.key_prefix = f"{settings.redis_prefix}:ratelimit"
        self._keys: dict[tuple[int, tuple[str, ...]], tuple[str]] = {}
        self.leases = Leases(settings.rate_limit_lease_ms / 1000)
        if self.per_identity is not None or self.per_tool or self.per_task_method is not None:
            storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                key_prefix=self.key_prefix,
                wrap_exceptions=True,
            )
            self.limiter = MovingWindowRateLimiter(storage)
            if redis_script.supports(settings.redis_url):
                # The library's script, keys and arguments (acquire_entry): one budget with it.
                self.script = redis_script.ScriptClient(settings.redis_url, RedisBridge.SCRIPT_ACQUIRE_MOVING_WINDOW)
        self.refused: dict[str, int] = defaultdict(int)  # kind -> count, for /metrics

    @property
    def enabled(self) -> bool:
        return self.limiter is not None

    async def admit(self, identity: str, tool: str) -> None:
        """Count one call; raise RateLimited (with the seconds to wait) when over a limit."""
        if self.limiter is None:
            return
        item = self.per_identity
        if item is not None:
            key = self._key(item, (identity,))
            # A hit from this dispatcher's lease needs no await (rate_lease): most calls of a busy identity.
            if not self.leases.take_local(key, item.amount) and not await self._hit(
                "identity", item, (identity,), f"{identity!r}", key
            ):
                return
        for pattern, item in self.per_tool:
            if fnmatch.fnmatchcase(tool, pattern):
                keys = (identity, pattern)
                key = self._key(item, keys)
                if not self.leases.take_local(key, item.amount) and not await self._hit(
                    "tool", item, keys, f"{identity!r} on {tool}", key
                ):
                    return

    async def admit_task_method(self, identity: str) -> None:
        """Count one task request (``tasks/*`` of either era, a ``/v1/tasks`` route)."""
        if self.limiter is not None and self.per_task_method is not None:
            keys = (identity,)
            key = self._key(self.per_task_method, keys)
            await self._hit("task", self.per_task_method, keys, f"{identity!r} on task requests", key)

    async def _hit(self, kind: str, item: RateLimitItem, keys: tuple[str, ...], what: str, key: tuple[str]) -> bool:
        """Count one hit: True if within the limit, False if Redis could not be asked (let
        through), RateLimited if over it."""
        assert self.limiter is not None
        try:
            if await self._acquire(item, keys, key):
                return True
            stats = await self.limiter.get_window_stats(item, *keys)
        except Exception as exc:  # noqa: BLE001 - fail open: see the module docstring
            log.warning(
                "rate limit not checked (Redis: %s); %s let through", exc, "task request" if kind == "task" else "call"
            )
            return False
        self.refused[kind] += 1
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"Rate limit {item} exceeded for {what}; retry in {retry_after} s.",
            data={"retry_after_s": retry_after, "limit": str(item), "scope": kind},
        )

    def _key(self, item: RateLimitItem, keys: tuple[str, ...]) -> tuple[str]:
        """The Redis key of ``item`` for ``keys``, as the library names it (cached: formatting it costs)."""
        cache_key = (id(item), keys)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            key = self._keys[cache_key] = (f"{self.key_prefix}:{item.key_for(*keys)}",)
        return key

    async def _acquire(self, item: RateLimitItem, keys: tuple[str, ...], key: tuple[str]) -> bool:
        """One hit on the moving window, from a new lease on it when the key is busy (``rate_lease``)."""
        script = self.script

        async def ask(amount: int) -> bool:
            # ``MovingWindowRateLimiter.hit``: same key, same script, ``amount`` hits at once.
            if script is None:
                assert self.limiter is not None
                return await self.limiter.hit(item, *keys, cost=amount)
            return bool(await script.call(key, (time.time(), item.amount, item.get_expiry(), amount)))

        return await self.leases.take(key, item.amount, ask)

    async def aclose(self) -> None:
        if self.script is not None:
            await self.script.aclose()

    @contextmanager
    def slot(self, identity: str) -> Iterator[None]:
        """Hold one of the identity's concurrent-call slots in this dispatcher."""
        if self.max_concurrent and self.inflight[identity] >= self.max_concurrent:
            self.refused["concurrency"] += 1
            raise RateLimited(
                f"{identity!r} already has {self.max_concurrent} calls in flight here; retry when one ends.",
                data={"retry_after_s": 1, "limit": self.max_concurrent, "scope": "concurrency"},
            )
        self.inflight[identity] += 1
        try:
            yield
        finally:
            self.inflight[identity] -= 1
            if not self.inflight[identity]:
                del self.inflight[identity]
