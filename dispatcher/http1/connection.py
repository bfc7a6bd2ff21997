"""One keep-alive HTTP/1.1 connection: an ``asyncio.Protocol`` fed to ``httptools``.

Everything here runs in the event loop's callbacks; the consumer (``Response``, the pool)
waits on ONE future per connection, created only when it has nothing to take. Body bytes
are appended to a list as the parser produces them and taken all at once, so a relay
wakes once per network read, not once per chunk (ARCHITECTURE.md, lesson 5).

Bounds: the response head (status line, headers, 1xx heads, trailers) is capped in bytes
and count. The raw bytes received since the last body byte are capped too (``gap``), because
the parser accumulates a field sent a byte at a time before reporting it: a head, trailer or
chunk extension that never ends fails at max_header_bytes + one network read. Body bytes
not yet taken are capped by pausing the transport at ``high_water`` (so at most
high_water + one network read are held).

Two timers per exchange, both optional: ``head_timeout_s`` until the final response head,
``accept_timeout_s`` until the first head of any kind. A request sent with ``Expect:
100-continue`` makes a live server (uvicorn, Go, Node, aiohttp) answer ``100 Continue`` as
soon as its application starts reading it, so the accept timer tells a stopped or hung
replica from one that is merely slow to answer, without bounding how long the work takes.

The keep-alive race, and when a retry is safe
---------------------------------------------
A server closes an idle keep-alive connection (its timeout, a restart) at the moment we
reuse it: the write succeeds locally, then EOF or a reset arrives and no response byte.
The same symptom follows a server that read the request and then crashed, and retrying
that one would run a non-idempotent tool twice. What tells them apart is the server's own
TCP acknowledgement: every segment the server's kernel sends, its FIN included, carries
the sequence number of all it received so far, and the application can only read what its
kernel received. So if, when the close arrives, the peer has acknowledged no byte of this
request (Linux ``tcpi_bytes_acked``, read once at connect and once at the close), the
server's application cannot have read any of it: the request was not processed.
``ClosedBeforeRequest`` is raised only then (and when the connection was already closed
before anything was written); anything else before the head is ``ConnectionLost``.
The check errs only towards "maybe sent": a kernel that acknowledged the request but whose
application closed the socket unread also gives ConnectionLost. Where the figure is not
available (TLS, where the kernel counts ciphertext; non-Linux; kernels before 4.1) only the
"closed before written" case counts as not sent.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from typing import cast

import httptools

from edgefleet.dispatcher.http1.errors import (
    AcceptTimeout,
    ClosedBeforeRequest,
    ConnectionLost,
    HeadersTooLarge,
    HTTP1Error,
    RemoteProtocolError,
    ResponseTimeout,
)

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
# struct tcp_info (linux/tcp.h): __u64 tcpi_bytes_acked at byte 120, since Linux 4.1.
_BYTES_ACKED = slice(120, 128)
_NO_BODY_STATUSES = frozenset((204, 304))


class Limits:
    """Per-pool bounds on what a replica may send in a response head and buffer."""

    __slots__ = ("high_water", "max_header_bytes", "max_headers")

    def __init__(self, max_header_bytes: int, max_headers: int, high_water: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.high_water = high_water


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is already recorded."""


def bytes_acked(transport: asyncio.BaseTransport) -> int | None:
    """How many bytes (SYN included) the peer acknowledged, or None where unknown."""
    if _TCP_INFO is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw: bytes = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 136)
    except OSError:
        return None
    if len(raw) < _BYTES_ACKED.stop:
        return None
    return int.from_bytes(raw[_BYTES_ACKED], sys.byteorder)


class Connection(asyncio.Protocol):
    """A connection and the state of the one exchange in flight on it.

    Lifecycle owned by the pool: opened (``connection_made``), checked out, ``send`` a
    request, head and body arrive, returned idle or dropped. ``on_close`` tells the pool
    when the transport is gone, whoever holds the connection.
    """

    __slots__ = (
        "_accept_timer",
        "_acked_base",
        "_limits",
        "_loop",
        "_parser",
        "_sent",
        "_sent_before",
        "_timer",
        "_waiter",
        "body",
        "buffered",
        "checked_by",
        "closed",
        "complete",
        "dropped",
        "error",
        "gap",
        "head_bytes",
        "head_done",
        "head_only",
        "header_count",
        "headers",
        "idle_since",
        "in_flight",
        "informational",
        "interim",
        "on_close",
        "paused",
        "peer",
        "raw_headers",
        "received",
        "reusable",
        "reused",
        "status",
        "track_acks",
        "transport",
        "until_eof",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits, *, track_acks: bool) -> None:
        self._loop = loop
        self._limits = limits
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._accept_timer: asyncio.TimerHandle | None = None
        self._acked_base: int | None = None
        self._sent = 0
        self._sent_before = 0
        self.track_acks = track_acks
        self.transport: asyncio.Transport | None = None
        self.on_close: Callable[[Connection], None] | None = None
        self.peer = ""
        self.checked_by: Callable[[str], None] | None = None
        self.reused = False
        self.idle_since = 0.0
        self.dropped = False
        self.closed = False
        self.in_flight = False
        self._reset()

    def _reset(self) -> None:
        self.head_only = False
        self.received = 0
        self.gap = 0
        self.head_bytes = 0
        self.header_count = 0
        self.informational = False
        self.interim: tuple[int, ...] = ()
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.reusable = True
        self.until_eof = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.error: HTTP1Error | None = None

    # -- transport callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self.track_acks:
            self._acked_base = bytes_acked(transport)

    def data_received(self, data: bytes) -> None:
        if not self.in_flight:
            # Bytes nobody asked for (an idle connection, a late answer): nothing on this
            # connection can be trusted to line up with the next request any more.
            self.fail(RemoteProtocolError("the replica sent bytes on an idle connection"))
            return
        self.received += len(data)
        self.gap += len(data)  # the parser callbacks zero it at the head's end and each body byte
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(RemoteProtocolError("the replica switched protocols (unsolicited upgrade)"))
        except httptools.HttpParserError as exc:
            if self.error is not None:
                return  # a callback stopped the parser and recorded why
            if self.complete:
                self.reusable = False  # bytes after a complete response: keep it, never reuse
                return
            self.fail(RemoteProtocolError(f"invalid HTTP response from the replica: {exc}"))
            return
        if self.gap > self._limits.max_header_bytes:
            if not self.head_done:
                self.fail(HeadersTooLarge(f"the response head exceeds {self._limits.max_header_bytes} bytes"))
            else:
                self.fail(
                    RemoteProtocolError(
                        f"more than {self._limits.max_header_bytes} bytes of chunk framing or trailers without a body byte"
                    )
                )

    def eof_received(self) -> bool:
        if self.in_flight and not self.complete and self.error is None:
            if self.head_done and self.until_eof:
                self._finish(reusable=False)  # a body delimited by the close: it ended well
            else:
                self._lost(None)
        return False  # close the transport: we never half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight and not self.complete and self.error is None:
            if exc is None and self.head_done and self.until_eof:
                self._finish(reusable=False)
            else:
                self._lost(exc)  # the socket is still open here: the ack count can be read
        self.closed = True
        self.reusable = False
        self._cancel_timer()
        self._wake()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        """Request bodies are bounded by the caller; the transport buffers them."""

    def resume_writing(self) -> None:
        """See ``pause_writing``."""

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            self.reusable = False  # a second response nobody asked for
            raise _Stop

    def on_status(self, status: bytes) -> None:
        self.head_bytes += len(status) + 16

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.head_bytes += len(name) + len(value) + 4
        if self.header_count > self._limits.max_headers or self.head_bytes > self._limits.max_header_bytes:
            self.fail(
                HeadersTooLarge(
                    f"the response head exceeds {self._limits.max_headers} headers or {self._limits.max_header_bytes} bytes"
                )
            )
            raise _Stop
        if self.head_done:
            return  # a trailer: counted against the bounds, not kept
        key = name.lower()
        self.raw_headers.append((key, value))
        previous = self.headers.get(key)
        # Repeated fields join with ", " (RFC 9110 5.3); raw_headers keeps them apart.
        self.headers[key] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self.fail(RemoteProtocolError("the replica switched protocols (unsolicited 101)"))
                raise _Stop
            self.informational = True  # 100/103: skip it, the real head follows
            self.interim += (status,)
            self._cancel_accept_timer()  # the replica is reading the request: it is alive
            self.headers = {}
            self.raw_headers = []
            return
        self.status = status
        self.head_done = True
        self.gap = 0
        self._cancel_timer()
        if self.head_only:
            # The parser cannot be told a HEAD answer has no body: finish here and never
            # reuse the connection (its parser would wait for Content-Length bytes).
            self._finish(reusable=False)
            raise _Stop
        if (
            status not in _NO_BODY_STATUSES
            and b"content-length" not in self.headers
            and b"transfer-encoding" not in self.headers
        ):
            self.until_eof = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.gap = 0
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > self._limits.high_water and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self._finish(reusable=self._parser.should_keep_alive())

    # -- used by the pool and the response -------------------------------------------
    def send(
        self, data: bytes, head_timeout_s: float | None, head_only: bool, accept_timeout_s: float | None = None
    ) -> None:
        """Write one request; the head is awaited with ``wait``. ``accept_timeout_s`` bounds
        the time to the first response head, interim (``100 Continue``) or final."""
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise ClosedBeforeRequest("the replica closed the connection while it was idle (nothing was sent)")
        self._reset()
        self.head_only = head_only
        self.in_flight = True
        self._sent_before = self._sent
        self._sent += len(data)
        transport.write(data)
        if head_timeout_s is not None:
            self._timer = self._loop.call_later(head_timeout_s, self._head_timed_out, head_timeout_s)
        if accept_timeout_s is not None:
            self._accept_timer = self._loop.call_later(accept_timeout_s, self._accept_timed_out, accept_timeout_s)

    async def wait(self) -> None:
        """Until something changes: head, body bytes, end, or an error."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def take(self) -> bytes:
        """Every body byte received and not taken yet (b"" when none)."""
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def park(self, now: float) -> None:
        """Back to idle after a complete exchange: read again so a close is noticed."""
        self.in_flight = False
        self.idle_since = now
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def fail(self, error: HTTP1Error) -> None:
        """Record ``error`` (the first one wins), drop the transport, wake the consumer."""
        if self.error is None:
            self.error = error
        self.reusable = False
        self._cancel_timer()
        self.abort()
        self._wake()

    def abort(self) -> None:
        """Close now, without flushing: the replica sees its client go away."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    # -- internals ------------------------------------------------------------------------
    def _finish(self, *, reusable: bool) -> None:
        self.complete = True
        if not reusable:
            self.reusable = False
        self._cancel_timer()
        self._wake()

    def _lost(self, exc: Exception | None) -> None:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        if not self.head_done and self.received == 0 and self._request_unreceived():
            self.fail(ClosedBeforeRequest(f"the replica closed the connection before receiving the request{why}"))
        elif not self.head_done:
            self.fail(ConnectionLost(f"the replica closed the connection after the request was sent{why}"))
        else:
            self.fail(ConnectionLost(f"the replica closed the connection in the middle of the response body{why}"))

    def _request_unreceived(self) -> bool:
        """True only if the peer's kernel acknowledged no byte of the current request."""
        if self._acked_base is None or self.transport is None:
            return False
        acked = bytes_acked(self.transport)
        return acked is not None and acked - self._acked_base <= self._sent_before

    def _head_timed_out(self, after: float) -> None:
        self._timer = None
        self.fail(ResponseTimeout(f"no response head from the replica within {after:g} s"))

    def _accept_timed_out(self, after: float) -> None:
        self._accept_timer = None
        self.fail(AcceptTimeout(f"the replica did not start reading the request within {after:g} s (no 100 Continue)"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_accept_timer()

    def _cancel_accept_timer(self) -> None:
        if self._accept_timer is not None:
            self._accept_timer.cancel()
            self._accept_timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self.in_flight else "idle"
        return f"<Connection {self.peer} {state} reused={self.reused}>"
