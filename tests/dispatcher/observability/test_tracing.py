"""One trace per tool call across real processes: the client's context → the dispatcher's
server span → the direct attempt or the bus publish → the agent's consume and execute
spans, exported over real OTLP/HTTP to an in-test collector. Also: /metrics parses with
Prometheus' own parser and its counters move, and log lines carry the trace id."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.dispatcher.devtools.otlp_sink import ReceivedSpan, Sink

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

CONFIG = """
pipelines:
  relay:
    steps:
      - name: first
        tool: echo.echo
        arguments: {text: "${input.text}"}
      - name: second
        tool: echo.where
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _traced_fleet(redis_url: str, prefix: str, sink: Sink, tmp_path: Path, bus_url: str) -> Fleet:
    config = tmp_path / "edgefleet.yaml"
    config.write_text(CONFIG)
    fleet = Fleet(redis_url, prefix, region="eu-west")
    # Export quickly: the test waits for spans, not for the default 5 s batch delay.
    fleet.base_env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    # echo.where over the bus, echo.echo direct.
    fleet.start_dispatcher(config_file=config, bus_url=bus_url, bus_tools="echo.where")
    fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
    return fleet


def _parent() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


async def _call(fleet: Fleet, tool: str, arguments: dict, trace_id: str, span_id: str) -> None:
    async with Client(fleet.mcp_url) as client:
        result = await client.call_tool(tool, arguments, meta={"traceparent": f"00-{trace_id}-{span_id}-01"})
        assert not result.is_error, result


def _trace(sink: Sink, trace_id: str, *, until: callable, timeout: float = 15.0) -> list[ReceivedSpan]:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    spans: list[ReceivedSpan] = []
    while time.monotonic() < deadline:
        spans = [s for s in sink.snapshot() if s.trace_id == trace_id]
        if until(spans):
            return spans
        time.sleep(0.1)
    pytest.fail(f"trace {trace_id} incomplete after {timeout} s: {[(s.service, s.name, s.kind) for s in spans]}")


def _has(spans: list[ReceivedSpan], **wanted: int) -> bool:
    """At least ``wanted[name]`` spans of each kind per side, e.g. dispatcher_server=1, agent_consumer=1
    (the processes export on their own schedules, so one side may arrive first)."""
    for key, count in wanted.items():
        side, kind = key.split("_", 1)
        if sum(1 for s in spans if s.service.startswith(f"edgefleet-{side}") and s.kind == kind) < count:
            return False
    return True


def _one(spans: list[ReceivedSpan], *, service_prefix: str, kind: str, name_prefix: str = "") -> ReceivedSpan:
    found = [
        s for s in spans if s.service.startswith(service_prefix) and s.kind == kind and s.name.startswith(name_prefix)
    ]
    assert len(found) == 1, [(s.service, s.name, s.kind) for s in spans]
    return found[0]


def _assert_connected(spans: list[ReceivedSpan], root_parent: str) -> None:
    """Every span hangs off another span of the trace, except the one whose parent is the client's."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_span_id not in ids]
    assert [r.parent_span_id for r in roots] == [root_parent], [(s.service, s.name, s.parent_span_id) for s in roots]


def _bus_backends() -> list[str]:
    return ["redis", "kafka"]


@pytest.mark.parametrize("backend", _bus_backends())
async def test_direct_bus_fanout_and_pipeline_calls_are_single_traces(
    backend: str,
    redis_url: str,
    redis_prefix: str,
    sink: Sink,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    bus_url = redis_url if backend == "redis" else request.getfixturevalue("kafka_url")
    fleet = _traced_fleet(redis_url, redis_prefix, sink, tmp_path, bus_url)
    try:
        # Direct path: client → dispatcher SERVER → attempt CLIENT → agent SERVER (the MCP SDK's).
        trace_id, client_span = _parent()
        await _call(fleet, "echo.echo", {"text": "hi"}, trace_id, client_span)
        spans = _trace(
            sink, trace_id, until=lambda s: _has(s, dispatcher_server=1, dispatcher_client=1, agent_server=1)
        )
        server = _one(spans, service_prefix="edgefleet-dispatcher", kind="server")
        assert server.parent_span_id == client_span
        assert server.attributes["gen_ai.tool.name"] == "echo.echo"
        assert server.attributes["edgefleet.region"] == "eu-west" and server.attributes["edgefleet.path"] == "direct"
        assert "edgefleet.route.reason" in server.attributes
        attempt = _one(spans, service_prefix="edgefleet-dispatcher", kind="client")
        assert attempt.parent_span_id == server.span_id and attempt.attributes["edgefleet.attempt"] == 1
        executed = _one(spans, service_prefix="edgefleet-agent-echo", kind="server")
        assert executed.parent_span_id == attempt.span_id and executed.name == "tools/call echo"
        _assert_connected(spans, client_span)

        # Bus path: dispatcher SERVER → PRODUCER → agent CONSUMER → agent SERVER.
        trace_id, client_span = _parent()
        await _call(fleet, "echo.where", {}, trace_id, client_span)
        spans = _trace(
            sink,
            trace_id,
            until=lambda s: _has(s, dispatcher_server=1, dispatcher_producer=1, agent_consumer=1, agent_server=1),
        )
        server = _one(spans, service_prefix="edgefleet-dispatcher", kind="server")
        assert server.parent_span_id == client_span and server.attributes["edgefleet.path"] == "bus"
        assert "bus.reply" in server.events
        publish = _one(spans, service_prefix="edgefleet-dispatcher", kind="producer")
        assert publish.parent_span_id == server.span_id and publish.attributes["messaging.system"] == backend
        consume = _one(spans, service_prefix="edgefleet-agent-echo", kind="consumer")
        assert consume.parent_span_id == publish.span_id
        assert consume.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
        executed = _one(spans, service_prefix="edgefleet-agent-echo", kind="server")
        assert executed.parent_span_id == consume.span_id
        _assert_connected(spans, client_span)

        # Fan-out: one sub-task span per call, each with its own path down to the agent.
        trace_id, client_span = _parent()
        await _call(
            fleet,
            "edgefleet.fanout",
            {"calls": [{"tool": "echo.echo", "arguments": {"text": "a"}}, {"tool": "echo.where"}]},
            trace_id,
            client_span,
        )
        spans = _trace(
            sink,
            trace_id,
            until=lambda s: _has(
                s,
                dispatcher_server=1,
                dispatcher_internal=4,
                dispatcher_client=1,
                dispatcher_producer=1,
                agent_consumer=1,
                agent_server=2,
            ),
        )
        subtasks = [s for s in spans if s.name == "fanout.subtask"]
        assert sorted(s.attributes["gen_ai.tool.name"] for s in subtasks) == ["echo.echo", "echo.where"]
        assert all(s.attributes["edgefleet.subtask.status"] == "ok" for s in subtasks)
        _one(spans, service_prefix="edgefleet-agent-echo", kind="consumer")
        assert len([s for s in spans if s.service.startswith("edgefleet-agent") and s.kind == "server"]) == 2
        _assert_connected(spans, client_span)

        # Pipeline: one span per step, the call of each step under it, the agent under that.
        trace_id, client_span = _parent()
        await _call(fleet, "edgefleet.relay", {"text": "x"}, trace_id, client_span)
        spans = _trace(
            sink,
            trace_id,
            until=lambda s: _has(
                s,
                dispatcher_server=1,
                dispatcher_internal=4,
                dispatcher_client=1,
                dispatcher_producer=1,
                agent_consumer=1,
                agent_server=2,
            ),
        )
        steps = {s.attributes["edgefleet.step"]: s for s in spans if s.name.startswith("pipeline.step")}
        assert set(steps) == {"first", "second"}
        assert all(s.attributes["edgefleet.step.status"] == "completed" for s in steps.values())
        server = _one(spans, service_prefix="edgefleet-dispatcher", kind="server")
        assert all(s.parent_span_id == server.span_id for s in steps.values())
        _assert_connected(spans, client_span)

        # The dispatcher's call log line carries the same trace id.
        log = fleet.dispatchers[0][1].output()
        assert f"trace={trace_id}" in log
    finally:
        fleet.stop()


async def test_metrics_parse_and_move(fleet: Fleet) -> None:
    fleet.start_dispatcher()
    fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(fleet.url + "/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def calls(samples: dict, outcome: str, tool: str = "echo.echo") -> float:
        return sum(
            v
            for (name, labels), v in samples.items()
            if name == "edgefleet_calls_total"
            and dict(labels).get("tool") == tool
            and dict(labels)["outcome"] == outcome
        )

    before = scrape()
    # The dispatcher's start-up exercise of /mcp (a call of a nonexistent tool) is not traffic.
    assert not [labels for (name, labels) in before if name == "edgefleet_calls_total"], before
    async with Client(fleet.mcp_url) as client:
        for _ in range(3):
            await client.call_tool("echo.echo", {"text": "m"})
        await client.call_tool("echo.fail", {})
    after = scrape()
    assert calls(after, "ok") - calls(before, "ok") == 3
    assert calls(after, "tool_error", "echo.fail") - calls(before, "tool_error", "echo.fail") == 1
    count = [
        v
        for (name, labels), v in after.items()
        if name == "edgefleet_call_duration_seconds_count" and dict(labels)["tool"] == "echo.echo"
    ]
    assert sum(count) >= 3
    breaker = [(dict(labels), v) for (name, labels), v in after.items() if name == "edgefleet_breaker_state"]
    assert breaker and all(v == 0 for _, v in breaker) and {series["agent"] for series, _ in breaker} == {"echo"}
    assert any(
        name == "edgefleet_upstream_requests_total" and dict(labels)["outcome"] == "ok" for (name, labels) in after
    )
    assert any(name == "edgefleet_route_decisions_total" for (name, _l) in after)
    assert any(name == "process_resident_memory_bytes" for (name, _l) in after)
    # No per-call identifiers as labels: every label value comes from a small, known set.
    for name, labels in after:
        for key, _value in labels:
            assert key not in ("task", "task_id", "request_id", "arguments"), (name, key)
