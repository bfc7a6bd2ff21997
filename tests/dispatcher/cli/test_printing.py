"""Every human-readable line the CLI prints escapes what a client or an agent wrote (tool
names, progress and status messages, results, errors): no forged lines, no live escapes."""

from __future__ import annotations

import asyncio
import io

import pytest

from edgefleet.dispatcher.cli import tasks
from edgefleet.dispatcher.cli.audit import format_event
from edgefleet.dispatcher.cli.client import ProgressBar

HOSTILE = "ok\n12:00:00 forged line\x1b[2J\x1b]0;title\x07\u202eevil\r"
LIVE = ("\x1b", "\x07", "\u202e", "\r")


def _clean(text: str) -> None:
    assert not any(c in text for c in LIVE), repr(text)


def test_task_tables_and_views_escape_agent_and_client_text(capsys: pytest.CaptureFixture[str]) -> None:
    view = {
        "id": "t1",
        "tool": HOSTILE,
        "owner": HOSTILE,
        "status": "failed",
        "message": HOSTILE,
        "progress": {"progress": 1, "total": 2, "message": HOSTILE},
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        "history": [{"at": "2026-01-01T00:00:00.000Z", "status": "working", "message": HOSTILE}],
        "result": {"content": [{"type": "text", "text": "line 1\nline 2" + HOSTILE}]},
        "error": {"code": -31002, "message": HOSTILE},
    }
    tasks._print_table([view])
    table = capsys.readouterr().out
    _clean(table)
    assert len(table.splitlines()) == 2  # header and one row
    tasks._print_view(view)
    shown = capsys.readouterr().out
    _clean(shown)
    # A result keeps its own lines, each indented under "result": none can pass for another line.
    assert "result\n  line 1\n  line 2ok\n  12:00:00 forged line\\x1b[2J" in shown
    assert not any(line.startswith("12:00:00 forged") for line in shown.splitlines())


def test_progress_lines_and_audit_lines_escape_too() -> None:
    stream = io.StringIO()
    asyncio.run(ProgressBar(stream)(1, 2, HOSTILE))
    asyncio.run(tasks.TaskProgress(stream).show({"status": "working", "message": HOSTILE}))
    written = stream.getvalue()
    assert written.count("\r") == 2 and "\n" not in written  # only the bar's own carriage returns
    _clean(written.replace("\r", ""))
    line = format_event({"ts": 0, "event": "call", "identity": "root", "tool": HOSTILE, "extra": {"x": HOSTILE}})
    assert "\n" not in line
    _clean(line)
