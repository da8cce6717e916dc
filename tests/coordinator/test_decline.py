"""A device declines a task it will not do (``POST /v1/tasks/{id}/decline``).

Without it a task the device's policy refuses stays pending: the coordinator hands it out
again and again, the device's later tasks wait behind it, and its round waits for it until
the deadline. Declined, the task is done with: the next task is handed out, a round that
waits for nobody else closes, and the reason is recorded as a ``task_declined`` rejection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from coordinator.auth import hash_token
from coordinator.errors import ConflictError, CoordinatorError, NotFoundError
from coordinator.records import TaskRecord
from coordinator.rest import ApiConfig, create_app
from coordinator.service import MAX_DECLINE_REASON, CoordinatorService
from tests.support.coordinator import (
    ADMIN_TOKEN,
    FakeClock,
    bearer,
    build_service,
    submission,
)


def _service(tmp_path: Path) -> tuple[CoordinatorService, FakeClock]:
    clock = FakeClock()
    service = build_service(
        tmp_path, clock=clock, continuous=False, clients_per_round=2, min_clients=1
    )
    return service, clock


def test_a_declined_task_lets_the_next_one_through(tmp_path: Path) -> None:
    service, clock = _service(tmp_path)
    client = service.store.get_client(service.register_client(region="north").client_id)
    assert client is not None
    first = service.create_tasks("stats", client_ids=[client.client_id])[0]
    clock.advance(1)
    second = service.create_tasks("evaluate", client_ids=[client.client_id])[0]
    assert service.next_task(client).task_id == first.task_id  # type: ignore[union-attr]
    declined = service.decline_task(client, first.task_id, "refused by the device policy")
    assert declined.status == "declined"
    assert service.next_task(client).task_id == second.task_id  # type: ignore[union-attr]
    rejections = service.store.rejection_counts()
    assert rejections == {"task_declined": 1}
    # a retry (the answer was lost) answers the same and records nothing more
    again = service.decline_task(client, first.task_id, "refused by the device policy")
    assert again.status == "declined"
    assert service.store.rejection_counts() == rejections


def test_a_declined_train_task_stops_its_round_waiting(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    ids = [service.register_client(region="north").client_id for _ in range(2)]
    round_ = service.open_round()
    assert round_.state == "collecting"
    honest, refusing = (service.store.get_client(c) for c in ids)
    assert honest is not None
    assert refusing is not None
    service.submit_update(honest, submission(round_.round_id, honest.client_id))
    assert service.get_round(round_.round_id).state == "collecting"  # waits for the other
    task = service.next_task(refusing)
    assert task is not None
    assert task.kind == "train"
    service.decline_task(refusing, task.task_id, "refused by the device policy (min_rows)")
    committed = service.get_round(round_.round_id)
    assert committed.state == "committed"  # closed at once, long before its deadline
    assert committed.result_version == "v2"


def test_declining_what_is_not_the_clients_pending_task_is_refused(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    ids = [service.register_client(region="north").client_id for _ in range(2)]
    owner, other = (service.store.get_client(c) for c in ids)
    assert owner is not None
    assert other is not None
    task = service.create_tasks("stats", client_ids=[owner.client_id])[0]
    with pytest.raises(NotFoundError, match="has no task") as foreign:
        service.decline_task(other, task.task_id, "no")
    assert foreign.value.code == "task_not_found"
    with pytest.raises(NotFoundError):
        service.decline_task(owner, "stats-nonexistent", "no")
    for reason in ("", "x" * (MAX_DECLINE_REASON + 1)):
        with pytest.raises(CoordinatorError, match="reason must be a text") as bad:
            service.decline_task(owner, task.task_id, reason)
        assert bad.value.code == "invalid_reason"
    service.store.save_task(_completed(service, task.task_id))
    with pytest.raises(ConflictError, match="only a pending task") as done:
        service.decline_task(owner, task.task_id, "no")
    assert done.value.code == "task_not_pending"
    assert service.store.rejection_counts() == {}  # nothing recorded by the refusals


def _completed(service: CoordinatorService, task_id: str) -> TaskRecord:
    task = service.store.get_task(task_id)
    assert task is not None
    return dataclasses.replace(task, status="completed", completed_at=service.now())


def _http(service: CoordinatorService) -> FlaskClient:
    return create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN))).test_client()


def test_the_rest_route_declines_and_refuses_what_it_must(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    registration = service.register_client(region="north")
    task = service.create_tasks("features", client_ids=[registration.client_id])[0]
    http = _http(service)
    path = f"/v1/tasks/{task.task_id}/decline"
    client_auth = bearer(registration.token)
    response = http.post(path, json={"reason": "refused by the device policy"}, headers=client_auth)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"task_id": task.task_id, "status": "declined"}
    refused = {
        "no reason": (http.post(path, json={}, headers=client_auth), 400),
        "a number": (http.post(path, json={"reason": 3}, headers=client_auth), 400),
        "unknown key": (http.post(path, json={"reason": "x", "rows": 1}, headers=client_auth), 400),
        "not JSON": (http.post(path, data=b"x", headers=client_auth), 415),
        "admin token": (http.post(path, json={"reason": "x"}, headers=bearer(ADMIN_TOKEN)), 403),
        "no token": (http.post(path, json={"reason": "x"}), 401),
        "unknown task": (
            http.post("/v1/tasks/stats-0/decline", json={"reason": "x"}, headers=client_auth),
            404,
        ),
    }
    for name, (answer, status) in refused.items():
        assert answer.status_code == status, (name, answer.get_json())
    assert service.store.get_task(task.task_id).status == "declined"  # type: ignore[union-attr]
