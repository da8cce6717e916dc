"""JSON parsing with bounds: a size limit checked before parsing and a nesting-depth limit
checked by a linear scan before the (recursive) standard parser sees the text.

``json.loads`` recurses once per nesting level, so a 50,000-deep document ends in
RecursionError, and it builds the whole document before any caller can check it. Anything
that parses JSON a peer sent (a request body, a header, a file's metadata) uses
:func:`loads_bounded` instead: every failure is a :class:`ValueError` (a
:class:`JSONLimitError` for a limit, ``json.JSONDecodeError`` for invalid JSON), never a
RecursionError. ``NaN`` and ``Infinity`` are refused: they are not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from fedge.errors import JSONLimitError

__all__ = ["DEFAULT_MAX_DEPTH", "JSONLimitError", "json_depth", "loads_bounded"]

DEFAULT_MAX_DEPTH = 32
"""Deep enough for any document fedge exchanges, far below Python's recursion limit."""

# A JSON string (quotes included) or one bracket; strings are matched first so that
# brackets inside them do not count.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}\"]")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def json_depth(text: str, *, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in ``text`` (0 for a scalar), counted
    without parsing; with ``stop_above``, the scan stops as soon as the depth exceeds it."""
    if not _BRACKETS.search(text):
        return 0
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        lexeme = match.group()
        if lexeme in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    return deepest
        elif lexeme in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int) -> Any:
    """``json.loads(text)`` for a document of at most ``max_bytes`` bytes (UTF-8) nested at
    most ``max_depth`` levels; raises :class:`JSONLimitError` over a limit and
    ``json.JSONDecodeError`` (a ValueError) for anything that is not JSON."""
    if max_depth < 1 or max_bytes < 1:
        raise ValueError("max_depth and max_bytes must be at least 1")
    if isinstance(text, bytes | bytearray):
        if len(text) > max_bytes:
            raise JSONLimitError(f"the JSON document is over the {max_bytes}-byte limit")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONLimitError(f"the JSON document is not UTF-8: {exc}") from exc
    elif len(text) > max_bytes or (
        len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise JSONLimitError(f"the JSON document is over the {max_bytes}-byte limit")
    # No more brackets than the limit (in strings or not): the depth cannot exceed it.
    brackets = text.count("{") + text.count("[")
    if brackets > max_depth and json_depth(text, stop_above=max_depth) > max_depth:
        raise JSONLimitError(f"the JSON document is nested deeper than {max_depth} levels")
    return json.loads(text, parse_constant=_refuse_constant)
