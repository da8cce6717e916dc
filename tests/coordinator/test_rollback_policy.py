"""The rollback policy: an ``accuracy_drop`` alert for the production version rolls
production back to the previous version when ``rollback_on_accuracy_drop`` is on.

Acceptance (real server): a coordinator (``fedge-coordinator serve``) on loopback; four
devices (two in ``north``, two in ``south``) register, poll and reply through the edge
client's REST client; a round of the four commits v2 (promoted over v1); then the ``south``
devices' data shifts (fares far above the training range), their evaluation reports of v2
fire ``accuracy_drop`` for ``south``, and with the policy on production is v1 again (the
alert and the ``rolled_back`` event name each other); with it off production stays v2.

Then the policy's rules on an in-process service: the evidence it waits for
(``rollback_min_clients``), the rounds on the old version it fails, and a production
version with nothing to roll back to."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from coordinator.config import AlertConfig
from edge_client.api import connect
from edge_client.transport import CoordinatorClient, reply_request
from fedge.bundle import WEIGHTS_FILE
from fedge.messages import EvalReport, ModelUpdate, Reply, Task
from fedge.weights import Weights
from tests.support.coordinator import (
    FEATURE_SPEC,
    FakeClock,
    admin_client,
    build_service,
    head_weights,
    local_training,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)

ROWS = 200
THRESHOLD = 0.2
FARE_SHIFT = 30.0
"""Fifteen training standard deviations: the shifted region's rows look nothing like the
training data, while their labels keep the clean relationship."""


def _columns(rng: np.random.Generator) -> dict[str, NDArray[Any]]:
    return {
        "fare": rng.normal(10.0, 2.0, ROWS),
        "miles": rng.normal(3.0, 1.0, ROWS),
        "company": rng.choice(np.array(["a", "b"], dtype=object), ROWS),
    }


def _logits(weights: Weights, columns: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
    x = FEATURE_SPEC.transform(columns)
    return np.asarray(x @ weights["head/kernel"] + weights["head/bias"], np.float32)


def _accuracy(weights: Weights, columns: Mapping[str, NDArray[Any]], labels: NDArray[Any]) -> float:
    return float(np.mean(np.argmax(_logits(weights, columns), axis=1) == labels))


class Device:
    """A device of one region: its rows, labelled by the clean relationship (v1's head on
    the unshifted rows), registered and answering through the edge client's REST client."""

    def __init__(self, url: str, region: str, seed: int) -> None:
        self.region = region
        self.seed = seed
        self.columns = _columns(np.random.default_rng(seed))
        self.labels = np.argmax(_logits(head_weights(0), self.columns), axis=1)
        client = connect(url)
        assert isinstance(client, CoordinatorClient)
        self.client = client
        self.client.token = client.register(region=region).token
        self.answered: list[str] = []

    def shift(self) -> None:
        self.columns = {**self.columns, "fare": self.columns["fare"] + FARE_SHIFT}

    def weights(self, version: str) -> Weights:
        response = self.client.download(version, WEIGHTS_FILE)
        assert response.status == 200
        return Weights.from_bytes(response.body)

    def answer_next(self) -> bool:
        """Poll once; answer a task if one came (True)."""
        task = self.client.next_task().task
        if task is None:
            return False
        self.client.send(reply_request(self._work(task), str(uuid.uuid4())))
        self.answered.append(task.kind)
        return True

    def _work(self, task: Task) -> Reply:
        base = self.weights(task.model_version)
        if task.kind == "train":
            assert task.round_id is not None
            trained = local_training(base, self.seed)
            metrics = {"accuracy": _accuracy(trained, self.columns, self.labels)}
            return ModelUpdate(task.task_id, task.round_id, ROWS, metrics, trained.delta(base))
        assert task.kind == "evaluate", task.kind
        metrics = {"accuracy": _accuracy(base, self.columns, self.labels)}
        return EvalReport(task.task_id, task.model_version, ROWS, metrics)


@pytest.fixture(params=[True, False], ids=["policy-on", "policy-off"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, list[Device]]]:
    make_bundle(tmp_path / "bundle")
    policy = ["--rollback-on-accuracy-drop"] if request.param else []
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--on-demand", "--auto-promote", "--clients-per-round", "4", "--min-clients", "4",
        "--deadline-seconds", "120", "--retry-after", "1",
        "--accuracy-drop-threshold", str(THRESHOLD), *policy,
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        regions = ("north", "north", "south", "south")
        devices = [Device(server.url, region, seed) for seed, region in enumerate(regions, 1)]
        yield server.url, devices
    finally:
        stop_server(server)


def _answer_all(devices: list[Device], kind: str) -> None:
    for device in devices:
        wait_for(lambda d=device: d.answer_next(), timeout=30)
        assert device.answered[-1] == kind


def test_a_regional_accuracy_drop_rolls_production_back_when_the_policy_says_so(
    fleet: tuple[str, list[Device]], request: pytest.FixtureRequest
) -> None:
    policy_on = "policy-on" in request.node.callspec.id
    url, devices = fleet
    with admin_client(url) as admin:
        round_id = admin.open_round()["round_id"]
        _answer_all(devices, "train")
        committed = wait_for(
            lambda: (r := admin.show_round(round_id))["state"] == "committed" and r, timeout=30
        )
        assert committed["result_version"] == "v2"
        v2 = admin.show_model("current")
        assert (v2["version"], v2["parent"]) == ("v2", "v1")
        reference = v2["slice_metrics"]["south"]["accuracy"]
        assert reference > 0.8  # the clean data agrees with the model

        south = [d for d in devices if d.region == "south"]
        for device in south:
            device.shift()
            shifted = _accuracy(device.weights("v2"), device.columns, device.labels)
            assert reference - shifted > THRESHOLD  # the shift does hurt this region
        tasks = admin.create_tasks("evaluate")
        assert {t["model_version"] for t in tasks} == {"v2"}
        _answer_all(devices, "evaluate")

        drops = admin.list_alerts("accuracy_drop")
        assert {a["details"]["region"] for a in drops} == {"south"}
        assert {a["model_version"] for a in drops} == {"v2"}
        assert len(drops) == 2
        production = admin.show_model("current")
        events = [e for e in admin.show_model("v1")["events"] if e["kind"] == "rolled_back"]
        if not policy_on:
            assert production["version"] == "v2"
            assert events == []
            assert all("rollback" not in a["details"] for a in drops)
            return
        assert production["version"] == "v1"
        first, second = drops
        assert first["details"]["rollback"] == {"status": "rolled_back", "from": "v2", "to": "v1"}
        assert first["message"].endswith("; production rolled back to v1")
        assert "rollback" not in second["details"]  # v2 was no longer production
        (event,) = events
        assert event["previous"] == "v2"
        assert event["detail"].startswith("rolled back from v2: accuracy_drop alert: accuracy ")
        assert "of v2 in region 'south'" in event["detail"]
        assert admin.show_model("v2")["stage"] == "archived"


# The policy's rules, in process -------------------------------------------------------------


def _service(tmp_path: Path, **alerts: Any) -> Any:
    """v1 imported, v2 imported and promoted over it; continuous rounds off."""
    service = build_service(
        tmp_path, clock=FakeClock(), continuous=False, alerts=AlertConfig(**alerts),
        clients_per_round=1, min_clients=1,
    )  # fmt: skip
    make_bundle(tmp_path / "bundle2", seed=1, model_version="taxi-2")
    service.import_bundle(tmp_path / "bundle2")
    assert service.promote("v2").version == "v2"
    return service


def _evaluate(service: Any, region: str, accuracy: float) -> None:
    """A new client of ``region`` evaluates production at ``accuracy``."""
    client = service.authenticate(service.register_client(region=region).token)
    (task,) = service.create_tasks("evaluate", client_ids=[client.client_id])
    report = EvalReport(task.task_id, task.model_version, 50, {"accuracy": accuracy})
    service.submit_evaluation(client, report)


def test_the_policy_waits_for_the_minimum_number_of_clients(tmp_path: Path) -> None:
    service = _service(tmp_path, rollback_on_accuracy_drop=True, rollback_min_clients=2)
    _evaluate(service, "south", 0.1)
    (alert,) = service.store.list_alerts(kind="accuracy_drop")
    assert alert.details["rollback"] == {"status": "waiting", "clients": 1, "needed": 2}
    assert service.registry.production().version == "v2"
    _evaluate(service, "north", 0.1)  # another region is not more evidence for south
    assert service.registry.production().version == "v2"
    _evaluate(service, "south", 0.1)
    assert service.registry.production().version == "v1"
    last = service.store.list_alerts(kind="accuracy_drop")[-1]
    assert last.details["rollback"]["to"] == "v1"


def test_a_rollback_by_the_policy_fails_the_rounds_on_the_old_version(tmp_path: Path) -> None:
    service = _service(tmp_path, rollback_on_accuracy_drop=True)
    service.register_client(region="north")
    round_ = service.open_round()
    assert service.get_round(round_.round_id).state == "collecting"
    _evaluate(service, "south", 0.2)
    failed = service.get_round(round_.round_id)
    assert failed.state == "failed"
    assert failed.failure_reason == "base version v2 is no longer production"


def test_a_drop_of_a_version_with_nothing_to_roll_back_to_is_recorded(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, alerts=AlertConfig(rollback_on_accuracy_drop=True), continuous=False
    )
    _evaluate(service, "south", 0.1)
    (alert,) = service.store.list_alerts(kind="accuracy_drop")
    assert alert.details["rollback"]["status"] == "failed"
    assert "v1 has no previous production version" in alert.details["rollback"]["reason"]
    assert service.registry.production().version == "v1"
