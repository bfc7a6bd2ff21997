"""Escaping for human-readable output: nothing a client or an agent wrote may act on a terminal."""

import io
import logging

from edgefleet.shared import logsetup
from edgefleet.shared.printable import printable


def test_controls_are_escaped_visibly_and_text_is_left_alone() -> None:
    assert printable("plain text, ümlauts, 東京, emoji 🙂") == "plain text, ümlauts, 東京, emoji 🙂"
    assert printable("a\nb\r\tc\x00\x1b[31m\x7f") == "a\\nb\\r\\tc\\x00\\x1b[31m\\x7f"
    assert printable("\x9b2J\x85") == "\\x9b2J\\x85"  # C1: CSI and NEL
    assert printable("\u202eabc\u2066\u2028\u2029\u200f\u061c") == "\\u202eabc\\u2066\\u2028\\u2029\\u200f\\u061c"
    assert printable(7) == "7" and printable(None) == "None"


def test_multi_line_output_keeps_its_lines_but_nothing_else() -> None:
    assert printable("line 1\n\tline 2\r\x1b[2K", lines=True) == "line 1\n\tline 2\\r\\x1b[2K"


def test_the_text_log_format_keeps_one_record_on_one_line() -> None:
    stream = io.StringIO()
    logsetup.configure("info", "text", stream=stream)
    try:
        logging.getLogger("edgefleet.test").warning("unknown tool %s", "x\n12:00:00 INFO forged\x1b[31m")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("edgefleet.test").exception("with a traceback")
    finally:
        logsetup.configure("info", "json")
    lines = stream.getvalue().splitlines()
    assert "unknown tool x\\n12:00:00 INFO forged\\x1b[31m" in lines[0] and "\x1b" not in stream.getvalue()
    assert "with a traceback" in lines[1] and lines[2].startswith("Traceback")  # ours stays readable
