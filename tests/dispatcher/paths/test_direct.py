"""The executor against scripted agents (raw HTTP servers on 127.0.0.1 that answer with
exactly the bytes a test wants, including broken streams), so failover and SSE relay
edge cases are pinned down without timing luck."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from opentelemetry.trace import INVALID_SPAN

from edgefleet.dispatcher.fleet.breaker import CircuitBreaker
from edgefleet.dispatcher.fleet.catalog import Catalog
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.fleet.replica import Replica
from edgefleet.dispatcher.fleet.upstream import ReplicaClient, UpstreamPool
from edgefleet.dispatcher.observability.observe import CallObservation
from edgefleet.dispatcher.paths.answer import HttpAnswer
from edgefleet.dispatcher.paths.cache import ResultCache
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.checks import ResultChecks
from edgefleet.dispatcher.paths.direct import DirectPath
from edgefleet.dispatcher.paths.dispatch import CallPaths
from edgefleet.dispatcher.routing.router import Router
from edgefleet.dispatcher.security.agent_urls import AgentAddressRules
from edgefleet.shared.constants import META_EDGE_CACHE_TTL
from edgefleet.shared.errors import AgentUnavailable, InvalidToolResult, OutcomeUnknown, ResultTooLarge
from edgefleet.shared.models import ReplicaRecord
from edgefleet.shared.settings import DispatcherSettings

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
RECEIVED: list[bytes] = []  # request bodies the scripted servers got
HEADS: list[bytes] = []  # and their heads

PROGRESS = b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\r\n\r\n'
RESULT = b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}\r\n\r\n'
JSON_RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"from b"}],"isError":false}}'


def sse_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


HANDLERS: set[asyncio.Task[None]] = set()


async def serve(script: Script) -> tuple[asyncio.AbstractServer, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        HANDLERS.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            HEADS.append(head)
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            RECEIVED.append(await reader.readexactly(length))
            await script(writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            HANDLERS.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/mcp"


class Harness:
    def __init__(self) -> None:
        self.settings = DispatcherSettings(fleet_token="t", region="eu-west", connect_timeout_s=1.0)
        self.pool = UpstreamPool(self.settings)
        self.fleet = Fleet(self.settings, aioredis.from_url("redis://127.0.0.1:1"), self.pool)
        self.router = Router(self.settings, [])
        self.checks = ResultChecks(self.settings.max_result_bytes, self.settings.validate_results)
        self.cache = ResultCache(100)
        self.direct = DirectPath(self.fleet, self.router, self.checks)
        self.paths = CallPaths(self.direct, None, self.cache)
        self.servers: list[asyncio.AbstractServer] = []
        self.captured: bytes | None = None  # what the result cache kept of the last call
        self.relaying = asyncio.Event()  # set once a body chunk reached the client

    async def replica(self, script: Script, region: str, era: str = "modern") -> Replica:
        server, url = await serve(script)
        self.servers.append(server)
        record = ReplicaRecord(replica_id=f"a-{region}", agent="a", region=region, url=url, tools=[{"name": "t"}])
        return Replica(
            record=record,
            client=ReplicaClient(self.pool, url, era=era),
            breaker=CircuitBreaker(self.fleet.breaker_policy),
            warm=True,
            tool_names=frozenset({"t"}),
        )

    async def call(
        self,
        replicas: list[Replica],
        *,
        idempotent: bool,
        timeout_s: float = 5.0,
        output_schema: dict[str, Any] | None = None,
        capture: bool = False,
        obs: CallObservation | None = None,
    ) -> list[dict[str, Any]]:
        # capture: a read-only tool with a cache TTL, so a good answer lands in the result cache.
        annotations = {"idempotentHint": idempotent, **({"readOnlyHint": True} if capture else {})}
        for r in replicas:
            r.record.tools = [
                {
                    "name": "t",
                    "annotations": annotations,
                    **({"outputSchema": output_schema} if output_schema else {}),
                    **({"_meta": {META_EDGE_CACHE_TTL: 60}} if capture else {}),
                }
            ]
        entry = Catalog.build(replicas).get("a.t")
        assert entry is not None
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body"):
                self.relaying.set()

        order = self.router.order("127.0.0.1", {}, frozenset(r.record.region for r in replicas))
        self.cache.entries.clear()
        call = ToolCall(entry, 1, {"name": "t", "arguments": {}}, order, timeout_s, obs=obs)
        try:
            await self.paths.call(call, HttpAnswer(send))
        finally:
            kept = list(self.cache.entries.values())
            self.captured = kept[0][1] if kept else None
        return sent


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    await h.pool.start()
    yield h
    await h.pool.aclose()
    await h.fleet.redis.aclose()
    for server in h.servers:
        server.close()
    for task in list(HANDLERS):
        task.cancel()
    await asyncio.gather(*HANDLERS, return_exceptions=True)


def body_of(sent: list[dict[str, Any]]) -> bytes:
    assert sent[0]["type"] == "http.response.start", "a response must start before any body"
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body"), "the response must be ended"
    return b"".join(m.get("body", b"") for m in sent[1:])


def answer_of(sent: list[dict[str, Any]]) -> dict[str, Any]:
    """The one JSON-RPC response the client got, as a JSON body or inside an SSE stream."""
    body = body_of(sent)
    if body.startswith(b"{"):
        return orjson.loads(body)
    (answer,) = responses(body)
    return answer


def responses(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:] for line in event.split(b"\n") if line.startswith(b"data:"))
        if data:
            message = orjson.loads(data)  # every relayed event must parse: no half events
            if "id" in message:
                out.append(message)
    return out


async def test_idempotent_call_broken_mid_event_continues_cleanly_on_the_next_replica(harness: Harness) -> None:
    async def breaks(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + chunk(PROGRESS) + chunk(b'event: message\r\ndata: {"jsonrpc":"2.0","meth'))
        await writer.drain()
        writer.transport.abort()

    async def answers_json(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(JSON_RESULT)
            + JSON_RESULT
        )
        await writer.drain()

    a, b = await harness.replica(breaks, "eu-west"), await harness.replica(answers_json, "us-east")
    sent = await harness.call([a, b], idempotent=True)
    stream = body_of(sent)
    assert b"notifications/progress" in stream
    (answer,) = responses(stream)
    assert answer["result"]["content"][0]["text"] == "from b"


async def test_a_response_split_across_chunks_counts_as_answered(harness: Harness) -> None:
    async def split(writer: asyncio.StreamWriter) -> None:
        half = len(RESULT) // 2
        writer.write(sse_head() + chunk(RESULT[:half]))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(RESULT[half:]))
        await writer.drain()
        writer.transport.abort()  # broken after the answer: must not be retried

    calls = []

    async def never(writer: asyncio.StreamWriter) -> None:
        calls.append(1)

    a, b = await harness.replica(split, "eu-west"), await harness.replica(never, "us-east")
    sent = await harness.call([a, b], idempotent=True)
    assert len(responses(body_of(sent))) == 1 and calls == []


async def test_a_stream_ending_without_an_answer_is_outcome_unknown_for_non_idempotent_tools(harness: Harness) -> None:
    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + chunk(PROGRESS) + b"0\r\n\r\n")
        await writer.drain()

    a = await harness.replica(silent, "eu-west")
    sent = await harness.call([a], idempotent=False)
    (answer,) = responses(body_of(sent))
    assert answer["error"]["code"] == -31004


async def test_an_empty_stream_gives_a_proper_error_response(harness: Harness) -> None:
    async def empty(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + b"0\r\n\r\n")
        await writer.drain()

    a = await harness.replica(empty, "eu-west")
    with pytest.raises(OutcomeUnknown):  # nothing was sent yet: the endpoint answers with a JSON error
        await harness.call([a], idempotent=False)


async def test_deadline_on_a_started_stream_ends_it_with_a_timeout_error(harness: Harness) -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + chunk(PROGRESS))
        await writer.drain()
        await asyncio.sleep(3)

    a = await harness.replica(slow, "eu-west")
    sent = await harness.call([a], idempotent=True, timeout_s=0.5)
    (answer,) = responses(body_of(sent))
    assert answer["error"]["code"] == -31003


async def test_a_shared_legacy_upstream_session_gets_unique_ids_mapped_back(harness: Harness) -> None:
    """Clients' ids collide on our one session with a 2025-era server: we send our own."""

    async def answers_with_the_id_it_got(writer: asyncio.StreamWriter) -> None:
        upstream_id = orjson.loads(RECEIVED[-1])["id"]
        progress = b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\r\n\r\n'
        result = (
            b"data: "
            + orjson.dumps({"jsonrpc": "2.0", "id": upstream_id, "result": {"content": [], "isError": False}})
            + b"\r\n\r\n"
        )
        writer.write(sse_head() + chunk(progress) + chunk(result) + b"0\r\n\r\n")
        await writer.drain()

    RECEIVED.clear()
    legacy = await harness.replica(answers_with_the_id_it_got, "eu-west", era="legacy")
    legacy.client.legacy_sessions[()] = "s-1"  # as after initialize (the session 2026 clients share)
    first = await harness.call([legacy], idempotent=False)
    second = await harness.call([legacy], idempotent=False)
    sent_ids = [orjson.loads(body)["id"] for body in RECEIVED]
    assert len(set(sent_ids)) == 2 and all(str(i).startswith("edgefleet-") for i in sent_ids)
    for sent in (first, second):
        (answer,) = responses(body_of(sent))
        assert answer["id"] == 1 and "result" in answer


# -- result checks: size limit and outputSchema ----------------------------------------------
SCHEMA = {"type": "object", "properties": {"celsius": {"type": "number"}}, "required": ["celsius"]}


def json_answer(result: dict[str, Any], request_id: Any = 1) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def sse_answer(result: dict[str, Any], request_id: Any = 1) -> bytes:
    event = (
        b"event: message\r\ndata: " + orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}) + b"\r\n\r\n"
    )
    return sse_head() + chunk(PROGRESS) + chunk(event) + b"0\r\n\r\n"


def answers(raw: bytes) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return script


def observation() -> CallObservation:
    return CallObservation(None, INVALID_SPAN, "a.t", "direct", "eu-west")


async def test_a_json_result_breaking_the_output_schema_is_replaced_and_not_captured(harness: Harness) -> None:
    a = await harness.replica(
        answers(json_answer({"content": [], "structuredContent": {"celsius": "warm"}})), "eu-west"
    )
    obs = observation()
    with pytest.raises(InvalidToolResult) as caught:  # nothing was sent yet: the endpoint answers with a JSON error
        await harness.call([a], idempotent=True, output_schema=SCHEMA, capture=True, obs=obs)
    assert "'structuredContent/celsius'" in caught.value.message and caught.value.data["tool"] == "a.t"
    assert harness.captured is None  # never reaches the result cache
    assert (obs.outcome, obs.code) == ("error", "invalid_tool_result")
    assert a.breaker.consecutive == 0, "a wrong answer is not a health failure"


async def test_a_streamed_result_breaking_the_schema_ends_the_stream_with_the_error_under_the_clients_id(
    harness: Harness,
) -> None:
    async def answers_with_the_id_it_got(writer: asyncio.StreamWriter) -> None:
        upstream_id = orjson.loads(RECEIVED[-1])["id"]
        writer.write(sse_head() + chunk(PROGRESS))
        await writer.drain()
        await harness.relaying.wait()  # the client's stream is open before the answer comes
        result = {
            "jsonrpc": "2.0",
            "id": upstream_id,
            "result": {"content": [], "isError": False},
        }  # no structuredContent
        writer.write(chunk(b"event: message\r\ndata: " + orjson.dumps(result) + b"\r\n\r\n") + b"0\r\n\r\n")
        await writer.drain()

    RECEIVED.clear()
    legacy = await harness.replica(answers_with_the_id_it_got, "eu-west", era="legacy")
    legacy.client.legacy_sessions[()] = "s-1"
    sent = await harness.call([legacy], idempotent=False, output_schema=SCHEMA, capture=True)
    stream = body_of(sent)
    assert b"notifications/progress" in stream  # relayed before the answer arrived
    (answer,) = responses(stream)
    assert (
        answer["id"] == 1 and answer["error"]["code"] == -31007 and "no structuredContent" in answer["error"]["message"]
    )
    assert harness.captured is None


async def test_conforming_results_and_tool_errors_pass_and_conforming_ones_are_cached(harness: Harness) -> None:
    good = {"content": [], "structuredContent": {"celsius": 21.5}}
    tool_error = {"content": [{"type": "text", "text": "no such city"}], "isError": True}
    for result in (good, tool_error):
        for raw in (json_answer(result), sse_answer(result)):
            a = await harness.replica(answers(raw), "eu-west")
            sent = await harness.call([a], idempotent=False, output_schema=SCHEMA, capture=True)
            assert answer_of(sent)["result"] == result
            assert (harness.captured is not None) == (result is good)  # tool errors are never cached


async def test_results_are_not_checked_without_a_schema_or_with_validation_off(harness: Harness) -> None:
    bad = json_answer({"content": [], "structuredContent": {"celsius": "warm"}})
    a = await harness.replica(answers(bad), "eu-west")
    assert answer_of(await harness.call([a], idempotent=False))["result"]["structuredContent"] == {"celsius": "warm"}
    harness.checks.validate = False
    b = await harness.replica(answers(bad), "eu-west")
    assert answer_of(await harness.call([b], idempotent=False, output_schema=SCHEMA))["result"][
        "structuredContent"
    ] == {"celsius": "warm"}


async def test_a_json_answer_over_the_limit_is_refused_and_not_retried_elsewhere(harness: Harness) -> None:
    harness.checks.limit = 4096
    calls = []

    async def other(writer: asyncio.StreamWriter) -> None:
        calls.append(1)

    big = json_answer({"content": [{"type": "text", "text": "x" * 5000}]})
    a, b = await harness.replica(answers(big), "eu-west"), await harness.replica(other, "us-east")
    obs = observation()
    with pytest.raises(ResultTooLarge) as caught:
        await harness.call([a, b], idempotent=True, capture=True, obs=obs)
    assert caught.value.data["limit_bytes"] == 4096 and calls == [] and harness.captured is None
    assert (obs.outcome, obs.code) == ("error", "result_too_large") and a.breaker.consecutive == 0


async def test_an_endless_chunked_json_answer_is_cut_off_at_the_limit(harness: Harness) -> None:
    """No Content-Length: counted as read, and the connection is dropped (the agent stops)."""
    harness.checks.limit = 4096
    stopped = asyncio.Event()

    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunk(b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"')
        )
        try:
            while True:
                writer.write(chunk(b"x" * 1024))
                await writer.drain()
                await asyncio.sleep(0)  # yield so the reader runs: pacing, not synchronisation
        except ConnectionError:
            stopped.set()

    a = await harness.replica(endless, "eu-west")
    with pytest.raises(ResultTooLarge):
        await harness.call([a], idempotent=False)
    await asyncio.wait_for(stopped.wait(), 5)


async def test_a_stream_growing_past_the_limit_ends_with_result_too_large_inside_it(harness: Harness) -> None:
    harness.checks.limit = 4096
    stopped = asyncio.Event()

    async def progress_forever(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head())
        try:
            while True:
                writer.write(chunk(PROGRESS))
                await writer.drain()
                await asyncio.sleep(0)
        except ConnectionError:
            stopped.set()

    a = await harness.replica(progress_forever, "eu-west")
    obs = observation()
    sent = await harness.call([a], idempotent=True, capture=True, obs=obs)
    stream = body_of(sent)
    (answer,) = responses(stream)
    assert answer["id"] == 1 and answer["error"]["code"] == -31006
    assert len(stream) < 4096 + 1024, "relayed no more than the limit (plus the error event)"
    assert harness.captured is None and (obs.outcome, obs.code) == ("error", "result_too_large")
    await asyncio.wait_for(stopped.wait(), 5)


# -- hung replicas: the accept timeout (Expect: 100-continue) ----------------------------------
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def stopped(writer: asyncio.StreamWriter) -> None:
    """A SIGSTOPped agent: its kernel took the request, nothing ever answers."""
    await asyncio.sleep(30)


async def test_a_hung_replica_loses_an_idempotent_call_to_the_next_within_the_attempt_timeout(
    harness: Harness,
) -> None:
    harness.direct.attempt_timeout_s = 0.3
    a = await harness.replica(stopped, "eu-west")
    b = await harness.replica(answers(json_answer({"content": [], "isError": False})), "us-east")
    a.client.continues = True  # as learnt from its earlier answers
    started = time.monotonic()
    sent = await harness.call([a, b], idempotent=True, timeout_s=30)
    assert answer_of(sent)["result"]["isError"] is False
    assert 0.3 <= time.monotonic() - started < 3, "moved on after the attempt timeout, not the deadline"
    assert a.breaker.consecutive == 1 and "hung" in (a.last_error or "")


async def test_a_hung_replica_answers_a_non_idempotent_call_outcome_unknown_promptly(harness: Harness) -> None:
    harness.direct.attempt_timeout_s = 0.3
    a = await harness.replica(stopped, "eu-west")
    a.client.continues = True
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="did not start reading the call within 0.3 s"):
        await harness.call([a], idempotent=False, timeout_s=30)
    assert time.monotonic() - started < 3


async def test_a_long_call_on_a_live_replica_is_not_cut_off(harness: Harness) -> None:
    """An SDK agent answers JSON at the end of the work: the 100 Continue it sends when it
    reads the call is what the timer waits for, not the answer."""
    harness.direct.attempt_timeout_s = 0.3

    async def works_a_while(writer: asyncio.StreamWriter) -> None:
        writer.write(CONTINUE)
        await writer.drain()
        await asyncio.sleep(1.0)
        writer.write(json_answer({"content": [], "isError": False}))
        await writer.drain()

    a = await harness.replica(works_a_while, "eu-west")
    a.client.continues = True
    HEADS.clear()
    sent = await harness.call([a], idempotent=False, timeout_s=30)
    assert answer_of(sent)["result"]["isError"] is False
    assert b"expect: 100-continue" in HEADS[-1].lower()


async def test_whether_a_replica_sends_100_continue_is_learnt_from_its_answers(harness: Harness) -> None:
    harness.direct.attempt_timeout_s = 0.3
    ok = json_answer({"content": [], "isError": False})

    async def continues(writer: asyncio.StreamWriter) -> None:
        writer.write(CONTINUE + ok)
        await writer.drain()

    async def never_continues_and_is_slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        writer.write(ok)
        await writer.drain()

    a = await harness.replica(continues, "eu-west")
    await harness.call([a], idempotent=False)
    assert a.client.continues is True
    # A server that never sends one is never held to the timer (its slow answers pass), and
    # after three answers it is no longer asked.
    b = await harness.replica(never_continues_and_is_slow, "eu-west")
    for _ in range(3):
        assert answer_of(await harness.call([b], idempotent=False))["result"]["isError"] is False
    assert b.client.continues is False
    HEADS.clear()
    await harness.call([b], idempotent=False)
    assert b"expect:" not in HEADS[-1].lower()
    # Off: nobody is asked.
    harness.direct.attempt_timeout_s = 0
    c = await harness.replica(continues, "eu-west")
    HEADS.clear()
    await harness.call([c], idempotent=False)
    assert b"expect:" not in HEADS[-1].lower() and c.client.continues is None


async def test_a_replica_whose_address_became_forbidden_gets_nothing(harness: Harness) -> None:
    """DNS rebinding on the call path: the address connected to is checked before a byte is
    written; the replica is ejected and the call goes elsewhere or fails cleanly."""
    harness.pool.check_peer = AgentAddressRules(["10.0.0.0/8"]).check_peer
    a = await harness.replica(answers(json_answer({"content": [], "isError": False})), "eu-west")
    RECEIVED.clear()
    with pytest.raises(AgentUnavailable, match="outside EDGEFLEET_AGENT_NETWORKS"):
        await harness.call([a], idempotent=True)
    assert RECEIVED == [] and not a.breaker.admits()


async def test_a_redirect_answer_to_a_call_is_never_followed(harness: Harness) -> None:
    elsewhere: list[int] = []

    async def target(writer: asyncio.StreamWriter) -> None:
        elsewhere.append(1)

    server, target_url = await serve(target)
    harness.servers.append(server)

    async def redirects(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: " + target_url.encode() + b"\r\ncontent-length: 0\r\n\r\n"
        )
        await writer.drain()

    a = await harness.replica(redirects, "eu-west")
    b = await harness.replica(answers(json_answer({"content": [], "isError": False})), "us-east")
    sent = await harness.call([a, b], idempotent=False)  # a redirect means "not processed here"
    assert answer_of(sent)["result"]["isError"] is False
    assert elsewhere == [] and a.breaker.consecutive == 1
    with pytest.raises(AgentUnavailable, match="HTTP 307"):
        await harness.call([a], idempotent=False)
    assert elsewhere == []


def raw_json(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
    ) + body


MALFORMED = {
    "another id": b'{"jsonrpc":"2.0","id":"not-your-id","result":{"content":[]}}',
    "no id": b'{"jsonrpc":"2.0","result":{"content":[]}}',
    "an id of another type": b'{"jsonrpc":"2.0","id":"1","result":{"content":[]}}',
    "not JSON": b'{"jsonrpc": "2.0", "id": 1, "result": {oops',
    "a batch": b'[{"jsonrpc":"2.0","id":1,"result":{}}]',
    "a null result": b'{"jsonrpc":"2.0","id":1,"result":null}',
    "a string error": b'{"jsonrpc":"2.0","id":1,"error":"boom"}',
    "an error with a string code": b'{"jsonrpc":"2.0","id":1,"error":{"code":"EVIL","message":"x"}}',
    "a request": b'{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}',
    "no jsonrpc member": b'{"id":1,"result":{"content":[]}}',
    "an empty body": b"",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_an_answer_that_is_not_the_calls_json_rpc_response_never_reaches_the_client(
    harness: Harness, case: str
) -> None:
    # Relayed as it came, "another id" left the official SDK client waiting forever.
    a = await harness.replica(answers(raw_json(MALFORMED[case])), "eu-west")
    b = await harness.replica(answers(json_answer({"content": [], "isError": False})), "us-east")
    assert answer_of(await harness.call([a, b], idempotent=True))["result"]["isError"] is False  # retried
    with pytest.raises(OutcomeUnknown, match="answered HTTP 200 with"):  # may have run: not retried
        await harness.call([a, b], idempotent=False)


async def test_a_streamed_response_with_another_id_is_an_error_under_the_clients_id(harness: Harness) -> None:
    wrong = b'event: message\r\ndata: {"jsonrpc":"2.0","id":7,"result":{"content":[]}}\r\n\r\n'

    async def streams(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + chunk(PROGRESS))  # the client's stream is open when the answer comes
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(chunk(wrong) + b"0\r\n\r\n")
        await writer.drain()

    a = await harness.replica(streams, "eu-west")
    (answer,) = responses(body_of(await harness.call([a], idempotent=False)))
    assert answer["id"] == 1 and answer["error"]["code"] == -31004
    assert "the id '7'" in answer["error"]["data"]["cause"]


async def test_what_an_agent_sends_after_its_streamed_response_is_dropped(harness: Harness) -> None:
    extra = b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}\r\n\r\n'

    async def chatty(writer: asyncio.StreamWriter) -> None:
        writer.write(sse_head() + chunk(PROGRESS) + chunk(RESULT))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(chunk(extra) + chunk(PROGRESS) + b"0\r\n\r\n")
        await writer.drain()

    a = await harness.replica(chatty, "eu-west")
    stream = body_of(await harness.call([a], idempotent=False))
    assert responses(stream) == [orjson.loads(RESULT.split(b"data: ")[1])]
    assert stream.count(b"notifications/progress") == 1


async def test_agent_statuses_about_the_dispatchers_request_are_not_relayed_to_the_client(harness: Harness) -> None:
    error = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"who are you"}}'
    for status in (b"401 Unauthorized", b"403 Forbidden", b"418 I'm a teapot", b"429 Too Many Requests"):
        a = await harness.replica(answers(raw_json(error, status)), "eu-west")
        b = await harness.replica(answers(json_answer({"content": [], "isError": False})), "us-east")
        # Not processed there: the next replica serves it, even a non-idempotent call.
        assert answer_of(await harness.call([a, b], idempotent=False))["result"]["isError"] is False
        with pytest.raises(AgentUnavailable, match=f"HTTP {status[:3].decode()}: who are you"):
            await harness.call([a], idempotent=False)
    # The call's own arguments, as the agent validated them: the client's to see, with its status.
    invalid = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad arguments"}}'
    a = await harness.replica(answers(raw_json(invalid, b"400 Bad Request")), "eu-west")
    sent = await harness.call([a], idempotent=False)
    assert sent[0]["status"] == 400 and answer_of(sent)["error"]["code"] == -32602


async def test_an_answer_in_a_content_coding_is_refused(harness: Harness) -> None:
    import gzip

    body = gzip.compress(JSON_RESULT)
    a = await harness.replica(answers(raw_json(body, extra=b"content-encoding: gzip\r\n")), "eu-west")
    with pytest.raises(OutcomeUnknown, match="content coding b'gzip'"):
        await harness.call([a], idempotent=False)
    assert b"accept-encoding: identity" in HEADS[-1].lower()


async def test_a_missed_deadline_is_always_upstream_timeout(harness: Harness) -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)

    a = await harness.replica(slow, "eu-west")
    codes = set()
    for _ in range(20):  # the loop's clock and time.monotonic() disagreed by a hair in some runs
        try:
            await harness.call([a], idempotent=False, timeout_s=0.05)
        except Exception as exc:  # noqa: BLE001 - the code is what is checked
            codes.add(getattr(exc, "code", type(exc).__name__))
    assert codes == {"upstream_timeout"}


async def test_a_stream_whose_last_chunk_comes_apart_leaves_its_connection_for_the_next_call(
    harness: Harness,
) -> None:
    connections: list[int] = []

    async def keeps_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    + chunk(PROGRESS)
                    + chunk(RESULT)
                )
                await writer.drain()
                await asyncio.sleep(0.01)  # uvicorn and Starlette end a stream with a write of its own
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(keeps_alive, "127.0.0.1", 0)
    harness.servers.append(server)
    a = await harness.replica(answers(b""), "eu-west")
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    a.record.url, a.client = url, ReplicaClient(harness.pool, url, era="modern")
    for _ in range(4):
        assert len(responses(body_of(await harness.call([a], idempotent=False)))) == 1
    assert len(connections) == 1


async def test_notifications_on_their_own_lines_before_a_json_response_reach_the_client_as_the_response_alone(
    harness: Harness,
) -> None:
    progress = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
    body = progress + b"\n" + JSON_RESULT  # the conformance reference server's way
    a = await harness.replica(answers(raw_json(body)), "eu-west")
    sent = await harness.call([a], idempotent=False)
    assert orjson.loads(body_of(sent)) == orjson.loads(JSON_RESULT)


async def test_a_null_member_beside_a_result_or_an_error_counts_as_absent(harness: Harness) -> None:
    a = await harness.replica(answers(raw_json(b'{"jsonrpc":"2.0","id":1,"result":{"content":[]},"error":null}')), "x")
    assert answer_of(await harness.call([a], idempotent=False))["result"] == {"content": []}
    b = await harness.replica(
        answers(raw_json(b'{"jsonrpc":"2.0","id":1,"result":null,"error":{"code":-1,"message":"m"}}')), "y"
    )
    assert answer_of(await harness.call([b], idempotent=False))["error"]["code"] == -1


async def test_an_agent_refusing_the_dispatchers_requests_counts_against_its_health(harness: Harness) -> None:
    error = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"who are you"}}'
    a = await harness.replica(answers(raw_json(error, b"401 Unauthorized")), "eu-west")
    with pytest.raises(AgentUnavailable):
        await harness.call([a], idempotent=False)
    assert a.breaker.consecutive == 1


async def test_a_shared_legacy_sessions_json_answer_holding_the_text_data_is_renamed_back(harness: Harness) -> None:
    async def answers_json(writer: asyncio.StreamWriter) -> None:
        upstream_id = orjson.loads(RECEIVED[-1])["id"]
        image = {"type": "text", "text": "data:image/png;base64,AAAA"}
        body = orjson.dumps({"jsonrpc": "2.0", "id": upstream_id, "result": {"content": [image]}})
        writer.write(raw_json(body))
        await writer.drain()

    RECEIVED.clear()
    legacy = await harness.replica(answers_json, "eu-west", era="legacy")
    legacy.client.legacy_sessions[()] = "s-1"
    answer = answer_of(await harness.call([legacy], idempotent=False))
    assert answer["id"] == 1 and answer["result"]["content"][0]["text"].startswith("data:image/png")
