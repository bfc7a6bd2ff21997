"""A response whose head has arrived; its body is read with a limit or relayed chunk by chunk.

The connection goes back to its pool the moment the whole response has arrived (often
before ``request`` even returns: a small JSON answer comes in one read), so a caller that
reads to the end never has to release anything. ``release()`` / ``close()`` / ``async with``
settle the rest: a response not fully received is dropped with its connection, never
drained, and dropping the connection is how the replica learns its client went away.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Protocol, Self

from edgefleet.dispatcher.http1.connection import Connection
from edgefleet.dispatcher.http1.errors import BodyTooLarge, HTTP1Error


class ConnectionOwner(Protocol):
    """The per-origin pool a connection returns to (``pool._Origin``)."""

    def release(self, conn: Connection) -> None: ...

    def drop(self, conn: Connection) -> None: ...


class Response:
    """Status, headers and the body of one exchange.

    ``headers`` maps lower-cased names to values, repeated fields joined with ``b", "``;
    ``raw_headers`` keeps every field apart, in order. ``content_length`` is None for
    chunked or close-delimited bodies. ``interim`` lists the statuses of the interim (1xx)
    heads that came first, e.g. ``(100,)`` after an ``Expect: 100-continue`` request.
    """

    __slots__ = (
        "_conn",
        "_error",
        "_owner",
        "_pending",
        "content_length",
        "headers",
        "interim",
        "raw_headers",
        "status",
    )

    def __init__(self, owner: ConnectionOwner, conn: Connection) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.raw_headers = conn.raw_headers
        self.interim = conn.interim
        length = conn.headers.get(b"content-length")
        # The parser already rejected malformed or conflicting lengths, and chunked wins.
        self.content_length = int(length) if length is not None and b"transfer-encoding" not in conn.headers else None
        self._owner = owner
        self._conn: Connection | None = conn
        self._pending = b""
        self._error: HTTP1Error | None = None
        if conn.complete:  # the usual small answer: all here already, free the connection now
            self._pending = conn.take()
            self._settle(conn)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body. With ``limit``: ``BodyTooLarge`` as soon as the Content-Length or
        the bytes received exceed it (the connection is dropped; at most limit + one network
        read is ever held)."""
        if limit is not None and self.content_length is not None and self.content_length > limit:
            self.close()
            raise BodyTooLarge(limit, self.content_length)
        if self._conn is None and self._error is None:  # fast path: it all came with the head
            data, self._pending = self._pending, b""
            if limit is not None and len(data) > limit:
                raise BodyTooLarge(limit, len(data))
            return data
        parts: list[bytes] = []
        total = 0
        while chunk := await self.next_chunk():
            total += len(chunk)
            if limit is not None and total > limit:
                self.close()
                raise BodyTooLarge(limit, total)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def next_chunk(self) -> bytes:
        """The body bytes received since the last call, waiting if there are none; b"" at
        the end. Raises the connection's error (``ConnectionLost``, ...) if it broke."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        conn = self._conn
        if conn is None:
            if self._error is not None:
                raise self._error
            return b""
        while True:
            data = conn.take()
            if conn.complete and conn.error is None:
                self._settle(conn)  # the last bytes are in hand: the connection can serve others
                return data
            if data:
                return data
            if conn.error is not None:
                self._error = conn.error
                self._conn = None
                self._owner.drop(conn)
                raise self._error
            await conn.wait()

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """``async for chunk in resp.iter_chunks()``: the body as it arrives (SSE relays)."""
        return _Chunks(self)

    def release(self) -> None:
        """Done with this response: the connection is reused if the response arrived whole
        and the replica did not ask to close, else closed. Idempotent."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.complete:
                self._owner.release(conn)
            else:
                self._owner.drop(conn)

    def close(self) -> None:
        """Drop the connection now, whatever state it is in (cancels the replica's work)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._owner.drop(conn)

    def _settle(self, conn: Connection) -> None:
        self._conn = None
        self._owner.release(conn)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()

    def __del__(self) -> None:
        # A response dropped without release() must not hold its pool slot forever.
        if getattr(self, "_conn", None) is not None:
            with contextlib.suppress(RuntimeError):  # collected after its event loop closed: the sockets went with it
                self.close()

    def __repr__(self) -> str:
        return f"<Response {self.status} length={self.content_length}>"


class _Chunks:
    """An async iterator without the cost and finalization rules of an async generator."""

    __slots__ = ("_response",)

    def __init__(self, response: Response) -> None:
        self._response = response

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._response.next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk
