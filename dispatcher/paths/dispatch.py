"""The one dispatch point: which path serves a call, and the call going there.

Every caller (the MCP endpoint, the dispatcher's own tools, the task runner) hands a
``ToolCall`` and an ``Answer`` here; the path is chosen once, by the tool's catalog entry:

- ``builtin``: the dispatcher's own tools (fan-out, pipelines) run in-process;
- ``bus``: tools on the bus (``EDGEFLEET_BUS_TOOLS`` or declared by the agent) when a
  replica consumes it;
- ``cache``: read-only tools that declare a TTL, answered from memory when the same
  arguments were answered within it;
- ``direct``: everything else, over the warm pool to the nearest healthy replica.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.paths.answer import Answer, ForwardingAnswer, send_result
from edgefleet.dispatcher.paths.cache import ResultCache, final_result
from edgefleet.dispatcher.paths.route import Route

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.paths.bus import BusPath
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.paths.direct import DirectPath


class CallPaths:
    def __init__(self, direct: DirectPath, bus: BusPath | None, cache: ResultCache) -> None:
        self.direct = direct
        self.bus = bus
        self.cache = cache

    def path_of(self, entry: ToolEntry) -> str:
        """Where calls of ``entry`` run: builtin, bus or direct (the cache is decided per call)."""
        if entry.handler is not None:
            return "builtin"
        if entry.path == "bus" and self.bus is not None and self.bus.serves(entry):
            return "bus"
        return "direct"

    async def call(self, call: ToolCall, answer: Answer) -> None:
        """Run ``call`` and deliver its answer (errors before anything was sent are raised)."""
        entry, obs = call.entry, call.obs
        path = self.path_of(entry)
        if obs is not None:
            obs.path = path
        if path == "builtin":
            assert entry.handler is not None
            result: dict[str, Any] = await entry.handler(call)
            if obs is not None and result.get("isError"):
                obs.outcome = "tool_error"
            if call.modern:
                result = {**result, "resultType": "complete"}
            await send_result(answer, call.request_id, result, Route("builtin", region=obs.region if obs else None))
            return
        if path == "bus":
            assert self.bus is not None
            await self.bus.call(call, answer)
            return
        # A caller pinned to regions (X-Edge-Region: ...;only) must not get a result computed elsewhere.
        key = (
            self.cache.key(entry.public_name, call.arguments)
            if entry.cache_ttl_s and self.cache.enabled and not call.order.only
            else None
        )
        if key is None:
            await self.direct.call(call, answer)
            return
        cached = self.cache.get(key)
        if cached is not None:
            if obs is not None:
                obs.path = "cache"
            message = b'{"jsonrpc":"2.0","id":' + orjson.dumps(call.request_id) + b',"result":' + cached + b"}"
            await answer.send_json(200, message, Route("cache"))
            return
        recording = _Recording(answer)
        await self.direct.call(call, recording)
        result_bytes = final_result(bytes(recording.body), stream=recording.stream)
        if result_bytes is not None:
            self.cache.put(key, entry.cache_ttl_s, result_bytes)


class _Recording(ForwardingAnswer):
    """Passes an answer on and keeps a copy (for the result cache)."""

    __slots__ = ("body", "stream")

    def __init__(self, inner: Answer) -> None:
        super().__init__(inner)
        self.body = bytearray()
        self.stream = False

    async def open_stream(self, route: Route | None) -> None:
        self.stream = True
        await self.inner.open_stream(route)

    async def send_events(self, events: bytes) -> None:
        self.body += events
        await self.inner.send_events(events)

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        if status == 200:
            self.body += body
        await self.inner.send_json(status, body, route)
