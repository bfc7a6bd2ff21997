"""What the upstream HTTP/1.1 client costs per call, against aiohttp and httpx.

    python -m edgefleet.dispatcher.devtools.bench_http1 [--rounds 5] [--seconds 1] [--json]

One uvicorn (uvloop + httptools) echo server in its own process answers an MCP-sized JSON
result, or a small SSE stream (a progress notification, then the result, as two chunks).
This process drives it with each client in turn (``http1``: our pool; ``aiohttp``:
ClientSession; ``httpx``: AsyncClient), keep-alive and pooled as the dispatcher would use
them, at 1 and 16 concurrent calls, in alternating rounds so drift on a shared machine hits
every client alike. The figure that matters is the client's CPU per request, from this
process's own accounting (``time.process_time``, every thread): throughput on a 2-core
machine mostly measures the server. The server's CPU per request is shown to tell which
side was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.devtools.extras import missing
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all
from edgefleet.dispatcher.http1 import UpstreamPool

REQUEST = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo.echo",
            "arguments": {"text": "hello"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
        },
    }
)
RESULT = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [{"type": "text", "text": "hello"}],
            "structuredContent": {"text": "hello"},
            "isError": False,
        },
    }
)
PROGRESS = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\n\n'
SSE_RESULT = b"event: message\ndata: " + RESULT + b"\n\n"
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "echo.echo",
}
# The dispatcher builds these once per replica, not per call.
HEADER_BYTES = b"".join(f"{k}: {v}\r\n".encode() for k, v in HEADERS.items())
EXPECTED = {"json": len(RESULT), "sse": len(PROGRESS) + len(SSE_RESULT)}


# -- the server (its own process) --------------------------------------------------------------
async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Answers /json with the result, /sse with two events; reads the request body first."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/sse":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": PROGRESS, "more_body": True})
        await send({"type": "http.response.body", "body": SSE_RESULT})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(RESULT))],
        }
    )
    await send({"type": "http.response.body", "body": RESULT})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


# -- the clients -----------------------------------------------------------------------------------
class Client(Protocol):
    name: str

    async def json(self) -> int: ...

    async def sse(self) -> int: ...

    async def aclose(self) -> None: ...


class Http1Client:
    name = "http1"

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool = UpstreamPool(max_per_origin=32)

    async def json(self) -> int:
        resp = await self.pool.request(self.url, b"POST", b"/json", HEADER_BYTES, REQUEST, head_timeout_s=30)
        return len(await resp.read(1 << 20))

    async def sse(self) -> int:
        resp = await self.pool.request(self.url, b"POST", b"/sse", HEADER_BYTES, REQUEST, head_timeout_s=30)
        received = 0
        async for chunk in resp.iter_chunks():
            received += len(chunk)
        return received

    async def aclose(self) -> None:
        await self.pool.aclose()


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, url: str) -> None:
        import aiohttp  # the dev extra (the dispatcher itself no longer uses it)

        self.url = url
        # As dispatcher/fleet/upstream.py configured it before dispatcher/http1 replaced it.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=32, keepalive_timeout=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def json(self) -> int:
        async with self.session.post(self.url + "/json", data=REQUEST, headers=HEADERS) as resp:
            return len(await resp.read())

    async def sse(self) -> int:
        received = 0
        async with self.session.post(self.url + "/sse", data=REQUEST, headers=HEADERS) as resp:
            async for chunk in resp.content.iter_any():
                received += len(chunk)
        return received

    async def aclose(self) -> None:
        await self.session.close()


class HttpxClient:
    name = "httpx"

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32), timeout=30
        )

    async def json(self) -> int:
        resp = await self.client.post(self.url + "/json", content=REQUEST, headers=HEADERS)
        return len(resp.content)

    async def sse(self) -> int:
        received = 0
        async with self.client.stream("POST", self.url + "/sse", content=REQUEST, headers=HEADERS) as resp:
            async for chunk in resp.aiter_raw():
                received += len(chunk)
        return received

    async def aclose(self) -> None:
        await self.client.aclose()


# -- measuring -------------------------------------------------------------------------------------
@dataclass
class Round:
    cpu_us: float  # this process's CPU per request
    rate: float  # requests per second
    p50_ms: float
    server_us: float  # the server's CPU per request
    errors: int


@dataclass
class Cell:
    rounds: list[Round] = field(default_factory=list)

    def spread(self, attribute: str) -> tuple[float, float, float]:
        values = [getattr(r, attribute) for r in self.rounds]
        return statistics.median(values), min(values), max(values)


def process_cpu_s(pid: int) -> float:
    """utime + stime of another process, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_round(
    call: Callable[[], Awaitable[int]], expected: int, concurrency: int, seconds: float, server_pid: int
) -> Round:
    for _ in range(20):  # warm the pool and the code paths
        await call()
    latencies: list[float] = []
    errors = 0
    stop = False

    async def worker() -> None:
        nonlocal errors
        while not stop:
            started = time.perf_counter()
            if await call() != expected:
                errors += 1
            latencies.append(time.perf_counter() - started)

    server0, cpu0, wall0 = process_cpu_s(server_pid), time.process_time(), time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*workers)
    wall, cpu, server = time.perf_counter() - wall0, time.process_time() - cpu0, process_cpu_s(server_pid) - server0
    n = len(latencies)
    return Round(cpu / n * 1e6, n / wall, statistics.median(latencies) * 1000, server / n * 1e6, errors)


async def bench(
    url: str, server_pid: int, rounds: int, seconds: float, concurrencies: list[int]
) -> dict[tuple[str, str, int], Cell]:
    clients: list[Client] = [Http1Client(url), AiohttpClient(url), HttpxClient(url)]
    cells: dict[tuple[str, str, int], Cell] = {}
    try:
        for r in range(rounds):
            order = clients[r % len(clients) :] + clients[: r % len(clients)]
            for kind in ("json", "sse"):
                for concurrency in concurrencies:
                    for client in order:
                        call = client.json if kind == "json" else client.sse
                        result = await run_round(call, EXPECTED[kind], concurrency, seconds, server_pid)
                        cells.setdefault((client.name, kind, concurrency), Cell()).rounds.append(result)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        for client in clients:
            await client.aclose()
    return cells


def report(cells: dict[tuple[str, str, int], Cell]) -> str:
    header = (
        f"{'payload':7} {'conc':>4} {'client':8} {'CPU us/req  median [min-max]':>30} {'req/s  median [min-max]':>26}"
        f" {'p50 ms':>7} {'server us/req':>13} {'x http1 CPU':>11} {'x http1 req/s':>13}"
    )
    lines = [header]
    for kind in ("json", "sse"):
        for concurrency in sorted({c for _, _, c in cells}):
            base = cells[("http1", kind, concurrency)]
            for name in ("http1", "aiohttp", "httpx"):
                cell = cells[(name, kind, concurrency)]
                cpu, rate = cell.spread("cpu_us"), cell.spread("rate")
                errors = sum(r.errors for r in cell.rounds)
                line = (
                    f"{kind:7} {concurrency:4} {name:8} {cpu[0]:9.1f} [{cpu[1]:7.1f}-{cpu[2]:7.1f}]      "
                    f"{rate[0]:8.0f} [{rate[1]:6.0f}-{rate[2]:6.0f}] {cell.spread('p50_ms')[0]:7.2f}"
                    f" {cell.spread('server_us')[0]:13.1f} {cpu[0] / base.spread('cpu_us')[0]:11.2f}"
                    f" {rate[0] / base.spread('rate')[0]:13.2f}"
                )
                lines.append(line + (f"  ERRORS {errors}" if errors else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per client, payload and concurrency in each round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the client's loop (the dispatcher runs uvloop)"
    )
    parser.add_argument("--json", action="store_true", help="every round of every cell as JSON")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = missing("aiohttp")
    if problem:
        raise SystemExit(problem)
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.dispatcher.devtools.bench_http1", "--serve", str(port)],
        preexec_fn=die_with_parent,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the bench server did not start") from None
                time.sleep(0.1)
        if args.loop == "uvloop":
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        else:
            runner = asyncio.Runner()
        with runner:
            cells = runner.run(bench(url, server.pid, args.rounds, args.seconds, args.concurrency))
    finally:
        stop_all([server])
    if args.json:
        print(
            orjson.dumps(
                [
                    {"client": name, "payload": kind, "concurrency": conc, "rounds": [vars(r) for r in cell.rounds]}
                    for (name, kind, conc), cell in cells.items()
                ],
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        print(report(cells))


if __name__ == "__main__":
    main()
