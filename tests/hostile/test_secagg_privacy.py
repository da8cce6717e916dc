"""The coordinator never sees an individual update of a secure round, on the real server.

Six devices run a secure round over HTTP through a recording TCP proxy in front of the
coordinator; the test then searches everything the coordinator received (every byte the
proxy forwarded, both ways) and everything it wrote (the state directory: database, WAL,
artifacts, its log) for each device's update. Any 64-value window of a vector contains a
32-value block starting at a multiple of 32, so searching every aligned 32-value block
(as float64, float32, float16 and int8 = round(v / max|v| * 127), of the delta and of the
clipped delta) finds any window of 64 values that leaked. The same search finds the
updates of a plain round on the same server (the protection-off baseline).

Then hostile secure-aggregation bodies are refused (400/403/409) and change nothing: the
round still commits the FedAvg of the honest inputs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import requests

from fedge.secagg import ShareDelivery, decode_secagg
from fedge.weights import Weights
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    ServerProcess,
    admin_call,
    production_digest,
    upload_headers,
    wait_for,
)
from tests.support.secagg_client import HttpTransport, SecureDevice, make_wide_bundle

StartServer = Callable[..., ServerProcess]
SHAPES = {"head/kernel": (32, 32), "head/bias": (32,)}
DIMENSION = 32 * 32 + 32
CLIP = 0.05
SECURE_FLAGS = (
    "--secure-aggregation", "--on-demand", "--no-auto-promote", "--retry-after", "1",
    "--clients-per-round", "6", "--min-clients", "4", "--deadline-seconds", "120",
)  # fmt: skip


class RecordingProxy:
    """A loopback TCP proxy that forwards to ``target`` and keeps every byte it forwards."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._stopped = False
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def captured(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self._chunks.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied(serve: StartServer, tmp_path: Path) -> Iterator[tuple[ServerProcess, RecordingProxy]]:
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    settings = tmp_path / "round-config.json"
    settings.write_text(json.dumps({"secagg_clip": CLIP, "secagg_example_cap": 100}))
    server = serve(*SECURE_FLAGS, "--round-config", str(settings))
    proxy = RecordingProxy(server.url)
    yield server, proxy
    proxy.close()


def _blocks(vector: npt.NDArray[np.float64]) -> list[bytes]:
    """Every aligned 32-value block of ``vector`` in each encoding an update could take."""
    out = []
    scale = 127.0 / float(np.max(np.abs(vector)))
    for start in range(0, len(vector) - 31, 32):
        block = vector[start : start + 32]
        out += [
            block.astype("<f8").tobytes(),
            block.astype("<f4").tobytes(),
            block.astype("<f2").tobytes(),
            np.round(block * scale).astype(np.int8).tobytes(),
        ]
    return out


def _found(vector: npt.NDArray[np.float64], haystack: bytes) -> int:
    """How many of the vector's blocks (clipped or not, in any encoding) occur."""
    blocks = _blocks(vector) + _blocks(np.clip(vector, -CLIP, CLIP))
    return sum(1 for block in blocks if haystack.find(block) >= 0)


def _stored(directory: Path) -> bytes:
    """Everything under the coordinator's state directory: database, WAL, artifacts, log."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def _register(url: str) -> tuple[str, str]:
    response = requests.post(f"{url}/v1/clients", json={}, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["client_id"], response.json()["token"]


def _round(url: str, round_id: int) -> dict[str, Any]:
    response = admin_call(url, "GET", f"/v1/rounds/{round_id}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _devices(url: str, n: int, seed: int) -> list[SecureDevice]:
    devices = []
    for i in range(n):
        _, token = _register(url)
        vector = np.random.default_rng(seed + i).normal(0.0, 0.03, DIMENSION)
        devices.append(SecureDevice(HttpTransport(url, token), vector, 20 + i, seed=i))
    return devices


def _run(url: str, devices: list[SecureDevice], round_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        for device in devices:
            device.step()
        document = _round(url, round_id)
        return document if document["state"] in ("committed", "failed") else None

    result: dict[str, Any] = wait_for(finished, timeout=60, interval=0.05)
    return result


def _fedavg(base: npt.NDArray[np.float64], devices: list[SecureDevice]) -> Any:
    total = sum(d.num_examples for d in devices)
    return base + sum(np.clip(d.vector, -CLIP, CLIP) * d.num_examples for d in devices) / total


def _weights(url: str, version: str) -> npt.NDArray[np.float64]:
    response = admin_call(url, "GET", f"/v1/models/{version}/weights")
    assert response.status_code == 200, response.text
    return Weights.from_bytes(response.content).flatten()


def test_a_secure_round_leaves_no_update_in_what_the_coordinator_sees_or_stores(
    proxied: tuple[ServerProcess, RecordingProxy], tmp_path: Path
) -> None:
    server, proxy = proxied
    devices = _devices(proxy.url, 6, seed=500)
    base = _weights(server.url, "v1")
    opened = admin_call(proxy.url, "POST", "/v1/rounds", json={})
    assert opened.status_code == 201, opened.text
    assert opened.json()["config"]["secure_aggregation"] is True  # the --secure-aggregation flag
    round_ = _run(proxy.url, devices, 1)
    assert round_["state"] == "committed", round_["failure_reason"]
    assert round_["measurements"]["secagg_survivors"] == 6
    assert round_["secagg"]["stage"] == "unmask"
    assert round_["num_updates"] == 0
    committed = _weights(server.url, round_["result_version"])
    bound = round_["measurements"]["secagg_error_bound"]
    assert np.max(np.abs(committed - _fedavg(base, devices))) <= bound + 1e-6

    received, stored = proxy.captured(), _stored(tmp_path)
    assert b"secagg_masked_input" not in received  # the vector went as a binary body
    assert len(received) > 6 * DIMENSION * 3  # the masked inputs passed through the proxy
    for device in devices:
        assert _found(device.vector, received) == 0
        assert _found(device.vector, stored) == 0
    # The coordinator's log names stages and counts, never a share.
    log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "secure stage unmask for 6 clients" in log
    for device in devices:
        assert device.state is not None
        for seed_share, key_share in device.state.held_shares.values():
            for share in (seed_share, key_share):
                assert base64.b64encode(share).decode() not in log
                assert share.hex() not in log

    # Protection off: a plain round on the same server; the same search finds every update.
    proxy.clear()
    plain = admin_call(proxy.url, "POST", "/v1/rounds", json={"secure_aggregation": False})
    assert plain.status_code == 201, plain.text
    baseline = []
    for device in devices:
        assert isinstance(device.transport, HttpTransport)
        transport = device.transport
        task = wait_for(transport.next_task)
        assert task["kind"] == "train"
        assert "secagg" not in task["config"]["options"]
        vector = np.random.default_rng(900 + len(baseline)).normal(0.0, 0.03, DIMENSION)
        token = transport.session.headers["Authorization"].removeprefix("Bearer ")
        response = transport.session.post(
            f"{proxy.url}/v1/rounds/2/updates",
            data=_plain_update(server.url, vector),
            headers=upload_headers(token, task["task_id"], key=f"plain-{uuid.uuid4().hex}"),
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 201, response.text
        baseline.append(vector)
    assert _round(server.url, 2)["state"] == "committed"
    received, stored = proxy.captured(), _stored(tmp_path)
    for vector in baseline:
        assert _found(vector, received) >= DIMENSION // 32
        assert _found(vector, stored) >= DIMENSION // 32


def _plain_update(url: str, vector: npt.NDArray[np.float64]) -> bytes:
    response = admin_call(url, "GET", "/v1/models/v1/weights")
    return Weights.from_bytes(response.content).unflatten(vector).to_bytes()


def _post(
    device: SecureDevice,
    stage: str,
    *,
    task_id: str,
    key: str,
    document: dict[str, Any] | None = None,
    body: bytes | None = None,
) -> requests.Response:
    assert isinstance(device.transport, HttpTransport)
    transport = device.transport
    headers = {"X-Fedge-Task-Id": task_id, "Idempotency-Key": key}
    if body is None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(document).encode()
    else:
        headers["Content-Type"] = "application/octet-stream"
    return transport.session.post(
        f"{transport.url}/v1/rounds/1/secagg/{stage}",
        data=body,
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )


def _unchanged(url: str, before: dict[str, Any]) -> None:
    after = _round(url, 1)
    assert (after["state"], after["secagg"], after["deadline"]) == (
        before["state"],
        before["secagg"],
        before["deadline"],
    )


def test_hostile_secure_aggregation_bodies_are_refused_and_change_nothing(
    proxied: tuple[ServerProcess, RecordingProxy],
) -> None:
    server, _ = proxied
    url = server.url
    devices = _devices(url, 6, seed=700)
    base = _weights(url, "v1")
    digest = production_digest(url)
    assert admin_call(url, "POST", "/v1/rounds", json={}).status_code == 201
    first, second = devices[0], devices[1]
    task = wait_for(first.transport.next_task)
    other = wait_for(second.transport.next_task)
    before = _round(url, 1)

    # A payload before its stage: 409 with Retry-After.
    assert isinstance(first.transport, HttpTransport)
    early = first.transport.session.get(f"{url}/v1/rounds/1/secagg/share", timeout=HTTP_TIMEOUT)
    assert early.status_code == 409
    assert early.json()["error"] == "secagg_stage"
    assert int(early.headers["Retry-After"]) >= 1

    good = {
        "type": "secagg_advertise_keys",
        "client_id": task["config"]["options"]["secagg_id"],
        "encryption_key": "A" * 43 + "=",
        "mask_key": "B" * 43 + "=",
    }
    wrong_id = {**good, "client_id": other["config"]["options"]["secagg_id"]}
    refused = [
        (_post(first, "advertise", task_id=task["task_id"], key="k-wrong-id", document=wrong_id),
         403, "secagg_client_mismatch"),
        (_post(first, "advertise", task_id=task["task_id"], key="k-bad-b64",
               document={**good, "mask_key": "not base64!"}), 400, "invalid_secagg_message"),
        (_post(first, "advertise", task_id=other["task_id"], key="k-other-task", document=good),
         403, "task_not_assigned"),
        (_post(first, "mask", task_id=task["task_id"], key="k-early-mask", body=b"\0" * 64),
         409, "secagg_stage"),
        (_post(first, "advertise", task_id=task["task_id"], key="k-no-json",
               body=b"{}"), 415, "unsupported_media_type"),
    ]  # fmt: skip
    for response, status, code in refused:
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
        _unchanged(url, before)

    # The device's real advertisement, then the same stage again.
    assert first.step() == "advertise"
    again = _post(first, "advertise", task_id=task["task_id"], key="key-again-1", document=good)
    assert (again.status_code, again.json()["error"]) == (409, "secagg_duplicate")

    # Everyone advertises and shares; at the mask stage a wrong-length vector is refused.
    for device in devices:
        device.step()
    wait_for(lambda: _round(url, 1)["secagg"]["stage"] == "share")
    for device in devices:
        assert device.step() == "share"
    wait_for(lambda: _round(url, 1)["secagg"]["stage"] == "mask")
    mask_task = wait_for(first.transport.next_task)
    assert mask_task["kind"] == "secagg_mask"
    before = _round(url, 1)
    payload = first.transport.payload(1, "mask")
    assert payload["type"] == "secagg_share_delivery"
    state = first.state
    assert state is not None
    delivery = decode_secagg(payload)
    assert isinstance(delivery, ShareDelivery)
    masked_state, masked = state.mask(
        delivery,
        first.vector,
        first.num_examples,
        rng=np.random.default_rng(1),
    )
    for bad in (masked.data[:-1], masked.data + b"\0", masked.data[: len(masked.data) // 2]):
        response = _post(first, "mask", task_id=mask_task["task_id"], key="k-bad-mask", body=bad)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_secagg_message")
        _unchanged(url, before)
    # The right vector, its retry (200, counted once) and another body under its key (409).
    sent = _post(first, "mask", task_id=mask_task["task_id"], key="key-mask-01", body=masked.data)
    assert sent.status_code == 201, sent.text
    assert sent.json() == {"round_id": 1, "stage": "mask", "client_id": sent.json()["client_id"],
                           "duplicate": False}  # fmt: skip
    retry = _post(first, "mask", task_id=mask_task["task_id"], key="key-mask-01", body=masked.data)
    assert (retry.status_code, retry.json()["duplicate"]) == (200, True)
    other_body = _post(
        first, "mask", task_id=mask_task["task_id"], key="key-mask-01", body=masked.data[::-1]
    )
    assert (other_body.status_code, other_body.json()["error"]) == (409, "idempotency_conflict")
    first.state = masked_state
    first.answered.append("mask")
    round_ = _run(url, devices, 1)
    assert round_["state"] == "committed", round_["failure_reason"]
    assert round_["measurements"]["secagg_survivors"] == 6
    committed = _weights(url, round_["result_version"])
    bound = round_["measurements"]["secagg_error_bound"]
    assert np.max(np.abs(committed - _fedavg(base, devices))) <= bound + 1e-6
    assert production_digest(url) == digest  # on demand, no auto-promotion: v1 serves
