"""Counters of the predict route, rendered into ``/metrics``: requests and rows by mode
and by source (``table``, ``cache``, ``model``), hit rates, a latency histogram, and the
requests refused by error code."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

__all__ = ["LATENCY_BUCKETS", "SOURCES", "ServingStats"]

SOURCES = ("table", "cache", "model")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}"


class ServingStats:
    """Thread-safe counters of answered predict requests (refused ones are not served)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._rows: Counter[tuple[str, str]] = Counter()
        self._buckets: Counter[tuple[str, int]] = Counter()
        self._latency_sum: dict[str, float] = {}
        self._refused: Counter[tuple[str, str]] = Counter()

    def record(self, mode: str, rows: Mapping[str, int], seconds: float) -> None:
        with self._lock:
            self._requests[mode] += 1
            for source, n in rows.items():
                self._rows[mode, source] += n
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self._buckets[mode, i] += 1
            self._latency_sum[mode] = self._latency_sum.get(mode, 0.0) + seconds

    def refuse(self, mode: str, code: str) -> None:
        """Count a request refused with error ``code`` (nothing else changes)."""
        with self._lock:
            self._refused[mode, code] += 1

    def rows(self, mode: str, source: str) -> int:
        with self._lock:
            return self._rows[mode, source]

    def render(self) -> list[str]:
        """Prometheus exposition lines (HELP/TYPE and samples) of the counters so far."""
        with self._lock:
            modes = sorted(self._requests)
            lines = [
                "# HELP fedge_serving_requests_total Predict requests answered, by mode.",
                "# TYPE fedge_serving_requests_total counter",
            ]
            lines += [
                _sample("fedge_serving_requests_total", {"mode": m}, self._requests[m])
                for m in modes
            ]
            lines += [
                "# HELP fedge_serving_refused_total Predict requests refused, by mode and error.",
                "# TYPE fedge_serving_refused_total counter",
            ]
            lines += [
                _sample("fedge_serving_refused_total", {"mode": m, "error": c}, n)
                for (m, c), n in sorted(self._refused.items())
            ]
            lines += [
                "# HELP fedge_serving_rows_total Rows predicted, by mode and source.",
                "# TYPE fedge_serving_rows_total counter",
            ]
            lines += [
                _sample("fedge_serving_rows_total", {"mode": m, "source": s}, self._rows[m, s])
                for m in modes
                for s in SOURCES
            ]
            lines += [
                "# HELP fedge_serving_hit_rate Share of rows answered by a source, by mode.",
                "# TYPE fedge_serving_hit_rate gauge",
            ]
            for m in modes:
                total = sum(self._rows[m, s] for s in SOURCES)
                for s in ("table", "cache"):
                    rate = self._rows[m, s] / total if total else 0.0
                    lines.append(_sample("fedge_serving_hit_rate", {"mode": m, "source": s}, rate))
            lines += [
                "# HELP fedge_serving_latency_seconds Predict request latency, by mode.",
                "# TYPE fedge_serving_latency_seconds histogram",
            ]
            for m in modes:
                for i, bound in enumerate(LATENCY_BUCKETS):
                    labels = {"mode": m, "le": f"{bound:g}"}
                    count = self._buckets[m, i]
                    lines.append(_sample("fedge_serving_latency_seconds_bucket", labels, count))
                inf = {"mode": m, "le": "+Inf"}
                lines.append(
                    _sample("fedge_serving_latency_seconds_bucket", inf, self._requests[m])
                )
                lines.append(
                    _sample("fedge_serving_latency_seconds_sum", {"mode": m}, self._latency_sum[m])
                )
                lines.append(
                    _sample("fedge_serving_latency_seconds_count", {"mode": m}, self._requests[m])
                )
            return lines
