"""The direct path: forward one ``tools/call`` to a replica over the warm pool and relay
the answer (a JSON body, or an SSE stream of progress/log notifications and the result)
chunk by chunk.

Failover rules (docs/architecture.md, principle 4): a call that provably
never reached a replica (connection refused, connect timeout, the keep-alive race, 502/503
or a redirect from it, an address the agent rules refuse) moves to the next candidate; a
call that may have started is retried elsewhere only for tools that declare
``idempotentHint``, otherwise the caller gets ``outcome_unknown``. The http1 client's errors
say which of the two happened (``http1.RequestNotSent`` / ``http1.RequestMaybeSent``).

Hung replicas: a stopped process's kernel still takes connections and requests, so each
call asks for ``Expect: 100-continue``; a replica that has answered with ``100 Continue``
before must do so again within ``EDGEFLEET_ATTEMPT_TIMEOUT_S`` (the time to start reading
the call, not to answer it: SDK agents answer JSON only when the tool is done).

Answers pass the result checks (``paths.checks``) before they are relayed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from edgefleet.dispatcher import http1
from edgefleet.dispatcher.fleet.upstream import capability_key
from edgefleet.dispatcher.paths.answer import Answer, fail
from edgefleet.dispatcher.paths.checks import ResultChecks
from edgefleet.dispatcher.paths.relay import CLIENT_STATUSES, IdRename, MaybeStarted, NotStarted, Relay
from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import telemetry
from edgefleet.shared.constants import HEADER_TIMEOUT
from edgefleet.shared.errors import (
    AgentUnavailable,
    AgentUrlForbidden,
    EdgefleetError,
    OutcomeUnknown,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.fleet.replica import Replica
    from edgefleet.dispatcher.fleet.upstream import CapabilityKey, ReplicaClient
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.routing.router import RouteOrder, Router

log = logging.getLogger("edgefleet.direct")
_tracer = telemetry.tracer("edgefleet.dispatcher")
# Upstream statuses that mean "not processed": safe to send elsewhere.
NOT_PROCESSED_STATUSES = frozenset({502, 503})
_TIMEOUT_LINE = HEADER_TIMEOUT.encode() + b": %d\r\n"


class DirectPath:
    def __init__(self, fleet: Fleet, router: Router, checks: ResultChecks) -> None:
        self.fleet = fleet
        self.router = router
        self.checks = checks
        self.attempt_timeout_s = fleet.settings.attempt_timeout_s
        # notifications/cancelled on their way to 2025-era upstreams (kept: tasks are weakly held).
        self._cancels: set[asyncio.Task[None]] = set()

    async def call(self, call: ToolCall, answer: Answer, *, replicas: list[Replica] | None = None) -> None:
        """Forward the call and relay its answer into ``answer``.

        Candidates come nearest region first (or ``replicas``, for the warm-up of a replica
        that is not routable yet); each failed-before-start attempt moves on (next replica,
        then next region) within one deadline, which every attempt passes to the agent.
        """
        entry, obs = call.entry, call.obs
        deadline = time.monotonic() + call.timeout_s
        tried: list[str] = []
        last_error: EdgefleetError | None = None
        timed_out = False
        body = call.body()
        # Tracing on: one CLIENT span per attempt, and the agent's parent in _meta and in
        # the traceparent header is that attempt span instead of our server span.
        parent_tp = telemetry.current_traceparent() if telemetry.recording() else None
        for replica in replicas if replicas is not None else self.router.candidates(entry, call.order):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._fail(
                    call, answer, UpstreamTimeout(data={"tool": entry.public_name, "replicas_tried": tried})
                )
                return
            tried.append(replica.id)
            route = _route(replica, call.order, len(tried))
            if obs is not None:
                obs.attempt(entry.agent, replica.id, replica.record.region)
                obs.reason = route.reason or "-"
            try:
                if parent_tp is None:
                    await self._attempt(call, replica, body, answer, remaining, call.extra_headers, route)
                else:
                    await self._traced_attempt(call, replica, body, parent_tp, answer, remaining, route)
                return
            except NotStarted as exc:
                last_error = exc.error
                continue
            except MaybeStarted as exc:
                # The deadline, not the replica, ended it: say so below. asyncio's timeout runs
                # on the loop's clock (uvloop's: milliseconds, cached), which can fire a hair
                # before time.monotonic() reaches the deadline: its own error says it was the deadline.
                if isinstance(exc.error, UpstreamTimeout) or time.monotonic() >= deadline:
                    timed_out = True
                    break
                if entry.idempotent:
                    # Safe to run again; an SSE stream already open to the client simply
                    # continues with the next replica's messages.
                    last_error = exc.error
                    log.warning("retrying idempotent %s elsewhere after %s", entry.public_name, exc.error.message)
                    continue
                await self._fail(
                    call,
                    answer,
                    OutcomeUnknown(
                        f"{exc.error.message}: after the call was sent, so {entry.public_name} may or may not have "
                        "run. It was not retried because the tool does not declare idempotentHint.",
                        data={"tool": entry.public_name, "replica": replica.id, "cause": exc.error.message},
                    ),
                )
                return
        if timed_out or time.monotonic() >= deadline:
            await self._fail(call, answer, UpstreamTimeout(data={"tool": entry.public_name, "replicas_tried": tried}))
        elif last_error is not None:
            await self._fail(
                call,
                answer,
                AgentUnavailable(
                    f"Every replica of agent {entry.agent!r} failed for {entry.public_name}: {last_error.message}",
                    data={"agent": entry.agent, "replicas_tried": tried},
                ),
            )
        else:
            await self._fail(
                call,
                answer,
                AgentUnavailable(
                    f"No healthy replica of agent {entry.agent!r} can serve {entry.public_name} right now.",
                    data={"agent": entry.agent, "regions": list(call.order.regions)},
                ),
            )

    @staticmethod
    async def _fail(call: ToolCall, answer: Answer, error: EdgefleetError) -> None:
        if call.obs is not None:
            call.obs.failed(error)
        await fail(answer, call.request_id, error)

    async def _traced_attempt(
        self,
        call: ToolCall,
        replica: Replica,
        body: bytes,
        parent_tp: str,
        answer: Answer,
        timeout: float,
        route: Route,
    ) -> None:
        attributes: dict[str, AttributeValue] = {
            "server.address": replica.record.url,
            "edgefleet.replica": replica.id,
            "edgefleet.attempt": route.attempt,
        }
        with telemetry.current_span(
            _tracer, f"{call.method} {call.name}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            traceparent = telemetry.current_traceparent() or parent_tp
            body = body.replace(parent_tp.encode(), traceparent.encode(), 1)
            headers = {**(call.extra_headers or {}), "traceparent": traceparent}
            try:
                await self._attempt(call, replica, body, answer, timeout, headers, route)
            except (NotStarted, MaybeStarted) as exc:
                span.set_attribute("error.type", exc.error.code)
                span.set_status(StatusCode.ERROR, exc.error.message)
                raise

    async def _attempt(
        self,
        call: ToolCall,
        replica: Replica,
        body: bytes,
        answer: Answer,
        timeout: float,
        extra_headers: dict[str, str] | None,
        route: Route,
    ) -> None:
        """One attempt on one replica, bounded by the call's remaining ``timeout`` (the
        agent is told it too) and, until the replica starts reading, by the accept timeout."""
        entry, obs = call.entry, call.obs
        client = replica.client
        pool = self.fleet.pool
        legacy = upstream_session(call, client)
        session_id: str | None = None
        if legacy is not None:
            try:
                session_id = await client.session_for(
                    legacy, timeout=min(timeout, self.fleet.settings.probe_timeout_s * 3)
                )
            except EdgefleetError as exc:
                raise NotStarted(
                    UpstreamError(f"no 2025-era session with replica {replica.id}: {exc.message}")
                ) from None
        route.session = session_id
        rename: IdRename | None = None
        if session_id is not None:
            # Clients share our upstream sessions with a 2025-era server: two clients'
            # "id": 1 in flight at once would cross. Send a unique id, map it back.
            rename = IdRename(call.request_id)
            body = rename.outgoing(body)
        # Ask for a 100 Continue (the replica is alive and reading) unless it never sends one;
        # only a replica known to send them is held to the accept timeout.
        expect = self.attempt_timeout_s > 0 and client.continues is not False
        accept_timeout = self.attempt_timeout_s if expect and client.continues else None
        try:
            # Deadline propagation: the agent stops working on a call nobody waits for any more.
            head = client.call_head(call.method, call.name or None, session=session_id, expect_continue=expect)
            headers = head + _TIMEOUT_LINE % max(1, int(timeout * 1000))
            if extra_headers:
                headers += http1.header_lines(
                    [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers.items()]
                )
        except ValueError as exc:
            raise NotStarted(UpstreamError(f"cannot send the call to replica {replica.id}: {exc}")) from None
        breaker = replica.breaker
        trial = breaker.begin()
        if trial is None:  # ejected since the candidates were listed, or its one trial is taken
            raise NotStarted(UpstreamError(f"replica {replica.id} is ejected"))
        replica.inflight += 1
        verdict = False
        sent_at = time.perf_counter()
        upstream = "error"
        relay: Relay | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    resp = await pool.calls.request(
                        replica.record.url,
                        b"POST",
                        client.target,
                        headers,
                        body,
                        accept_timeout_s=accept_timeout,
                        check_peer=pool.check_peer,
                    )
                except http1.ConnectFailed as exc:  # refused, unreachable, connect timeout, TLS
                    upstream = "connect_error"
                    verdict = True
                    self.fleet.report_failure(replica, f"connect: {exc}", decisive=True, trial=trial)
                    raise NotStarted(UpstreamError(f"cannot connect to replica {replica.id}: {exc}")) from None
                except http1.RequestNotSent as exc:  # closed before the request; our pool full or closed
                    upstream = "connect_error"
                    raise NotStarted(UpstreamError(f"replica {replica.id} was not sent the call: {exc}")) from None
                except AgentUrlForbidden as exc:  # its name now resolves somewhere agents may not be
                    upstream = "connect_error"
                    verdict = True
                    log.error("replica %s refused before sending: %s", replica.id, exc.message)
                    self.fleet.report_failure(replica, exc.message, decisive=True, trial=trial)
                    raise NotStarted(UpstreamError(f"replica {replica.id}: {exc.message}")) from None
                except http1.AcceptTimeout:
                    upstream = "timeout"
                    verdict = True
                    replica.observe_latency((time.perf_counter() - sent_at) * 1000)
                    self.fleet.report_failure(
                        replica, f"hung: did not start reading a call within {self.attempt_timeout_s:g} s", trial=trial
                    )
                    raise MaybeStarted(
                        UpstreamError(
                            f"replica {replica.id} did not start reading the call within "
                            f"{self.attempt_timeout_s:g} s (EDGEFLEET_ATTEMPT_TIMEOUT_S): hung or stopped"
                        )
                    ) from None
                except http1.RequestMaybeSent as exc:
                    verdict = True
                    self.fleet.report_failure(replica, f"{type(exc).__name__}: {exc}", trial=trial)
                    raise MaybeStarted(
                        UpstreamError(f"replica {replica.id} dropped the call: {type(exc).__name__}")
                    ) from None
                try:
                    if resp.status == 404 and legacy is not None:
                        # The upstream forgot our session (it restarted): the next try opens a new one.
                        client.forget_session(legacy)
                        raise NotStarted(UpstreamError(f"replica {replica.id} lost its MCP session"))
                    if resp.status in NOT_PROCESSED_STATUSES:
                        verdict = True
                        self.fleet.report_failure(replica, f"HTTP {resp.status}", trial=trial)
                        raise NotStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                    if 300 <= resp.status < 400:
                        # Never followed (an agent must not send us elsewhere); nor processed.
                        verdict = True
                        self.fleet.report_failure(replica, f"HTTP {resp.status} (a redirect)", trial=trial)
                        raise NotStarted(
                            UpstreamError(
                                f"replica {replica.id} answered HTTP {resp.status} (a redirect, never followed)"
                            )
                        )
                    if resp.status >= 500:
                        verdict = True
                        self.fleet.report_failure(replica, f"HTTP {resp.status}", trial=trial)
                        raise MaybeStarted(UpstreamError(f"replica {replica.id} answered HTTP {resp.status}"))
                    encoding = resp.headers.get(b"content-encoding")
                    if encoding is not None and encoding.strip().lower() != b"identity":
                        # We ask for identity and relay bytes as they come: a client would get
                        # them without the header that says how to read them.
                        verdict = True
                        self.fleet.report_failure(replica, "an answer in a content coding", trial=trial)
                        raise MaybeStarted(
                            UpstreamError(
                                f"replica {replica.id} answered in content coding {encoding[:32]!r}, "
                                "not the identity the dispatcher asks for"
                            )
                        )
                    if expect and resp.status < 300:
                        client.learn_continue(bool(resp.interim))
                    latency = time.perf_counter() - sent_at
                    replica.observe_latency(latency * 1000)
                    upstream = "ok"
                    if obs is not None and obs.metrics is not None:
                        obs.metrics.upstream_latency(entry.agent, replica.record.region, replica.id, latency)
                    verdict = True
                    if resp.status < 400 or resp.status in CLIENT_STATUSES:
                        self.fleet.report_success(replica, trial=trial)
                    else:  # it refused the dispatcher's request (auth, rate, ...): the replica is not serving
                        self.fleet.report_failure(replica, f"HTTP {resp.status}", trial=trial)
                    relay = Relay(call, replica, answer, route, self.checks, rename)
                    if resp.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                        await relay.stream(resp)
                    else:
                        await relay.json(resp)
                finally:
                    resp.release()  # a response not received whole drops its connection: the agent stops
        except asyncio.CancelledError:
            # The client cancelled (2025 notifications/cancelled, a 2026 stream closed), a held
            # round expired, or the dispatcher stops: the connection closes, which cancels a
            # 2026 agent's handler; a 2025 session's server must be told.
            if rename is not None and session_id is not None and (relay is None or not relay.answered):
                self._cancel_upstream(client, session_id, rename.upstream_id, "the client cancelled the call")
            raise
        except TimeoutError:
            # The call's deadline, not the replica, ended it: no health penalty, but the time it
            # sat there counts in its latency (a hung replica gets costly for the balancer).
            if relay is not None and relay.answered:
                await answer.close_stream()  # the caller has its answer; what followed is dropped
                return
            if rename is not None and session_id is not None:
                self._cancel_upstream(client, session_id, rename.upstream_id, "the call's deadline passed")
            if upstream != "ok":
                upstream = "timeout"
                replica.observe_latency((time.perf_counter() - sent_at) * 1000)
            raise MaybeStarted(UpstreamTimeout(f"replica {replica.id} did not answer in time")) from None
        finally:
            replica.inflight -= 1
            if not verdict:
                breaker.release(trial)
            if obs is not None and obs.metrics is not None:
                obs.metrics.upstream_outcome(entry.agent, replica.record.region, replica.id, upstream)

    def _cancel_upstream(self, client: ReplicaClient, session: str, upstream_id: str, reason: str) -> None:
        """Tell a 2025-era server its request is cancelled, off the call's own (ending) task."""
        try:
            task = asyncio.get_running_loop().create_task(
                client.cancel(session, upstream_id, reason, timeout=self.fleet.settings.probe_timeout_s)
            )
        except RuntimeError:  # the loop is closing: nothing can be sent any more
            return
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)


def upstream_session(call: ToolCall, client: ReplicaClient) -> CapabilityKey | None:
    """Which 2025-era session of the replica carries this call, by the capabilities of its
    client; None: a 2026-era request. A 2025-only server gets every call in its era; a
    server of both eras gets a 2025 client's calls in that era, so that what it asks of
    the client (sampling, elicitation) reaches a client that can answer."""
    if client.era == "legacy":
        # A 2026 client is asked in input_required rounds, only when the call is held for
        # that (mcp.held); otherwise its call goes through a session that lets the server ask nothing.
        # Lists are no calls: they show what the client's own capabilities unlock.
        asks = not call.modern or call.may_ask or call.method.endswith("/list")
        return capability_key(call.client_capabilities) if asks else ()
    if not call.modern and call.client_capabilities is not None and client.speaks_legacy:
        return capability_key(call.client_capabilities)
    return None


def _route(replica: Replica, order: RouteOrder, attempt: int) -> Route:
    reason = order.reason
    if order.regions and replica.record.region != order.regions[0]:
        reason += "+failover"
    return Route(
        "direct",
        region=replica.record.region,
        replica=replica.id,
        caller_region=order.caller_region,
        reason=reason,
        attempt=attempt,
    )
