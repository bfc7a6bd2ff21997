"""A minimal OTLP/HTTP trace receiver: the in-test collector, and the span sink that
``edgefleet bench`` exports to when it measures tracing overhead.

It speaks the real protocol (``POST /v1/traces``, protobuf ``ExportTraceServiceRequest``,
optionally gzip) so the processes under test export exactly as they would to an
OpenTelemetry Collector. ``GET /spans`` returns what arrived as JSON, ``GET /count`` the
number of spans.

    python -m edgefleet.dispatcher.devtools.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import gzip
import threading
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        service=str(resource.get("service.name", "")),
                        status={0: "unset", 1: "ok", 2: "error"}.get(span.status.code, "unset"),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        events=[e.name for e in span.events],
                    )
                )
    return out


class Sink:
    """Runs the receiver on a thread of this process (tests) until ``close``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, count_only: bool = False) -> None:
        self.spans: list[ReceivedSpan] = []
        self.counted = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self._reply(404, b"")
                    return
                if count_only:  # the benchmark's sink: cheap, so it does not compete for the CPU it measures
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    found = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                    with sink.lock:
                        sink.counted += found
                else:
                    spans = decode(body)
                    with sink.lock:
                        sink.spans.extend(spans)
                        sink.counted += len(spans)
                self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

            def do_GET(self) -> None:
                with sink.lock:
                    if self.path == "/count":
                        self._reply(200, str(sink.counted).encode(), "text/plain")
                    elif self.path == "/spans":
                        self._reply(200, orjson.dumps([asdict(s) for s in sink.spans]), "application/json")
                    else:
                        self._reply(404, b"")

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)
        self.thread.start()

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.dispatcher.devtools.otlp_sink", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--count-only", action="store_true", help="count spans instead of decoding and keeping them")
    args = parser.parse_args()
    sink = Sink(args.host, args.port, count_only=args.count_only)
    print(f"OTLP_SINK_READY endpoint={sink.endpoint}", flush=True)
    try:
        sink.thread.join()
    except KeyboardInterrupt:
        sink.close()


if __name__ == "__main__":
    main()
