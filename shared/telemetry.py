"""OpenTelemetry tracing for every edgefleet process, configured by the standard ``OTEL_*``
variables.

Rules (documented in the README):
- ``OTEL_SDK_DISABLED=true``: no spans at all.
- Spans are exported over OTLP/HTTP (protobuf) when ``OTEL_TRACES_EXPORTER`` is ``otlp``,
  or when it is unset and ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``console`` prints them; ``none`` or
  nothing configured: tracing off. Off by default so ``edgefleet dev`` does not spend
  time exporting to a collector that is not there.
- Sampling, batching, endpoint, headers, resource: the SDK reads ``OTEL_TRACES_SAMPLER``,
  ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``.

With tracing off a pass-through provider is installed instead of the API's no-op one: it
creates no spans but keeps the caller's context current, so a ``traceparent`` that came in
still goes out to the next hop (the no-op tracer would replace it with an invalid span and
cut the trace of a caller who traces even though we do not).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind

log = logging.getLogger("edgefleet.telemetry")

_configured: str | None = None


class PassThroughTracer(trace.Tracer):
    """Starts no span: the current one (possibly a remote parent) stays current."""

    def start_span(self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any) -> Span:
        return trace.get_current_span(context)

    # Accepts the SDK's keywords and ignores them; the SDK's own signature returns a private
    # context-manager type (opentelemetry.util._decorator), which a plain one cannot match.
    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[Span]:
        if context is None:
            yield trace.get_current_span()
            return
        token = otel_context.attach(context)
        try:
            yield trace.get_current_span(context)
        finally:
            otel_context.detach(token)


class PassThroughTracerProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return PassThroughTracer()


def exporter_choice() -> str:
    """``otlp``, ``console`` or ``none``: what the environment asks for."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen:
        first = chosen.split(",")[0].strip()
        if first not in ("otlp", "console", "none"):
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none): tracing off", chosen)
            return "none"
        return first
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return "none"


def configure(service_name: str, **resource: str | None) -> str:
    """Install the process-wide tracer provider (once); returns the exporter in use."""
    global _configured
    if _configured is not None:
        return _configured
    choice = exporter_choice()
    if choice == "none":
        trace.set_tracer_provider(PassThroughTracerProvider())
        _configured = choice
        return choice
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if choice == "otlp" and protocol != "http/protobuf":
        log.warning("OTLP protocol %s is not bundled; exporting with http/protobuf (port 4318)", protocol)
    attributes: dict[str, str] = {k.replace("_", "."): v for k, v in resource.items() if v}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler from OTEL_TRACES_SAMPLER
    exporter: SpanExporter
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = choice
    log.info("tracing on: %s exporter, service %s", choice, os.environ.get("OTEL_SERVICE_NAME") or service_name)
    return choice


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still batched (shutting down; the SDK also does it at exit)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if callable(force_flush):
        with contextlib.suppress(Exception):
            force_flush(timeout_ms)


def tracing() -> bool:
    """Are spans being recorded in this process (an exporter is configured)?"""
    return _configured not in (None, "none")


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


class current_span:
    """``with current_span(tracer, name, ...) as span``: ``tracer.start_as_current_span(name,
    ..., record_exception=False, set_status_on_exception=False)``, the same span made
    current and ended the same way, without the SDK's two generator-based context managers
    (two more through a ProxyTracer), which cost about 2 % of the dispatcher's CPU per call
    at 16 sessions (issue 19). An exception passes through untouched: the callers set the
    span's status and error type themselves."""

    __slots__ = ("span", "_token")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        *,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.span = tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        try:
            otel_context.detach(self._token)
        finally:
            self.span.end()


def recording() -> bool:
    """Is the current span being recorded (tracing on and sampled)?"""
    return trace.get_current_span().is_recording()


def context_from(
    meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
) -> otel_context.Context | None:
    """The caller's trace context: ``_meta.traceparent`` first (the MCP-level carrier),
    then the HTTP ``traceparent`` header; None when neither holds a valid one."""
    for carrier in (meta, headers):
        if carrier and isinstance(carrier.get("traceparent"), str):
            # Only the two W3C fields, and only strings: _meta is client input, and the
            # propagators assume well-typed carriers (a numeric "baggage" raised in them).
            clean = {k: carrier[k] for k in ("traceparent", "tracestate") if isinstance(carrier.get(k), str)}
            try:
                ctx = extract(clean)
            except Exception:  # noqa: BLE001 - a malformed header is no context, never an error
                continue
            if trace.get_current_span(ctx).get_span_context().is_valid:
                return ctx
    return None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span (or remote parent), if any."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def inject_into(carrier: MutableMapping[str, Any]) -> None:
    """Write traceparent (and tracestate) of the current span into ``carrier``."""
    inject(carrier)


def ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


__all__ = [
    "SpanKind",
    "configure",
    "context_from",
    "current_traceparent",
    "exporter_choice",
    "ids",
    "inject_into",
    "flush",
    "recording",
    "tracer",
    "tracing",
]
