"""What our uvicorn servers (the dispatcher's and the agents') change in uvicorn's httptools
protocol for every request: a JSON answer's head and body leave in one write.

uvicorn writes a response's head when the application sends ``http.response.start`` and its
body at ``http.response.body``: two ``send()`` calls for every JSON answer, each waking the
peer (10-14 % of the dispatcher's samples at 16 sessions, issue 19), and two reads on the
other side when the segments arrive apart.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class HeadWithBody:
    """The transport as one response's cycle sees it: the response head (the cycle's first
    write) waits for the first body write of the same loop turn and both leave in one
    ``writelines``, one ``send()`` instead of two per JSON answer. A head with no body in
    that turn (a stream that has nothing to say yet) goes out at the end of the turn."""

    __slots__ = ("_transport", "_loop", "_held", "_flush", "_passing")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None
        self._passing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._passing:
            self._transport.write(data)
        elif self._held is None and data[:10] == b"HTTP/1.1 1":
            # An interim answer (uvicorn's ``100 Continue``, written when the application
            # first reads the body): at once, and the final head is still the one held.
            self._transport.write(data)
        elif self._held is None:
            self._held = bytes(data)
            self._flush = self._loop.call_soon(self._flush_held)
        else:
            self._passing = True
            if self._flush is not None:
                self._flush.cancel()
            held, self._held = self._held, None
            self._transport.writelines((held, data))

    def _flush_held(self) -> None:
        self._passing = True
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        if self._held is not None:
            if self._flush is not None:
                self._flush.cancel()
            self._flush_held()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, abort, ...: the transport's own
        return getattr(self._transport, name)


class CoalescingHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through ``HeadWithBody``."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a new request's cycle (not an upgrade)
            cycle.transport = cast(asyncio.Transport, HeadWithBody(self.transport, self.loop))
            self.cycle_started(cycle)

    def cycle_started(self, cycle: RequestResponseCycle) -> None:
        """A request's cycle was made, before its application runs: subclasses add to its scope."""


__all__ = ["CoalescingHttpTools", "HeadWithBody"]
