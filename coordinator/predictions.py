"""Prediction and label drift between model versions, from the devices' evaluation reports.

An :class:`~fedge.messages.EvalReport` may carry, per class id, how many evaluated rows the
global model predicted as that class and how many carry that label (noised on devices whose
policy noises statistics; never a row). Per model version the coordinator sums the counts of
the version's stored evaluation reports (:func:`version_distribution`) and compares the
version with the previous one in registry order that has counts (:func:`version_drift`):
the L-infinity distance ``max_c |p_c - q_c|`` of the two normalised distributions, TFDV's
``infinity_norm`` comparator for categorical features. The distance is computed for the
predictions and for the labels: prediction drift with steady labels points at the model,
label drift at the data.

A version drifts when either distance is above ``AlertConfig.prediction_drift_threshold``
and both versions count at least ``prediction_drift_min_examples`` rows (noised counts of a
few rows would drift by chance); :class:`coordinator.alerts.AlertMonitor` then raises one
``prediction_drift`` alert for the version. Reports without counts (older devices) are
skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.config import AlertConfig
from coordinator.errors import NotFoundError
from coordinator.store import Store

__all__ = [
    "ClassDistribution",
    "VersionDrift",
    "drift_document",
    "linf_distance",
    "version_distribution",
    "version_drift",
]


def _normalised(counts: Sequence[int], size: int) -> list[float]:
    total = sum(counts)
    return [(counts[i] / total if i < len(counts) else 0.0) for i in range(size)]


def linf_distance(first: Sequence[int], second: Sequence[int]) -> float | None:
    """``max_c |p_c - q_c|`` of two count vectors normalised to proportions (the shorter
    padded with zeros); None when either counts nothing."""
    if sum(first) <= 0 or sum(second) <= 0:
        return None
    size = max(len(first), len(second))
    p, q = _normalised(first, size), _normalised(second, size)
    return max(abs(a - b) for a, b in zip(p, q, strict=True))


def _add(total: tuple[int, ...], counts: Sequence[int]) -> tuple[int, ...]:
    return tuple(a + b for a, b in itertools.zip_longest(total, counts, fillvalue=0))


@dataclass(frozen=True)
class ClassDistribution:
    """The summed class counts of one version's evaluation reports that carry them."""

    version: str
    reports: int
    prediction_counts: tuple[int, ...]
    label_counts: tuple[int, ...]

    @property
    def prediction_rows(self) -> int:
        return sum(self.prediction_counts)

    @property
    def label_rows(self) -> int:
        return sum(self.label_counts)

    def to_dict(self) -> dict[str, Any]:
        size = max(len(self.prediction_counts), len(self.label_counts))
        return {
            "model_version": self.version,
            "reports": self.reports,
            "prediction_counts": list(self.prediction_counts),
            "label_counts": list(self.label_counts),
            "prediction_distribution": (
                _normalised(self.prediction_counts, size) if self.prediction_rows else None
            ),
            "label_distribution": (
                _normalised(self.label_counts, size) if self.label_rows else None
            ),
        }


def version_distribution(store: Store, version: str) -> ClassDistribution | None:
    """The summed counts of ``version``'s evaluation reports; None when none carries any."""
    predictions: tuple[int, ...] = ()
    labels: tuple[int, ...] = ()
    reports = 0
    for report in store.list_reports(kind="evaluation", model_version=version):
        document = report.document
        found = False
        for key in ("prediction_counts", "label_counts"):
            counts = document.get(key)
            if isinstance(counts, list | tuple) and counts:
                found = True
                if key == "prediction_counts":
                    predictions = _add(predictions, counts)
                else:
                    labels = _add(labels, counts)
        reports += found
    if not reports:
        return None
    return ClassDistribution(version, reports, predictions, labels)


@dataclass(frozen=True)
class VersionDrift:
    """One version's distribution, the previous one it is compared with, and the L-infinity
    distances between them (None: nothing to compare)."""

    version: str
    current: ClassDistribution | None
    previous: ClassDistribution | None
    prediction_drift: float | None
    label_drift: float | None
    threshold: float
    min_examples: int

    @property
    def comparable(self) -> bool:
        """Both versions count at least ``min_examples`` rows."""
        if self.current is None or self.previous is None:
            return False
        rows = (
            self.current.prediction_rows or self.current.label_rows,
            self.previous.prediction_rows or self.previous.label_rows,
        )
        return min(rows) >= self.min_examples

    @property
    def drifted(self) -> bool:
        distances = [d for d in (self.prediction_drift, self.label_drift) if d is not None]
        return self.comparable and any(d > self.threshold for d in distances)


def version_drift(store: Store, version: str, config: AlertConfig) -> VersionDrift:
    """``version``'s distribution against the latest earlier version (registry order) whose
    reports carry counts (NotFoundError for an unknown version)."""
    models = [m.version for m in store.list_models()]
    if version not in models:
        raise NotFoundError(f"no model {version!r}", code="model_not_found")
    current = version_distribution(store, version)
    previous = None
    for earlier in reversed(models[: models.index(version)]):
        previous = version_distribution(store, earlier)
        if previous is not None:
            break
    prediction = label = None
    if current is not None and previous is not None:
        prediction = linf_distance(current.prediction_counts, previous.prediction_counts)
        label = linf_distance(current.label_counts, previous.label_counts)
    return VersionDrift(
        version=version,
        current=current,
        previous=previous,
        prediction_drift=prediction,
        label_drift=label,
        threshold=config.prediction_drift_threshold,
        min_examples=config.prediction_drift_min_examples,
    )


def drift_document(drift: VersionDrift) -> dict[str, Any]:
    """The ``predictions`` section of a model's document."""
    return {
        "distribution": None if drift.current is None else drift.current.to_dict(),
        "compared_with": None if drift.previous is None else drift.previous.version,
        "previous_distribution": None if drift.previous is None else drift.previous.to_dict(),
        "prediction_drift": drift.prediction_drift,
        "label_drift": drift.label_drift,
        "threshold": drift.threshold,
        "min_examples": drift.min_examples,
        "drifted": drift.drifted,
    }
