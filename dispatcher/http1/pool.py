"""Keep-alive connection pools, one per origin (scheme, host, port), and the request call.

Idle connections are reused last-in first-out (the warmest first; the oldest age out) and
closed by us after ``idle_timeout_s``, which should sit below the replicas' own keep-alive
timeout so idle closes normally happen on our side and the keep-alive race stays rare.
When all ``max_per_origin`` connections are busy, callers queue in order for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from edgefleet.dispatcher.http1.connection import Connection, Limits
from edgefleet.dispatcher.http1.errors import (
    ClosedBeforeRequest,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    PoolClosed,
    PoolTimeout,
)
from edgefleet.dispatcher.http1.response import Response

Headers = Sequence[tuple[bytes, bytes]] | bytes
"""Request headers: (name, value) pairs, or prebuilt ``b"name: value\\r\\n..."`` lines."""

PeerCheck = Callable[[str], None]
"""Called with the IP address a new connection reached; raising refuses it."""

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Host name and port -> the IP addresses to try, in order (``system_resolver`` by default)."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver (getaddrinfo) gives for ``host``, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_OWNED = frozenset((b"host", b"content-length", b"transfer-encoding", b"connection"))
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
_MAX_URL_CACHE = 4096


class _Origin:
    """The connections to one scheme://host:port."""

    __slots__ = (
        "closed",
        "connecting",
        "conns",
        "host",
        "host_line",
        "idle",
        "literal",
        "name",
        "pool",
        "port",
        "ssl",
        "waiters",
    )

    def __init__(self, pool: UpstreamPool, name: str, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self.pool = pool
        self.name = name
        self.host = host
        self.port = port
        self.ssl = context
        try:
            ipaddress.ip_address(host)
            self.literal = True  # an IP address: nothing to resolve
        except ValueError:
            self.literal = False
        default = 443 if context is not None else 80
        authority = f"[{host}]" if ":" in host else host
        if port != default:
            authority += f":{port}"
        self.host_line = b"host: " + authority.encode("idna" if not authority.isascii() else "ascii") + b"\r\n"
        self.idle: deque[Connection] = deque()
        self.conns: set[Connection] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    # -- the request bytes -----------------------------------------------------------------
    def encode(self, method: str | bytes, target: str | bytes, headers: Headers, body: bytes) -> bytes:
        """The request line, our Host and Content-Length, the caller's headers, the body."""
        m = method.encode("ascii") if isinstance(method, str) else method
        t = target.encode("ascii") if isinstance(target, str) else target
        if not _TOKEN.match(m) or not t.startswith(b"/") or _BAD_TARGET.search(t):
            raise ValueError(f"invalid request line: {m!r} {t!r}")
        if isinstance(headers, bytes):
            # Prebuilt by the caller (once, not per call): trusted to be well-formed lines.
            if headers and not headers.endswith(b"\r\n"):
                raise ValueError("prebuilt header bytes must end with CRLF")
            lines = headers
        else:
            lines = b"".join(_header_line(name, value) for name, value in headers)
        length = b"content-length: %d\r\n" % len(body) if body or m in _BODY_METHODS else b""
        head = b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (m, t, self.host_line, length, lines)
        return head + body if body else head

    # -- checking connections out and in ---------------------------------------------------
    async def acquire(self, check_peer: PeerCheck | None, fresh: bool) -> Connection:
        """A connection to use now: the most recently used idle one, else a new one, else
        the next one freed. ``fresh``: a new connection (an idle one is closed for room)."""
        pool = self.pool
        deadline: float | None = None
        while True:
            if self.closed:
                raise PoolClosed(f"the pool for {self.name} is closed")
            idle = self.idle
            room = len(self.conns) + self.connecting < pool.max_per_origin
            if idle:
                if fresh:
                    if not room:
                        self.drop(idle[0])  # make room with the oldest idle one
                    return await self.connect(check_peer)
                conn = idle.pop()
                if pool.loop.time() - conn.idle_since > pool.idle_timeout_s:
                    # This one and every older one outlived our idle timeout: the replica
                    # may be closing them right now. Close them instead of racing it.
                    self.drop(conn)
                    while idle:
                        self.drop(idle[0])
                    continue
                conn.reused = True
                if check_peer is not None and conn.checked_by != check_peer:
                    self._check(conn, check_peer)
                return conn
            if room:
                return await self.connect(check_peer)
            if deadline is None and pool.acquire_timeout_s is not None:
                deadline = pool.loop.time() + pool.acquire_timeout_s
            await self._wait_for_slot(deadline)

    async def connect(self, check_peer: PeerCheck | None) -> Connection:
        """Open one connection (checked out to the caller): resolve the host name with the
        pool's resolver (within the connect timeout) and try its addresses in order."""
        pool = self.pool
        conn: Connection | None = None
        self.connecting += 1
        try:
            async with asyncio.timeout(pool.connect_timeout_s):
                addresses = [self.host] if self.literal else await pool.resolver(self.host, self.port)
                if not addresses:
                    raise OSError(f"{self.host!r} resolves to no address")
                failure: OSError | None = None
                for address in addresses:
                    try:
                        conn = await self._open(address)
                    except OSError as exc:
                        failure = failure or exc
                        continue
                    break
                if conn is None:
                    assert failure is not None
                    raise failure
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.name} within {pool.connect_timeout_s:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            raise ConnectFailed(f"cannot connect to {self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.connecting -= 1
            if conn is None:
                self._wake_one()  # a slot is free again: a queued caller may connect
        conn.on_close = self.drop
        self.conns.add(conn)
        if conn.closed:  # closed by the replica before we got here: its on_close was not set yet
            self.drop(conn)
            raise ClosedBeforeRequest(f"{self.name} closed the connection as soon as it opened")
        if self.closed:
            self.drop(conn)
            raise PoolClosed(f"the pool for {self.name} is closed")
        if check_peer is not None:
            self._check(conn, check_peer)
        return conn

    async def _open(self, address: str) -> Connection:
        conn = Connection(self.pool.loop, self.pool.limits, track_acks=self.ssl is None)
        await self.pool.loop.create_connection(
            lambda: conn, address, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
        )
        return conn

    def release(self, conn: Connection) -> None:
        """Back to idle if the exchange completed and the connection may be reused; else closed."""
        if conn.dropped:
            return
        if not conn.complete or not conn.reusable or conn.closed or conn.error is not None or self.closed:
            self.drop(conn)
            return
        self.park(conn)

    def park(self, conn: Connection) -> None:
        conn.park(self.pool.loop.time())
        self.idle.append(conn)
        self.pool.idle_added()
        self._wake_one()

    def drop(self, conn: Connection) -> None:
        """Close ``conn`` and free its slot (idempotent; also the transport's on_close)."""
        if conn.dropped:
            return
        conn.dropped = True
        self.conns.discard(conn)
        if conn.in_flight:
            if not conn.complete:
                conn.fail(ConnectionLost("the connection was closed on this side (closed, cancelled or shut down)"))
        else:
            with contextlib.suppress(ValueError):  # checked out, not yet used
                self.idle.remove(conn)
        conn.abort()
        self._wake_one()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            self.drop(conn)
        while self.waiters:
            self._wake_one()

    def _check(self, conn: Connection, check_peer: PeerCheck) -> None:
        try:
            check_peer(conn.peer)
        except BaseException:
            self.drop(conn)
            raise
        conn.checked_by = check_peer

    async def _wait_for_slot(self, deadline: float | None) -> None:
        waiter = self.pool.loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken but leaving: hand the wake to the next in line
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"all {self.pool.max_per_origin} connections to {self.name} stayed busy "
                    f"for {self.pool.acquire_timeout_s:g} s"
                ) from None
            raise

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class UpstreamPool:
    """HTTP/1.1 keep-alive pools to agent replicas, one per origin; never follows redirects.

    ``max_per_origin`` connections at most per origin (callers queue beyond that, up to
    ``acquire_timeout_s`` if set); a connection must open within ``connect_timeout_s``;
    idle ones close after ``idle_timeout_s``. Host names are resolved by ``resolver`` (the
    system's getaddrinfo by default) when a connection opens, and its addresses tried in
    order. ``https`` origins use ``ssl_context`` (made once per pool if not given). Response heads are bounded by ``max_header_bytes`` and
    ``max_headers``; unread body bytes by ``high_water`` (reading pauses beyond it).
    Use from one event loop.
    """

    def __init__(
        self,
        *,
        max_per_origin: int = 32,
        connect_timeout_s: float = 2.0,
        idle_timeout_s: float = 60.0,
        acquire_timeout_s: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
        high_water: int = 256 * 1024,
        resolver: Resolver | None = None,
    ) -> None:
        if max_per_origin < 1:
            raise ValueError("max_per_origin must be at least 1")
        self.max_per_origin = max_per_origin
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self.limits = Limits(max_header_bytes, max_headers, high_water)
        self.resolver: Resolver = resolver or system_resolver
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_url: dict[str, _Origin] = {}
        self._by_key: dict[tuple[str, str, int], _Origin] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.stale_retries = 0
        """Requests resent on a fresh connection after the keep-alive race (for /metrics)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def request(
        self,
        url: str,
        method: str | bytes,
        path: str | bytes,
        headers: Headers = (),
        body: bytes = b"",
        *,
        head_timeout_s: float | None = None,
        accept_timeout_s: float | None = None,
        check_peer: PeerCheck | None = None,
    ) -> Response:
        """Send one request to the origin of ``url`` (its path is ignored; ``path`` is the
        request target) and return once the response head has arrived.

        ``headers`` must not include Host, Content-Length, Transfer-Encoding or Connection:
        the pool writes Host and Content-Length itself. ``head_timeout_s`` bounds the time
        from writing the request to a complete response head; the whole exchange is bounded
        by the caller (``asyncio.timeout``). ``accept_timeout_s`` bounds the time to the
        first head, interim or final: with ``Expect: 100-continue`` among ``headers`` a live
        server answers ``100 Continue`` as soon as it starts reading the request, however
        long the answer then takes (``AcceptTimeout``). ``check_peer`` sees the IP address
        of every connection before a request of this caller is written on it.

        Raises a ``RequestNotSent`` (safe to retry anywhere), a ``RequestMaybeSent``, or
        whatever ``check_peer`` raised. A reused connection found closed before the replica
        received anything is replaced by a fresh one once, transparently.
        """
        origin = self._by_url.get(url) or self._origin(url)
        data = origin.encode(method, path, headers, body)
        head_only = method == "HEAD" or method == b"HEAD"
        fresh = False
        while True:
            conn = await origin.acquire(check_peer, fresh)
            try:
                conn.send(data, head_timeout_s, head_only, accept_timeout_s)
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait()
            except ClosedBeforeRequest:
                origin.drop(conn)
                if conn.reused and not fresh:
                    fresh = True  # the keep-alive race: once, on a new connection
                    self.stale_retries += 1
                    continue
                raise
            except BaseException:
                origin.drop(conn)  # cancelled or failed: never reuse a half-used connection
                raise
            return Response(origin, conn)

    async def warm(self, url: str, n: int, *, check_peer: PeerCheck | None = None) -> int:
        """Open connections to the origin of ``url`` until it has ``n`` (at most
        ``max_per_origin``), parked idle. Returns how many were opened; if any failed,
        raises the first failure once the others are parked."""
        origin = self._by_url.get(url) or self._origin(url)
        want = min(n, self.max_per_origin) - len(origin.conns) - origin.connecting
        if want <= 0:
            return 0
        results = await asyncio.gather(
            *(self._warm_one(origin, check_peer) for _ in range(want)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return want

    async def _warm_one(self, origin: _Origin, check_peer: PeerCheck | None) -> None:
        origin.park(await origin.connect(check_peer))

    def counts(self) -> tuple[int, int]:
        """(idle, active) connections over every origin, for /metrics; active includes opening."""
        idle = total = 0
        for origin in self._by_key.values():
            idle += len(origin.idle)
            total += len(origin.conns) + origin.connecting
        return idle, total - idle

    def origin_counts(self, url: str) -> tuple[int, int]:
        """(idle, active) connections to the origin of ``url``."""
        origin = self._by_url.get(url) or self._origin(url)
        idle = len(origin.idle)
        return idle, len(origin.conns) + origin.connecting - idle

    def close_origin(self, url: str) -> None:
        """Close every connection to the origin of ``url`` (a replica left the fleet);
        responses still being read fail with ``ConnectionLost``, queued callers with
        ``PoolClosed``. A later request opens a new pool for it."""
        origin = self._by_url.get(url) or self._origin(url)
        origin.close()
        self._by_key = {k: o for k, o in self._by_key.items() if o is not origin}
        self._by_url = {u: o for u, o in self._by_url.items() if o is not origin}

    async def aclose(self) -> None:
        """Close every connection; requests after this raise ``PoolClosed``."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self._by_key.values():
            origin.close()
        if self._by_key:
            await asyncio.sleep(0)  # let the transports run connection_lost and close their sockets

    # -- internals ------------------------------------------------------------------------
    def _origin(self, url: str) -> _Origin:
        if self._closed:
            raise PoolClosed("the pool is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in an upstream URL are not supported; send an Authorization header")
        port = parts.port or (443 if scheme == "https" else 80)  # .port raises ValueError if invalid
        key = (scheme, parts.hostname, port)
        origin = self._by_key.get(key)
        if origin is None:
            context: ssl.SSLContext | None = None
            if scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()  # once per pool, never per call
                context = self._ssl
            origin = _Origin(self, f"{scheme}://{parts.netloc}", parts.hostname, port, context)
            self._by_key[key] = origin
        if len(self._by_url) >= _MAX_URL_CACHE:
            self._by_url.clear()
        self._by_url[url] = origin
        return origin

    def idle_added(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = self.loop.call_later(self.idle_timeout_s, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than idle_timeout_s; come back for the next one."""
        self._sweeper = None
        now = self.loop.time()
        oldest: float | None = None
        for origin in list(self._by_key.values()):
            idle = origin.idle
            while idle and now - idle[0].idle_since >= self.idle_timeout_s:
                origin.drop(idle[0])
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = self.loop.call_later(oldest + self.idle_timeout_s - now, self._sweep)


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``name: value\r\n`` lines, checked as ``request`` checks header pairs (no CR, LF or
    NUL, a token for a name, none of the headers the pool writes itself): build them once
    and pass the bytes as ``headers`` to skip the check per request."""
    return b"".join(_header_line(name, value) for name, value in headers)


def _header_line(name: bytes, value: bytes) -> bytes:
    if not _TOKEN.match(name) or _BAD_VALUE.search(value) or name.lower() in _OWNED:
        raise ValueError(f"header not allowed in an upstream request: {name!r}")
    return b"%s: %s\r\n" % (name, value)
