"""The dashboard's server-side sessions and its chart helpers, without a server."""

from __future__ import annotations

import pytest

from coordinator.ui.charts import ChartCache, bar_chart, csp_safe_svg, line_chart
from coordinator.ui.sessions import SessionStore
from fedge.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_id_until_it_expires() -> None:
    clock = Clock()
    sessions = SessionStore(lifetime_seconds=60.0, clock=clock)
    session_id, session = sessions.create("admin", "admin:0123456789ab")
    assert sessions.get(session_id) == session
    assert sessions.get(session_id + "x") is None
    assert sessions.get(None) is None
    clock.now += 59.0
    assert sessions.get(session_id) == session
    clock.now += 1.0
    assert sessions.get(session_id) is None
    assert len(sessions) == 0


def test_sessions_have_distinct_ids_and_csrf_tokens_and_drop_ends_one() -> None:
    sessions = SessionStore()
    (first_id, first), (second_id, second) = (sessions.create("viewer", "v") for _ in range(2))
    assert first_id != second_id
    assert first.csrf_token != second.csrf_token
    assert first.csrf_matches(first.csrf_token)
    assert not first.csrf_matches(second.csrf_token)
    assert not first.csrf_matches(None)
    assert not first.csrf_matches("")
    sessions.drop(first_id)
    assert sessions.get(first_id) is None
    assert sessions.get(second_id) == second


def test_the_oldest_session_makes_room_past_the_limit() -> None:
    clock = Clock()
    sessions = SessionStore(max_sessions=2, clock=clock)
    oldest, _ = sessions.create("admin", "a")
    clock.now += 1
    kept = [sessions.create("admin", "a")[0] for _ in range(2)]
    assert sessions.get(oldest) is None
    assert all(sessions.get(k) is not None for k in kept)


def test_a_nonpositive_lifetime_is_refused() -> None:
    with pytest.raises(ConfigError, match="lifetime_seconds"):
        SessionStore(lifetime_seconds=0)


def test_csp_safe_svg_turns_styles_into_attributes() -> None:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><defs><style type="text/css">*{a:b}</style>'
        '</defs><path d="M0 0" style="fill: #ff0000; stroke-width: 0.8"/></svg>'
    )
    assert csp_safe_svg(svg) == (
        '<svg stroke-linejoin="round" stroke-linecap="butt" xmlns="http://www.w3.org/2000/svg">'
        '<defs></defs><path d="M0 0" fill="#ff0000" stroke-width="0.8"/></svg>'
    )


def test_charts_draw_their_data_and_say_when_there_is_none() -> None:
    lines = line_chart("acc", [1.0, 2.0, 3.0], {"accuracy": [0.5, None, 0.7]}, xlabel="round")
    empty = bar_chart("drift", {}, ylabel="PSI")
    assert "<svg" in lines
    assert "<svg" in empty
    assert " style=" not in lines + empty
    assert "<style" not in lines + empty
    assert len(empty) != len(bar_chart("drift", {"fare": 0.4}, ylabel="PSI"))


def test_the_chart_cache_keeps_a_drawing_per_key() -> None:
    cache = ChartCache(size=2)
    assert cache.get("a", "k1", lambda: "first") == "first"
    assert cache.get("a", "k1", lambda: "redrawn") == "first"
    assert cache.get("a", "k2", lambda: "second") == "second"
    cache.get("b", "k1", lambda: "third")
    assert cache.get("a", "k1", lambda: "evicted") == "evicted"
