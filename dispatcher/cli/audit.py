"""``edgefleet audit tail``: the fleet's audit stream (``GET /v1/audit``), for operators.

Credentials: ``--key`` (a client credential with the ``admin`` scope, else EDGEFLEET_API_KEY)
or ``--token`` (the fleet token, else EDGEFLEET_FLEET_TOKEN or the running ``edgefleet dev``).
Exit codes: 0 done, 1 refused (401/403/400), 3 the dispatcher is unreachable, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import httpx

from edgefleet.dispatcher.cli.client import _unreachable, resolve_token, resolve_url
from edgefleet.shared.printable import printable

# Fields every line shows up front; the rest follow as key=value.
_LEAD = ("ts", "event", "identity", "tool", "outcome", "code", "duration_ms", "id", "source")


def add_parser(sub: Any, *, url_help: str) -> None:
    audit = sub.add_parser("audit", help="the audit stream: who did what (operators: fleet token or admin key)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    tail = audit_sub.add_parser("tail", help="print the last events, and with -f the new ones as they come")
    tail.add_argument(
        "-n", "--lines", type=int, default=20, help="how many of the last events to print first (default 20)"
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    tail.add_argument("--event", default="", help="only these events, comma-separated prefixes (e.g. call,auth. )")
    tail.add_argument("--identity", default=None, help="only events of this identity")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--url", default=None, help=url_help)
    tail.add_argument("--key", default=None, help="admin API key or token (default: EDGEFLEET_API_KEY)")
    tail.add_argument(
        "--token", default=None, help="fleet token (default: EDGEFLEET_FLEET_TOKEN or the running `edgefleet dev`)"
    )


def _credential(args: argparse.Namespace) -> str:
    return args.key or os.environ.get("EDGEFLEET_API_KEY") or resolve_token(args.token)


def _wanted(event: dict[str, Any], kinds: list[str], identity: str | None) -> bool:
    if kinds and not any(str(event.get("event", "")).startswith(kind) for kind in kinds):
        return False
    return identity is None or event.get("identity") == identity or event.get("by") == identity


def format_event(event: dict[str, Any]) -> str:
    """One event on one line, for humans: whatever a client or agent put in it (a tool name
    with a newline and ANSI escapes) is escaped, never a forged line or live colours."""
    when = (
        datetime.fromtimestamp(event.get("ts", 0) / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    parts = [when, str(event.get("event", "?"))]
    for name in ("identity", "tool", "outcome", "code"):
        if event.get(name) not in (None, ""):
            parts.append(str(event[name]))
    if "duration_ms" in event:
        parts.append(f"{event['duration_ms']:.1f}ms")
    rest = {k: v for k, v in event.items() if k not in _LEAD and v not in (None, "", "-")}
    parts.extend(
        f"{k}={v if isinstance(v, (str, int, float)) else json.dumps(v, separators=(',', ':'))}"
        for k, v in rest.items()
    )
    return printable(" ".join(parts))


def _print(events: list[dict[str, Any]], args: argparse.Namespace, kinds: list[str]) -> None:
    for event in events:
        if _wanted(event, kinds, args.identity):
            print(json.dumps(event, separators=(",", ":")) if args.json else format_event(event), flush=True)


def _refused(resp: httpx.Response) -> int:
    try:
        error = resp.json()["error"]
        message = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {resp.status_code}: {resp.text[:300]}"
    hint = ""
    if resp.status_code in (401, 403):
        hint = " (the audit stream needs the fleet token, --token, or an API key with the admin scope, --key)"
    elif resp.status_code == 404:
        hint = " (this dispatcher has no audit stream: EDGEFLEET_AUDIT=false, or an older version)"
    print(f"edgefleet: {printable(message)}{hint}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    base = resolve_url(args.url)
    kinds = [k.strip() for k in args.event.split(",") if k.strip()]
    headers = {"authorization": f"Bearer {_credential(args)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(30.0, connect=5.0)) as http:
            resp = http.get("/v1/audit", params={"last": max(0, min(args.lines, 10_000))})
            if resp.status_code != 200:
                return _refused(resp)
            page = resp.json()
            _print(page["events"], args, kinds)
            cursor = page["next"]
            while args.follow:
                resp = http.get("/v1/audit", params={"after": cursor, "wait": 4, "limit": 500})
                if resp.status_code != 200:
                    return _refused(resp)
                page = resp.json()
                _print(page["events"], args, kinds)
                cursor = page["next"]
    except KeyboardInterrupt:
        return 130
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    return 0
