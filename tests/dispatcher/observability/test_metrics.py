"""The dispatcher's metric families, and the shipped Grafana dashboard against them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgefleet.dispatcher.observability.metrics import Metrics, ReplicaState, StateSources

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "compose" / "observability" / "grafana" / "dashboards" / "edgefleet.json"
PROMETHEUS = ROOT / "compose" / "observability" / "prometheus.yml"


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.watch(
        StateSources(
            replicas=lambda: [ReplicaState("a", "eu-west", "a-1", 0, True, 2, 0.004)],
            pool=lambda: (3, 1),
            cache=lambda: (5, 7, 1),
            catalog_tools=lambda: 1,
            refused=[lambda: {"tool": 2}, lambda: {"open_tasks": 1}],
        )
    )
    return metrics


def _sample_names(metrics: Metrics) -> set[str]:
    names = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def test_exposition_parses_and_counts_calls() -> None:
    metrics = _metrics()
    metrics.call("echo.echo", "eu-west", "direct", "ok", "", 0.002)
    metrics.call("echo.echo", "eu-west", "direct", "ok", "", 0.004)
    metrics.call("echo.echo", "eu-west", "direct", "error", "agent_unavailable", 0.001)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
    }
    ok = (("code", ""), ("outcome", "ok"), ("path", "direct"), ("region", "eu-west"), ("tool", "echo.echo"))
    assert samples[("edgefleet_calls_total", ok)] == 2
    assert (
        samples[
            (
                "edgefleet_call_duration_seconds_count",
                (("path", "direct"), ("region", "eu-west"), ("tool", "echo.echo")),
            )
        ]
        == 3
    )
    assert samples[("edgefleet_pool_connections", (("state", "idle"),))] == 3
    assert samples[("edgefleet_catalog_tools", ())] == 1


def test_every_dashboard_query_uses_metrics_the_dispatcher_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _sample_names(_metrics())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 20
    used = {name for expr in exprs for name in re.findall(r"\b((?:edgefleet|process)_[a-z_]+)\b", expr)}
    missing = used - exported
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    # Every family the dispatcher exports shows up somewhere on the dashboard.
    families = {f.name for f in _metrics().registry.collect() if f.name.startswith("edgefleet_")}
    unshown = {f for f in families if not any(f in expr for expr in exprs)}
    assert not unshown, f"metrics with no panel: {sorted(unshown)}"
    # The job name the panels filter on is the one Prometheus scrapes.
    assert all('job="edgefleet-dispatcher"' in e for e in exprs if "job=" in e)
    assert "job_name: edgefleet-dispatcher" in PROMETHEUS.read_text()


def test_agent_errors_get_bounded_labels() -> None:
    from opentelemetry.trace import INVALID_SPAN

    from edgefleet.dispatcher.observability.observe import CallObservation, error_label
    from edgefleet.dispatcher.paths.relay import _classify_message
    from edgefleet.shared.jsonrpc import last_response

    def _classify(obs: CallObservation, payload: bytes, *, stream: bool) -> None:
        """The outcome the relay takes from an agent's answer (JSON body or SSE events)."""
        message = last_response(payload, stream=stream)
        assert message is not None
        _classify_message(obs, message)

    assert error_label({"code": -32602, "message": "bad", "data": {"code": "whatever-the-agent-says"}}) == (
        "error",
        "agent_error",
    )
    assert error_label({"code": -31003, "message": "late", "data": {"code": "upstream_timeout"}}) == (
        "timeout",
        "upstream_timeout",
    )
    assert error_label({"code": -31003, "message": "late"}) == ("timeout", "upstream_timeout")
    assert error_label("nonsense") == ("error", "agent_error")

    obs = CallObservation(None, INVALID_SPAN, "echo.echo", "direct", "eu-west")
    _classify(obs, b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError": true}}', stream=False)
    assert obs.outcome == "tool_error"
    obs = CallObservation(None, INVALID_SPAN, "echo.echo", "direct", "eu-west")
    sse = (
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"error":1}}\n\n'
        b'event: message\ndata: {"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}\n\n'
    )
    _classify(obs, sse, stream=True)
    assert (obs.outcome, obs.code) == ("error", "agent_error")
    obs = CallObservation(None, INVALID_SPAN, "echo.echo", "direct", "eu-west")
    _classify(
        obs,
        b'{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"error":"a field named error"},"isError":false}}',
        stream=False,
    )
    assert obs.outcome == "ok"


def test_a_departed_replica_leaves_no_series() -> None:
    metrics = _metrics()
    metrics.upstream_outcome("echo", "eu-west", "r1", "ok")
    metrics.upstream_latency("echo", "eu-west", "r1", 0.01)
    metrics.forget_replica("echo", "eu-west", "r1")
    assert b"r1" not in metrics.exposition()
    # Back under the same id (a heartbeat gap): counted afresh, not into a dropped child.
    metrics.upstream_outcome("echo", "eu-west", "r1", "ok")
    metrics.upstream_latency("echo", "eu-west", "r1", 0.01)
    exposition = metrics.exposition().decode()
    assert (
        'edgefleet_upstream_requests_total{agent="echo",outcome="ok",region="eu-west",replica="r1"} 1.0' in exposition
    )
    assert 'edgefleet_upstream_duration_seconds_count{agent="echo",region="eu-west",replica="r1"} 1.0' in exposition
