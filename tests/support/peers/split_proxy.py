"""A load balancer for two dispatcher replicas that always sends the client's *answers* to the
other one: ``python -m tests.support.peers.split_proxy URL_A URL_B``.

An answer is a POST whose body is a JSON-RPC response (2025: the client answering a
server->client request) or a request carrying ``inputResponses`` / ``requestState`` (2026:
the retry of an ``input_required`` round). Answers go to replica B, everything else to
replica A, so every round of a multi-round call crosses replicas: what issue 18 asks to
work ("the round may land on another dispatcher replica"). Bodies and SSE streams are
relayed chunk by chunk; a client that disconnects closes the upstream request (the 2026
cancel). Prints ``SPLIT {"event":"ready","port":N}`` once listening and one
``SPLIT {"event":"routed",...}`` line per request.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import uvicorn

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


def is_answer(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    if "method" not in message:
        return "result" in message or "error" in message
    params = message.get("params")
    return isinstance(params, dict) and ("inputResponses" in params or "requestState" in params)


def say(**fields: Any) -> None:
    print("SPLIT " + json.dumps(fields), flush=True)


class SplitProxy:
    def __init__(self, a: str, b: str) -> None:
        self.backends = {"a": a.rstrip("/"), "b": b.rstrip("/")}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        to = "b" if scope["method"] == "POST" and is_answer(body) else "a"
        path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        say(event="routed", to=to, method=scope["method"], path=scope["path"], bytes=len(body))
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.decode().lower() not in HOP_BY_HOP]
        relay = asyncio.create_task(self.relay(scope["method"], self.backends[to] + path, headers, body, send))

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            relay.cancel()  # the client went away: so does the upstream request

        watcher = asyncio.create_task(watch())
        try:
            await relay
        except asyncio.CancelledError:
            if not relay.cancelled():
                raise
        finally:
            watcher.cancel()

    async def relay(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, send: Any) -> None:
        request = self.client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": f"split proxy: {exc!r}".encode()})
            return
        try:
            out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def main() -> None:
    config = uvicorn.Config(SplitProxy(sys.argv[1], sys.argv[2]), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        say(event="ready", port=port)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
