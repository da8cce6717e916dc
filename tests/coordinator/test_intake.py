"""Update intake: every check, its code, the rejection record, and idempotent retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.errors import describe
from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from fedge.errors import FedgeError
from fedge.weights import Weights
from tests.support.coordinator import HEAD_SHAPES, build_service, delta, submission


@pytest.fixture
def setup(tmp_path: Path) -> tuple[CoordinatorService, list[ClientRecord], ClientRecord]:
    """A collecting round 1 with clients a, b selected and a fourth, unselected client."""
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=2, norm_bound=5.0, max_examples=1000
    )
    clients = [service.authenticate(service.register_client().token) for _ in range(3)]
    outsider = service.authenticate(service.register_client().token)
    return service, clients, outsider


def _body(tensors: dict[str, Any]) -> bytes:
    return Weights(tensors).to_bytes()


def _good() -> dict[str, Any]:
    return {name: np.zeros(shape, np.float32) for name, shape in HEAD_SHAPES.items()}


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("nan", {"body": _body({**_good(), "head/bias": np.array([np.nan, 0, 0])})}, 422, "non_finite"),
    ("inf", {"body": _body({**_good(), "head/bias": np.array([np.inf, 0, 0])})}, 422, "non_finite"),
    ("shape", {"body": _body({**_good(), "head/bias": np.zeros(4)})}, 422, "shape_mismatch"),
    ("unknown", {"body": _body({**_good(), "extra": np.zeros(1)})}, 422, "unknown_tensor"),
    ("missing", {"body": _body({"head/bias": np.zeros(3)})}, 422, "missing_tensor"),
    ("norm", {"body": _body({**_good(), "head/bias": np.full(3, 10.0)})}, 422, "norm_exceeded"),
    ("garbage", {"body": b"\x00garbage-bytes"}, 400, "malformed_weights"),
    ("empty", {"body": b""}, 400, "malformed_weights"),
    ("truncated", {"body": delta(1).to_bytes()[:-7]}, 400, "malformed_weights"),
    ("zero", {"num_examples": 0}, 422, "invalid_num_examples"),
    ("huge", {"num_examples": 10**9}, 422, "invalid_num_examples"),
    ("no key", {"key": ""}, 400, "missing_idempotency_key"),
    ("bad key", {"key": "bad key!"}, 400, "invalid_idempotency_key"),
    ("nan metric", {"metrics": {"loss": float("nan")}}, 400, "bad_message"),
    ("huge metric", {"metrics": {"loss": 1e308}, "num_examples": 1000}, 422, "invalid_metrics"),
    ("accuracy over 1", {"metrics": {"accuracy": 1.5}}, 422, "invalid_metrics"),
    ("no round", {"round_id": 99}, 404, "round_not_found"),
    ("no task", {"task_id": "r1-nobody"}, 404, "task_not_found"),
]


@pytest.mark.parametrize(("name", "changes", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_update_is_rejected_with_its_code_and_recorded(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
    name: str,
    changes: dict[str, Any],
    status: int,
    code: str,
) -> None:
    service, clients, _ = setup
    before = service.get_model("current").artifacts["weights.safetensors"]
    changes = dict(changes)
    round_id = changes.pop("round_id", 1)
    with pytest.raises(FedgeError) as info:
        service.submit_update(clients[0], submission(round_id, clients[0].client_id, **changes))
    assert describe(info.value) == (status, code), str(info.value)
    assert str(info.value)
    assert service.store.rejection_counts() == {code: 1}
    assert service.round_updates(1) == []
    assert service.get_model("current").artifacts["weights.safetensors"] == before


def test_unselected_client_is_refused(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, _, outsider = setup
    with pytest.raises(FedgeError, match="not selected for round 1") as info:
        service.submit_update(outsider, submission(1, outsider.client_id))
    assert describe(info.value) == (403, "not_assigned")


def test_another_clients_task_is_refused(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, (a, b, _), _ = setup
    with pytest.raises(FedgeError, match="assigned to another client") as info:
        service.submit_update(a, submission(1, a.client_id, task_id=f"r1-{b.client_id}"))
    assert describe(info.value) == (403, "task_not_assigned")


def test_retry_with_the_same_key_is_counted_once(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, (a, _, _), _ = setup
    first = service.submit_update(a, submission(1, a.client_id, key="retry-key-1"))
    again = service.submit_update(a, submission(1, a.client_id, key="retry-key-1"))
    assert not first.duplicate
    assert again.duplicate
    assert again.sha256 == first.sha256
    assert len(service.round_updates(1)) == 1


def test_reusing_a_key_for_a_different_update_conflicts(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, (a, _, _), _ = setup
    service.submit_update(a, submission(1, a.client_id, key="retry-key-1", seed=1))
    with pytest.raises(FedgeError, match="already used for a different update") as info:
        service.submit_update(a, submission(1, a.client_id, key="retry-key-1", seed=2))
    assert describe(info.value) == (409, "idempotency_conflict")
    assert len(service.round_updates(1)) == 1


def test_second_update_with_a_new_key_conflicts(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, (a, _, _), _ = setup
    service.submit_update(a, submission(1, a.client_id, key="first-key-1"))
    with pytest.raises(FedgeError, match="already submitted an update") as info:
        service.submit_update(a, submission(1, a.client_id, key="second-key-2", seed=3))
    assert describe(info.value) == (409, "duplicate_update")


def test_retry_after_commit_still_gets_its_receipt(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, clients, _ = setup
    for client in clients:
        service.submit_update(client, submission(1, client.client_id))
    assert service.get_round(1).state == "committed"
    again = service.submit_update(clients[0], submission(1, clients[0].client_id))
    assert again.duplicate
    assert service.get_model("v2").participants == 3


def test_update_to_a_committed_round_is_a_conflict(
    setup: tuple[CoordinatorService, list[ClientRecord], ClientRecord],
) -> None:
    service, clients, _ = setup
    for client in clients:
        service.submit_update(client, submission(1, client.client_id))
    with pytest.raises(FedgeError, match="round 1 is closed") as info:
        service.submit_update(clients[0], submission(1, clients[0].client_id, key="late-key-1"))
    assert describe(info.value) == (409, "round_closed")
