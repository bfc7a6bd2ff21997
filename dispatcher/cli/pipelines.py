"""``edgefleet pipelines list|get|watch|approve|reject|cancel``: pipeline runs on Temporal
through the dispatcher's REST API (``/v1/pipelines/runs``), with the same credentials as
``/mcp`` (``--key``, else EDGEFLEET_API_KEY).

Exit codes: 0 done (``watch``: the run completed without a failed step), 1 the dispatcher
said no (unknown run, not an approver, nothing waiting...) or the run failed/was cancelled,
3 the dispatcher is unreachable, 130 Ctrl-C (``watch`` stops watching; the run goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx

from edgefleet.dispatcher.cli.client import _unreachable, resolve_url
from edgefleet.dispatcher.cli.tasks import TaskCliError, _age, _credential, _headers

CLOSED = frozenset({"completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new"})


def _request(
    base: str,
    key: str | None,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    try:
        with httpx.Client(base_url=base, headers=_headers(key), timeout=30.0) as http:
            resp = http.request(method, path, json=body, params=params)
    except httpx.HTTPError as exc:
        raise TaskCliError(None, _unreachable(base, exc)) from None
    if (
        resp.status_code == 404
        and resp.headers.get("content-type", "").startswith("application/json")
        and "error" not in resp.text
    ):
        raise TaskCliError(
            "this dispatcher has no pipeline runs API: it runs pipelines in-process (set EDGEFLEET_TEMPORAL_ADDRESS)"
        )
    if resp.status_code >= 400:
        try:
            error = resp.json()["error"]
            code, message = error.get("code", ""), error.get("message", "")
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message = "", resp.text[:300]
        if resp.status_code == 401:
            hint = "check the key or token" if _credential(key) else "pass --key KEY or set EDGEFLEET_API_KEY"
            raise TaskCliError(
                f"the dispatcher refused the request (HTTP 401): {message or 'authentication required'} ({hint})"
            )
        raise TaskCliError(f"{code or f'HTTP {resp.status_code}'}: {message}")
    return resp.json()


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/v1/pipelines/runs/{quote(run_id, safe='')}{suffix}"


def _print_runs(runs: list[dict[str, Any]]) -> None:
    now = time.time()
    rows = [
        (
            r.get("run", ""),
            r.get("pipeline", ""),
            r.get("status", ""),
            _age(r.get("started_at"), now),
            r.get("owner", ""),
        )
        for r in runs
    ]
    header = ("RUN", "PIPELINE", "STATUS", "AGE", "OWNER")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _print_run(view: dict[str, Any]) -> None:
    for name in ("run", "pipeline", "owner", "status", "phase", "message", "started_at", "closed_at"):
        if view.get(name):
            print(f"{name:10} {view[name]}")
    for step in view.get("steps") or []:
        extra = ""
        if step.get("decided_by"):
            extra = f"  by {step['decided_by']}" + (f": {step['comment']}" if step.get("comment") else "")
        elif isinstance(step.get("error"), dict):
            extra = f"  {step['error'].get('message', '')}"
        tool = step.get("tool") or step.get("kind") or ""
        attempts = step.get("attempts", 0)
        print(
            f"  {step.get('name', '?'):16} {step.get('status', '?'):10} {tool:24} attempts={attempts}{extra}".rstrip()
        )
    for name, wait in (view.get("waiting") or {}).items():
        approvers = ", ".join(wait.get("approvers") or []) or "admins"
        print(f"waiting    {name}: {wait.get('prompt')} (until {wait.get('until')}; approvers: {approvers})")
        print(f"           edgefleet pipelines approve {view.get('run')} {name} -m 'why'   (or: reject)")
    for comp in view.get("compensations") or []:
        print(f"  undo {comp.get('step', '?'):11} {comp.get('status', '?'):10} {comp.get('tool', '')}")
    if view.get("result") is not None:
        print("result     " + json.dumps(view["result"], ensure_ascii=False)[:2000])


def watch_run(base: str, key: str | None, run_id: str, *, as_json: bool) -> int:
    last = None
    started = time.monotonic()
    try:
        while True:
            view = _request(base, key, "GET", _run_path(run_id))
            line = f"[{view.get('status')}/{view.get('phase', '?')}] {view.get('message', '')}"
            if line != last and not as_json:
                print(line, file=sys.stderr, flush=True)
                last = line
            if view.get("status") in CLOSED:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print(
            f"edgefleet: stopped watching; run {run_id} goes on (`edgefleet pipelines cancel {run_id}` stops it)",
            file=sys.stderr,
        )
        return 130
    if as_json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        _print_run(view)
        print(f"run {run_id} {view.get('status')} [watched {time.monotonic() - started:.1f} s]", file=sys.stderr)
    return 0 if view.get("status") == "completed" and view.get("phase") == "completed" else 1


def run(args: argparse.Namespace) -> int:
    """``edgefleet pipelines ACTION``, parsed by cli/main.py."""
    base = resolve_url(args.url)
    key = args.key
    try:
        action = args.pipelines_command
        if action == "list":
            runs = _request(base, key, "GET", "/v1/pipelines/runs", params={"limit": args.limit})["runs"]
            if args.json:
                print(json.dumps(runs, indent=2, ensure_ascii=False))
            elif runs:
                _print_runs(runs)
            else:
                print("(no runs)")
            return 0
        if action == "watch":
            return watch_run(base, key, args.run, as_json=args.json)
        if action == "get":
            view = _request(base, key, "GET", _run_path(args.run))
        elif action in ("approve", "reject"):
            view = _request(
                base,
                key,
                "POST",
                _run_path(args.run, f"/steps/{quote(args.step, safe='')}/{action}"),
                body={"comment": args.message or ""},
            )
            if not args.json:
                print(f"step {view['step']} of run {view['run']} {view['decision']} by {view['by']}")
                return 0
        elif action == "cancel":
            view = _request(base, key, "POST", _run_path(args.run, "/cancel"))
            if not args.json:
                print(
                    f"run {view['run']} cancelled by {view['by']}: completed steps are being compensated "
                    f"(`edgefleet pipelines watch {view['run']}`)"
                )
                return 0
        else:
            return 2
        print(json.dumps(view, indent=2, ensure_ascii=False)) if args.json else _print_run(view)
        return 0
    except TaskCliError as exc:
        if exc.message:
            print(f"edgefleet: {exc.message}", file=sys.stderr)
        return exc.code


def add_parser(sub: Any, *, url_help: str) -> argparse.ArgumentParser:
    pipes: argparse.ArgumentParser = sub.add_parser(
        "pipelines",
        help="pipeline runs on Temporal: list, get, watch, approve/reject a waiting step, cancel",
        description="Pipeline runs (EDGEFLEET_TEMPORAL_ADDRESS set). You see the runs you started and those "
        "you may approve; an admin sees all.",
    )
    actions = pipes.add_subparsers(dest="pipelines_command", required=True, metavar="ACTION")
    p_list = actions.add_parser("list", help="runs, newest first: run, pipeline, status, age, owner")
    p_list.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    p_get = actions.add_parser("get", help="one run: phase, steps, waiting approvals, compensations, result")
    p_watch = actions.add_parser("watch", help="follow a run until it ends (exit 0 only if it completed)")
    p_approve = actions.add_parser("approve", help="approve a step waiting for a decision")
    p_reject = actions.add_parser("reject", help="reject a step waiting for a decision (the run compensates)")
    p_cancel = actions.add_parser("cancel", help="cancel a run (completed steps are compensated)")
    for p in (p_get, p_watch, p_approve, p_reject, p_cancel):
        p.add_argument("run", metavar="RUN", help="the run id (`edgefleet pipelines list` shows them)")
    for p in (p_approve, p_reject):
        p.add_argument("step", metavar="STEP", help="the approval step's name")
        p.add_argument("-m", "--message", help="a comment, kept with the decision (later steps can use it)")
    for p in (p_list, p_get, p_watch, p_approve, p_reject, p_cancel):
        p.add_argument("--json", action="store_true", help="raw JSON as the dispatcher returns it")
        p.add_argument("--url", help=url_help)
        p.add_argument("--key", help="API key or bearer token, as for /mcp (default: EDGEFLEET_API_KEY)")
    return pipes


__all__ = ["add_parser", "run"]
