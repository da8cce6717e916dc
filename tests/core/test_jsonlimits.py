"""Bounded JSON parsing: size and depth limits hold before the standard parser recurses."""

from __future__ import annotations

import json

import pytest

from fedge.jsonlimits import JSONLimitError, json_depth, loads_bounded


def test_loads_bounded_parses_a_document_within_limits() -> None:
    text = '{"a": [1, {"b": "[[[{{{"}], "c": "\\"]"}'
    assert loads_bounded(text, max_depth=3, max_bytes=100) == json.loads(text)
    assert loads_bounded(text.encode(), max_depth=3, max_bytes=100) == json.loads(text)


def test_brackets_inside_strings_do_not_count() -> None:
    assert json_depth('["[[[[", "\\\\", {"k": "}}}"}]') == 2
    assert json_depth("42") == 0


def test_loads_bounded_refuses_deep_nesting_without_recursion_error() -> None:
    with pytest.raises(JSONLimitError, match="nested deeper than 32 levels"):
        loads_bounded("[" * 50_000 + "]" * 50_000, max_bytes=1 << 20)
    with pytest.raises(JSONLimitError, match="deeper than 2 levels"):
        loads_bounded('{"a": {"b": {"c": 1}}}', max_depth=2, max_bytes=100)


def test_loads_bounded_refuses_a_document_over_the_size_limit() -> None:
    with pytest.raises(JSONLimitError, match="over the 10-byte limit"):
        loads_bounded('{"a": "0123456789"}', max_bytes=10)
    with pytest.raises(JSONLimitError, match="over the 3-byte limit"):
        loads_bounded('"\u00e9\u00e9"', max_bytes=3)  # 4 characters, 6 bytes


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "{", b"\xff\xfe"])
def test_loads_bounded_refuses_what_is_not_json(text: str | bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|Expecting|UTF-8"):
        loads_bounded(text, max_bytes=100)
