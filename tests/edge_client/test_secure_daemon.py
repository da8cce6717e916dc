"""A secure round end to end: three ``fedge-edge run`` daemons (separate processes,
TensorFlow blocked, every request captured) against a real coordinator on loopback.

The round is opened with ``secure_aggregation: true``: each device trains, advertises its
keys, shares them, sends its masked input and answers the unmask request, all through its
outbox. The round must commit a new model version from the three devices' sum while no
device ever posts a plain update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.edge import (
    DaemonProcess,
    admin,
    coordinator,
    register,
    start_daemon,
    stop_daemon,
    taxi_rows,
    wait_committed,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

DEVICES = 3
STAGES = ("advertise", "share", "mask", "unmask")


@dataclass
class Device:
    state: Path
    client_id: str
    exit_code: int
    log: str
    report: dict[str, Any]
    capture: list[dict[str, Any]]
    status: dict[str, Any]


@dataclass
class SecureRound:
    round: dict[str, Any]
    models: list[dict[str, Any]]
    devices: list[Device]


def _status(state: Path) -> dict[str, Any]:
    path = state / "status.json"
    document: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return document


@pytest.fixture(scope="module")
def secure_round(edge_taxi_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> SecureRound:
    workdir = tmp_path_factory.mktemp("secure-daemons")
    homes = [workdir / f"device-{i}" for i in range(DEVICES)]
    for i, home in enumerate(homes):
        (home / "data").mkdir(parents=True)
        write_csv(home / "data" / "a.csv", taxi_rows(120 * i, 120))
    daemons: list[DaemonProcess] = []
    with coordinator(workdir, edge_taxi_bundle, "taxi") as server:
        try:
            client_ids = [
                register(server.url, h / "token", h / "state", capture=h / "capture.jsonl")
                for h in homes
            ]
            daemons = [
                start_daemon(
                    server.url,
                    h / "token",
                    h / "data",
                    h / "state",
                    capture=h / "capture.jsonl",
                    report=h / "report.json",
                )
                for h in homes
            ]
            wait_for(
                lambda: all(_status(h / "state").get("last_poll_at") for h in homes), timeout=60
            )
            admin(
                server.url,
                "POST",
                "/v1/rounds",
                {"secure_aggregation": True, "clients_per_round": DEVICES, "min_clients": DEVICES},
            )
            document = wait_committed(server.url, 1, timeout=240)
            wait_for(
                lambda: all(_status(h / "state").get("outbox_pending") == 0 for h in homes),
                timeout=30,
            )
            models = admin(server.url, "GET", "/v1/models")["models"]
            codes = [stop_daemon(d) for d in daemons]
        finally:
            for daemon in daemons:
                stop_daemon(daemon)
    devices = [
        Device(
            state=h / "state",
            client_id=client_id,
            exit_code=code,
            log=daemon.log(),
            report=json.loads((h / "report.json").read_text()),
            capture=[json.loads(line) for line in (h / "capture.jsonl").read_text().splitlines()],
            status=_status(h / "state"),
        )
        for h, client_id, code, daemon in zip(homes, client_ids, codes, daemons, strict=True)
    ]
    return SecureRound(document, models, devices)


def test_three_daemons_without_tensorflow_commit_a_secure_round(secure_round: SecureRound) -> None:
    document = secure_round.round
    assert document["state"] == "committed"
    assert document["config"]["secure_aggregation"] is True
    assert document["result_version"] not in (None, document["base_version"])
    assert document["result_version"] in {m["version"] for m in secure_round.models}
    assert document["measurements"]["secagg_survivors"] == DEVICES
    assert document["num_updates"] == 0  # no plain update was stored
    for device in secure_round.devices:
        assert device.report["tensorflow_import_fails"] is True
        assert {"tensorflow", "coordinator", "flask"}.isdisjoint(device.report["modules"])
        assert device.exit_code == 0
        assert "Traceback" not in device.log


def test_each_device_answered_every_stage_through_its_outbox(secure_round: SecureRound) -> None:
    for device in secure_round.devices:
        assert device.status["tasks"] == {
            "train": 1,
            "secagg_share": 1,
            "secagg_mask": 1,
            "secagg_unmask": 1,
        }
        assert device.status["last_error"] is None
        assert device.status["outbox_pending"] == 0
        assert not list((device.state / "outbox").glob("*.reply"))
        assert not list((device.state / "secagg").glob("round-*.json"))  # secrets deleted


def test_no_device_posted_a_plain_update(secure_round: SecureRound) -> None:
    for device in secure_round.devices:
        posts = [r["url"].split("/v1/", 1)[1] for r in device.capture if r["method"] == "POST"]
        assert {p for p in posts if "/secagg/" in p} == {f"rounds/1/secagg/{s}" for s in STAGES}
        assert not [p for p in posts if p.endswith("/updates")]
        gets = [r["url"].split("/v1/", 1)[1] for r in device.capture if r["method"] == "GET"]
        assert {f"rounds/1/secagg/{s}" for s in STAGES[1:]} <= set(gets)
