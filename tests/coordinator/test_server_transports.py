"""Loopback integration over every transport and trust mode: the full round of
``test_server`` with three devices on REST or gRPC, under TLS or mutual TLS, and the
refusals a device meets there.

Each case starts the real server (``fedge-coordinator serve`` in a subprocess, certificates
from :func:`coordinator.certs.init_certs`, gRPC beside REST); the devices are the edge
client's own clients (:func:`edge_client.connect`, which picks REST or gRPC from the URL),
each presenting its device certificate under mutual TLS. Under mutual TLS a certificate
from another CA and no certificate are refused on both transports, and over gRPC a revoked
client's token and an expired enrollment token are refused with the REST codes.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.certs import CertificateSet, init_certs
from coordinator.client import AdminClient
from coordinator.launch import ClientTlsFiles
from coordinator.tls import TlsFiles
from edge_client import ClientTls, RequestRejected, TransportError, connect
from edge_client.api import CoordinatorApi
from edge_client.transport import reply_request
from fedge.bundle import BundleManifest
from fedge.messages import ModelUpdate
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    local_training,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)

MODES = ("tls", "mtls")
TRANSPORTS = ("rest", "grpc")
DEVICES = ("d0", "d1", "d2")


@dataclass
class Served:
    server: ServerProcess
    certs: CertificateSet
    mutual: bool

    def url(self, transport: str) -> str:
        url = self.server.url if transport == "rest" else self.server.coordinator.grpc_url
        assert url is not None
        return url

    @property
    def operator(self) -> ClientTlsFiles:
        return _operator(self.certs, self.mutual)

    def admin(self) -> AdminClient:
        ca, cert, key = self.operator
        pair = None if cert is None or key is None else (cert, key)
        return AdminClient(self.server.url, ADMIN_TOKEN, timeout=HTTP_TIMEOUT, ca_file=ca,
                           cert=pair)  # fmt: skip

    def device_tls(self, name: str) -> ClientTls:
        if not self.mutual:
            return ClientTls(ca_file=self.certs.ca_cert)
        cert, key = self.certs.devices[name]
        return ClientTls(ca_file=self.certs.ca_cert, cert=cert, key=key)


def _operator(certs: CertificateSet, mutual: bool) -> ClientTlsFiles:
    """What the operator's admin calls verify the server with and present."""
    if not mutual:
        return (certs.ca_cert, None, None)
    return (certs.ca_cert, *certs.devices["operator"])


@contextlib.contextmanager
def _serving(workdir: Path, mode: str, *extra: str) -> Iterator[Served]:
    make_bundle(workdir / "bundle")
    certs = init_certs(workdir / "certs", devices=["operator", *DEVICES])
    mutual = mode == "mtls"
    command = serve_command(workdir, workdir / "bundle", write_admin_token(workdir), *extra)
    tls = TlsFiles(certs.server_cert, certs.server_key, certs.ca_cert if mutual else None)
    client_tls = _operator(certs, mutual)
    server = start_server(command, workdir, tls=tls, client_tls=client_tls, grpc=True)
    try:
        yield Served(server, certs, mutual)
    finally:
        stop_server(server)


def _download(device: CoordinatorApi, version: str) -> tuple[BundleManifest, Weights]:
    """The manifest and weights of ``version``, every file checked against the manifest."""
    manifest = BundleManifest.from_json(device.download(version, "manifest.json").body)
    for name, entry in manifest.files.items():
        answer = device.download(version, name)
        assert answer.status == 200
        assert hashlib.sha256(answer.body).hexdigest() == entry.sha256
        assert answer.headers["etag"].strip('"') == entry.sha256
        assert len(answer.body) == entry.size
    weights = Weights.from_bytes(device.download(version, "weights.safetensors").body)
    return manifest, weights


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_full_round_with_three_devices(transport: str, mode: str, tmp_path: Path) -> None:
    extra = ("--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "60",
             "--retry-after", "1")  # fmt: skip
    with _serving(tmp_path, mode, *extra) as served, served.admin() as admin:
        url = served.url(transport)
        assert url.startswith("https://" if transport == "rest" else "grpcs://")
        devices = [connect(url, tls=served.device_tls(name)) for name in DEVICES]
        try:
            for device, region in zip(devices, ("north", "south", "north"), strict=True):
                device.token = device.register(region=region).token
            tasks = [wait_for(lambda d=d: d.next_task().task) for d in devices]
            assert {t.round_id for t in tasks} == {1}
            assert {t.model_version for t in tasks} == {"v1"}
            sent = []
            for i, (device, task) in enumerate(zip(devices, tasks, strict=True)):
                manifest, weights = _download(device, task.model_version)
                assert manifest.model_version == "v1"
                assert manifest.train_batch_size == task.config.batch_size
                delta = local_training(weights, seed=i).delta(weights)
                assert task.round_id is not None
                metrics = {"loss": 0.5, "accuracy": 0.75}
                update = ModelUpdate(task.task_id, task.round_id, 20 + 10 * i, metrics, delta)
                receipt = device.send(reply_request(update, str(uuid.uuid4())))
                assert receipt.status == 201
                assert receipt.json()["duplicate"] is False
                sent.append((delta, 20 + 10 * i))
            round_ = wait_for(lambda: (r := admin.show_round(1))["state"] == "committed" and r)
            assert round_["result_version"] == "v2"
            assert round_["num_updates"] == 3
            model = admin.show_model("v2")
            assert model["parent"] == "v1"
            assert model["participants"] == 3
            assert model["stage"] == "production"
            assert set(model["slice_metrics"]) == {"north", "south"}
            _, base = _download(devices[0], "v1")
            _, new = _download(devices[1], "v2")
            total = sum(n for _, n in sent)
            expected = Weights(
                {k: base[k] + sum(d[k].astype(np.float64) * n for d, n in sent) / total
                 for k in base}
            )  # fmt: skip
            assert new.allclose(expected, atol=1e-6)
            tokens = [str(d.token) for d in devices]
        finally:
            for device in devices:
                device.close()
    log = served.server.log()
    assert "round 1 committed v2 from 3 updates" in log
    for secret in [ADMIN_TOKEN, *tokens]:
        assert secret not in log
    assert served.server.process.returncode == 0


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One mutual-TLS coordinator (REST and gRPC) for the refusal tests."""
    with _serving(tmp_path_factory.mktemp("mtls-refusals"), "mtls") as served:
        yield served


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """Another development CA with a device certificate of the same name."""
    return init_certs(tmp_path_factory.mktemp("other-ca"), devices=["d0"])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("presented", ["another CA's certificate", "no certificate"])
def test_mutual_tls_refuses_a_device_without_a_certificate_of_its_ca(
    mutual: Served, stranger: CertificateSet, transport: str, presented: str
) -> None:
    if presented == "no certificate":
        tls = ClientTls(ca_file=mutual.certs.ca_cert)
    else:
        cert, key = stranger.devices["d0"]
        tls = ClientTls(ca_file=mutual.certs.ca_cert, cert=cert, key=key)
    with mutual.admin() as admin:
        before = admin.call("GET", "/v1/clients")["clients"]
    device = connect(mutual.url(transport), tls=tls, timeout=5)
    try:
        with pytest.raises(TransportError):
            device.register(region="north")
    finally:
        device.close()
    with mutual.admin() as admin:  # refused at the handshake: nothing was created
        assert admin.call("GET", "/v1/clients")["clients"] == before
    device = connect(mutual.url(transport), tls=mutual.device_tls("d0"))
    try:
        assert device.signing_keys()["current"]["key_id"]  # the server still answers
    finally:
        device.close()


def test_grpc_refuses_a_revoked_client_and_an_expired_enrollment_token(mutual: Served) -> None:
    device = connect(mutual.url("grpc"), tls=mutual.device_tls("d1"))
    try:
        registration = device.register(region="north")
        device.token = registration.token
        assert device.next_task().task is None  # no round open: a wait, not a refusal
        with mutual.admin() as admin:
            admin.call("POST", f"/v1/clients/{registration.client_id}/revoke")
            issued = admin.call("POST", "/v1/enrollment-tokens", json={"expires_in": 0.5})
        with pytest.raises(RequestRejected) as revoked:
            device.next_task()
        assert (revoked.value.status, revoked.value.code) == (401, "client_revoked")
        time.sleep(0.7)
        with pytest.raises(RequestRejected) as expired:
            device.register(region="south", enrollment_token=issued["token"])
        assert (expired.value.status, expired.value.code) == (401, "enrollment_token_expired")
    finally:
        device.close()
    with mutual.admin() as admin:
        clients = admin.call("GET", "/v1/clients")["clients"]
        tokens = admin.call("GET", "/v1/enrollment-tokens")["enrollment_tokens"]
    assert [c["client_id"] for c in clients][-1] == registration.client_id  # none added
    assert [t["uses"] for t in tokens if t["token_id"] == issued["token_id"]] == [0]
