"""The direct path: forward one ``tools/call`` to a replica over the warm pool and relay
the answer (a JSON body, or an SSE stream of progress/log notifications and the result)
to the client chunk by chunk.

Failover rules (ARCHITECTURE principle 4): a call that provably never reached a replica
(connection refused, connect timeout, 502/503 from it) moves to the next candidate; a call
that may have started is retried elsewhere only for tools that declare ``idempotentHint``,
otherwise the client gets ``outcome_unknown``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from dispatcher import jsonrpc, router
from shared.errors import AgentUnavailable, EdgefleetError, OutcomeUnknown, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from dispatcher.catalog import ToolEntry
    from dispatcher.fleet import Fleet, Replica

log = logging.getLogger("edgefleet.executor")

Send = Callable[[dict[str, Any]], Awaitable[None]]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]
# Upstream statuses that mean "not processed": safe to send elsewhere.
NOT_PROCESSED_STATUSES = frozenset({502, 503})


class Executor:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.region = fleet.settings.region
        self.default_timeout = fleet.settings.call_timeout_s

    async def call(
        self,
        entry: ToolEntry,
        request_id: Any,
        body: bytes,
        send: Send,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Forward ``body`` (already rewritten to the upstream name) and relay the reply."""
        deadline = time.monotonic() + self.default_timeout
        tried: list[str] = []
        last_error: EdgefleetError | None = None
        for replica in router.candidates(entry, self.region):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(data={"tool": entry.public_name, "replicas_tried": tried})
            tried.append(replica.id)
            try:
                await self._attempt(replica, entry, request_id, body, send, remaining, extra_headers)
                return
            except _NotStarted as exc:
                last_error = exc.error
                continue
            except _MaybeStarted as exc:
                if entry.idempotent:
                    last_error = exc.error
                    log.warning("retrying idempotent %s elsewhere after %s", entry.public_name, exc.error.message)
                    continue
                raise OutcomeUnknown(data={"tool": entry.public_name, "replica": replica.id, "cause": exc.error.message}) from None
        if last_error is not None:
            raise AgentUnavailable(
                f"Every replica of agent {entry.agent!r} failed for {entry.public_name}: {last_error.message}",
                data={"agent": entry.agent, "replicas_tried": tried},
            )
        raise AgentUnavailable(
            f"No live replica of agent {entry.agent!r} can serve {entry.public_name} right now.", data={"agent": entry.agent}
        )

    async def _attempt(
        self, replica: Replica, entry: ToolEntry, request_id: Any, body: bytes, send: Send, timeout: float, extra_headers: dict[str, str] | None
    ) -> None:
        client = replica.client
        headers = client.call_headers("tools/call", entry.upstream_name)
        if extra_headers:
            headers.update(extra_headers)
        session = self.fleet.pool.session
        replica.inflight += 1
        try:
            try:
                resp = await session.post(replica.record.url, data=body, headers=headers, timeout=self.fleet.pool.timeout(timeout))
            except aiohttp.ConnectionTimeoutError:
                self.fleet.report_failure(replica, "connect timed out", decisive=True)
                raise _NotStarted(UpstreamError(f"connecting to replica {replica.id} timed out")) from None
            except aiohttp.ClientConnectorError as exc:
                self.fleet.report_failure(replica, f"connect: {exc}", decisive=True)
                raise _NotStarted(UpstreamError(f"cannot connect to replica {replica.id}: {exc.strerror or exc}")) from None
            except asyncio.TimeoutError:
                # The deadline of a slow tool is not the replica's fault: no health penalty.
                raise _MaybeStarted(UpstreamTimeout(f"replica {replica.id} did not answer in time")) from None
            except aiohttp.ClientError as exc:
                self.fleet.report_failure(replica, f"{type(exc).__name__}: {exc}")
                raise _MaybeStarted(UpstreamError(f"replica {replica.id} dropped the call: {type(exc).__name__}")) from None
            try:
                if resp.status == 404 and client.era == "legacy":
                    # The upstream forgot our session (it restarted): reopen, then retry here.
                    await client.connect()
                    raise _NotStarted(UpstreamError(f"replica {replica.id} lost its MCP session"))
                if resp.status in NOT_PROCESSED_STATUSES:
                    self.fleet.report_failure(replica, f"HTTP {resp.status}")
                    raise _NotStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                if resp.status >= 500:
                    self.fleet.report_failure(replica, f"HTTP {resp.status}")
                    raise _MaybeStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                content_type = resp.headers.get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    await self._relay_stream(resp, send, request_id)
                else:
                    try:
                        data = await resp.read()
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        raise _MaybeStarted(UpstreamError(f"replica {replica.id} broke off its answer: {type(exc).__name__}")) from None
                    await send({"type": "http.response.start", "status": 200 if resp.status < 400 else resp.status, "headers": JSON_HEADERS})
                    await send({"type": "http.response.body", "body": data})
                if replica.failures:
                    self.fleet.report_success(replica)
            finally:
                resp.release()
        finally:
            replica.inflight -= 1

    async def _relay_stream(self, resp: aiohttp.ClientResponse, send: Send, request_id: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Headers are already out: answer the request inside the stream, then end it,
            # so the client is never left waiting for a response that cannot come.
            error = OutcomeUnknown(data={"cause": type(exc).__name__})
            event = b"event: message\ndata: " + jsonrpc.error_body(request_id, error) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class _NotStarted(Exception):
    def __init__(self, error: EdgefleetError) -> None:
        self.error = error


class _MaybeStarted(Exception):
    def __init__(self, error: EdgefleetError) -> None:
        self.error = error
