"""Alert rules: failed rounds, rejection bursts, per-region accuracy drops, data drift.

- ``round_failed``: a round closed without enough updates (or could not aggregate).
- ``privacy_budget_exhausted``: a round was not started because its commit would take the
  production lineage's epsilon over the service's ``privacy_budget``
  (:mod:`coordinator.privacy`); training stops there.
- ``rejection_burst``: at least ``rejection_burst_threshold`` rejected updates within
  ``rejection_burst_window_seconds`` (raised at most once per window).
- ``accuracy_drop``: an EvalReport whose accuracy for a region (a slice, or the client's
  registered region for its global metrics) is below the registry's reference for that
  model by more than ``accuracy_drop_threshold`` (absolute). The reference is the
  version's per-slice metric (slice ``north`` or ``area=north``), else its overall
  metric; ``accuracy`` also matches the trainer's ``test_accuracy``. With the rollback
  policy on (``rollback_on_accuracy_drop``) an alert for the production version rolls
  production back to the previous version once ``rollback_min_clients`` distinct clients
  reported a drop of that version in that region: the alert's ``details["rollback"]``
  records it (``from``, ``to``; or ``waiting`` with the count so far, or ``failed`` with
  the reason), and the registry's ``rolled_back`` event names the alert.
- ``data_drift``: a StatsReport whose numeric or categorical distribution departs from the
  training statistics: population stability index (PSI, Siddiqi 2006, "Credit Risk
  Scorecards") over the shared histogram bins above ``drift_psi_threshold``, or a mean
  shift above ``drift_mean_shift_threshold`` training standard deviations. Training
  statistics come from the bundle manifest's ``metadata["training_stats"]``; without
  them the mean and scale of z-scored features in the feature spec are the reference.
- ``prediction_drift``: the summed per-class counts of a version's evaluation reports
  (predictions or labels) are farther than ``prediction_drift_threshold`` in L-infinity
  distance from the previous version's (:mod:`coordinator.predictions`); raised once per
  version, when one of its reports arrives.
- ``data_quarantined``: a span dropped in a watched folder failed validation against the
  schema (or could not be read) and was quarantined (:mod:`coordinator.dataval.watch`);
  raised once per span.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coordinator.config import AlertConfig
from coordinator.errors import ConflictError
from coordinator.predictions import version_drift
from coordinator.records import AlertRecord, ClientRecord, ModelRecord, RoundRecord
from coordinator.store import Store
from fedge.bundle import BundleManifest
from fedge.errors import FeatureError
from fedge.messages import EvalReport
from fedge.stats import CategoricalStats, DatasetStats, NumericStats

__all__ = ["AlertMonitor", "RollbackHook", "population_stability_index"]

logger = logging.getLogger(__name__)
_EPSILON = 1e-4

RollbackHook = Callable[[str, str], ModelRecord | None]
"""``(version, reason) -> restored``: roll production back from ``version`` for ``reason``;
None when ``version`` is no longer production (someone else changed it first)."""


def population_stability_index(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins of two count vectors, each normalised to
    proportions and floored at 1e-4 so empty bins stay finite."""
    total_e, total_a = sum(expected), sum(actual)
    if total_e <= 0 or total_a <= 0:
        return 0.0
    psi = 0.0
    for e, a in zip(expected, actual, strict=True):
        p, q = max(e / total_e, _EPSILON), max(a / total_a, _EPSILON)
        psi += (q - p) * math.log(q / p)
    return psi


class AlertMonitor:
    """Evaluates the rules and stores alerts; ``rollback`` is the rollback policy's action
    (the service's: the registry's rollback and failing the rounds it superseded)."""

    def __init__(
        self,
        store: Store,
        config: AlertConfig,
        now: Callable[[], float],
        *,
        rollback: RollbackHook | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._now = now
        self._rollback = rollback

    def _raise(self, kind: str, message: str, **fields: Any) -> AlertRecord:
        alert = self._store.add_alert(
            AlertRecord(0, kind, fields.pop("severity", "warning"), message, self._now(), **fields)
        )
        logger.warning("alert %s: %s", kind, message)
        return alert

    def round_failed(self, round_: RoundRecord) -> AlertRecord:
        return self._raise(
            "round_failed",
            f"round {round_.round_id} failed: {round_.failure_reason}",
            round_id=round_.round_id,
            model_version=round_.base_version,
        )

    def data_quarantined(
        self, span: str, file: str, anomalies: Mapping[str, Sequence[str]]
    ) -> AlertRecord | None:
        """The alert of quarantined ``span`` (moved to ``file``), unless it has one already.
        ``anomalies``: short descriptions per feature (``""`` for the whole dataset)."""
        if any(
            a.details.get("span") == span for a in self._store.list_alerts(kind="data_quarantined")
        ):
            return None
        name = file.rsplit("/", 1)[-1]
        features = ", ".join(f or "<dataset>" for f in anomalies) or "none"
        return self._raise(
            "data_quarantined",
            f"span {name} quarantined: anomalies on {features}",
            details={
                "span": span,
                "file": file,
                "anomalies": {k: list(v) for k, v in anomalies.items()},
            },
        )

    def privacy_budget_exhausted(self, round_: RoundRecord, reason: str) -> AlertRecord:
        return self._raise(
            "privacy_budget_exhausted",
            f"round {round_.round_id} not started: {reason}; training stops",
            severity="critical",
            round_id=round_.round_id,
            model_version=round_.base_version,
        )

    def rejection(self) -> AlertRecord | None:
        window = self._config.rejection_burst_window_seconds
        since = self._now() - window
        count = sum(self._store.rejection_counts(since=since).values())
        if count < self._config.rejection_burst_threshold:
            return None
        if self._store.list_alerts(kind="rejection_burst", since=since):
            return None
        return self._raise(
            "rejection_burst",
            f"{count} updates rejected in the last {window:g} s",
            details={"count": count, "by_reason": self._store.rejection_counts(since=since)},
        )

    def evaluation(
        self, report: EvalReport, client: ClientRecord, model: ModelRecord
    ) -> list[AlertRecord]:
        metric = self._config.accuracy_metric
        observed = {name: values[metric] for name, values in report.slice_metrics.items()
                    if metric in values}  # fmt: skip
        if client.region and metric in report.metrics:
            observed.setdefault(client.region, report.metrics[metric])
        alerts = []
        for region, value in sorted(observed.items()):
            reference = _reference(model, region, metric)
            if reference is None:
                continue
            drop = reference - value
            if drop > self._config.accuracy_drop_threshold:
                message = (
                    f"{metric} of {model.version} in region {region!r} is {value:.3f}, "
                    f"{drop:.3f} below the reference {reference:.3f}"
                )
                details: dict[str, Any] = {
                    "region": region,
                    "metric": metric,
                    "value": value,
                    "reference": reference,
                    "client_id": client.client_id,
                }
                rollback = self._apply_policy(model, region, client.client_id, message)
                if rollback is not None:
                    details["rollback"] = rollback
                    if "to" in rollback:
                        message += f"; production rolled back to {rollback['to']}"
                alerts.append(
                    self._raise(
                        "accuracy_drop", message, model_version=model.version, details=details
                    )
                )
        return alerts

    def _apply_policy(
        self, model: ModelRecord, region: str, client_id: str, message: str
    ) -> dict[str, Any] | None:
        """The rollback policy on an accuracy drop of ``model`` in ``region``: what it did,
        or None when it does not apply (off, or ``model`` is not production)."""
        if not self._config.rollback_on_accuracy_drop or self._rollback is None:
            return None
        if model.stage != "production":
            return None
        earlier = self._store.list_alerts(kind="accuracy_drop")
        clients = {client_id} | {
            str(a.details.get("client_id"))
            for a in earlier
            if a.model_version == model.version and a.details.get("region") == region
        }
        needed = self._config.rollback_min_clients
        if len(clients) < needed:
            return {"status": "waiting", "clients": len(clients), "needed": needed}
        try:
            restored = self._rollback(model.version, f"accuracy_drop alert: {message}")
        except ConflictError as exc:
            logger.warning("rollback policy: %s", exc)
            return {"status": "failed", "reason": str(exc)}
        if restored is None:
            return None
        return {"status": "rolled_back", "from": model.version, "to": restored.version}

    def prediction_drift(self, version: str) -> AlertRecord | None:
        """The ``prediction_drift`` alert of ``version``, when it drifted and has none yet."""
        raised = self._store.list_alerts(kind="prediction_drift")
        if any(alert.model_version == version for alert in raised):
            return None
        drift = version_drift(self._store, version, self._config)
        if not drift.drifted or drift.previous is None:
            return None
        distances = {"predictions": drift.prediction_drift, "labels": drift.label_drift}
        over = [name for name, d in distances.items() if d is not None and d > drift.threshold]
        described = ", ".join(f"{name} {distances[name]:.3f}" for name in over)
        return self._raise(
            "prediction_drift",
            f"the class distribution of {version}'s evaluations moved from "
            f"{drift.previous.version}'s by L-infinity {described} "
            f"(threshold {drift.threshold:g})",
            model_version=version,
            details={
                "compared_with": drift.previous.version,
                "prediction_drift": drift.prediction_drift,
                "label_drift": drift.label_drift,
                "threshold": drift.threshold,
            },
        )

    def statistics(
        self, stats: DatasetStats, manifest: BundleManifest, *, client_id: str
    ) -> AlertRecord | None:
        if stats.num_rows < self._config.drift_min_rows:
            return None
        drifted = _drift(stats, manifest, self._config)
        if not drifted:
            return None
        names = ", ".join(sorted(drifted))
        return self._raise(
            "data_drift",
            f"data drift on {names} in a report from client {client_id}",
            model_version=manifest.model_version,
            details={"client_id": client_id, "columns": drifted},
        )


def _reference(model: ModelRecord, region: str, metric: str) -> float | None:
    """The registry's value of ``metric`` for ``region``, else overall. Slice keys may be
    the region (round versions) or ``"<column>=<region>"`` (the cloud trainer's records);
    the metric may be stored under ``test_<metric>`` (the trainer's held-out metrics)."""
    names = (metric, f"test_{metric}")
    for key, values in model.slice_metrics.items():
        if key == region or key.partition("=")[2] == region:
            found = next((values[n] for n in names if n in values), None)
            if found is not None:
                return found
    return next((model.metrics[n] for n in names if n in model.metrics), None)


def _training_stats(manifest: BundleManifest) -> DatasetStats | None:
    document = manifest.metadata.get("training_stats")
    if not isinstance(document, Mapping):
        return None
    try:
        return DatasetStats.from_dict(document)
    except FeatureError as exc:
        logger.warning("ignoring the bundle's training_stats: %s", exc)
        return None


def _spec_reference(manifest: BundleManifest) -> dict[str, tuple[float, float]]:
    """(mean, std) of z-scored numeric features from the feature spec document."""
    out = {}
    for feature in manifest.feature_spec.get("numeric", []):
        if isinstance(feature, Mapping) and feature.get("normalization") == "zscore":
            out[str(feature["name"])] = (float(feature["offset"]), float(feature["scale"]))
    return out


def _drift(
    stats: DatasetStats, manifest: BundleManifest, config: AlertConfig
) -> dict[str, dict[str, float]]:
    training = _training_stats(manifest)
    spec = _spec_reference(manifest)
    drifted: dict[str, dict[str, float]] = {}
    for name, column in stats.columns.items():
        reference = training.columns.get(name) if training else None
        found: dict[str, float] = {}
        if isinstance(column, NumericStats) and column.count:
            if isinstance(reference, NumericStats) and reference.edges == column.edges:
                psi = population_stability_index(reference.counts, column.counts)
                if psi > config.drift_psi_threshold:
                    found["psi"] = psi
                mean, std = reference.mean, reference.std
            else:
                mean, std = spec.get(name, (math.nan, math.nan))
            if math.isfinite(mean) and std > 0:
                shift = abs(column.mean - mean) / std
                if shift > config.drift_mean_shift_threshold:
                    found["mean_shift"] = shift
        elif isinstance(column, CategoricalStats) and isinstance(reference, CategoricalStats):
            keys = sorted(set(reference.value_counts) | set(column.value_counts))
            psi = population_stability_index(
                [reference.value_counts.get(k, 0) for k in keys],
                [column.value_counts.get(k, 0) for k in keys],
            )
            if psi > config.drift_psi_threshold:
                found["psi"] = psi
        if found:
            drifted[name] = found
    return drifted
