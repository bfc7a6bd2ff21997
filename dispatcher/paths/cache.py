"""Cache of tool results for read-only tools that declare a TTL (``_meta`` key
``dev.edgefleet/cacheTtlS`` next to ``readOnlyHint: true``; the agent SDK's
``@agent.tool(cache_ttl_s=...)`` sets both).

Keyed by the public tool name and the canonical (key-sorted) JSON of the arguments; only
successful results (not ``isError``) are kept, each for its tool's TTL, in this
dispatcher's memory (a hit must cost less than the call it saves, so not Redis).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from cachetools import TLRUCache

from edgefleet.shared import jsonrpc

# A result larger than this is not worth holding in memory for everyone.
MAX_CACHED_RESULT_BYTES = 256 * 1024


def _expires(_key: Any, value: tuple[float, bytes], now: float) -> float:
    return now + value[0]


class ResultCache:
    def __init__(self, max_entries: int) -> None:
        self.enabled = max_entries > 0
        self.entries: TLRUCache[tuple[str, bytes], tuple[float, bytes]] = TLRUCache(
            maxsize=max(1, max_entries), ttu=_expires, timer=time.monotonic
        )
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(tool: str, arguments: dict[str, Any]) -> tuple[str, bytes] | None:
        try:
            return (tool, orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS))
        except TypeError:
            return None

    def get(self, key: tuple[str, bytes]) -> bytes | None:
        """The cached ``result`` object (serialized JSON) or None."""
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return found[1]

    def put(self, key: tuple[str, bytes], ttl_s: float, result: bytes) -> None:
        if len(result) <= MAX_CACHED_RESULT_BYTES:
            self.entries[key] = (ttl_s, result)


def final_result(body: bytes, *, stream: bool) -> bytes | None:
    """The serialized ``result`` of a successful JSON-RPC response body (or SSE stream), else None."""
    message = jsonrpc.last_response(body, stream=stream)
    if message is None:
        return None
    result = message.get("result")
    if not isinstance(result, dict) or result.get("isError") or result.get("resultType", "complete") != "complete":
        return None
    return orjson.dumps(result)
