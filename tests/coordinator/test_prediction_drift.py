"""Prediction and label drift between model versions from the devices' evaluation reports:
summed per version, compared with the previous version (L-infinity), shown in the model's
document and by ``models predictions``, alerted over the service's threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.cli import main
from coordinator.config import AlertConfig
from coordinator.predictions import linf_distance
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from fedge.messages import EvalReport, PrivacyNote
from tests.support.coordinator import ADMIN_TOKEN, bearer, build_service, make_bundle

THRESHOLD = 0.2
MIN_EXAMPLES = 50


@pytest.fixture
def world(tmp_path: Path) -> tuple[FlaskClient, CoordinatorService]:
    alerts = AlertConfig(
        prediction_drift_threshold=THRESHOLD, prediction_drift_min_examples=MIN_EXAMPLES
    )
    service = build_service(tmp_path, continuous=False, alerts=alerts)
    app = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    return app.test_client(), service


def _device(http: FlaskClient) -> str:
    response = http.post("/v1/clients", json={"region": "north"})
    assert response.status_code == 201
    token: str = response.get_json()["token"]
    return token


def _evaluate(
    http: FlaskClient,
    service: CoordinatorService,
    token: str,
    predictions: list[int] | None,
    labels: list[int] | None,
    *,
    privacy: PrivacyNote | None = None,
) -> Any:
    """POST an evaluation of the production version with these class counts."""
    client = service.authenticate(token)
    (task,) = service.create_tasks("evaluate", client_ids=[client.client_id])
    examples = sum(labels or predictions or [0])
    report = EvalReport(
        task.task_id,
        task.model_version,
        examples,
        {"accuracy": 0.8},
        prediction_counts=None if predictions is None else tuple(predictions),
        label_counts=None if labels is None else tuple(labels),
        privacy=privacy,
    )
    return http.post("/v1/evaluations", json=report.to_dict(), headers=bearer(token))


def _second_version(service: CoordinatorService, tmp_path: Path) -> str:
    """Import a second bundle and promote it, so that new evaluation tasks are of it."""
    make_bundle(tmp_path / "bundle-2", seed=1, model_version="taxi-20240601")
    model = service.import_bundle(tmp_path / "bundle-2")
    service.promote(model.version)
    return model.version


def _model(http: FlaskClient, version: str) -> dict[str, Any]:
    response = http.get(f"/v1/models/{version}", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200, response.get_json()
    document: dict[str, Any] = response.get_json()
    return document


def _alerts(http: FlaskClient) -> list[dict[str, Any]]:
    response = http.get("/v1/alerts?kind=prediction_drift", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 200
    alerts: list[dict[str, Any]] = response.get_json()["alerts"]
    return alerts


def test_linf_distance_is_the_largest_gap_of_the_normalised_counts() -> None:
    assert linf_distance([60, 40, 0], [90, 10, 0]) == pytest.approx(0.3)
    assert linf_distance([1, 1], [2, 2]) == pytest.approx(0.0)
    assert linf_distance([5, 5], [10, 0, 10]) == pytest.approx(0.5)  # padded with zeros
    assert linf_distance([0, 0], [3, 1]) is None


def test_prediction_drift_between_versions_is_documented_and_alerted_once(
    world: tuple[FlaskClient, CoordinatorService], tmp_path: Path
) -> None:
    http, service = world
    north, south = _device(http), _device(http)
    for token in (north, south):
        assert _evaluate(http, service, token, [30, 20, 0], [25, 25, 0]).status_code == 201
    first = _model(http, "v1")["predictions"]
    assert first["distribution"]["prediction_counts"] == [60, 40, 0]
    assert first["distribution"]["label_counts"] == [50, 50, 0]
    assert first["distribution"]["reports"] == 2
    assert first["compared_with"] is None
    assert (first["prediction_drift"], first["drifted"]) == (None, False)

    second = _second_version(service, tmp_path)
    for token in (north, south):
        assert _evaluate(http, service, token, [45, 5, 0], [26, 24, 0]).status_code == 201
    section = _model(http, second)["predictions"]
    assert section["compared_with"] == "v1"
    assert section["distribution"]["prediction_distribution"] == pytest.approx([0.9, 0.1, 0.0])
    assert section["prediction_drift"] == pytest.approx(0.9 - 0.6)
    assert section["label_drift"] == pytest.approx(0.52 - 0.5)
    assert (section["threshold"], section["min_examples"]) == (THRESHOLD, MIN_EXAMPLES)
    assert section["drifted"] is True
    (alert,) = _alerts(http)
    assert alert["model_version"] == second
    assert alert["details"]["compared_with"] == "v1"
    assert alert["details"]["prediction_drift"] == pytest.approx(0.3)
    assert "predictions 0.300" in alert["message"]
    assert "labels" not in alert["message"]  # 0.02 is under the threshold

    # Another drifted report of the same version raises no second alert.
    assert _evaluate(http, service, north, [45, 5, 0], [25, 25, 0]).status_code == 201
    assert len(_alerts(http)) == 1


def test_label_drift_alone_is_alerted_too(
    world: tuple[FlaskClient, CoordinatorService], tmp_path: Path
) -> None:
    http, service = world
    token = _device(http)
    assert _evaluate(http, service, token, [50, 50, 0], [50, 50, 0]).status_code == 201
    second = _second_version(service, tmp_path)
    assert _evaluate(http, service, token, [50, 50, 0], [20, 80, 0]).status_code == 201
    (alert,) = _alerts(http)
    assert alert["model_version"] == second
    assert alert["details"]["label_drift"] == pytest.approx(0.3)
    assert alert["details"]["prediction_drift"] == pytest.approx(0.0)


def test_no_alert_under_the_threshold_or_below_the_minimum_rows(
    world: tuple[FlaskClient, CoordinatorService], tmp_path: Path
) -> None:
    http, service = world
    token = _device(http)
    assert _evaluate(http, service, token, [60, 40, 0], [50, 50, 0]).status_code == 201
    second = _second_version(service, tmp_path)
    assert _evaluate(http, service, token, [10, 0, 0], [5, 5, 0]).status_code == 201
    few = _model(http, second)["predictions"]
    assert few["prediction_drift"] == pytest.approx(0.4)  # over the threshold, on 10 rows
    assert few["drifted"] is False
    # 10 + 30 rows: enough rows now, and the distance (0.15) is under the threshold.
    assert _evaluate(http, service, token, [20, 10, 0], [15, 15, 0]).status_code == 201
    enough = _model(http, second)["predictions"]
    assert enough["distribution"]["prediction_counts"] == [30, 10, 0]
    assert enough["prediction_drift"] == pytest.approx(0.75 - 0.6)
    assert enough["drifted"] is False
    assert _alerts(http) == []


def test_an_old_report_without_counts_is_accepted_and_counts_nothing(
    world: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = world
    token = _device(http)
    posted = _evaluate(http, service, token, None, None)
    assert posted.status_code == 201, posted.get_json()
    (stored,) = service.list_reports("evaluate")
    assert "prediction_counts" not in stored.document
    assert _model(http, "v1")["predictions"]["distribution"] is None
    noted = _evaluate(
        http,
        service,
        token,
        [10, 0, 30],
        [20, 0, 20],
        privacy=PrivacyNote("gaussian", 0.5, 1e-6, "statistics"),
    )
    assert noted.status_code == 201
    listed = http.get("/v1/reports?kind=evaluate", headers=bearer(ADMIN_TOKEN)).get_json()
    assert listed["reports"][1]["document"]["privacy"]["epsilon"] == 0.5
    assert _model(http, "v1")["predictions"]["distribution"]["reports"] == 1


def test_counts_of_another_number_of_classes_are_refused(
    world: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = world
    token = _device(http)
    refused = _evaluate(http, service, token, [30, 20], [25, 25])
    assert refused.status_code == 400
    body = refused.get_json()
    assert body["error"] == "invalid_report"
    assert "3 classes" in body["detail"]
    assert service.list_reports("evaluate") == []
    mismatched = http.post(
        "/v1/evaluations",
        json={**EvalReport("t-x", "v1", 1, {}).to_dict(), "prediction_counts": [1, 2, 3],
              "label_counts": [1, 2]},
        headers=bearer(token),
    )  # fmt: skip
    assert mismatched.status_code == 400
    assert "one count per class in both" in mismatched.get_json()["detail"]


def test_models_predictions_prints_every_version_from_the_database(
    world: tuple[FlaskClient, CoordinatorService],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    http, service = world
    token = _device(http)
    assert _evaluate(http, service, token, [60, 40, 0], [50, 50, 0]).status_code == 201
    second = _second_version(service, tmp_path)
    assert _evaluate(http, service, token, [90, 10, 0], [50, 50, 0]).status_code == 201
    target = ["--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")]
    assert main(["models", "predictions", *target, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["version"] for entry in listed] == ["v1", second]
    assert listed[1]["predictions"]["prediction_drift"] == pytest.approx(0.3)
    assert main(["models", "predictions", second, *target]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "version", "stage", "reports", "predictions", "labels", "compared_with",
        "prediction_drift", "label_drift", "drifted",
    ]  # fmt: skip
    # On the database directly the default thresholds apply (0.1, 100 rows): drifted.
    assert table[1].split() == [
        second, "production", "1", "0.900", "0.100", "0.000", "0.500", "0.500", "0.000",
        "v1", "0.3000", "0.0000", "yes",
    ]  # fmt: skip
