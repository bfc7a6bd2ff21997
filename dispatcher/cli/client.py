"""Client-side CLI commands: they talk to a dispatcher like any user would.

``tools``/``call`` use the official ``mcp`` client against ``/mcp``; ``agents`` uses the
REST registry API with the fleet token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from edgefleet.dispatcher.devtools.state import read_dev_state
from edgefleet.shared.printable import printable

DEFAULT_URL = "http://127.0.0.1:8700"


def resolve_url(url: str | None) -> str:
    base = (url or read_dev_state().get("url") or DEFAULT_URL).rstrip("/")
    return base[: -len("/mcp")] if base.endswith("/mcp") else base


def resolve_token(token: str | None) -> str:
    return token or os.environ.get("EDGEFLEET_FLEET_TOKEN") or read_dev_state().get("fleet_token") or ""


def parse_arguments(pairs: list[str], json_args: str | None) -> dict[str, Any]:
    arguments: dict[str, Any] = json.loads(json_args) if json_args else {}
    if not isinstance(arguments, dict):
        raise SystemExit("edgefleet: --json must be a JSON object")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgefleet: argument {pair!r} is not KEY=VALUE")
        try:
            arguments[key] = json.loads(value)
        except ValueError:
            arguments[key] = value
    return arguments


def _unreachable(base: str, exc: BaseException) -> int:
    print(
        f"edgefleet: cannot reach the dispatcher at {base} ({printable(_root_cause(exc))}). Is `edgefleet dev` running? "
        "Use --url to point elsewhere.",
        file=sys.stderr,
    )
    return 3


def _root_cause(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_connect_error(exc: BaseException) -> bool:
    text = _root_cause(exc)
    return any(word in text for word in ("ConnectError", "ConnectionRefused", "Connection refused", "ConnectTimeout"))


class ProgressBar:
    WIDTH = 30

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.shown = False

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if total:
            done = int(self.WIDTH * min(progress / total, 1.0))
            bar = f"[{'#' * done}{'.' * (self.WIDTH - done)}] {progress:g}/{total:g}"
        else:
            bar = f"[{progress:g}]"
        self.stream.write(f"\r{bar} {printable(message or '')}"[:160].ljust(100))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _mcp_client(base: str, key: str | None, **options: Any) -> Any:
    """An official MCP client, with ``Authorization: Bearer`` when a key or token is given
    (``--key``, else EDGEFLEET_API_KEY)."""
    from mcp import Client

    credential = key or os.environ.get("EDGEFLEET_API_KEY")
    if not credential:
        return Client(f"{base}/mcp", **options)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {credential}"}, timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(f"{base}/mcp", http_client=http), **options)


def _auth_problem(base: str, key: str | None) -> str | None:
    """When the dispatcher refused our credentials, its own words and what to do (the MCP
    SDK reports a 401 only as "an error response")."""
    credential = key or os.environ.get("EDGEFLEET_API_KEY")
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "server/discover",
        **({"authorization": f"Bearer {credential}"} if credential else {}),
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
    try:
        resp = httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
    if resp.status_code != 401:
        return None
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = "authentication required"
    hint = "check the key or token" if credential else "pass --key KEY or set EDGEFLEET_API_KEY"
    return f"the dispatcher refused the request (HTTP 401): {message} ({hint})"


def tools(url: str | None, key: str | None = None) -> int:
    base = resolve_url(url)

    async def run() -> int:
        async with _mcp_client(base, key) as client:
            listed = await client.list_tools()
        for tool in listed.tools:
            first_line = (tool.description or "").strip().splitlines()[0:1]
            print(printable(f"{tool.name:32} {first_line[0] if first_line else ''}"))
        if not listed.tools:
            print("(no tools yet: no agent is registered and warm)", file=sys.stderr)
        return 0

    try:
        return asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - reported as a clear message, not a traceback
        if _is_connect_error(exc):
            return _unreachable(base, exc)
        print(f"edgefleet: {printable(_auth_problem(base, key) or _root_cause(exc))}", file=sys.stderr)
        return 1


def call(
    url: str | None, tool: str, pairs: list[str], json_args: str | None, *, legacy: bool = False, key: str | None = None
) -> int:
    from mcp import MCPError

    base = resolve_url(url)
    arguments = parse_arguments(pairs, json_args)
    bar = ProgressBar()

    async def on_log(params: Any) -> None:
        bar.close()
        bar.shown = False
        print(printable(f"[{params.level}] {params.data}"), file=sys.stderr)

    async def run() -> int:
        async with _mcp_client(
            base, key, mode="legacy" if legacy else "auto", logging_callback=on_log, log_level="info"
        ) as client:
            result = await client.call_tool(tool, arguments, progress_callback=bar)
        bar.close()
        if result.structured_content is not None:
            print(printable(json.dumps(result.structured_content, indent=2, ensure_ascii=False), lines=True))
        else:
            for block in result.content:
                print(printable(getattr(block, "text", block), lines=True))
        return 1 if result.is_error else 0

    try:
        return asyncio.run(run())
    except MCPError as exc:
        bar.close()
        hint = " (run `edgefleet tools` to see what exists)" if "Unknown tool" in str(exc) else ""
        print(f"edgefleet: {printable(_auth_problem(base, key) or exc)}{hint}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything the client stack raises becomes one clear line, not a traceback
        bar.close()
        if _is_connect_error(exc):
            return _unreachable(base, exc)
        cause = _auth_problem(base, key) or _root_cause(exc)
        hint = " (run `edgefleet tools` to see what exists)" if "Unknown tool" in cause else ""
        print(f"edgefleet: {printable(cause)}{hint}", file=sys.stderr)
        return 1


def agents(args: argparse.Namespace) -> int:
    base = resolve_url(args.url)
    headers = {"authorization": f"Bearer {resolve_token(args.token)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as http:
            if args.agents_command == "list":
                resp = http.get("/v1/agents")
            elif args.agents_command == "add":
                resp = http.post(
                    "/v1/agents", json={"name": args.name, "url": args.mcp_url, "region": args.region, "static": True}
                )
            else:
                resp = http.delete(f"/v1/agents/{args.name}")
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if resp.status_code >= 400:
        try:
            error = resp.json()["error"]
            print(printable(f"edgefleet: {error['code']}: {error['message']}"), file=sys.stderr)
            for problem in error.get("details", {}).get("problems", []):
                print(printable(f"  {problem['field']}: {problem['message']}"), file=sys.stderr)
        except (ValueError, KeyError, TypeError):
            print(printable(f"edgefleet: HTTP {resp.status_code}: {resp.text[:300]}"), file=sys.stderr)
        return 1
    data = resp.json()
    if args.agents_command == "list" and not getattr(args, "json", False):
        for agent in data["agents"]:
            print(printable(f"{agent['name']}  regions={','.join(agent['regions'])}  tools={len(agent['tools'])}"))
            for r in agent["replicas"]:
                breaker = r.get("breaker") or {}
                if r["routable"]:
                    state = "routable"
                elif not r["warm"]:
                    state = "warming"
                else:
                    state = f"EJECTED (retry in {breaker.get('retry_in_s', 0):g} s)"
                print(printable(f"  {r['id']:40} {r['region']:14} {state:9} inflight={r['inflight']:<3} {r['url']}"))
                if r.get("last_error") and not r["routable"]:
                    print(printable(f"      last error: {r['last_error']}"))
        if not data["agents"]:
            print("(no agents registered)")
    else:
        print(json.dumps(data, indent=2))
    return 0


def create_key(path: Path, identity: str, *, tools: list[str], regions: list[str], scopes: list[str]) -> int:
    """Append a new key's hash to the keys file and print the key (shown only now)."""
    import yaml

    from edgefleet.dispatcher.security.auth import ApiKeyEntry, ApiKeysFile, hash_key, new_key

    current = ApiKeysFile.model_validate(yaml.safe_load(path.read_text()) or {}) if path.exists() else ApiKeysFile()
    key = new_key()
    current.keys.append(
        ApiKeyEntry(identity=identity, sha256=hash_key(key), scopes=scopes, tools=tools, regions=regions)
    )
    path.write_text(yaml.safe_dump(current.model_dump(), sort_keys=False))
    path.chmod(0o600)
    print(key)
    print(
        f"edgefleet: added {identity!r} to {path}; the key above is not stored anywhere; dispatchers read the file at start-up.",
        file=sys.stderr,
    )
    return 0


def create_agent_key(path: Path, agent: str, *, regions: list[str]) -> int:
    """Append a new agent key's hash (bound to ``agent``) to the agent keys file and print the key."""
    import yaml
    from pydantic import ValidationError

    from edgefleet.dispatcher.security.agent_auth import AgentKeyEntry, AgentKeysFile, new_agent_key
    from edgefleet.dispatcher.security.auth import hash_key

    current = AgentKeysFile.model_validate(yaml.safe_load(path.read_text()) or {}) if path.exists() else AgentKeysFile()
    key = new_agent_key()
    try:
        current.agents.append(AgentKeyEntry(agent=agent, sha256=hash_key(key), regions=regions))
    except ValidationError:
        print(
            f"edgefleet: {agent!r} is not an agent name (lowercase letters, digits and '-', starting with a letter)",
            file=sys.stderr,
        )
        return 2
    path.write_text(yaml.safe_dump(current.model_dump(), sort_keys=False))
    path.chmod(0o600)
    print(key)
    print(
        f"edgefleet: added a key for agent {agent!r} to {path}; give it to the agent as EDGEFLEET_AGENT_KEY "
        "(it is not stored anywhere); dispatchers read the file at start-up.",
        file=sys.stderr,
    )
    return 0
