"""Log lines that quote what a client sent: control characters escaped, so that a request
cannot forge a log line (a ``%0a`` in a path) or hide one (a ``\\r``, an ANSI escape)."""

from __future__ import annotations

import re

__all__ = ["printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX = 2048


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, limit: int = _MAX) -> str:
    """``value`` as one log-safe line: control characters (C0, DEL, C1, line and paragraph
    separators) written as escapes, and at most ``limit`` characters before an ellipsis."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(_escape, text)
