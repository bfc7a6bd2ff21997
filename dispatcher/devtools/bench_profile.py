"""Where the dispatcher's CPU goes under load: a sampler records it while the bench's client
drives it, and the samples are summed into shares per component.

    python -m edgefleet.dispatcher.devtools.bench_profile [--sessions 16] [--seconds 20]
        [--scenario 2026] [--sampler py-spy|perf] [--raw FILE] [--variant ...]

Same processes and feature set as ``edgefleet bench`` (``benchstack``). A sample counts for
the first component, from the innermost frame outwards, whose pattern matches one of its
frames' file or function.

- ``--sampler py-spy`` (``pip install py-spy``; ptrace rights over the dispatcher: root, or
  ``kernel.yama.ptrace_scope`` 0): Python frames on any Python, idle samples excluded. Its
  attribution is skewed on Python 3.11 under uvloop (``perf_samples`` says how): read its
  shares as a rough guide.
- ``--sampler perf`` (Linux ``perf``; root, or ``kernel.perf_event_paranoid`` <= 1): the
  CPU itself, kernel included, first by shared object (interpreter, kernel, uvloop...), then
  by component when the dispatcher runs on Python >= 3.12 (``--variant
  py312=python:VENV/bin/python``), whose perf trampolines name the Python functions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgefleet.dispatcher.devtools import perf_samples
from edgefleet.dispatcher.devtools.bench import SCENARIOS, parse_variant
from edgefleet.dispatcher.devtools.benchstack import BenchStack, Variant
from edgefleet.dispatcher.devtools.loadclient import Target, drive, open_sessions

# Component -> substrings of "function (file)" frames; checked innermost frame first, so a
# sample inside jsonschema called from the catalog counts for validation, not the catalog.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("argument validation (jsonschema)", ("jsonschema", "validation_error", "jsonschema_rs", "fastjsonschema")),
    ("result checks (outputSchema)", ("paths/checks.py", "result_problem")),
    ("log line (logging, JSON formatter)", ("logging/__init__.py", "logsetup.py")),
    ("audit record + writer", ("security/audit.py",)),
    ("metrics (prometheus_client)", ("prometheus_client", "observability/metrics.py")),
    ("tracing (OpenTelemetry SDK, export)", ("opentelemetry", "shared/telemetry.py")),
    ("call observation (observe.py)", ("observability/observe.py",)),
    ("rate limit (limits, Redis)", ("limits/", "rate_limits.py", "rate_lease.py")),
    ("Redis client (redis-py)", ("redis/",)),
    ("upstream client (aiohttp)", ("aiohttp",)),
    ("upstream client (http1)", ("dispatcher/http1/",)),
    ("auth (API key)", ("security/auth.py",)),
    ("sessions (2025)", ("mcp/sessions.py",)),
    ("routing", ("dispatcher/routing/",)),
    ("direct path", ("paths/direct.py", "paths/answer.py", "paths/dispatch.py")),
    ("bus path", ("paths/bus.py", "edgefleet/bus/")),
    ("MCP endpoint (parse, checks, eras)", ("dispatcher/mcp/", "shared/jsonrpc.py", "shared/asgi.py", "shared/sse.py")),
    ("json (orjson)", ("orjson",)),
    ("uvicorn + httptools (server side)", ("uvicorn", "shared/http_server.py", "dispatcher/server.py")),
    ("asyncio / uvloop event loop", ("asyncio", "uvloop")),
]


# Frames that only carry a call (the event loop's own machinery, context managers, stdlib
# helpers): a sample is charged to the innermost frame that is not one of these, so the cost
# of e.g. an asyncio.Event.set() made by the audit writer counts for the audit writer.
HELPERS = ("/asyncio/", "contextlib.py", "dataclasses.py", "typing.py", "enum.py", "functools.py", "abc.py")


def classify(stack: str) -> str:
    frames = stack.split(";")
    for helpers_too in (False, True):
        for frame in reversed(frames):  # innermost first
            if not helpers_too and any(h in frame for h in HELPERS):
                continue
            for name, patterns in COMPONENTS:
                if any(p in frame for p in patterns):
                    return name
    return "other"


def shares(raw: Path) -> list[tuple[str, int, float]]:
    """(component, samples, share) from py-spy's raw (collapsed) output, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[classify(stack)] += int(count)
    total = sum(counts.values()) or 1
    return [(name, n, n / total) for name, n in counts.most_common()]


async def _load(target: Target, sessions: int, seconds: float, watch: dict[str, int]) -> float:
    opened = await open_sessions(target, sessions)
    try:
        result = await drive(opened, seconds, watch)
    finally:
        for session in opened:
            session.close()
    return result.cpu_s["dispatcher"] / (result.calls or 1) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="2026")
    parser.add_argument("--sampler", choices=("py-spy", "perf"), default="py-spy")
    parser.add_argument("--rate", type=int, default=250, help="samples per second (default 250)")
    parser.add_argument("--raw", type=Path, help="keep the samples in this file (py-spy: collapsed stacks)")
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--variant", default="dispatcher", help="the dispatcher to profile (see edgefleet bench)")
    args = parser.parse_args(argv)
    tool = shutil.which(args.sampler) or str(Path(sys.executable).parent / args.sampler)
    if not Path(tool).exists():
        hint = "pip install py-spy" if args.sampler == "py-spy" else "the linux-perf / linux-tools package"
        print(f"bench_profile: {args.sampler} is not installed ({hint})", file=sys.stderr)
        return 2
    variant: Variant = parse_variant(args.variant) if args.variant != "dispatcher" else Variant("dispatcher")
    if args.sampler == "perf":  # Python >= 3.12 names its functions to perf (ignored before 3.12)
        variant = dataclasses.replace(variant, env={**variant.env, "PYTHONPERFSUPPORT": "1"})
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-profile-"))
    raw = args.raw or workdir / ("stacks.txt" if args.sampler == "py-spy" else "perf.txt")
    era, _, public = SCENARIOS[args.scenario]
    with BenchStack([variant]) as stack:
        assert stack.agent is not None
        dispatcher = stack.dispatchers[0]
        target = Target(dispatcher.url + "/mcp", public, era, stack.api_key)
        watch = {"dispatcher": dispatcher.proc.pid}
        pid, seconds = str(dispatcher.proc.pid), str(int(args.seconds))
        if args.sampler == "py-spy":
            command = [tool, "record", "--pid", pid, "--rate", str(args.rate), "--format", "raw"]
            command += ["--output", str(raw), "--duration", seconds]
            command += ["--native"] if args.native else ["--nonblocking"]
        else:  # DWARF unwinding: CPython has no frame pointers to walk up to the py:: frames
            command = [tool, "record", "-F", str(args.rate), "--call-graph", "dwarf,16384", "-p", pid]
            command += ["-o", str(workdir / "perf.data"), "--", "sleep", seconds]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu_ms = asyncio.run(_load(target, args.sessions, args.seconds + 1.0, watch))
        _, err = sampler.communicate(timeout=120)
        failed = sampler.returncode != 0
        if not failed and args.sampler == "perf":
            with open(raw, "wb") as out:
                script = subprocess.run(
                    [tool, "script", "-i", str(workdir / "perf.data"), "-F", "ip,sym,dso"],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            failed, err = script.returncode != 0, script.stderr
            (workdir / "perf.data").unlink()  # DWARF stacks: tens of MB for 20 s
        if failed or not raw.exists():
            print(f"bench_profile: {args.sampler} failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            return 1
    print(
        f"dispatcher {variant.label}, scenario {args.scenario}, {args.sessions} sessions: {cpu_ms:.3f} ms CPU per call"
    )
    if args.sampler == "py-spy":
        _table("component", shares(raw))
        print(f"(collapsed stacks: {raw})")
        return 0
    with open(raw) as lines:
        samples = list(perf_samples.parse(lines))
    _table("where the CPU was (shared object)", perf_samples.by_object(samples))
    components = perf_samples.by_component(samples, classify)
    if components:
        print()
        _table("component (innermost Python function)", components)
    else:
        print("(no Python frames: run the dispatcher on Python >= 3.12 for shares per component)")
    print(f"(perf script output: {raw})")
    return 0


def _table(title: str, rows: list[tuple[str, int, float]]) -> None:
    print(f"{title:55} {'samples':>8} {'share':>7}")
    for name, count, share in rows:
        print(f"{name:55} {count:>8} {share:>7.1%}")


if __name__ == "__main__":
    sys.exit(main())
