"""Real servers on 127.0.0.1 for the upstream HTTP/1.1 client's tests.

``UvicornServer``: uvicorn (httptools) serving a small raw ASGI app in a thread with its own
event loop, as a well-behaved replica. ``RawServer``: an asyncio server in the test's loop
whose handler misbehaves on purpose (garbage, slow heads, early closes, ...).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import parse_qs

import orjson
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ReplicaApp:
    """Routes a replica-like server needs for the tests; counts what reached it."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.clients: set[int] = set()  # client ports: one per connection
        self.disconnects: Counter[str] = Counter()
        self.gate = threading.Event()
        self.redirect_to = "http://127.0.0.1:9/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        self.hits[path] += 1
        self.clients.add(scope["client"][1])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        handler = getattr(self, "_" + path.strip("/").replace("-", "_"), None)
        if handler is None:
            await _answer(send, 404, b"not found")
            return
        await handler(scope, query, body, receive, send)

    async def _echo(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        payload = orjson.dumps(
            {
                "method": scope["method"],
                "body": body.decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            }
        )
        await _answer(send, 200, payload, [(b"content-type", b"application/json")])

    async def _sse(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(int(query.get("n", "3"))):
            await send(
                {"type": "http.response.body", "body": b'event: message\ndata: {"i": %d}\n\n' % i, "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})

    async def _sse_gated(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        """One event, then the next only once the test says it received the first."""
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        opened = await asyncio.to_thread(self.gate.wait, 10)
        await send({"type": "http.response.body", "body": b"data: second\n\n" if opened else b"data: timeout\n\n"})

    async def _redirect(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await _answer(send, 307, b"", [(b"location", self.redirect_to.encode())])

    async def _wait(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        """Never answers; records when its client goes away (how a cancel reaches an agent)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnects[query.get("tag", "")] += 1

    async def _big(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await _answer(send, 200, b"x" * int(query["n"]))

    async def _stream(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        """``n`` chunks of ``size`` bytes (chunked encoding); n=0: never ends."""
        n, size = int(query.get("n", "0")), int(query.get("size", "16384"))
        gone = asyncio.create_task(_disconnected(receive))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent = 0
        while (n == 0 or sent < n) and not gone.done():
            await send({"type": "http.response.body", "body": b"y" * size, "more_body": True})
            await asyncio.sleep(0)  # let the server notice a client that went away
            sent += 1
        gone.cancel()
        await send({"type": "http.response.body", "body": b""})

    async def _close(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await _answer(send, 200, b"bye", [(b"connection", b"close")])

    async def _empty(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await _answer(send, int(query.get("status", "204")), b"")

    async def _repeat(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await _answer(
            send, 200, b"ok", [(b"x-a", b"1"), (b"X-A", b"2"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
        )

    async def _slow(self, scope: Scope, query: dict[str, str], body: bytes, receive: Receive, send: Send) -> None:
        await asyncio.sleep(float(query.get("s", "0.2")))
        await _answer(send, 200, b"slow")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole answer with its Content-Length, as Starlette's Response sends it."""
    headers = list(headers or [])
    if status not in (204, 304):
        headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class UvicornServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread of its own (its own event loop)."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options: dict[str, Any] = {"loop": "asyncio", "http": "httptools", "lifespan": "off", "log_level": "warning"}
        options.update(config)
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> Self:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("uvicorn did not start within 5 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A misbehaving server: ``handler`` runs once per connection, in the test's loop."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head and its Content-Length body, as bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")
