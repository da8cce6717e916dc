"""coordinator.client.AdminClient against the REST app served by waitress on loopback:
every admin call, and every failure as the coordinator error of its status."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from coordinator.auth import hash_token
from coordinator.client import AdminClient, is_healthy
from coordinator.errors import (
    AuthenticationError,
    ConflictError,
    CoordinatorError,
    CoordinatorUnavailableError,
    NotFoundError,
    PermissionDeniedError,
)
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from fedge.messages import EvalReport
from tests.support.coordinator import ADMIN_TOKEN, build_service, serving_in_thread, submission


@dataclass(frozen=True)
class Served:
    url: str
    service: CoordinatorService
    device_token: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """On-demand rounds of two clients; round 1 committed v2 as a candidate."""
    service = build_service(tmp_path, continuous=False, auto_promote=False, min_clients=2,
                            clients_per_round=2)  # fmt: skip
    tokens = [service.register_client(region="north").token for _ in range(2)]
    round_ = service.open_round()
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(1, client_id, seed=i))
    app = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN)))
    with serving_in_thread(app) as url:
        yield Served(url, service, tokens[0])


def test_models_list_show_promote_rollback(served: Served) -> None:
    with AdminClient(served.url, ADMIN_TOKEN) as admin:
        models = admin.list_models()
        assert [(m["version"], m["stage"]) for m in models] == [
            ("v1", "production"),
            ("v2", "candidate"),
        ]
        assert admin.show_model("v2")["parent"] == "v1"
        assert admin.promote("v2")["stage"] == "production"
        assert admin.show_model("current")["version"] == "v2"
        rolled_back = admin.rollback()
        assert rolled_back["version"] == "v1"
        assert [e["kind"] for e in rolled_back["events"]] == [
            "registered",
            "promoted",
            "rolled_back",
        ]
        assert admin.health() == {
            "status": "ok",
            "model_version": "v1",
            "checks": {"store": "ok", "artifacts": "ok"},
        }


def test_rounds_clients_and_tasks(served: Served) -> None:
    with AdminClient(served.url, ADMIN_TOKEN) as admin:
        (listed,) = admin.list_rounds()
        assert (listed["round_id"], listed["state"], listed["num_updates"]) == (1, "committed", 2)
        assert len(admin.show_round(1)["updates"]) == 2
        opened = admin.open_round({"epochs": 3})
        assert (opened["round_id"], opened["config"]["epochs"]) == (2, 3)
        clients = admin.list_clients()
        assert {c["region"] for c in clients} == {"north"}
        first = clients[0]["client_id"]
        tasks = admin.create_tasks(
            "evaluate", client_ids=[first], deadline_seconds=60, config={"epochs": 1,
            "batch_size": 8, "learning_rate": 0.1},
        )  # fmt: skip
        assert [(t["kind"], t["client_id"]) for t in tasks] == [("evaluate", first)]


def test_reports_and_alerts_with_their_filters(served: Served) -> None:
    service = served.service
    client = service.authenticate(served.device_token)
    (task,) = service.create_tasks("evaluate", client_ids=[client.client_id])
    service.submit_evaluation(client, EvalReport(task.task_id, "v1", 40, {"accuracy": 0.7}))
    with AdminClient(served.url, ADMIN_TOKEN) as admin:
        (report,) = admin.list_reports("evaluate", model_version="v1")
        assert (report["task_id"], report["kind"]) == (task.task_id, "evaluation")
        assert admin.list_reports(task_id="no-such-task") == []
        assert admin.list_reports("stats") == []
        assert admin.list_alerts(since=2e9) == []
        assert isinstance(admin.list_alerts("data_drift"), list)


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        (lambda admin: admin.show_model("v9"), NotFoundError, "model_not_found"),
        (lambda admin: admin.show_round(7), NotFoundError, "round_not_found"),
        (lambda admin: admin.rollback(), ConflictError, None),
        (lambda admin: admin.create_tasks("gossip"), CoordinatorError, None),
        (lambda admin: admin.list_reports("gossip"), CoordinatorError, "invalid_query"),
    ],
)
def test_refusals_are_the_coordinator_errors_of_their_status(
    served: Served, call: object, error: type[CoordinatorError], code: str | None
) -> None:
    with AdminClient(served.url, ADMIN_TOKEN) as admin, pytest.raises(error) as caught:
        call(admin)  # type: ignore[operator]
    assert type(caught.value) is error
    assert str(caught.value).startswith(f"HTTP {error.status} ")
    if code is not None:
        assert caught.value.code == code


def test_tokens_that_are_not_the_admins_are_refused(served: Served) -> None:
    unknown_token = AdminClient(served.url, "not-the-admin-token-0000")
    with unknown_token as admin, pytest.raises(AuthenticationError) as unknown:
        admin.list_models()
    assert unknown.value.code == "invalid_token"
    device_token = AdminClient(served.url, served.device_token)
    with device_token as admin, pytest.raises(PermissionDeniedError) as device:
        admin.list_models()
    assert device.value.code == "admin_required"


def test_an_unreachable_coordinator_is_unavailable_with_the_cause_chained() -> None:
    nowhere = AdminClient("http://127.0.0.1:9", ADMIN_TOKEN, timeout=2)
    with nowhere as admin, pytest.raises(CoordinatorUnavailableError) as caught:
        admin.list_models()
    assert str(caught.value).startswith("cannot reach http://127.0.0.1:9 (GET /v1/models)")
    assert caught.value.code == "unreachable"
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert not is_healthy("http://127.0.0.1:9", timeout=2)


class _NotACoordinator(http.server.BaseHTTPRequestHandler):
    """Answers 500 on /broken and a 200 that is not JSON elsewhere."""

    def do_GET(self) -> None:
        status, body = (500, b"boom") if self.path == "/broken" else (200, b"<html></html>")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_a_coordinator() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotACoordinator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_server_errors_and_answers_that_are_not_json(not_a_coordinator: str) -> None:
    with AdminClient(not_a_coordinator, ADMIN_TOKEN) as admin:
        with pytest.raises(CoordinatorUnavailableError, match="HTTP 500 error: boom"):
            admin.call("GET", "/broken")
        with pytest.raises(CoordinatorError, match="the answer is not JSON") as caught:
            admin.list_models()
    assert caught.value.code == "bad_response"
