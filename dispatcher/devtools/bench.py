"""``edgefleet bench``: the echo tool called directly on one agent and through the dispatcher,
in ONE run, alternating rounds, so the ratios mean something on a shared, noisy machine.

What it reports, per scenario and number of concurrent sessions:

- calls/s and p50/p99 latency of each path, and the ratios through/direct;
- CPU per call of every process involved, from the kernel's own accounting
  (``/proc/<pid>/stat`` utime+stime deltas over the round / calls): the dispatcher, the
  agent, Redis, and this load client (``time.process_time``). Read the dispatcher's figure,
  not only the throughput ratio: a heavy load generator hides the server's cost;
- scenarios: ``2026`` (stateless requests), ``2025`` (each session initialized first, its
  ``Mcp-Session-Id`` on every call), ``bus`` (``echo.where`` over the Redis bus through the
  dispatcher, against the same tool called directly on the agent over HTTP).

The dispatcher runs with the realistic feature set (``benchstack``): API-key auth, rate
limit, audit stream, metrics, result checks, the per-call log line, tracing at 10 %.
``--variant`` adds dispatchers with other settings or another source tree to the same run
(e.g. ``--variant base=src:/work/other/build/editable`` or ``--variant noaudit=EDGEFLEET_AUDIT=false``).
``--json`` prints everything, every round included, for comparing runs.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from edgefleet.dispatcher.devtools.benchstack import BUS_TOOL, BenchStack, Running, Variant
from edgefleet.dispatcher.devtools.loadclient import (
    LEGACY,
    MODERN,
    Round,
    Session,
    Target,
    drive,
    median,
    open_sessions,
    percentile,
    process_cpu_s,
)

# scenario -> (era, the tool's name on the agent, its name through the dispatcher)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "2026": (MODERN, "echo", "echo.echo"),
    "2025": (LEGACY, "echo", "echo.echo"),
    "bus": (MODERN, "where", BUS_TOOL),
}
ROLES = ("dispatcher", "agent", "client", "redis")
FEATURES = [
    "API-key auth",
    "rate limit (Redis moving window)",
    "audit stream",
    "metrics",
    "result checks (outputSchema)",
    "info log line per call (JSON)",
    "OTLP tracing (head sampling, see trace_ratio)",
    f"Redis bus for {BUS_TOOL}",
]


@dataclass
class Cell:
    """One (scenario, sessions, path) over all rounds."""

    scenario: str
    sessions: int
    path: str  # "direct" or a dispatcher variant's label
    rounds: list[Round] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.rounds)

    @property
    def rate(self) -> float:
        seconds = sum(r.seconds for r in self.rounds)
        return self.calls / seconds if seconds else 0.0

    def latencies(self) -> list[float]:
        return [v for r in self.rounds for v in r.latencies_ms]

    def cpu_ms_per_call(self) -> dict[str, float]:
        calls = self.calls or 1
        return {role: round(sum(r.cpu_s.get(role, 0.0) for r in self.rounds) / calls * 1000, 4) for role in ROLES}

    def as_json(self) -> dict[str, Any]:
        latencies = self.latencies()
        return {
            "scenario": self.scenario,
            "sessions": self.sessions,
            "path": self.path,
            "calls": self.calls,
            "errors": sum(r.errors for r in self.rounds),
            "calls_per_s": round(self.rate, 1),
            "p50_ms": round(percentile(latencies, 0.5), 3),
            "p99_ms": round(percentile(latencies, 0.99), 3),
            "cpu_ms_per_call": self.cpu_ms_per_call(),
            "rounds": [
                {
                    "calls": r.calls,
                    "errors": r.errors,
                    "seconds": round(r.seconds, 3),
                    "calls_per_s": round(r.rate, 1),
                    "p50_ms": round(percentile(r.latencies_ms, 0.5), 3),
                    "cpu_ms_per_call": {k: round(v / (r.calls or 1) * 1000, 4) for k, v in r.cpu_s.items()},
                }
                for r in self.rounds
            ],
        }


def parse_variant(spec: str) -> Variant:
    """``label`` (the realistic settings), ``label=K=V,K=V`` (settings on top), ``label=src:DIR``
    (another source tree) or ``label=python:PATH`` (another interpreter, e.g. a venv of a
    newer Python with edgefleet installed)."""
    label, _, rest = spec.partition("=")
    if not label or label == "direct":
        raise ValueError(f"--variant {spec!r}: give it a label other than 'direct'")
    variant = Variant(label)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        if item.startswith("src:"):
            variant.src = os.path.abspath(item[4:])
        elif item.startswith("python:"):
            variant.python = os.path.abspath(item[7:])
        else:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--variant {spec!r}: {item!r} is neither K=V, src:DIR nor python:PATH")
            variant.env[key] = value
    return variant


async def _round(target: Target, sessions: int, seconds: float, watch: dict[str, int], expect_route: str) -> Round:
    opened = await open_sessions(target, sessions)
    try:
        headers = await opened[0].call_checked()
        route = headers.get(b"edgefleet-route", b"").decode()
        if expect_route and expect_route not in route:
            raise RuntimeError(f"bench: {target.tool} did not take the expected path (route: {route!r})")
        return await drive(opened, seconds, watch)
    finally:
        for session in opened:
            session.close()


async def first_call(target: Target, then: int = 50) -> dict[str, float]:
    """The first tools/call on a fresh session and the p50 of the ``then`` calls after it (ms)."""
    session = Session(target)
    await session.open()
    try:
        timings = []
        for _ in range(1 + then):
            started = time.perf_counter()
            await session.call_checked()
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        session.close()
    return {"first_ms": round(timings[0], 3), "next_p50_ms": round(median(timings[1:]), 3)}


def _runner() -> asyncio.Runner:
    try:
        import uvloop  # the cheapest loop for the client too
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def measure(
    stack: BenchStack, scenarios: list[str], concurrency: list[int], seconds: float, rounds: int, *, quiet: bool
) -> list[Cell]:
    assert stack.agent is not None
    cells: dict[tuple[str, int, str], Cell] = {}
    with _runner() as runner:
        for scenario in scenarios:
            era, own_name, public = SCENARIOS[scenario]
            for sessions in concurrency:
                paths: list[tuple[str, Target, Running | None]] = [
                    ("direct", Target(stack.agent_url, own_name, era), None)
                ]
                for d in stack.dispatchers:
                    paths.append((d.label, Target(d.url + "/mcp", public, era, stack.api_key), d))
                for r in range(rounds):
                    # Rotate the order each round: drift on the machine hits every path alike.
                    for label, target, running in paths[r % len(paths) :] + paths[: r % len(paths)]:
                        watch = {"agent": stack.agent.pid, "redis": stack.redis_pid}
                        watch["dispatcher"] = (running or stack.dispatchers[0]).proc.pid
                        # The route header proves the path: "path=bus", or a direct attempt on a replica.
                        expect = "" if running is None else ("path=bus" if scenario == "bus" else "attempt=")
                        result = runner.run(_round(target, sessions, seconds, watch, expect))
                        cells.setdefault((scenario, sessions, label), Cell(scenario, sessions, label)).rounds.append(
                            result
                        )
                    if not quiet:
                        print(f"  {scenario} x{sessions}: round {r + 1}/{rounds} done", file=sys.stderr)
    return list(cells.values())


def ratios(cells: list[Cell]) -> list[dict[str, Any]]:
    by_key = {(c.scenario, c.sessions, c.path): c for c in cells}
    out = []
    for cell in cells:
        if cell.path == "direct":
            continue
        direct = by_key[(cell.scenario, cell.sessions, "direct")]
        via, base = cell.latencies(), direct.latencies()
        out.append(
            {
                "scenario": cell.scenario,
                "sessions": cell.sessions,
                "path": cell.path,
                "throughput_via_over_direct": round(cell.rate / direct.rate, 3) if direct.rate else None,
                "added_p50_ms": round(percentile(via, 0.5) - percentile(base, 0.5), 3),
                "added_p99_ms": round(percentile(via, 0.99) - percentile(base, 0.99), 3),
            }
        )
    return out


def report(result: dict[str, Any]) -> str:
    lines = [
        f"edgefleet bench: {result['settings']['rounds']} alternating rounds of {result['settings']['seconds']:g} s "
        f"per path; {result['machine']['cpus']} CPUs",
        "dispatcher features: "
        + ", ".join(result["settings"]["features"])
        + f"; trace ratio {result['settings']['trace_ratio']:g}",
        "",
        f"{'scenario':8} {'sess':>4} {'path':12} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
        f" | CPU ms/call {'dispatcher':>10} {'agent':>6} {'client':>6} {'redis':>6}",
    ]
    ratio_by = {(r["scenario"], r["sessions"], r["path"]): r for r in result["ratios"]}
    for cell in result["cells"]:
        cpu = cell["cpu_ms_per_call"]
        dispatcher = f"{cpu['dispatcher']:10.3f}" if cell["path"] != "direct" else f"{'(idle)':>10}"
        lines.append(
            f"{cell['scenario']:8} {cell['sessions']:>4} {cell['path']:12} {cell['calls_per_s']:>8.0f}"
            f" {cell['p50_ms']:>7.2f} {cell['p99_ms']:>7.2f} {cell['errors']:>6} |             {dispatcher}"
            f" {cpu['agent']:>6.3f} {cpu['client']:>6.3f} {cpu['redis']:>6.3f}"
        )
        ratio = ratio_by.get((cell["scenario"], cell["sessions"], cell["path"]))
        if ratio is not None:
            lines.append(
                f"{'':8} {'':>4} {'  ratio':12} {ratio['throughput_via_over_direct']:>8.2f}"
                f" {ratio['added_p50_ms']:>+7.2f} {ratio['added_p99_ms']:>+7.2f}   (through/direct throughput; added p50/p99)"
            )
    lines.append("")
    for label, idle in result["idle_cpu_percent"].items():
        lines.append(f"dispatcher {label} idle: {idle:.1f} % of a core (heartbeats, probes, fleet sync)")
    for label, first in result["first_call"].items():
        lines.append(
            f"first call through {label}: {first['first_ms']:.2f} ms, then p50 {first['next_p50_ms']:.2f} ms (fresh session)"
        )
    lines.append(f"spans received by the OTLP sink: {result['spans_received']}")
    return "\n".join(lines)


def run_bench(
    *,
    concurrency: list[int],
    seconds: float,
    rounds: int,
    scenarios: list[str] | None = None,
    trace_ratio: float = 0.1,
    variants: list[str] | None = None,
    as_json: bool = False,
    quiet: bool = False,
) -> int:
    scenarios = scenarios or list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"edgefleet bench: unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}", file=sys.stderr)
        return 2
    try:
        chosen = [Variant("dispatcher")] + [parse_variant(v) for v in variants or []]
    except ValueError as exc:
        print(f"edgefleet bench: {exc}", file=sys.stderr)
        return 2
    with BenchStack(chosen, trace_ratio=trace_ratio) as stack:
        idle: dict[str, float] = {}
        before = {d.label: process_cpu_s(d.proc.pid) for d in stack.dispatchers}
        time.sleep(2.0)
        for d in stack.dispatchers:
            idle[d.label] = round((process_cpu_s(d.proc.pid) - before[d.label]) / 2.0 * 100, 2)
        first: dict[str, dict[str, float]] = {}
        with _runner() as runner:
            for d in stack.dispatchers:
                first[d.label] = runner.run(first_call(Target(d.url + "/mcp", "echo.echo", MODERN, stack.api_key)))
        cells = measure(stack, scenarios, concurrency, seconds, rounds, quiet=quiet)
        time.sleep(1.0)  # the spans' last export batch
        result = {
            "version": 1,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
            "settings": {
                "seconds": seconds,
                "rounds": rounds,
                "trace_ratio": trace_ratio,
                "features": FEATURES,
                "variants": [{"label": v.label, "env": v.env, "src": v.src} for v in chosen],
            },
            "cells": [c.as_json() for c in cells],
            "ratios": ratios(cells),
            "idle_cpu_percent": idle,
            "first_call": first,
            "spans_received": stack.spans_received(),
        }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if as_json else report(result))
    return 0


__all__ = ["SCENARIOS", "parse_variant", "run_bench"]
