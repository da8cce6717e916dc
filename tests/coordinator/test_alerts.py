"""Alerts (failed rounds, rejection bursts, accuracy drops, drift), reports and metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from coordinator.alerts import population_stability_index
from coordinator.config import AlertConfig
from coordinator.errors import ConflictError, CoordinatorError, PermissionDeniedError
from coordinator.metrics import render_metrics
from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from fedge.messages import EvalReport, FeatureBatch, StatsReport
from tests.support.coordinator import (
    FakeClock,
    build_service,
    make_bundle,
    submission,
    training_stats,
)


def _client(service: CoordinatorService, region: str | None = "north") -> ClientRecord:
    return service.authenticate(service.register_client(region=region).token)


def _task_id(service: CoordinatorService, client: ClientRecord, kind: str) -> str:
    (task,) = service.create_tasks(kind, client_ids=[client.client_id])
    polled = service.next_task(client)
    assert polled is not None
    assert polled.task_id == task.task_id
    return task.task_id


def test_psi_is_zero_for_equal_distributions_and_grows_with_shift() -> None:
    assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small = population_stability_index([50, 50], [55, 45])
    large = population_stability_index([50, 50], [90, 10])
    assert 0 < small < 0.05 < large
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert large == pytest.approx(expected)


def test_stats_report_from_shifted_data_raises_a_drift_alert(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    client = _client(service)
    report = StatsReport(_task_id(service, client, "stats"), training_stats(9, fare_mean=25.0))
    stored = service.submit_stats(client, report)
    assert stored.kind == "stats"
    (alert,) = service.store.list_alerts(kind="data_drift")
    assert "fare" in alert.details["columns"]
    assert alert.details["columns"]["fare"]["mean_shift"] > 5
    assert "miles" not in alert.details["columns"]
    assert service.store.get_task(report.task_id).status == "completed"  # type: ignore[union-attr]


def test_stats_report_like_the_training_data_raises_nothing(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    client = _client(service)
    report = StatsReport(_task_id(service, client, "stats"), training_stats(11))
    service.submit_stats(client, report)
    assert service.store.list_alerts(kind="data_drift") == []


def test_eval_report_below_the_region_reference_raises_accuracy_drop(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    client = _client(service, region="south")
    report = EvalReport(
        task_id=_task_id(service, client, "evaluate"),
        model_version="v1",
        num_examples=200,
        metrics={"accuracy": 0.6},
        slice_metrics={"north": {"accuracy": 0.81}},
    )
    service.submit_evaluation(client, report)
    (alert,) = service.store.list_alerts(kind="accuracy_drop")
    assert alert.details["region"] == "south"
    assert alert.details["reference"] == pytest.approx(0.78)
    assert alert.model_version == "v1"


def test_report_for_another_clients_task_is_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    owner, other = _client(service), _client(service)
    task_id = _task_id(service, owner, "stats")
    with pytest.raises(PermissionDeniedError, match="another client"):
        service.submit_stats(other, StatsReport(task_id, training_stats(1)))
    with pytest.raises(CoordinatorError, match="is a stats task, not evaluate"):
        service.submit_evaluation(owner, EvalReport(task_id, "v1", 1, {"accuracy": 1.0}))


def test_features_are_stored_as_an_artifact_and_the_task_closes(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    client = _client(service)
    task_id = _task_id(service, client, "features")
    batch = FeatureBatch(task_id, np.ones((3, 4), np.float32), np.array([0, 1, 2]))
    stored = service.submit_features(client, batch)
    assert (stored.document["rows"], stored.document["width"]) == (3, 4)
    assert service.artifacts.exists(stored.document["sha256"])
    with pytest.raises(ConflictError, match="is completed"):
        service.submit_features(client, batch)


def test_a_burst_of_rejections_raises_one_alert_per_window(tmp_path: Path) -> None:
    clock = FakeClock()
    service = build_service(
        tmp_path, clock=clock, clients_per_round=2, min_clients=2,
        alerts=AlertConfig(rejection_burst_threshold=3, rejection_burst_window_seconds=60),
    )  # fmt: skip
    client = _client(service)
    _client(service)
    for i in range(5):
        with pytest.raises(CoordinatorError):
            service.submit_update(client, submission(1, client.client_id, num_examples=0))
        clock.advance(1 if i < 4 else 0)
    assert len(service.store.list_alerts(kind="rejection_burst")) == 1
    clock.advance(120)
    for _ in range(3):
        with pytest.raises(CoordinatorError):
            service.submit_update(client, submission(1, client.client_id, num_examples=0))
    assert len(service.store.list_alerts(kind="rejection_burst")) == 2


def test_metrics_expose_rounds_updates_rejections_clients_and_version(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2)
    a, b = _client(service), _client(service)
    with pytest.raises(CoordinatorError):
        service.submit_update(a, submission(1, a.client_id, num_examples=0))
    for client in (a, b):
        service.submit_update(client, submission(1, client.client_id))
    text = render_metrics(service.store)
    assert 'fedge_rounds{state="committed"} 1' in text
    assert 'fedge_rounds{state="collecting"} 1' in text
    assert "fedge_updates_accepted_total 2" in text
    assert 'fedge_updates_rejected_total{reason="invalid_num_examples"} 1' in text
    assert "fedge_clients_registered 2" in text
    assert 'fedge_current_model_info{version="v2"} 1' in text
    assert "# TYPE fedge_updates_accepted_total counter" in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2, line


def test_accuracy_drop_understands_the_trainers_slice_and_metric_names(tmp_path: Path) -> None:
    """cloud_trainer records slices as "<column>=<value>" and held-out "test_accuracy"."""
    make_bundle(
        tmp_path / "bundle",
        metadata={
            "training_record": {
                "host": "h", "user": "u", "training_job": "",
                "metrics": {"test_accuracy": 0.9, "test_auc": None},
                "slice_metrics": {"area=east": {"test_accuracy": 0.95}},
            }
        },
    )  # fmt: skip
    service = build_service(tmp_path, clients_per_round=5, min_clients=5)
    assert service.get_model("v1").training_job is None
    client = _client(service, region="east")
    report = EvalReport(_task_id(service, client, "evaluate"), "v1", 50, {"accuracy": 0.8})
    service.submit_evaluation(client, report)
    (alert,) = service.store.list_alerts(kind="accuracy_drop")
    assert alert.details["reference"] == pytest.approx(0.95)
    assert alert.details["region"] == "east"
