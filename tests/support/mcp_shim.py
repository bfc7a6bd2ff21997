"""A small streaming HTTP shim for the conformance failure map (a dev tool, not a test).

- ``--unprefix AGENT``: in front of the dispatcher's ``/mcp``, presents one agent's tools
  under their own names (``tools/call`` and its ``Mcp-Name`` header get ``AGENT.``,
  ``tools/list`` answers lose it and other agents' tools). It lets the suite get past
  the naming difference to show what breaks next; it is what the per-agent mount must do
  properly.
- ``--legacy-only``: in front of the reference server, refuses every 2026-07-28 request
  the way a 2025-only server does (HTTP 400, unsupported version), so the dispatcher
  detects the 2025 era and opens a session: the "2025-only upstream" case.

Everything else is relayed as it is, byte for byte and chunk by chunk (SSE included).

    python -m tests.support.mcp_shim --upstream http://127.0.0.1:P/mcp --port N [--unprefix everything] [--legacy-only]
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson
import uvicorn

# Host is relayed: the DNS-rebinding scenario sends a foreign one on purpose.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
MODERN = "2026-07-28"


class Shim:
    def __init__(self, upstream: str, unprefix: str | None, legacy_only: bool) -> None:
        self.upstream = upstream
        self.prefix = f"{unprefix}." if unprefix else None
        self.legacy_only = legacy_only
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
                    )
                    await send({"type": "lifespan.startup.complete"})
            assert self.session is not None
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"] if k.decode().lower() not in HOP_BY_HOP}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.legacy_only and headers.get("mcp-protocol-version") == MODERN:
            error = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "Bad Request: Unsupported protocol version"},
            }
            await _respond(send, 400, orjson.dumps(error))
            return
        method = None
        if self.prefix and body:
            body, method = self._outgoing(body, headers)
        assert self.session is not None
        url = self.upstream + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        async with self.session.request(scope["method"], url, data=body or None, headers=headers) as resp:
            out_headers = [
                (k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP
            ]
            if method == "tools/list" and resp.headers.get("content-type", "").startswith("application/json"):
                await _respond(send, resp.status, self._tools_list(await resp.read()), out_headers)
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    def _outgoing(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, str | None]:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body, None
        if not isinstance(message, dict):
            return body, None
        method = message.get("method")
        params = message.get("params")
        if method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
            assert self.prefix is not None
            params["name"] = self.prefix + params["name"]
            if "mcp-name" in headers:
                headers["mcp-name"] = self.prefix + headers["mcp-name"]
            return orjson.dumps(message), method
        return body, method if isinstance(method, str) else None

    def _tools_list(self, raw: bytes) -> bytes:
        message = orjson.loads(raw)
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            assert self.prefix is not None
            mine = [t for t in result["tools"] if t.get("name", "").startswith(self.prefix)]
            result["tools"] = [{**t, "name": t["name"][len(self.prefix) :]} for t in mine]
        return orjson.dumps(message)


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    kept = [(k, v) for k, v in (headers or []) if k != b"content-type"]
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), *kept]}
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--unprefix")
    parser.add_argument("--legacy-only", action="store_true")
    args = parser.parse_args()
    uvicorn.run(
        Shim(args.upstream, args.unprefix, args.legacy_only),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
