"""What can go wrong talking to a replica, split by the one question failover asks:
could the replica have acted on the request?

    HTTP1Error
    ├── RequestNotSent           provably never reached the replica's application:
    │   │                        safe to send elsewhere, whatever the tool
    │   ├── ConnectFailed        refused, unreachable, name not resolved, TLS handshake failed
    │   │   └── ConnectTimeout   no connection within connect_timeout_s
    │   ├── ClosedBeforeRequest  the replica closed the connection before it received any
    │   │                        byte of the request (see connection.py for the proof)
    │   ├── PoolTimeout          no free connection to that origin within acquire_timeout_s
    │   └── PoolClosed           the pool was closed
    ├── RequestMaybeSent         the replica may have received, even finished, the request:
    │   │                        only idempotent tools may be retried elsewhere
    │   ├── ResponseTimeout      no complete response head within head_timeout_s
    │   │   └── AcceptTimeout    no response head at all, not even an interim
    │   │                        100 Continue, within accept_timeout_s
    │   ├── ConnectionLost       closed or reset after the request may have arrived,
    │   │                        or in the middle of the response body
    │   └── RemoteProtocolError  an answer that is not HTTP/1.x (garbage, HTTP/0.9, bad
    │       │                    chunk sizes, unsolicited upgrade or bytes)
    │       └── HeadersTooLarge  status line + headers over max_header_bytes / max_headers
    └── BodyTooLarge             read(limit): the body exceeds the caller's limit (the
                                 exchange itself worked; the request was processed)

What ``check_peer`` raises is not wrapped: it propagates unchanged, and like a
RequestNotSent the request was never written.
"""

from __future__ import annotations


class HTTP1Error(Exception):
    """Base of every error of the upstream HTTP/1.1 client."""


class RequestNotSent(HTTP1Error):
    """No byte of the request reached the replica's application: retry anywhere."""


class ConnectFailed(RequestNotSent):
    """The TCP (or TLS) connection could not be opened."""


class ConnectTimeout(ConnectFailed):
    """The connection was not open within ``connect_timeout_s``."""


class ClosedBeforeRequest(RequestNotSent):
    """The replica closed the connection before it received any of the request.

    Raised only when that is proven (see ``Connection`` for how); the pool has already
    retried once on a fresh connection when the failed one was a reused keep-alive one.
    """


class PoolTimeout(RequestNotSent):
    """Every connection to the origin stayed busy for ``acquire_timeout_s``."""


class PoolClosed(RequestNotSent):
    """``UpstreamPool.aclose()`` was called (or the origin was closed)."""


class RequestMaybeSent(HTTP1Error):
    """The replica may have acted on the request: only idempotent work may be retried."""


class ResponseTimeout(RequestMaybeSent):
    """The response head did not arrive within ``head_timeout_s`` of writing the request."""


class AcceptTimeout(ResponseTimeout):
    """No response head at all, interim (``100 Continue``) or final, within ``accept_timeout_s``
    of writing the request: the replica has not even started to read it (hung, stopped)."""


class ConnectionLost(RequestMaybeSent):
    """The connection closed or was reset before the response was complete."""


class RemoteProtocolError(RequestMaybeSent):
    """The replica's answer is not valid HTTP/1.x."""


class HeadersTooLarge(RemoteProtocolError):
    """The status line and headers exceed ``max_header_bytes`` or ``max_headers``."""


class BodyTooLarge(HTTP1Error):
    """The body exceeds the limit given to ``Response.read``; the connection was dropped."""

    def __init__(self, limit: int, seen: int) -> None:
        super().__init__(f"the response body exceeds {limit} bytes (at least {seen})")
        self.limit = limit
        self.seen = seen
