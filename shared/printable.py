"""Text for a human's terminal: whatever a client or an agent wrote (a tool name, a progress
message, an error) must not move the cursor, colour the screen, start a new line that looks
like ours, or reorder the line (Trojan Source). One helper for every human-readable output:
the CLI's tables and lines, and the text log format. Machine formats (``--json``, JSON
logs) escape for themselves and do not use it.

Escaped: C0 controls (ESC and friends, and the line breaks unless ``lines``), DEL, C1
controls (0x80-0x9f: 0x9b alone starts an escape sequence on some terminals), the Unicode
line and paragraph separators, and the bidirectional formatting characters. They become
``\\n``, ``\\r``, ``\\t``, ``\\xHH`` or ``\\uHHHH``: visible, and never live.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ONE_LINE = {code: _escape(code) for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *_BIDI)}
_LINES = {code: escaped for code, escaped in _ONE_LINE.items() if chr(code) not in "\n\t"}


def printable(text: object, *, lines: bool = False) -> str:
    """``text`` (``str()`` of anything) with every control character escaped; with ``lines``
    newlines and tabs stay (a multi-line result), everything else is escaped still."""
    return str(text).translate(_LINES if lines else _ONE_LINE)


__all__ = ["printable"]
