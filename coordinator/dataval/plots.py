"""PNG plots of feature distributions and of drift/skew distances (matplotlib, Agg)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

from coordinator.dataval.schema import feature_name

__all__ = ["plot_distances", "plot_features"]

_TOP_VALUES = 20


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _file_name(name: str) -> str:
    return "feature-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png"


def _shares(stat: Any) -> dict[str, float]:
    buckets = stat.string_stats.rank_histogram.buckets
    total = sum(b.sample_count for b in buckets) or 1.0
    return {b.label: b.sample_count / total for b in buckets}


def _bins(stat: Any) -> list[tuple[float, float, float]]:
    histograms = stat.num_stats.histograms
    if not histograms:
        return []
    buckets = [(b.low_value, b.high_value, b.sample_count) for b in histograms[0].buckets]
    total = sum(c for _, _, c in buckets) or 1.0
    return [(lo, hi, c / total) for lo, hi, c in buckets]


def plot_features(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    out_dir: Path,
    *,
    other: statistics_pb2.DatasetFeatureStatisticsList | None = None,
    names: tuple[str, str] = ("current", "previous"),
) -> list[Path]:
    """One PNG per feature of ``stats``: the share of each value (the 20 most frequent) or
    of each non-empty histogram bucket, beside ``other``'s when given. The written paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    theirs = {feature_name(f): f for f in other.datasets[0].features} if other else {}
    written = []
    for stat in stats.datasets[0].features:
        name = feature_name(stat)
        compare = theirs.get(name)
        fig, ax = plt.subplots(figsize=(8, 4))
        if stat.HasField("string_stats"):
            mine = _shares(stat)
            base = _shares(compare) if compare is not None else {}
            labels = sorted(mine, key=lambda v: -mine[v])[:_TOP_VALUES]
            labels += [v for v in sorted(base, key=lambda v: -base[v]) if v not in labels][:5]
            positions = range(len(labels))
            width = 0.4 if base else 0.8
            ax.bar([p - width / 2 if base else p for p in positions],
                   [mine.get(v, 0.0) for v in labels], width=width, label=names[0])  # fmt: skip
            if base:
                ax.bar([p + width / 2 for p in positions],
                       [base.get(v, 0.0) for v in labels], width=width, label=names[1])  # fmt: skip
            ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
        else:
            series = [(names[0], _bins(stat))]
            if compare is not None:
                series.append((names[1], _bins(compare)))
            used = [i for _, bins in series for i, b in enumerate(bins) if b[2] > 0]
            lo, hi = (min(used), max(used)) if used else (0, -1)
            for label, bins in series:
                shown = bins[lo : hi + 1]
                ax.step(range(len(shown)), [b[2] for b in shown], where="mid", label=label)
            edges = [f"{b[0]:g}" for b in series[0][1][lo : hi + 1]]
            ax.set_xticks(range(len(edges)), edges, rotation=60, ha="right", fontsize=7)
            ax.set_xlabel("bucket (lower edge)")
        ax.set_ylabel("share of values")
        ax.set_title(name)
        if compare is not None:
            ax.legend()
        fig.tight_layout()
        path = out_dir / _file_name(name)
        fig.savefig(path, format="png")
        plt.close(fig)
        written.append(path)
    return written


def plot_distances(anomalies: anomalies_pb2.Anomalies, path: Path) -> Path | None:
    """Bars of every drift and skew distance with its threshold; None when none was computed."""
    rows = []
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        rows += [(f"{name} drift", m.value, m.threshold) for m in info.drift_measurements]
        rows += [(f"{name} skew", m.value, m.threshold) for m in info.skew_measurements]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.4 * len(rows)))
    positions = range(len(rows))
    colors = ["tab:red" if value > limit else "tab:blue" for _, value, limit in rows]
    ax.barh(list(positions), [value for _, value, _ in rows], color=colors)
    ax.scatter([limit for *_, limit in rows], list(positions), marker="|", s=300, color="black",
               label="threshold")  # fmt: skip
    ax.set_yticks(list(positions), [label for label, *_ in rows], fontsize=8)
    ax.set_xlabel("distance (L-infinity for strings, Jensen-Shannon for numbers)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
