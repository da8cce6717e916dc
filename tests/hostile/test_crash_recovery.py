"""SIGKILL the coordinator at random points while 50 devices run rounds, restart it on the
same ``--db`` and ``--artifacts`` each time, and check what a crash must not break.

Afterwards (the last start in ``--on-demand`` mode, so the round in flight ends and no other
opens): every round is committed (with a model version) or failed (with a reason), none
stuck; every update acknowledged with a 2xx is among its round's updates, counted once, and
its bytes are in the artifact directory; every artifact file's sha256 is its name and every
model's artifacts are there; no temporary file is left in the artifact directory.

The devices are :mod:`tests.support.fleet`'s (the load benchmark's): an upload whose answer
was lost to a kill is sent again with the same idempotency key.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.coordinator import (
    ServerProcess,
    admin_client,
    make_bundle,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)
from tests.support.fleet import Ack, CallStats, SimulatedDevice, run_fleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KILLS = 20
CLIENTS = 50
SEED = 20_240_501
ENROLLMENT_TOKEN = "enroll-" + "c3" * 16
_IN_FLIGHT = ("open", "collecting", "aggregating")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_args(work: Path, port: int, *extra: str) -> list[str]:
    token = work / "enrollment-token"
    token.write_text(ENROLLMENT_TOKEN + "\n")
    return [
        "--task", "taxi", "--bundle", str(work / "bundle"),
        "--db", str(work / "state.db"), "--artifacts", str(work / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port),
        "--admin-token-file", str(write_admin_token(work)),
        "--enrollment-token-file", str(token),
        "--clients-per-round", "10", "--min-clients", "5", "--deadline-seconds", "4",
        "--retry-after", "1", "--tick-seconds", "0.2",
        "--registration-rate", "50", "--registration-burst", "100",  # 50 devices, one address
        *extra,
    ]  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_artifacts(root: Path, models: list[dict[str, Any]]) -> None:
    # The signing key ring (ARTIFACTS/keys) is not content-addressed: it is no artifact.
    files = [p for p in root.rglob("*") if p.is_file() and "keys" not in p.relative_to(root).parts]
    leftovers = [p for p in files if p.parent.name == "tmp" or p.suffix in (".part", ".tmp")]
    assert leftovers == [], f"temporary files left: {leftovers}"
    stored = {p.name: p for p in files if p.parent.parent.name == "sha256"}
    assert len(stored) == len(files), f"files outside sha256/: {set(files) - set(stored.values())}"
    mismatched = [p for name, p in stored.items() if _sha256(p) != name]
    assert mismatched == [], f"artifacts whose bytes are not their name: {mismatched}"
    for model in models:
        for name, digest in model["artifacts"].items():
            assert digest in stored, f"{model['version']}'s {name} ({digest}) is missing"


def test_sigkill_at_random_points_loses_no_acknowledged_update(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    make_bundle(tmp_path / "bundle")
    port = _free_port()
    args = _serve_args(tmp_path, port)
    server: ServerProcess = start_server(args, tmp_path, timeout=60)
    stats = CallStats()
    acks: list[Ack] = []
    stop = threading.Event()
    devices = [
        SimulatedDevice(
            server.url,
            i,
            stats,
            registration_token=ENROLLMENT_TOKEN,
            timeout=5.0,
            max_wait=0.5,
            seed=SEED,
        )
        for i in range(CLIENTS)
    ]
    threads = run_fleet(devices, stop, acks)
    try:
        wait_for(lambda: all(d.token is not None for d in devices), timeout=60)
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.3, 2.5))
            assert server.coordinator.alive(), f"the coordinator died by itself:\n{server.log()}"
            stop_server(server, signal.SIGKILL)
            server = start_server(args, tmp_path, timeout=60)
            print(f"kill {kill + 1}/{KILLS}: restarted; {len(acks)} updates acknowledged so far")
        time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        stop_server(server)
    assert not any(t.is_alive() for t in threads), "a device thread did not stop"

    # The last start opens no round: the one in flight must end by its deadline.
    server = start_server(_serve_args(tmp_path, port, "--on-demand"), tmp_path, timeout=60)
    try:
        with admin_client(server.url) as admin:
            wait_for(
                lambda: all(r["state"] not in _IN_FLIGHT for r in admin.list_rounds()),
                timeout=60,
                interval=0.5,
            )
            rounds = {r["round_id"]: admin.show_round(r["round_id"]) for r in admin.list_rounds()}
            models = admin.list_models()
    finally:
        stop_server(server)

    states = [r["state"] for r in rounds.values()]
    print(
        f"{KILLS} kills; {len(rounds)} rounds: {states.count('committed')} committed,"
        f" {states.count('failed')} failed; {len(acks)} updates acknowledged"
    )
    assert states.count("committed") >= 1
    assert acks, "no update was acknowledged"
    for document in rounds.values():
        if document["state"] == "failed":
            assert document["failure_reason"], document
        else:
            assert document["state"] == "committed", document
            assert document["result_version"], document
        clients = [u["client_id"] for u in document["updates"]]
        assert len(clients) == len(set(clients)), f"an update counted twice: {document}"
    lost = []
    for ack in acks:
        kept = {
            (u["client_id"], u["task_id"], u["sha256"]) for u in rounds[ack.round_id]["updates"]
        }
        if (ack.client_id, ack.task_id, ack.sha256) not in kept:
            lost.append(ack)
    assert lost == [], f"acknowledged updates missing from their rounds: {lost}"
    artifacts = tmp_path / "artifacts"
    for ack in acks:
        path = artifacts / "sha256" / ack.sha256[:2] / ack.sha256
        assert path.is_file(), f"the bytes of an acknowledged update are gone: {ack}"
    _check_artifacts(artifacts, models)


def test_sigterm_while_connections_close_stops_the_server_cleanly(tmp_path: Path) -> None:
    """A SIGTERM that lands while the server handles connection events (here: 200 sockets
    with half a request, closed just before) still stops it: exit 0 within seconds."""
    make_bundle(tmp_path / "bundle")
    server = start_server(_serve_args(tmp_path, _free_port()), tmp_path, timeout=60)
    try:
        sockets = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.coordinator.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(sock)
        time.sleep(0.5)
        for sock in sockets:
            sock.close()
        started = time.monotonic()
        returncode = server.coordinator.stop(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        stop_server(server, signal.SIGKILL)
    assert "ignored SIGTERM" not in server.log()
    assert returncode == 0, f"exit {returncode} after {elapsed:.1f} s:\n{server.log()[-3000:]}"
    assert elapsed < 5, f"stopped after {elapsed:.1f} s"
    assert "fedge coordinator stopped" in server.log()
