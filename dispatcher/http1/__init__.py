"""A lean HTTP/1.1 keep-alive client for the per-call path to agent replicas.

``asyncio.Protocol`` + ``httptools``: ARCHITECTURE.md ("The hot path") measured such a pool
at a third of aiohttp's CPU per call and a tenth of httpx's. It does what forwarding a
tool call needs and no more: keep-alive pools per origin, bounded response heads and
buffers, body reads with a limit, chunk-by-chunk relay, no redirects (a 3xx is an answer),
no cookies, no decompression, and errors that say whether the replica could have acted
on the request (see ``errors``).

    pool = UpstreamPool(max_per_origin=32, connect_timeout_s=2, idle_timeout_s=60)
    resp = await pool.request("http://10.0.0.7:8000", "POST", "/mcp", headers, body,
                              head_timeout_s=10, check_peer=refuse_metadata_addresses)
    data = await resp.read(limit=1 << 20)        # or: async for chunk in resp.iter_chunks()

Self-contained on purpose: nothing here imports the rest of the dispatcher.
"""

from edgefleet.dispatcher.http1.errors import (
    AcceptTimeout,
    BodyTooLarge,
    ClosedBeforeRequest,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    HeadersTooLarge,
    HTTP1Error,
    PoolClosed,
    PoolTimeout,
    RemoteProtocolError,
    RequestMaybeSent,
    RequestNotSent,
    ResponseTimeout,
)
from edgefleet.dispatcher.http1.pool import (
    Headers,
    PeerCheck,
    Resolver,
    UpstreamPool,
    header_lines,
    system_resolver,
)
from edgefleet.dispatcher.http1.response import Response

__all__ = [
    "AcceptTimeout",
    "BodyTooLarge",
    "ClosedBeforeRequest",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "HTTP1Error",
    "Headers",
    "HeadersTooLarge",
    "PeerCheck",
    "PoolClosed",
    "PoolTimeout",
    "RemoteProtocolError",
    "RequestMaybeSent",
    "RequestNotSent",
    "Resolver",
    "Response",
    "ResponseTimeout",
    "UpstreamPool",
    "header_lines",
    "system_resolver",
]
