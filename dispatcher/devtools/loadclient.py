"""The load generator of ``edgefleet bench``: raw HTTP/1.1 on ``asyncio.Protocol`` + httptools.

A benchmark client must cost far less than what it measures, or it becomes the bottleneck
and hides the server's cost (an aiohttp client read 0.88 of direct where this one reads
0.45 on the same build: docs/architecture.md). Here every request is bytes built once per
session; a response is parsed by httptools (C) and checked with one substring search. What
this process spends per call is measured too (``time.process_time``) and reported beside
the servers' CPU, so a reader can tell who was the limit.

One ``Session`` is one keep-alive connection and, in the 2025-11-25 era, one MCP session
(``initialize`` + ``notifications/initialized`` first, its ``Mcp-Session-Id`` on every call).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
OK_MARKER = b'"isError":false'


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ProtocolError(Exception):
    pass


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request at a time, the response parsed by httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes, dict[bytes, bytes]]] | None = None
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport subclasses none of asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ProtocolError(f"connection closed ({exc})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body), self.headers))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def exchange(self, request: bytes) -> tuple[int, bytes, dict[bytes, bytes]]:
        if self.lost or self.transport is None:
            raise ProtocolError("connection is closed")
        self.body = []
        self.headers = {}
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _request(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


@dataclass(frozen=True)
class Target:
    """What one path of the bench calls: an MCP URL, a tool, an era, a credential."""

    url: str
    tool: str
    era: str = MODERN  # MODERN (stateless) or LEGACY (initialize, then a session)
    token: str | None = None
    arguments: dict[str, Any] = field(default_factory=lambda: {"text": "hello"})


class Session:
    """One connection (and, in the 2025 era, one MCP session) calling ``target.tool``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        parts = urlsplit(target.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.conn: _Conn | None = None
        self.call_request = b""

    def _headers(self, method: str, name: str | None, session_id: str | None) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": self.target.era,
        }
        if self.target.era == MODERN:
            headers["mcp-method"] = method
            if name is not None:
                headers["mcp-name"] = name
        if session_id is not None:
            headers["mcp-session-id"] = session_id
        if self.target.token:
            headers["authorization"] = f"Bearer {self.target.token}"
        return headers

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.conn = await loop.create_connection(_Conn, self.host, self.port)
        session_id = None
        params: dict[str, Any] = {"name": self.target.tool, "arguments": self.target.arguments}
        if self.target.era == MODERN:
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        else:
            session_id = await self._initialize()
        host = f"{self.host}:{self.port}"
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
        self.call_request = _request(host, self.path, self._headers("tools/call", self.target.tool, session_id), body)

    async def _initialize(self) -> str | None:
        assert self.conn is not None
        host = f"{self.host}:{self.port}"
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "edgefleet-bench", "version": "1"},
            },
        }
        status, body, headers = await self.conn.exchange(
            _request(host, self.path, self._headers("initialize", None, None), orjson.dumps(init))
        )
        if status != 200 or b'"protocolVersion"' not in body:
            raise ProtocolError(f"initialize at {self.target.url}: HTTP {status} {body[:200]!r}")
        raw = headers.get(b"mcp-session-id")
        session_id = raw.decode() if raw else None  # a stateless server gives none
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        status, body, _ = await self.conn.exchange(
            _request(host, self.path, self._headers("notifications/initialized", None, session_id), note)
        )
        if status not in (200, 202):
            raise ProtocolError(f"notifications/initialized at {self.target.url}: HTTP {status} {body[:200]!r}")
        return session_id

    async def call(self) -> bool:
        """One tools/call; True when it succeeded (HTTP 200 and a result without isError)."""
        assert self.conn is not None
        status, body, _ = await self.conn.exchange(self.call_request)
        return status == 200 and OK_MARKER in body

    async def call_checked(self) -> dict[bytes, bytes]:
        """One tools/call that must succeed; its response headers."""
        assert self.conn is not None
        status, body, headers = await self.conn.exchange(self.call_request)
        if status != 200 or OK_MARKER not in body:
            raise ProtocolError(f"tools/call {self.target.tool} at {self.target.url}: HTTP {status} {body[:300]!r}")
        return headers

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Round:
    """One path driven for a while: counts, latencies, and every watched process's CPU."""

    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]  # role -> CPU seconds spent in the round ("client" is this process)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


async def drive(sessions: list[Session], seconds: float, watch: dict[str, int], warm: int = 20) -> Round:
    """Every session calls back to back for ``seconds``; CPU of the processes in ``watch``
    (role -> pid) and of this process is read around the measured window."""
    for _ in range(warm):  # the steady state: connections, code paths and caches warm
        await asyncio.gather(*(s.call_checked() for s in sessions))
    latencies: list[float] = []
    errors = 0
    stop = False

    async def worker(session: Session) -> None:
        nonlocal errors
        clock = time.perf_counter
        while not stop:
            started = clock()
            try:
                ok = await session.call()
            except ProtocolError:
                ok = False
                await asyncio.sleep(0.01)
                session.close()
                await session.open()
            if ok:
                latencies.append((clock() - started) * 1000)
            else:
                errors += 1

    before = {role: process_cpu_s(pid) for role, pid in watch.items()}
    client0, wall0 = time.process_time(), time.perf_counter()
    workers = [asyncio.create_task(worker(s)) for s in sessions]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*workers)
    wall = time.perf_counter() - wall0
    cpu = {role: process_cpu_s(pid) - before[role] for role, pid in watch.items()}
    cpu["client"] = time.process_time() - client0
    return Round(len(latencies), errors, wall, latencies, cpu)


async def open_sessions(target: Target, count: int) -> list[Session]:
    sessions = [Session(target) for _ in range(count)]
    await asyncio.gather(*(s.open() for s in sessions))
    return sessions


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


__all__ = [
    "LEGACY",
    "MODERN",
    "ProtocolError",
    "Round",
    "Session",
    "Target",
    "drive",
    "median",
    "open_sessions",
    "percentile",
    "process_cpu_s",
    "process_rss_bytes",
]
