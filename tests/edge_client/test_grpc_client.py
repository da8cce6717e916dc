"""The edge client over gRPC against a real coordinator serving ``fedge.v1.Fleet`` on
loopback (``fedge-coordinator serve --grpc-port 0``):

- the device API call by call (register, signing keys, next task, a verified and signed
  model download through the bundle store, an update uploaded in chunks, a duplicate
  retry), each compared with what REST answers on the same server;
- a rotated token read back from the token file after UNAUTHENTICATED;
- errors mapped back to the REST client's: RequestRejected with the REST status and code,
  TransportError (with Retry-After) for 429 and for a server that is not there;
- ``connect`` picking the transport by URL; ``ClientTls`` checking its files;
- the daemon with a grpc:// URL through a train round, an evaluation report and stats.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from coordinator.certs import init_certs
from edge_client.api import connect
from edge_client.backoff import BackoffPolicy
from edge_client.bundles import BundleStore
from edge_client.cli import main as edge_main
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.errors import RequestCancelled, RequestRejected, TransportError
from edge_client.grpc_client import GrpcCoordinatorClient, grpc_target
from edge_client.policy import DevicePolicy
from edge_client.state import ClientState, read_token, write_token
from edge_client.tls import ClientTls
from edge_client.transport import (
    CoordinatorClient,
    FunctionTransport,
    HttpResponse,
    HttpTransport,
    reply_request,
)
from edge_client.trust import ManifestTrust, pin_at_enrollment
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE, sha256_file
from fedge.errors import ConfigError, ProtocolError
from fedge.messages import ModelUpdate
from fedge.protocol import fleet_pb2 as pb
from fedge.signing import SIGNATURE_FILE, read_signature_file
from tests.support.coordinator import delta, make_bundle
from tests.support.edge import (
    admin,
    coordinator,
    store_counts,
    taxi_rows,
    wait_committed,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)


@contextlib.contextmanager
def grpc_coordinator(workdir: Path, bundle: Path, *extra: str) -> Iterator[tuple[str, str]]:
    """A coordinator serving REST and gRPC on loopback: ``(rest URL, grpc:// URL)``."""
    port_file = workdir / "grpc-port"
    with coordinator(
        workdir, bundle, "taxi", "--grpc-port", "0", "--grpc-port-file", str(port_file), *extra
    ) as server:
        text = wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), timeout=20)
        yield server.url, f"grpc://127.0.0.1:{int(text)}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """One coordinator (a fake taxi bundle: no TFLite needed) shared by the call-by-call
    tests: ``(rest URL, grpc URL, workdir)``."""
    workdir = tmp_path_factory.mktemp("grpc-served")
    make_bundle(workdir / "fake-bundle")
    with grpc_coordinator(workdir, workdir / "fake-bundle") as (rest, url):
        yield rest, url, workdir


def _registered(url: str, **options: Any) -> GrpcCoordinatorClient:
    client = GrpcCoordinatorClient(url, timeout=10, **options)
    registration = client.register(region="north")
    client.token = registration.token
    return client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ChunkRecorder(grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """Records every message of the client-streaming calls (the update uploads)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        def recorded() -> Iterator[Any]:
            for message in request_iterator:
                self.messages.append(message)
                yield message

        return continuation(details, recorded())


# Call by call ----------------------------------------------------------------------------


def test_register_and_signing_keys_agree_with_rest(served: tuple[str, str, Path]) -> None:
    rest, url, _ = served
    client = GrpcCoordinatorClient(url, timeout=10)
    registration = client.register(
        region="north", registration_key="grpc-registration-key-0123456789abcdef"
    )
    again = client.register(
        region="north", registration_key="grpc-registration-key-0123456789abcdef"
    )
    assert registration.client_id
    assert registration.token
    assert (again.client_id, again.token) == (registration.client_id, registration.token)
    clients = admin(rest, "GET", "/v1/clients")["clients"]
    assert [c["region"] for c in clients if c["client_id"] == registration.client_id] == ["north"]
    keys = client.signing_keys()
    assert keys == CoordinatorClient(rest, HttpTransport()).signing_keys()
    assert registration.signing_key is not None
    assert registration.signing_key["key_id"] == keys["current"]["key_id"]
    client.close()


def test_no_task_answers_the_coordinators_retry_after(served: tuple[str, str, Path]) -> None:
    _, url, _ = served
    client = _registered(url)
    polled = client.next_task()
    assert polled.task is None
    assert polled.retry_after == 1.0  # the coordinator's --retry-after
    client.close()


def test_download_verifies_through_the_bundle_store(
    served: tuple[str, str, Path], tmp_path: Path
) -> None:
    rest, url, workdir = served
    client = _registered(url)
    state = ClientState(tmp_path / "state")
    keys = client.signing_keys()
    assert pin_at_enrollment(state, keys["current"]) == keys["current"]["key_id"]
    manifest = client.download("v1", MANIFEST_NAME)
    over_rest = CoordinatorClient(rest, HttpTransport(), token=client.token)
    expected = over_rest.download("v1", MANIFEST_NAME)
    assert manifest.status == 200
    assert manifest.body == expected.body
    for header in ("x-fedge-sha256", "x-fedge-signature", "x-fedge-model-version"):
        assert manifest.headers[header] == expected.headers[header], header

    path = BundleStore(tmp_path / "bundles").fetch(
        client, "v1", verify=ManifestTrust(state, client)
    )
    assert read_signature_file(path) == manifest.headers["x-fedge-signature"]
    for name in ("inference.tflite", "trainable.tflite", WEIGHTS_FILE):
        assert sha256_file(path / name) == sha256_file(workdir / "fake-bundle" / name)
    with pytest.raises(RequestRejected) as refused:
        client.download("v404", MANIFEST_NAME)
    assert refused.value.status == 404
    client.close()


def test_an_update_goes_up_in_chunks_and_a_retry_is_a_duplicate(tmp_path: Path) -> None:
    make_bundle(tmp_path / "fake-bundle")
    with grpc_coordinator(tmp_path, tmp_path / "fake-bundle") as (rest, url):
        receipt, document = _upload_once_and_again(rest, url)
    assert receipt["duplicate"] is False
    assert document["num_updates"] == 1  # the retry with the same key added no update


def _upload_once_and_again(rest: str, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload one update in 100-byte chunks and again with the same key; the first
    receipt and the committed round's document."""
    recorder = ChunkRecorder()
    client = _registered(url, interceptors=[recorder], chunk_bytes=100)
    opened = admin(rest, "POST", "/v1/rounds", {})
    polled = wait_for(lambda: client.next_task().task, timeout=20)
    assert polled.kind == "train"
    assert polled.round_id == opened["round_id"]
    update = ModelUpdate(polled.task_id, polled.round_id, 10, {"loss": 0.5}, delta(3))
    outgoing = reply_request(update, "grpc-update-0001")

    answer = client.send(outgoing)
    assert answer.status == 201
    receipt = answer.json()
    assert receipt["task_id"] == polled.task_id
    assert receipt["duplicate"] is False
    chunks = [m for m in recorder.messages if m.WhichOneof("part") == "chunk"]
    assert len(chunks) == -(-len(outgoing.body) // 100) > 1
    header = recorder.messages[0].header
    assert header.size == len(outgoing.body)
    assert header.idempotency_key == "grpc-update-0001"
    assert b"".join(c.chunk.data for c in chunks) == outgoing.body

    assert client.send(outgoing).status == 200  # the same key again: one update
    document = wait_committed(rest, opened["round_id"])
    client.close()
    return receipt, document


def test_a_rotated_token_is_read_back_after_unauthenticated(
    served: tuple[str, str, Path], tmp_path: Path
) -> None:
    _, url, _ = served
    rotator = _registered(url)
    old = rotator.token
    assert old is not None
    token_file = tmp_path / "token"
    write_token(token_file, old)
    device = GrpcCoordinatorClient(url, token=old, token_file=token_file, timeout=10)
    assert device.next_task().task is None

    new = "fedge_" + secrets.token_urlsafe(32)
    assert rotator.rotate_token(new) == new
    with pytest.raises(RequestRejected) as stale:
        GrpcCoordinatorClient(url, token=old, timeout=10).next_task()
    assert stale.value.status == 401
    write_token(token_file, new)
    assert device.next_task().task is None  # refused 401, re-read the file, answered
    assert device.token == new
    rotator.close()
    device.close()


def test_refusals_map_to_the_rest_status_and_code(served: tuple[str, str, Path]) -> None:
    rest, url, _ = served
    client = GrpcCoordinatorClient(url, token="not-a-token", timeout=10)
    with pytest.raises(RequestRejected) as unknown:
        client.next_task()
    over_rest = CoordinatorClient(rest, HttpTransport(), token="not-a-token")
    with pytest.raises(RequestRejected) as expected:
        over_rest.next_task()
    assert (unknown.value.status, unknown.value.code) == (401, expected.value.code)

    device = _registered(url)
    with pytest.raises(RequestRejected) as no_payload:
        device.secagg_payload(999, "share")
    with pytest.raises(RequestRejected) as rest_payload:
        CoordinatorClient(rest, HttpTransport(), token=device.token).secagg_payload(999, "share")
    assert no_payload.value.status == rest_payload.value.status
    assert no_payload.value.code == rest_payload.value.code
    with pytest.raises(ProtocolError):
        device.secagg_payload(1, "advertise")
    client.close()
    device.close()


def test_an_unreachable_server_and_a_cancelled_client_are_transport_errors() -> None:
    client = GrpcCoordinatorClient(f"grpc://127.0.0.1:{_free_port()}", token="t", timeout=3)
    started = time.monotonic()
    with pytest.raises(TransportError) as down:
        client.next_task()
    assert not isinstance(down.value, RequestCancelled)
    assert "UNAVAILABLE" in str(down.value)
    assert time.monotonic() - started < 3.5
    client.cancel()
    with pytest.raises(RequestCancelled):
        client.next_task()
    client.close()


def test_cancel_aborts_a_call_in_flight() -> None:
    """The daemon's stop: a poll the server holds is aborted at once, not at its deadline."""
    release = threading.Event()

    def hold(request: Any, context: Any) -> Any:
        release.wait(20)
        return pb.NextTaskResponse(retry_after=5)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "fedge.v1.Fleet",
        {
            "NextTask": grpc.unary_unary_rpc_method_handler(
                hold,
                request_deserializer=pb.NextTaskRequest.FromString,
                response_serializer=pb.NextTaskResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = GrpcCoordinatorClient(f"grpc://127.0.0.1:{port}", token="t", timeout=30)
    outcome: list[BaseException] = []

    def poll() -> None:
        try:
            client.next_task()
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=poll)
    try:
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # held by the server
        started = time.monotonic()
        client.cancel()
        worker.join(5)
        assert not worker.is_alive()
        assert time.monotonic() - started < 1.0
        assert len(outcome) == 1
        assert isinstance(outcome[0], RequestCancelled)
    finally:
        release.set()
        client.close()
        server.stop(0)


def test_rate_limited_registration_is_a_transport_error_with_retry_after(
    tmp_path: Path,
) -> None:
    make_bundle(tmp_path / "fake-bundle")
    limits = ("--registration-rate", "0.01", "--registration-burst", "1")
    with grpc_coordinator(tmp_path, tmp_path / "fake-bundle", *limits) as (_, url):
        client = GrpcCoordinatorClient(url, timeout=10)
        client.register(region="north")
        with pytest.raises(TransportError) as limited:
            client.register(region="north")
        assert limited.value.retry_after is not None
        assert limited.value.retry_after >= 1
        assert "429" in str(limited.value)
        client.close()


# connect() and ClientTls ---------------------------------------------------------------


def test_connect_picks_the_transport_by_scheme(tmp_path: Path) -> None:
    def server(method: str, url: str, headers: Any, body: bytes | None) -> HttpResponse:
        return HttpResponse(204, {"Retry-After": "3"}, b"")

    rest = connect("http://coordinator.test", token="t", transport=FunctionTransport(server))
    assert isinstance(rest, CoordinatorClient)
    assert rest.next_task().retry_after == 3.0
    grpc_client = connect("grpc://127.0.0.1:9")
    assert isinstance(grpc_client, GrpcCoordinatorClient)
    grpc_client.close()
    secure = connect("grpcs://localhost")
    assert isinstance(secure, GrpcCoordinatorClient)
    secure.close()
    with pytest.raises(ProtocolError, match="http"):
        connect("ftp://coordinator.test")
    with pytest.raises(ProtocolError, match="port"):
        connect("grpc://127.0.0.1")
    with pytest.raises(ProtocolError, match="host and a port only"):
        connect("grpc://127.0.0.1:50051/v1")
    with pytest.raises(ConfigError, match="transport"):
        connect("grpc://127.0.0.1:9", transport=FunctionTransport(server))
    assert grpc_target("grpcs://[::1]:8443") == ("[::1]:8443", True)
    assert grpc_target("grpc://localhost:50051") == ("localhost:50051", False)


def test_client_tls_checks_its_files(tmp_path: Path) -> None:
    made = init_certs(tmp_path / "certs", devices=["d1"])
    cert, key = made.devices["d1"]
    with pytest.raises(ConfigError, match="cert and key together"):
        ClientTls(cert=cert)
    with pytest.raises(ConfigError, match="is not a file"):
        ClientTls(ca_file=tmp_path / "missing.pem")
    tls = ClientTls(ca_file=made.ca_cert, cert=cert, key=key)
    assert tls.client_cert == (str(cert), str(key))
    assert tls.verify == str(made.ca_cert)
    assert ClientTls().verify is True
    context = tls.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert tls.read() == (made.ca_cert.read_bytes(), cert.read_bytes(), key.read_bytes())
    mismatched = ClientTls(ca_file=made.ca_cert, cert=cert, key=made.server_key)
    with pytest.raises(ConfigError, match="client certificate"):
        mismatched.ssl_context()


def test_the_cli_refuses_a_certificate_without_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = tmp_path / "device.pem"
    pem.write_text("x")
    args = ["register", "--coordinator", "grpc://127.0.0.1:9", "--token-file",
            str(tmp_path / "token"), "--cert", str(pem)]  # fmt: skip
    assert edge_main(args) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert not (tmp_path / "token").exists()


# The daemon over gRPC ----------------------------------------------------------------------


def _step_until(daemon: Daemon, wanted: str, *, limit: int = 20) -> list[str]:
    outcomes = []
    for _ in range(limit):
        outcomes.append(daemon.step())
        if outcomes[-1] == wanted:
            return outcomes
    raise AssertionError(f"no {wanted!r} step in {outcomes}")


def test_a_daemon_with_a_grpc_url_runs_a_round_reports_and_declines(
    edge_taxi_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_client")
    data, state, token = tmp_path / "data", tmp_path / "state", tmp_path / "token"
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 200))
    with grpc_coordinator(tmp_path, edge_taxi_bundle) as (rest, url):
        args = ["register", "--coordinator", url, "--token-file", str(token),
                "--state", str(state), "--region", "north", "--json"]  # fmt: skip
        assert edge_main(args) == 0
        assert (
            ClientState(state).trust()["key_id"]
            == admin(rest, "GET", "/v1/keys")["current"]["key_id"]
        )
        recorder = ChunkRecorder()
        config = DaemonConfig(
            coordinator=url,
            token_file=token,
            data_dir=data,
            state_dir=state,
            backoff=BackoffPolicy(base=0.05, cap=0.2),
            settle_seconds=0,
            policy=DevicePolicy(task_kinds=("train", "evaluate", "stats")),
        )
        daemon = Daemon(config, rng=np.random.default_rng(0), grpc_interceptors=[recorder])
        assert isinstance(daemon.client, GrpcCoordinatorClient)
        assert daemon.client.token == read_token(token)

        admin(rest, "POST", "/v1/rounds", {})
        _step_until(daemon, "handled")
        wait_for(lambda: daemon.step() and not len(daemon.state.outbox), timeout=30)
        committed = wait_committed(rest, 1)
        assert committed["num_updates"] == 1
        assert recorder.messages[0].header.round_id == 1
        assert daemon.state.current_version == "v1"
        assert (daemon.state.bundles.path("v1") / SIGNATURE_FILE).is_file()

        for kind in ("evaluate", "stats"):
            admin(rest, "POST", "/v1/tasks", {"kind": kind})
        wait_for(lambda: daemon.step() == "idle" and not len(daemon.state.outbox), timeout=60)
        counts = store_counts(tmp_path)
        assert counts["updates"] == 1
        assert counts["evaluation"] == 1
        assert counts["stats"] == 1
        status = json.loads((state / "status.json").read_text())
        assert status["tasks"] == {"train": 1, "evaluate": 1, "stats": 1}
        assert status["last_error"] is None

        # A task the owner's policy refuses: its decline goes out over gRPC (DeclineTask)
        # and the coordinator stops handing it out.
        admin(rest, "POST", "/v1/tasks", {"kind": "features"})
        _step_until(daemon, "policy_refused")
        wait_for(lambda: daemon.step() == "idle" and not len(daemon.state.outbox), timeout=30)
        assert "delivered decline reply" in caplog.text
        assert not list((state / "outbox").glob("failed/*"))
        assert store_counts(tmp_path)["features"] == 0
        daemon.client.close()


def test_three_daemons_over_grpc_commit_a_secure_round(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    """Every secure-aggregation stage over gRPC: the payloads (GetSecAggPayload) and the
    four messages (SubmitSecAgg, the masked vector as bytes) of three devices."""
    with grpc_coordinator(tmp_path, edge_taxi_bundle) as (rest, url):
        daemons = []
        for i in range(3):
            home = tmp_path / f"device-{i}"
            (home / "data").mkdir(parents=True)
            write_csv(home / "data" / "a.csv", taxi_rows(120 * i, 120))
            args = ["register", "--coordinator", url, "--token-file", str(home / "token"),
                    "--state", str(home / "state")]  # fmt: skip
            assert edge_main(args) == 0
            config = DaemonConfig(
                coordinator=url,
                token_file=home / "token",
                data_dir=home / "data",
                state_dir=home / "state",
                backoff=BackoffPolicy(base=0.05, cap=0.2),
                settle_seconds=0,
            )
            daemons.append(Daemon(config, rng=np.random.default_rng(i), sleep=lambda s: None))
        for daemon in daemons:
            assert daemon.step() == "idle"
        admin(rest, "POST", "/v1/rounds",
              {"secure_aggregation": True, "clients_per_round": 3, "min_clients": 3})  # fmt: skip

        def round_closed() -> bool:
            for daemon in daemons:
                daemon.step()
            state = admin(rest, "GET", "/v1/rounds/1")["state"]
            return state in ("committed", "failed")

        wait_for(round_closed, timeout=180, interval=0.05)
        document = wait_committed(rest, 1)
        assert document["config"]["secure_aggregation"] is True
        assert document["measurements"]["secagg_survivors"] == 3
        assert document["num_updates"] == 0  # no plain update was stored
        for daemon in daemons:
            daemon.step()  # delivers the unmask answer if still queued
            assert dict(daemon.counts) == {
                "train": 1,
                "secagg_share": 1,
                "secagg_mask": 1,
                "secagg_unmask": 1,
            }
            assert len(daemon.state.outbox) == 0
            assert daemon.last_error is None
            daemon.client.close()
