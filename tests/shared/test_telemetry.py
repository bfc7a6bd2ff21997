"""Tracing configuration rules and the pass-through tracer used when tracing is off."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry import context as otel_context

from edgefleet.shared import logsetup, telemetry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def clean_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OTEL_")}
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[k]
        os.environ.update(saved)


def test_exporter_choice_follows_the_standard_variables(clean_env: None) -> None:
    assert telemetry.exporter_choice() == "none"  # nothing configured: off
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4318"
    assert telemetry.exporter_choice() == "otlp"
    os.environ["OTEL_TRACES_EXPORTER"] = "none"
    assert telemetry.exporter_choice() == "none"
    os.environ["OTEL_TRACES_EXPORTER"] = "console"
    assert telemetry.exporter_choice() == "console"
    os.environ["OTEL_TRACES_EXPORTER"] = "zipkin"
    assert telemetry.exporter_choice() == "none"  # not bundled: off, with a warning
    os.environ["OTEL_TRACES_EXPORTER"] = "otlp"
    os.environ["OTEL_SDK_DISABLED"] = "true"
    assert telemetry.exporter_choice() == "none"


def test_pass_through_tracer_keeps_the_callers_context() -> None:
    tracer = telemetry.PassThroughTracer()
    parent = telemetry.context_from({"traceparent": PARENT})
    assert parent is not None
    with tracer.start_as_current_span("tools/call x", context=parent) as span:
        assert not span.is_recording()
        # The next hop gets the caller's own traceparent, unchanged.
        assert telemetry.current_traceparent() == PARENT
    assert telemetry.current_traceparent() is None


def test_context_prefers_meta_and_ignores_garbage() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    ctx = telemetry.context_from({"traceparent": PARENT}, {"traceparent": other})
    token = otel_context.attach(ctx)  # type: ignore[arg-type]
    try:
        assert telemetry.ids() == (TRACE_ID, "00f067aa0ba902b7")
    finally:
        otel_context.detach(token)
    assert telemetry.context_from({"traceparent": "nonsense"}, None) is None
    assert telemetry.context_from({"traceparent": 42}, {"traceparent": other}) is not None  # falls back to the header


@pytest.fixture
def root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_log_lines_carry_the_trace_id(root_logger: None) -> None:
    import io

    stream = io.StringIO()
    logsetup.configure("info", "json", stream=stream)
    token = otel_context.attach(telemetry.context_from({"traceparent": PARENT}))  # type: ignore[arg-type]
    try:
        logging.getLogger("edgefleet.test").info("call x", extra={"tool": "x"})
    finally:
        otel_context.detach(token)
    entry = orjson.loads(stream.getvalue().splitlines()[-1])
    assert entry["trace_id"] == TRACE_ID and entry["span_id"] == "00f067aa0ba902b7" and entry["tool"] == "x"
    logsetup.configure("info", "text", stream=stream)
    token = otel_context.attach(telemetry.context_from({"traceparent": PARENT}))  # type: ignore[arg-type]
    try:
        logging.getLogger("edgefleet.test").info("call y")
    finally:
        otel_context.detach(token)
    assert stream.getvalue().splitlines()[-1].endswith(f"trace={TRACE_ID}")


def test_hostile_meta_is_no_context_not_an_error() -> None:
    assert telemetry.context_from({"traceparent": PARENT, "baggage": 5, "tracestate": [[1]]}) is not None
    assert telemetry.context_from({"traceparent": "00-" + "z" * 32 + "-" + "0" * 16 + "-01"}) is None
