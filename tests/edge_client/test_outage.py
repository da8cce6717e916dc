"""Acceptance 3: the coordinator dies while the daemon trains and comes back later; the
daemon backs off (exponentially, with jitter), then delivers its queued update once."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import requests

from edge_client.backoff import BackoffPolicy
from tests.support.coordinator import (
    ADMIN_TOKEN,
    ServerProcess,
    bearer,
    start_server,
    stop_server,
)
from tests.support.edge import (
    DaemonProcess,
    admin,
    coordinator_command,
    register,
    restart_coordinator,
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

# Long enough local training (seconds) that the coordinator is gone before it ends.
EPOCHS = 400
BACKOFF = BackoffPolicy(base=0.2, cap=1.0)
_BACKING_OFF = re.compile(r"backing off ([0-9.]+) s \(failure (\d+)\)")


def test_queued_update_is_delivered_once_after_an_outage(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    data, state, token = tmp_path / "data", tmp_path / "state", tmp_path / "token"
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 1200))
    server: ServerProcess = start_server(
        coordinator_command(tmp_path, edge_taxi_bundle, "taxi"), tmp_path
    )
    port = int(server.url.rsplit(":", 1)[1])
    daemon: DaemonProcess | None = None
    try:
        register(server.url, token, state)
        daemon = start_daemon(server.url, token, data, state)
        admin(server.url, "POST", "/v1/rounds", {"epochs": EPOCHS})
        # The model is downloaded and the data read: local training has begun.
        wait_for(lambda: "data span trips.csv" in daemon.log(), timeout=30, interval=0.02)
        stop_server(server, signal.SIGKILL)  # the outage: no clean shutdown
        assert "queued train reply" not in daemon.log(), "training ended before the outage"

        wait_for(lambda: daemon.count("coordinator unavailable") >= 3, timeout=60)
        assert daemon.count("queued train reply") == 1
        assert "delivered train reply" not in daemon.log()

        server = restart_coordinator(tmp_path, edge_taxi_bundle, "taxi", port)
        round_ = wait_committed(server.url, 1)
        wait_for(lambda: "delivered train reply" in daemon.log(), timeout=30)
        metrics = requests.get(
            server.url + "/metrics", headers=bearer(ADMIN_TOKEN), timeout=10
        ).text
        assert stop_daemon(daemon) == 0
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        stop_server(server)

    # Exactly once, by the coordinator's own counts.
    assert round_["num_updates"] == 1
    assert len(round_["updates"]) == 1
    assert round_["updates"][0]["num_examples"] > 0
    assert "fedge_updates_accepted_total 1\n" in metrics
    assert "fedge_updates_rejected_total{" not in metrics
    log = daemon.log()
    assert log.count("delivered train reply") == 1
    assert not list((state / "outbox").glob("*.reply"))
    # Backoff: consecutive failures counted up, each wait jittered below its ceiling.
    waits = [(float(d), int(n)) for d, n in _BACKING_OFF.findall(log)]
    assert [n for _, n in waits[:3]] == [1, 2, 3]
    assert all(0 <= d <= BACKOFF.ceiling(n) + 1e-9 for d, n in waits)
    assert len({d for d, _ in waits}) > 1
