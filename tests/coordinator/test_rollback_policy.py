"""The rollback policy: an ``accuracy_drop`` alert for the production version rolls
production back to the previous version when ``rollback_on_accuracy_drop`` is on.

Acceptance (real server): a coordinator (``fedge-coordinator serve``) on loopback serving a
real digits bundle; four devices (two in ``north``, two in ``south``) register, poll, download
and verify each version and answer every task with the edge client's own ``handle`` (TFLite
training and evaluation) through its REST client; a round of the four commits v2 (promoted
over v1); then the ``south`` devices' holdout rows shift (inverted intensities), their
evaluation reports of v2 fire ``accuracy_drop`` for ``south``, and with the policy on
production is v1 again (the alert and the ``rolled_back`` event name each other); with it
off production stays v2.

Then the policy's rules on an in-process service: the evidence it waits for
(``rollback_min_clients``), the rounds on the old version it fails, and a production
version with nothing to roll back to."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import AlertConfig
from edge_client.api import connect
from edge_client.bundles import BundleStore
from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import ModelCache
from edge_client.transport import CoordinatorClient, reply_request
from fedge.data import Dataset
from fedge.data.digits import load_digits
from fedge.messages import EvalReport
from tests.support.bundles import build_bundle
from tests.support.coordinator import (
    FakeClock,
    admin_client,
    build_service,
    make_bundle,
    start_server,
    stop_server,
    wait_for,
)
from tests.support.edge import coordinator_command

TRAIN_ROWS = 120
HOLDOUT_ROWS = 80
THRESHOLD = 0.2
REGIONS = ("north", "north", "south", "south")


def _inverted(table: Dataset) -> Dataset:
    """The same digits with inverted intensities (16 - pixel): a shift the model never saw,
    labels unchanged."""
    columns = {**table.columns, "pixels": 16.0 - table.columns["pixels"]}
    return Dataset(name=table.name, schema=table.schema, columns=columns, labels=table.labels)


class Device:
    """A device of one region: its own digits rows, registered through the edge client's
    REST client, answering each task with the edge client's ``handle``."""

    def __init__(self, url: str, region: str, train: Dataset, holdout: Dataset, root: Path):
        self.region = region
        self.holdout = holdout
        client = connect(url)
        assert isinstance(client, CoordinatorClient)
        client.token = client.register(region=region).token
        self.client = client
        bundles = BundleStore(root)
        self.context = ClientContext(
            data=MemoryData(train, holdout),
            models=ModelCache(lambda version: bundles.fetch(client, version)),
            client_id=f"{region}-{root.name}",
        )
        self.answered: list[str] = []

    def shift(self) -> None:
        self.context.data = MemoryData(self.context.data.train(), _inverted(self.holdout))

    def answer_next(self) -> bool:
        """Poll once; answer a task if one came (True)."""
        task = self.client.next_task().task
        if task is None:
            return False
        self.client.send(reply_request(handle(task, self.context), str(uuid.uuid4())))
        self.answered.append(task.kind)
        return True


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real digits bundle (read-only), for both policy settings."""
    workdir = tmp_path_factory.mktemp("rollback-digits")
    return build_bundle("digits", workdir, batch_size=32, version="digits-v1")


@pytest.fixture(params=[True, False], ids=["policy-on", "policy-off"])
def fleet(
    request: pytest.FixtureRequest, tmp_path: Path, digits_bundle: Path
) -> Iterator[tuple[str, list[Device]]]:
    policy = ["--rollback-on-accuracy-drop"] if request.param else []
    command = coordinator_command(
        tmp_path, digits_bundle, "digits",
        "--clients-per-round", "4", "--min-clients", "4",
        "--accuracy-drop-threshold", str(THRESHOLD), *policy,
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        digits = load_digits()
        rows = np.random.default_rng(3).permutation(len(digits))
        per_device = TRAIN_ROWS + HOLDOUT_ROWS
        devices = []
        for index, region in enumerate(REGIONS):
            mine = rows[index * per_device : (index + 1) * per_device]
            train, holdout = digits.take(mine[:TRAIN_ROWS]), digits.take(mine[TRAIN_ROWS:])
            root = tmp_path / f"device-{index}"
            devices.append(Device(server.url, region, train, holdout, root))
        yield server.url, devices
    finally:
        stop_server(server)


def _answer_all(devices: list[Device], kind: str) -> None:
    for device in devices:
        wait_for(lambda d=device: d.answer_next(), timeout=60)
        assert device.answered[-1] == kind


@pytest.mark.slow
def test_a_regional_accuracy_drop_rolls_production_back_when_the_policy_says_so(
    fleet: tuple[str, list[Device]], request: pytest.FixtureRequest
) -> None:
    policy_on = "policy-on" in request.node.callspec.id
    url, devices = fleet
    with admin_client(url) as admin:
        round_id = admin.open_round()["round_id"]
        _answer_all(devices, "train")
        committed = wait_for(
            lambda: (r := admin.show_round(round_id))["state"] == "committed" and r, timeout=60
        )
        assert committed["result_version"] == "v2"
        v2 = admin.show_model("current")
        assert (v2["version"], v2["parent"]) == ("v2", "v1")
        reference = v2["slice_metrics"]["south"]["accuracy"]
        assert reference > 0.5  # the devices' own rows agree with the model

        for device in devices:
            if device.region == "south":
                device.shift()
        tasks = admin.create_tasks("evaluate")
        assert {t["model_version"] for t in tasks} == {"v2"}
        _answer_all(devices, "evaluate")

        reports = admin.list_reports("evaluate", model_version="v2")
        assert len(reports) == 4
        drops = admin.list_alerts("accuracy_drop")
        assert {a["details"]["region"] for a in drops} == {"south"}
        assert {a["model_version"] for a in drops} == {"v2"}
        assert len(drops) == 2
        assert all(reference - a["details"]["value"] > THRESHOLD for a in drops)
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
