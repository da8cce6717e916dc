"""GET /v1/reports: the admin's listing of the reports clients sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from fedge.messages import EvalReport, FeatureBatch, StatsReport, encode_message
from tests.support.coordinator import ADMIN_TOKEN, bearer, build_service, training_stats


@pytest.fixture
def http_service(tmp_path: Path) -> tuple[FlaskClient, CoordinatorService]:
    service = build_service(tmp_path, continuous=False)
    app = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    return app.test_client(), service


def _client_token(http: FlaskClient) -> str:
    response = http.post("/v1/clients", json={"region": "north"})
    assert response.status_code == 201
    token: str = response.get_json()["token"]
    return token


def _post_evaluation(http: FlaskClient, service: CoordinatorService, token: str) -> EvalReport:
    client = service.authenticate(token)
    (task,) = service.create_tasks("evaluate", client_ids=[client.client_id])
    report = EvalReport(task.task_id, "v1", 40, {"accuracy": 0.75}, {"accuracy": 0.8})
    posted = http.post("/v1/evaluations", json=report.to_dict(), headers=bearer(token))
    assert posted.status_code == 201, posted.get_json()
    return report


def test_admin_lists_an_evaluation_report_by_kind_and_model_version(
    http_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = http_service
    token = _client_token(http)
    report = _post_evaluation(http, service, token)
    client_id = service.authenticate(token).client_id
    listed = http.get("/v1/reports?kind=evaluate&model_version=v1", headers=bearer(ADMIN_TOKEN))
    assert listed.status_code == 200
    (entry,) = listed.get_json()["reports"]
    assert (entry["task_id"], entry["kind"], entry["client_id"]) == (
        report.task_id,
        "evaluation",
        client_id,
    )
    assert entry["model_version"] == "v1"
    assert isinstance(entry["received_at"], str)
    assert entry["document"] == encode_message(report)[0]
    other_version = http.get("/v1/reports?model_version=v9", headers=bearer(ADMIN_TOKEN))
    assert other_version.get_json()["reports"] == []
    stats_only = http.get("/v1/reports?kind=stats", headers=bearer(ADMIN_TOKEN))
    assert stats_only.get_json()["reports"] == []


def test_stats_and_feature_reports_are_listed_without_embeddings(
    http_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, service = http_service
    token = _client_token(http)
    client = service.authenticate(token)
    stats_task, features_task = (
        service.create_tasks(kind, client_ids=[client.client_id])[0]
        for kind in ("stats", "features")
    )
    stats = StatsReport(stats_task.task_id, training_stats(4))
    assert http.post("/v1/stats", json=stats.to_dict(), headers=bearer(token)).status_code == 201
    batch = FeatureBatch(
        features_task.task_id, np.ones((3, 5), dtype=np.float32), np.array([0, 1, 0])
    )
    posted = http.post("/v1/features", json=batch.to_dict(), headers=bearer(token))
    assert posted.status_code == 201, posted.get_json()
    listed = http.get("/v1/reports", headers=bearer(ADMIN_TOKEN)).get_json()["reports"]
    assert [r["kind"] for r in listed] == ["stats", "features"]
    assert listed[0]["document"] == encode_message(stats)[0]
    features = listed[1]["document"]
    assert (features["num_rows"], features["dim"]) == (3, 5)
    assert "embeddings" not in features


def test_report_listing_needs_the_admin_token(
    http_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, _ = http_service
    token = _client_token(http)
    missing = http.get("/v1/reports")
    assert (missing.status_code, missing.get_json()["error"]) == (401, "missing_token")
    as_client = http.get("/v1/reports", headers=bearer(token))
    assert as_client.status_code == 403


def test_unknown_report_kind_is_a_400_json_error(
    http_service: tuple[FlaskClient, CoordinatorService],
) -> None:
    http, _ = http_service
    response = http.get("/v1/reports?kind=gossip", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 400
    document = response.get_json()
    assert document["error"] == "invalid_query"
    assert "gossip" in document["detail"]
