"""Running the dispatcher under uvicorn with uvloop + httptools (the measured fast pair),
with the read deadlines and the connection cap uvicorn lacks.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a client that
opens a connection and sends its request head or body a byte at a time holds the
connection, and a file descriptor, for as long as it likes (slowloris: 1,500 such
connections stayed open 45 s and more), and its httptools protocol takes a head of any
size (a 50 MB header was read whole and answered). ``GuardedHttpTools`` is uvicorn's own
httptools protocol with four bounds (``EDGEFLEET_HEADER_TIMEOUT_S``,
``EDGEFLEET_BODY_TIMEOUT_S``, ``EDGEFLEET_MAX_HEADER_BYTES``, ``EDGEFLEET_MAX_CONNECTIONS``):

- a request's head (request line and headers) must be complete within the header timeout
  of the connection opening, or of the request's first byte on a kept-alive connection;
- its body must be complete within the body timeout of its head;
- a head larger than ``max_header_bytes`` gets ``431`` and the connection is closed (counted
  per read: a head may pass the bound by at most the one read that completes it);
- past ``max_connections`` open connections a new one gets ``503`` and is closed at once.

A request that misses a deadline gets ``408 Request Timeout`` when nothing was answered
yet, and the connection is closed; an application already reading the body sees the
client disconnect. Responses are not bounded here: a call's answer may stream for as
long as its deadline allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from edgefleet.dispatcher.app import Dispatcher, create_app
from edgefleet.shared.asgi import SCOPE_DISCONNECTS, Disconnects
from edgefleet.shared.http_server import CoalescingHttpTools
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.server")

GC_YOUNG_THRESHOLD = 7000  # CPython's default is 700
LINGER_S = 2.0  # how long a refused connection's remaining bytes are read and dropped before closing

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_FULL = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n"


class GuardedHttpTools(CoalescingHttpTools):
    """uvicorn's httptools protocol with head and body deadlines and a connection cap (and
    a response's head sent with its body: ``shared.http_server``)."""

    header_timeout_s = 10.0
    body_timeout_s = 30.0
    max_header_bytes = 65536
    max_connections = 4096
    refused = 0  # connections turned away at the cap (class-wide: one server per process)
    timed_out = 0  # requests closed for a missed deadline
    oversized = 0  # requests closed for a head over max_header_bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._disconnects = Disconnects()
        # Bytes of the request head read so far; None while no head is being read (a body,
        # or a response being written).
        self._head_bytes: int | None = 0
        self._discarding = False  # refused: what the client still sends is dropped until we close
        self._heads_completed = 0  # heads completed during the read being parsed

    @classmethod
    def configured(cls, settings: DispatcherSettings) -> type[GuardedHttpTools]:
        return type(
            "GuardedHttpTools",
            (cls,),
            {
                "header_timeout_s": settings.header_timeout_s,
                "body_timeout_s": settings.body_timeout_s,
                "max_header_bytes": settings.max_header_bytes,
                "max_connections": settings.max_connections,
            },
        )

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            type(self).refused += 1
            if type(self).refused % 1000 == 1:
                log.warning(
                    "connection cap reached (%d, EDGEFLEET_MAX_CONNECTIONS): new connections get 503",
                    self.max_connections,
                )
            transport.write(_FULL)
            transport.close()
            return
        self._arm(self.header_timeout_s)  # the first request's head, from the connection's start

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._disconnects.fire()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        reading_head = self._head_bytes is not None
        self._heads_completed = 0
        super().data_received(data)
        # Counted only for a read in which no head was completed, begun inside a head: a body
        # (or whole pipelined requests) in the read is never charged to the bound, and a head
        # can pass it by at most the read that completes it.
        if reading_head and not self._heads_completed and self._head_bytes is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse_head()

    # -- one request -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._heads_completed += 1
        self._disarm()
        super().on_headers_complete()
        self._arm(self.body_timeout_s)  # disarmed again when the message is complete

    def cycle_started(self, cycle: RequestResponseCycle) -> None:
        cycle.scope[SCOPE_DISCONNECTS] = self._disconnects  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # the next request's head, if the client sends one
        self._disarm()
        super().on_message_complete()
        # uvicorn pauses reading while more than 64 KiB of body waits for the application,
        # and only the application's next receive() resumes it: a call that does not read
        # again would never see its client's EOF, and Disconnects would never fire. The
        # whole body is in now; a pipelined request pauses reading again at its head.
        self.flow.resume_reading()

    # -- deadlines -------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse_head(self) -> None:
        type(self).oversized += 1
        self._disarm()
        self._head_bytes = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # a 431 would pass as that response's
            self.transport.close()
            return
        # Closing with the client's bytes unread would reset the connection and drop the 431
        # on its side: say it, stop writing, and read (and drop) what still comes for a moment.
        self.transport.write(_TOO_LARGE)
        self.transport.write_eof()
        self._discarding = True
        self._deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        type(self).timed_out += 1
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_TIMEOUT)
        self.transport.close()  # a handler reading the body sees the client go


class _Server(uvicorn.Server):
    """uvicorn's server, telling the dispatcher when it starts to shut down: uvicorn waits
    for open responses before the application's own shutdown, and subscription streams
    stay open until they are told to end (with the spec's graceful completion)."""

    def __init__(self, config: uvicorn.Config, app: Dispatcher) -> None:
        super().__init__(config)
        self.dispatcher = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up built (modules, settings, clients, the catalog so far) stays for the
        # process's life: frozen, full collections no longer walk it, and a young generation
        # ten times the default makes collections rarer (the collector was 3.5 % of the
        # dispatcher's samples at 16 sessions; issue 19).
        gc.collect()  # start-up's own garbage is collected, not frozen with the rest
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.dispatcher.stopping()
        await super().shutdown(sockets)


def serve(settings: DispatcherSettings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GuardedHttpTools.configured(settings),
        lifespan="on",
        access_log=False,
        log_config=None,
        # uvicorn would otherwise rewrite the client address from X-Forwarded-For for
        # 127.0.0.1 peers on its own; EDGEFLEET_TRUSTED_PROXIES alone decides (dispatcher/caller.py).
        proxy_headers=False,
        # Longer than the clients' idle pools, so keep-alive races stay on their side.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=30,
        # The accept queue beyond max_connections (connections waiting for their 503).
        backlog=2048,
    )
    server = _Server(config, app)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
