"""``edgefleet tasks list|get|watch|cancel``: durable MCP tasks through the dispatcher's REST
mirror (``/v1/tasks``), with the same credentials as ``/mcp`` (``--key``, else EDGEFLEET_API_KEY):
a caller sees and cancels its own tasks, an admin everyone's.

Exit codes: 0 done (``watch``: the task completed and its result is not an error), 1 the
dispatcher said no (unknown task, already finished, 401, a failed/cancelled task...),
3 the dispatcher is unreachable, 130 Ctrl-C (``watch`` stops watching; the task goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import Any, cast
from urllib.parse import quote

import httpx

from edgefleet.dispatcher.cli.client import ProgressBar, _root_cause, _unreachable, resolve_url
from edgefleet.shared import sse
from edgefleet.shared.printable import printable

TERMINAL = frozenset({"completed", "failed", "cancelled"})


class TaskCliError(Exception):
    """A request the dispatcher refused (or could not be sent): the one-line message and exit code."""

    def __init__(self, message: str | None, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _credential(key: str | None) -> str | None:
    """As ``tools``/``call``: ``--key``, else EDGEFLEET_API_KEY."""
    return key or os.environ.get("EDGEFLEET_API_KEY") or None


def _headers(key: str | None) -> dict[str, str]:
    credential = _credential(key)
    return {"accept": "application/json", **({"authorization": f"Bearer {credential}"} if credential else {})}


def _task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}{suffix}"


def _refusal(resp: httpx.Response, *, key: str | None, task_id: str | None = None) -> TaskCliError:
    """One clear line for an error answer of the REST mirror (``{"error": {code, message, details}}``)."""
    try:
        error = resp.json()["error"]
        code, message, details = error.get("code", ""), error.get("message", ""), error.get("details") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, details = "", "", {}
    if resp.status_code == 401:
        hint = "check the key or token" if _credential(key) else "pass --key KEY or set EDGEFLEET_API_KEY"
        return TaskCliError(
            f"the dispatcher refused the request (HTTP 401): {message or 'authentication required'} ({hint})"
        )
    if code == "task_not_found":
        return TaskCliError(
            f"task {task_id} not found (it may have expired, or belong to someone else); "
            "`edgefleet tasks list` shows yours"
        )
    if code == "task_finished":
        status = details.get("status") if isinstance(details, dict) else None
        return TaskCliError(
            f"task {task_id} already finished{f' ({status})' if status else ''}; only working tasks can be cancelled"
        )
    if resp.status_code == 404 and not code:
        return TaskCliError(
            f"{resp.request.url.copy_with(query=None)} does not exist: this dispatcher has no task API "
            "(tasks disabled, or an older version)"
        )
    if code:
        return TaskCliError(f"{code}: {message}")
    return TaskCliError(f"HTTP {resp.status_code}: {resp.text[:300]}")


def _request(
    base: str,
    key: str | None,
    method: str,
    path: str,
    *,
    task_id: str | None = None,
    params: dict[str, Any] | None = None,
) -> Any:
    try:
        with httpx.Client(base_url=base, headers=_headers(key), timeout=30.0) as http:
            resp = http.request(method, path, params={k: v for k, v in (params or {}).items() if v is not None})
    except httpx.HTTPError as exc:
        raise TaskCliError(None, _unreachable(base, exc)) from None
    if resp.status_code >= 400:
        raise _refusal(resp, key=key, task_id=task_id)
    try:
        return resp.json()
    except ValueError:
        raise TaskCliError(
            f"the dispatcher answered HTTP {resp.status_code} with something that is not JSON: {resp.text[:200]}"
        ) from None


# -- formatting ------------------------------------------------------------------------
def _when(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def _age(stamp: str | None, now: float | None = None) -> str:
    at = _when(stamp)
    if at is None:
        return "?"
    seconds = max(0.0, (now or time.time()) - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _progress(view: dict[str, Any]) -> str:
    progress = view.get("progress") or None
    if not isinstance(progress, dict) or progress.get("progress") is None:
        return "-"
    done = progress["progress"]
    total = progress.get("total")
    return f"{done:g}/{total:g}" if total else f"{done:g}"


def _print_table(tasks: list[dict[str, Any]]) -> None:
    now = time.time()
    rows = [
        tuple(printable(cell) for cell in row)  # escaped before the widths are taken
        for row in (
            (
                t["id"],
                t.get("tool", ""),
                t.get("status", ""),
                _progress(t),
                _age(t.get("created_at"), now),
                t.get("owner", ""),
            )
            for t in tasks
        )
    ]
    header = ("ID", "TOOL", "STATUS", "PROGRESS", "AGE", "OWNER")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _result_text(result: dict[str, Any]) -> str:
    """A tool result as ``call`` prints it: structuredContent as JSON, else the text content."""
    if result.get("structuredContent") is not None:
        return json.dumps(result["structuredContent"], indent=2, ensure_ascii=False)
    lines = []
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            lines.append(str(block.get("text", "")))
        else:
            lines.append(json.dumps(block, ensure_ascii=False))
    return "\n".join(lines)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code = error.get("code")
        return f"{error.get('message', '')}{f' (code {code})' if code is not None else ''}"
    return str(error)


def _print_view(view: dict[str, Any]) -> None:
    status = view.get("status", "?")
    message = view.get("message")
    fields: list[tuple[str, Any]] = [
        ("id", view.get("id")),
        ("tool", view.get("tool")),
        ("status", f"{status}{f' - {message}' if message else ''}"),
    ]
    progress = view.get("progress")
    if isinstance(progress, dict) and progress.get("progress") is not None:
        note = progress.get("message")
        fields.append(("progress", f"{_progress(view)}{f'  {note}' if note else ''}"))
    fields += [
        ("owner", view.get("owner")),
        ("created", f"{view.get('created_at')} ({_age(view.get('created_at'))} ago)"),
        ("updated", f"{view.get('updated_at')} ({_age(view.get('updated_at'))} ago)"),
        ("deadline", view.get("deadline_at")),
        ("ttl", f"{view['ttl_ms'] / 1000:g} s" if isinstance(view.get("ttl_ms"), int | float) else None),
        ("path", view.get("path")),
        ("origin", view.get("origin")),
        ("attempts", view.get("attempts")),
        ("region", view.get("region")),
        ("replica", view.get("replica")),
    ]
    for name, value in fields:
        if value is not None and value != "":
            print(printable(f"{name:9} {value}"))
    history = view.get("history")
    if history:
        print("history")
        for entry in history:
            note = entry.get("message")
            line = f"  {entry.get('at', '?'):26} {entry.get('status', '?'):15}{f' {note}' if note else ''}"
            print(printable(line.rstrip()))
    result = view.get("result")
    if isinstance(result, dict):
        print("result" + (" (isError)" if result.get("isError") else ""))
        for line in _result_text(result).splitlines():
            print(printable(f"  {line}"))
    if view.get("error") is not None:
        print(printable(f"error     {_error_text(view['error'])}"))


# -- commands --------------------------------------------------------------------------
def list_tasks(
    base: str, key: str | None, *, owner: str | None, cursor: str | None, limit: int | None, as_json: bool
) -> int:
    page = _request(base, key, "GET", "/v1/tasks", params={"owner": owner, "cursor": cursor, "limit": limit})
    if as_json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
        return 0
    tasks = page.get("tasks") or []
    if tasks:
        _print_table(tasks)
    else:
        print("(no tasks)" if not cursor else "(no more tasks)")
    next_cursor = page.get("next_cursor")
    if next_cursor:
        more = ["edgefleet", "tasks", "list", "--cursor", next_cursor]
        if limit is not None:
            more += ["--limit", str(limit)]
        if owner:
            more += ["--owner", owner]
        print(printable(f"more: {' '.join(more)}"), file=sys.stderr)
    return 0


def get_task(base: str, key: str | None, task_id: str, *, as_json: bool) -> int:
    view = _request(base, key, "GET", _task_path(task_id), task_id=task_id)
    print(json.dumps(view, indent=2, ensure_ascii=False)) if as_json else _print_view(view)
    return 0


def cancel_task(base: str, key: str | None, task_id: str, *, as_json: bool) -> int:
    view = _request(base, key, "POST", _task_path(task_id, "/cancel"), task_id=task_id)
    print(json.dumps(view, indent=2, ensure_ascii=False)) if as_json else _print_view(view)
    return 0


class TaskProgress(ProgressBar):
    """``call``'s progress bar, fed with task views: the bar when the task reports progress,
    else its status and message on the same line."""

    async def show(self, view: dict[str, Any]) -> None:
        progress = view.get("progress")
        status_message = view.get("message")
        if isinstance(progress, dict) and progress.get("progress") is not None:
            await self(float(progress["progress"]), progress.get("total"), progress.get("message") or status_message)
            return
        self.stream.write(("\r" + printable(f"[{view.get('status', '?')}] {status_message or ''}"))[:160].ljust(100))
        self.stream.flush()
        self.shown = True


class _StreamEnded(Exception):
    """The event stream closed before the task ended (dispatcher restart, proxy timeout...)."""


async def _follow(base: str, key: str | None, task_id: str, bar: TaskProgress) -> dict[str, Any]:
    """Follow /v1/tasks/{id}/events until a terminal view; reconnects when the stream drops."""
    timeout = httpx.Timeout(30.0, read=60.0)  # the server sends a keep-alive every 15 s
    connected_once = False
    failures = 0
    async with httpx.AsyncClient(
        base_url=base, headers={**_headers(key), "accept": "text/event-stream"}, timeout=timeout
    ) as http:
        while True:
            try:
                async with http.stream("GET", _task_path(task_id, "/events")) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise _refusal(resp, key=key, task_id=task_id)
                    connected_once = True
                    splitter = sse.Splitter()
                    async for chunk in resp.aiter_bytes():
                        for event, data in sse.events(splitter.feed(chunk)):
                            try:
                                payload = json.loads(data)
                            except ValueError:
                                raise TaskCliError(
                                    f"the event stream sent something that is not JSON: {data[:200]!r}"
                                ) from None
                            if event == "error":
                                raise TaskCliError(
                                    f"task {task_id} is gone: {_error_text(payload.get('error', payload))}"
                                )
                            if event == "task":
                                failures = 0
                                await bar.show(payload)
                                if payload.get("status") in TERMINAL:
                                    return cast(dict[str, Any], payload)
                raise _StreamEnded()
            except (httpx.TransportError, _StreamEnded) as exc:
                if not connected_once:
                    raise TaskCliError(None, _unreachable(base, exc)) from None
                failures += 1
                if failures > 5:
                    raise TaskCliError(
                        f"lost the event stream of task {task_id} ({_root_cause(exc)}); "
                        f"`edgefleet tasks get {task_id}` shows where it is"
                    ) from None
                await asyncio.sleep(min(0.5 * failures, 3.0))


def watch_task(base: str, key: str | None, task_id: str, *, as_json: bool) -> int:
    bar = TaskProgress()
    started = time.monotonic()
    try:
        view = asyncio.run(_follow(base, key, task_id, bar))
    except KeyboardInterrupt:
        bar.close()
        print(
            printable(
                f"edgefleet: stopped watching; task {task_id} goes on (`edgefleet tasks cancel {task_id}` stops it)"
            ),
            file=sys.stderr,
        )
        return 130
    except TaskCliError:
        bar.close()
        raise
    bar.close()
    status = view.get("status")
    result = view.get("result") if isinstance(view.get("result"), dict) else None
    ok = status == "completed" and not (result or {}).get("isError")
    if as_json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        detail = (
            ""
            if status == "completed"
            else f": {_error_text(view['error']) if view.get('error') is not None else view.get('message') or ''}"
        )
        tail = " (the tool reported an error)" if status == "completed" and not ok else ""
        print(
            printable(
                f"task {task_id} {status}{detail}{tail} [{view.get('tool')}, watched {time.monotonic() - started:.1f} s]"
            ),
            file=sys.stderr,
        )
        if result is not None:
            print(printable(_result_text(result), lines=True))
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    """``edgefleet tasks ACTION``, parsed by dispatcher/cli.py."""
    base = resolve_url(args.url)
    key = args.key
    try:
        if args.tasks_command == "list":
            return list_tasks(base, key, owner=args.owner, cursor=args.cursor, limit=args.limit, as_json=args.json)
        if args.tasks_command == "get":
            return get_task(base, key, args.id, as_json=args.json)
        if args.tasks_command == "watch":
            return watch_task(base, key, args.id, as_json=args.json)
        if args.tasks_command == "cancel":
            return cancel_task(base, key, args.id, as_json=args.json)
    except TaskCliError as exc:
        if exc.message:
            print(f"edgefleet: {printable(exc.message)}", file=sys.stderr)
        return exc.code
    return 2


def add_parser(sub: Any, *, url_help: str) -> argparse.ArgumentParser:
    """The ``tasks`` subcommand's parser (cli.py calls this so the help stays in one place)."""
    tasks: argparse.ArgumentParser = sub.add_parser(
        "tasks",
        help="durable MCP tasks: list, get, watch or cancel them (REST /v1/tasks)",
        description="Durable MCP tasks through the dispatcher's REST mirror. You see your own tasks "
        "(by --key); an admin sees everyone's.",
    )
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    t_list = tasks_sub.add_parser("list", help="your tasks, newest first: id, tool, status, progress, age, owner")
    t_list.add_argument("--owner", help="only this owner's tasks (admins; others always see their own)")
    t_list.add_argument("--limit", type=int, help="tasks per page (server default 50)")
    t_list.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    t_get = tasks_sub.add_parser("get", help="one task: status, progress, history, result or error")
    t_watch = tasks_sub.add_parser(
        "watch",
        help="follow a task with a progress bar until it ends, then print its result "
        "(exit 0 only if it completed without a tool error; Ctrl-C stops watching, not the task)",
    )
    t_cancel = tasks_sub.add_parser("cancel", help="cancel a working task and print it")
    for p in (t_get, t_watch, t_cancel):
        p.add_argument("id", metavar="ID", help="the task id (`edgefleet tasks list` shows them)")
    for p in (t_list, t_get, t_watch, t_cancel):
        p.add_argument(
            "--json",
            action="store_true",
            help="the final task as raw JSON" if p is t_watch else "raw JSON as the dispatcher returns it",
        )
        p.add_argument("--url", help=url_help)
        p.add_argument("--key", help="API key or bearer token, as for /mcp (default: EDGEFLEET_API_KEY)")
    return tasks


__all__ = ["add_parser", "run"]
