"""An agent that breaks its promises on request, for the result-check tests.

The MCP side is a raw ASGI server (no SDK server objects, which may check their own
output): it answers exactly what a test asks for - results that break the declared
``outputSchema``, no ``structuredContent``, answers of any size, streams that never end.
Fleet membership (registration, heartbeats, the bus worker) is the agent SDK's, so the
tools are reachable over the direct path and over the bus like any agent's.

    python -m tests.support.misbehaving_agent --region eu-west --port 0
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from edgefleet.agents import Agent
from edgefleet.agents.asgi import InflightCounter
from edgefleet.shared.constants import META_EDGE_PATH, MODERN_PROTOCOL_VERSION
from edgefleet.shared.settings import AgentSettings

WEATHER_OUTPUT = {
    "type": "object",
    "properties": {"celsius": {"type": "number"}, "conditions": {"type": "string"}},
    "required": ["celsius", "conditions"],
}
WEATHER_INPUT = {
    "type": "object",
    "properties": {"mode": {"enum": ["good", "wrong_type", "missing", "tool_error"]}, "stream": {"type": "boolean"}},
    "required": ["mode"],
}
BLOB_INPUT = {
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 0},
        "stream": {"type": "boolean"},  # the bytes as log notifications, then a small result
        "chunked": {"type": "boolean"},  # a JSON body without Content-Length
        "forever": {"type": "boolean"},  # log notifications until the caller goes away
    },
}
BUS = {META_EDGE_PATH: "bus"}
TOOLS = [
    {
        "name": "weather",
        "description": "Weather, conforming to its outputSchema or not (mode).",
        "inputSchema": WEATHER_INPUT,
        "outputSchema": WEATHER_OUTPUT,
    },
    {
        "name": "weather_bus",
        "description": "weather, over the bus.",
        "inputSchema": WEATHER_INPUT,
        "outputSchema": WEATHER_OUTPUT,
        "_meta": BUS,
    },
    {"name": "blob", "description": "An answer of about `size` bytes (no outputSchema).", "inputSchema": BLOB_INPUT},
    {"name": "blob_bus", "description": "blob, over the bus.", "inputSchema": BLOB_INPUT, "_meta": BUS},
    {
        "name": "deep",
        "description": "A result whose structuredContent nests `depth` arrays (written by hand: orjson stops at 254).",
        "inputSchema": {"type": "object", "properties": {"depth": {"type": "integer", "minimum": 1}}},
    },
]
# A wide or fat tool list on request (issue 16: one agent with 100,000 tools, ~12 MB of
# tools/list, took the fleet down): MISBEHAVING_EXTRA_TOOLS=N adds N small tools,
# MISBEHAVING_SCHEMA_BYTES=N one tool whose definition is about N bytes.
EXTRA_TOOLS = int(os.environ.get("MISBEHAVING_EXTRA_TOOLS", "0"))
SCHEMA_BYTES = int(os.environ.get("MISBEHAVING_SCHEMA_BYTES", "0"))
TOOLS += [
    {
        "name": f"tool_{i:06d}",
        "description": f"Extra tool number {i}, here to make the list long.",
        "inputSchema": {"type": "object", "properties": {"x": {"type": "integer"}}},
    }
    for i in range(EXTRA_TOOLS)
]
if SCHEMA_BYTES:
    TOOLS.append(
        {
            "name": "fat",
            "description": "A tool with a large schema.",
            "inputSchema": {
                "type": "object",
                "properties": {"x": {"type": "string", "description": "d" * SCHEMA_BYTES}},
            },
        }
    )
TOOLS_LIST = orjson.dumps(TOOLS)  # encoded once: answering tools/list must not be this agent's bottleneck
WEATHER = {"good": {"celsius": 21.5, "conditions": "sunny"}, "wrong_type": {"celsius": "hot", "conditions": "sunny"}}
PIECE = 4096
# A "forever" stream still ends: a leftover agent process must not stream for hours.
FOREVER_CAP_S = 60.0
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def weather_result(mode: str) -> dict[str, Any]:
    if mode == "tool_error":
        return {"content": [{"type": "text", "text": "the weather station is unreachable"}], "isError": True}
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": orjson.dumps(WEATHER.get(mode, WEATHER["good"])).decode()}]
    }
    if mode != "missing":
        result["structuredContent"] = WEATHER[mode]
    return result


def response(request_id: Any, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"resultType": "complete", **result}})


def event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


def log_event(data: str) -> bytes:
    return event({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": data}})


class Call:
    """One HTTP request: its JSON-RPC message, and whether the caller has gone away."""

    def __init__(self, receive: Any, send: Any, message: dict[str, Any]) -> None:
        self.send = send
        self.message = message
        self.gone = asyncio.Event()
        self._watch = asyncio.create_task(self._watch_disconnect(receive))

    async def _watch_disconnect(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    async def json(self, body: bytes, *, chunked: bool = False) -> None:
        headers = JSON if chunked else [*JSON, (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        pieces = [body[i : i + PIECE] for i in range(0, len(body), PIECE)] if chunked else [body]
        for piece in pieces:
            if self.gone.is_set():
                return
            await self.send({"type": "http.response.body", "body": piece, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})

    async def stream(self, events: Any) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": SSE})
        async for data in events:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})

    def close(self) -> None:
        self._watch.cancel()


async def tools_call(call: Call, request_id: Any, params: dict[str, Any]) -> None:
    name, arguments = params.get("name"), params.get("arguments") or {}
    if name in ("weather", "weather_bus"):
        answer = response(request_id, weather_result(arguments.get("mode", "good")))
        if not arguments.get("stream"):
            await call.json(answer)
            return

        async def weather_events() -> Any:
            yield log_event("reading the sensors")
            yield b"event: message\ndata: " + answer + b"\n\n"

        await call.stream(weather_events())
    elif name in ("blob", "blob_bus"):
        size = int(arguments.get("size", 0))
        if arguments.get("forever"):
            await call.stream(forever(call))
        elif arguments.get("stream"):
            await call.stream(blob_events(request_id, size))
        else:
            await call.json(
                response(request_id, {"content": [{"type": "text", "text": "x" * size}]}),
                chunked=bool(arguments.get("chunked")),
            )
    elif name == "deep":
        depth = int(arguments.get("depth", 1))
        await call.json(
            b'{"jsonrpc":"2.0","id":'
            + orjson.dumps(request_id)
            + b',"result":{"resultType":"complete","content":[{"type":"text","text":"deep"}],"structuredContent":'
            + b'{"deep":'
            + b"[" * depth
            + b"]" * depth
            + b"}}}"
        )
    else:
        await call.json(
            orjson.dumps(
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"Unknown tool: {name}"}}
            )
        )


async def blob_events(request_id: Any, size: int) -> Any:
    for _ in range(0, size, PIECE):
        yield log_event("x" * PIECE)
    yield b"event: message\ndata: " + response(request_id, {"content": [{"type": "text", "text": "done"}]}) + b"\n\n"


async def forever(call: Call) -> Any:
    """Log notifications until the caller disconnects; says so on stdout (the tests wait
    for that line to know the dispatcher cut the stream off)."""
    sent = 0
    started = time.monotonic()
    try:
        while not call.gone.is_set() and time.monotonic() - started < FOREVER_CAP_S:
            yield log_event("x" * PIECE)
            sent += 1
            await asyncio.sleep(0.002)  # pacing: a few MB/s, not a busy loop
    finally:
        print(f"MISBEHAVING_STREAM_STOPPED events={sent} caller_gone={call.gone.is_set()}", flush=True)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        part = await receive()
        body += part.get("body", b"")
        if not part.get("more_body"):
            break
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or "id" not in message:  # notifications, and GET/DELETE
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    call = Call(receive, send, message)
    try:
        await answer(call, message["id"], message.get("method"), message.get("params") or {})
    finally:
        call.close()


async def answer(call: Call, request_id: Any, method: Any, params: dict[str, Any]) -> None:
    if method == "tools/call":
        await tools_call(call, request_id, params)
        return
    if method == "server/discover":
        result: dict[str, Any] = {
            "supportedVersions": [MODERN_PROTOCOL_VERSION],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "misbehaving", "version": "1.0.0"},
        }
    elif method == "tools/list":
        await call.json(
            b'{"jsonrpc":"2.0","id":' + orjson.dumps(request_id) + b',"result":{"tools":' + TOOLS_LIST + b"}}"
        )
        return
    elif method == "ping":
        result = {}
    else:
        await call.json(
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": -32601, "message": f"Method not found: {method}"},
                }
            )
        )
        return
    await call.json(orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}))


class MisbehavingAgent(Agent):
    def asgi_app(self, settings: AgentSettings) -> InflightCounter:
        return InflightCounter(app)


agent = MisbehavingAgent("misbehaving", description="Breaks its promises on request (tests).", version="1.0.0")

if __name__ == "__main__":
    agent.main()
