"""The dashboard's charts: matplotlib figures rendered server-side as SVG, cached per store
state (a chart is drawn again only when what it shows may have changed).

matplotlib writes ``style`` attributes and a ``<style>`` element, which a strict Content
Security Policy (``style-src 'self'``) refuses when the SVG is inline; :func:`csp_safe_svg`
turns them into SVG presentation attributes, so the SVG draws the same under that policy.
matplotlib is imported only when a chart is drawn.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ChartCache", "bar_chart", "csp_safe_svg", "line_chart"]

_STYLE_ATTRIBUTE = re.compile(r'\sstyle="([^"]*)"')
_STYLE_ELEMENT = re.compile(r"<style[^>]*>.*?</style>", re.DOTALL)
_SVG_OPEN = re.compile(r"<svg\b")
_MARKED_POINTS = 60


def _attributes(match: re.Match[str]) -> str:
    parts = []
    for declaration in match.group(1).split(";"):
        name, _, value = declaration.partition(":")
        name, value = name.strip(), value.strip()
        if name and value:
            parts.append(f' {name}="{value}"')
    return "".join(parts)


def csp_safe_svg(svg: str) -> str:
    """``svg`` with its ``style`` attributes as presentation attributes and its ``<style>``
    elements removed (matplotlib's only one sets the line joins and caps, kept on the root)."""
    svg = _STYLE_ELEMENT.sub("", svg)
    svg = _STYLE_ATTRIBUTE.sub(_attributes, svg)
    return _SVG_OPEN.sub('<svg stroke-linejoin="round" stroke-linecap="butt"', svg, count=1)


def _figure(title: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _svg(figure: Figure) -> str:
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": "fedge", "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return csp_safe_svg(buffer.getvalue())


def line_chart(
    title: str,
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str,
) -> str:
    """Lines over ``x`` (a None value leaves a gap); an empty chart says there is no data."""
    figure, axes = _figure(title)
    drawn = False
    for name, values in series.items():
        points = [(a, b) for a, b in zip(x, values, strict=True) if b is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            marker = "o" if len(xs) <= _MARKED_POINTS else None  # markers only while few
            axes.plot(xs, ys, marker=marker, markersize=2, label=name)
            drawn = True
    if drawn:
        axes.legend(loc="best", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center")
    axes.set_xlabel(xlabel)
    return _svg(figure)


def bar_chart(title: str, values: Mapping[str, float], *, ylabel: str) -> str:
    """One bar per key, in key order; an empty chart says there is no data."""
    figure, axes = _figure(title)
    if values:
        axes.bar(list(values), list(values.values()), color="#3b6ea5")
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    else:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center")
    axes.set_ylabel(ylabel)
    return _svg(figure)


class ChartCache:
    """The last few charts drawn, by (name, store state key)."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._charts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()
        # matplotlib's shared state (font cache, rc parameters) is not made for threads
        # drawing at once: one chart is drawn at a time.
        self._drawing = threading.Lock()

    def get(self, name: str, key: str, draw: Callable[[], str]) -> str:
        with self._lock:
            found = self._charts.get((name, key))
            if found is not None:
                self._charts.move_to_end((name, key))
                return found
        with self._drawing:
            svg = draw()
        with self._lock:
            self._charts[(name, key)] = svg
            while len(self._charts) > self._size:
                self._charts.popitem(last=False)
        return svg
