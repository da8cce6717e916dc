"""Report intake: statistics, evaluations and embeddings that clients send for a task.

A report must answer a pending task of the same kind assigned to the sending client; an
evaluation must be of the task's model version (409 otherwise), count at most the task's
``max_examples`` (else :data:`~coordinator.intake.MAX_EXAMPLES`) examples, and carry metrics
of magnitude at most :data:`~coordinator.intake.METRIC_BOUND` with accuracies in [0, 1]
(400 otherwise). Statistics count at most the task's example limit per column and carry
values of magnitude at most :data:`STATS_VALUE_BOUND` (``m2``, a sum of squares, at most
:data:`STATS_M2_BOUND`). It is stored (embeddings as an artifact), the task completes, and the
alert rules run (drift for statistics, per-region accuracy for evaluations). An evaluation's
per-class counts of predictions and labels, when present, must number the model's classes,
each within the example limit; the version's prediction drift is then checked
(:mod:`coordinator.predictions`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

from coordinator.alerts import AlertMonitor
from coordinator.artifacts import ArtifactStore
from coordinator.errors import ConflictError, CoordinatorError, NotFoundError, PermissionDeniedError
from coordinator.intake import MAX_EXAMPLES, check_metric_bounds
from coordinator.records import ClientRecord, ReportRecord, TaskRecord
from coordinator.registry import ModelRegistry
from coordinator.store import Store
from fedge.messages import EvalReport, FeatureBatch, StatsReport

__all__ = ["REPORT_KINDS", "ReportIntake", "complete_task"]

REPORT_KINDS = {"evaluate": "evaluation", "stats": "stats", "features": "features"}
"""The report kinds an admin filters by (the task kinds), to the stored record kinds."""


def _report_error(message: str) -> Exception:
    return CoordinatorError(message, code="invalid_report")


def _check_count(count: int, task: TaskRecord, what: str) -> None:
    limit = task.config.max_examples or MAX_EXAMPLES
    if count > limit:
        raise CoordinatorError(
            f"the report counts {count} {what}; task {task.task_id!r} allows at most {limit}",
            code="invalid_report",
        )


STATS_VALUE_BOUND = 1e15
"""The largest magnitude of a mean, min, max or bin edge in a statistics report."""
STATS_M2_BOUND = 1e42
"""The largest sum of squared deviations (``m2``) in a statistics report."""


def _check_stats(document: Any, task: TaskRecord, path: str = "stats") -> None:
    """Every number in a statistics document is bounded: counts by the task's example limit,
    values by :data:`STATS_VALUE_BOUND`, so merging reports and computing drift stay finite."""
    if isinstance(document, Mapping):
        for key, value in document.items():
            where = f"{path}.{key}"
            if key == "m2" and isinstance(value, int | float) and not isinstance(value, bool):
                if not 0 <= value <= STATS_M2_BOUND:
                    raise _report_error(f"{where} is {value!r}, outside [0, {STATS_M2_BOUND:g}]")
                continue
            _check_stats(value, task, where)
    elif isinstance(document, list | tuple):
        for index, value in enumerate(document):
            _check_stats(value, task, f"{path}[{index}]")
    elif isinstance(document, bool):
        return
    elif isinstance(document, int):
        _check_count(document, task, f"at {path}")
    elif isinstance(document, float) and abs(document) > STATS_VALUE_BOUND:
        raise _report_error(
            f"{path} is {document!r}, over the bound of {STATS_VALUE_BOUND:g} in magnitude"
        )


def _check_evaluation(report: EvalReport, task: TaskRecord, num_classes: int) -> None:
    """An evaluation answers its task: the task's model version, bounded counts and metrics,
    class counts (when present) of the model's ``num_classes`` classes."""
    if report.model_version != task.model_version:
        raise ConflictError(
            f"task {task.task_id!r} asked for an evaluation of {task.model_version}, "
            f"the report is of {report.model_version}",
            code="model_version_mismatch",
        )
    _check_count(report.num_examples, task, "examples")
    check_metric_bounds(report.metrics, "metrics", _report_error)
    check_metric_bounds(report.personalized_metrics, "personalized_metrics", _report_error)
    for name, values in report.slice_metrics.items():
        check_metric_bounds(values, f"slice_metrics[{name!r}]", _report_error)
    for name in ("prediction_counts", "label_counts"):
        counts = getattr(report, name)
        if counts is None:
            continue
        if len(counts) != num_classes:
            raise _report_error(
                f"{name} holds {len(counts)} counts; model {report.model_version} has "
                f"{num_classes} classes"
            )
        _check_count(max(counts), task, f"rows of one class in {name}")


def complete_task(store: Store, task_id: str, now: float) -> None:
    """Mark a pending task completed (a no-op for any other state)."""
    task = store.get_task(task_id)
    if task is not None and task.status == "pending":
        store.save_task(dataclasses.replace(task, status="completed", completed_at=now))


class ReportIntake:
    """Validates, stores and monitors client reports."""

    def __init__(
        self,
        *,
        store: Store,
        artifacts: ArtifactStore,
        registry: ModelRegistry,
        alerts: AlertMonitor,
        now: Callable[[], float],
        lock: threading.RLock,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._registry = registry
        self._alerts = alerts
        self._now = now
        self._lock = lock

    def _task(self, client: ClientRecord, task_id: str, kind: str) -> TaskRecord:
        task = self._store.get_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", code="task_not_found")
        if task.client_id != client.client_id:
            raise PermissionDeniedError(
                f"task {task_id!r} is assigned to another client", code="task_not_assigned"
            )
        if task.kind != kind:
            raise CoordinatorError(
                f"task {task_id!r} is a {task.kind} task, not {kind}", code="task_kind_mismatch"
            )
        if task.status != "pending":
            raise ConflictError(f"task {task_id!r} is {task.status}", code="task_closed")
        return task

    def _save(
        self,
        client: ClientRecord,
        task: TaskRecord,
        kind: str,
        document: Mapping[str, Any],
        version: str | None,
    ) -> ReportRecord:
        with self._lock, self._store.transaction():
            now = self._now()
            report = self._store.add_report(
                ReportRecord(0, kind, client.client_id, task.task_id, now, version, document)
            )
            complete_task(self._store, task.task_id, now)
        return report

    def submit_stats(self, client: ClientRecord, report: StatsReport) -> ReportRecord:
        task = self._task(client, report.task_id, "stats")
        document = report.stats.to_dict()
        if report.privacy is not None:
            document["privacy"] = report.privacy.to_dict()
        _check_stats(document, task)
        stored = self._save(client, task, "stats", document, task.model_version)
        manifest = self._registry.manifest(self._registry.get(task.model_version))
        self._alerts.statistics(report.stats, manifest, client_id=client.client_id)
        return stored

    def submit_evaluation(self, client: ClientRecord, report: EvalReport) -> ReportRecord:
        task = self._task(client, report.task_id, "evaluate")
        model = self._registry.get(task.model_version)
        _check_evaluation(report, task, self._registry.manifest(model).num_classes)
        stored = self._save(client, task, "evaluation", report.to_dict(), model.version)
        self._alerts.evaluation(report, client, model)
        if report.prediction_counts is not None or report.label_counts is not None:
            self._alerts.prediction_drift(model.version)
        return stored

    def submit_features(self, client: ClientRecord, batch: FeatureBatch) -> ReportRecord:
        task = self._task(client, batch.task_id, "features")
        _check_count(batch.embeddings.shape[0], task, "embedding rows")
        digest = self._artifacts.put_bytes(batch.embeddings.tobytes() + batch.labels.tobytes())
        rows, width = batch.embeddings.shape
        document: dict[str, Any] = {
            "sha256": digest,
            "rows": rows,
            "width": width,
            "dtype": "float32+int64",
        }
        if batch.privacy is not None:
            document["privacy"] = batch.privacy.to_dict()
        if batch.counts is not None:
            document["counts"] = list(batch.counts)
        return self._save(client, task, "features", document, task.model_version)

    def list_reports(
        self,
        kind: str | None = None,
        *,
        task_id: str | None = None,
        model_version: str | None = None,
    ) -> list[ReportRecord]:
        """Stored reports, oldest first; ``kind`` is a task kind (evaluate, stats, features)."""
        if kind is not None and kind not in REPORT_KINDS:
            raise CoordinatorError(
                f"unknown report kind {kind!r}; expected one of {sorted(REPORT_KINDS)}",
                code="invalid_query",
            )
        stored_kind = None if kind is None else REPORT_KINDS[kind]
        reports = self._store.list_reports(kind=stored_kind, model_version=model_version)
        return [r for r in reports if task_id is None or r.task_id == task_id]
