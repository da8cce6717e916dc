"""TLS and mutual TLS on a real ``fedge-coordinator serve`` on loopback: HTTPS answers and
verifies against the development CA, client certificates are required under mutual TLS,
plain HTTP gets nothing, the slow-client protections hold on TLS sockets, and plain HTTP
is served only on a loopback address unless --insecure is given."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import requests

from coordinator.certs import CertificateSet, init_certs
from coordinator.cli import main
from coordinator.client import AdminClient, is_healthy
from coordinator.launch import launch_coordinator
from coordinator.tls import TlsFiles
from fedge.bundle import BundleManifest
from fedge.errors import ConfigError
from fedge.protocol import fleet_pb2 as pb
from tests.support.coordinator import (
    ADMIN_TOKEN,
    ServerProcess,
    bearer,
    delta,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    upload_headers,
    wait_for,
    write_admin_token,
)

pytestmark = pytest.mark.timeout(120)

HEADER_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return init_certs(tmp_path_factory.mktemp("pki") / "pki", devices=["pump-1"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """Another CA, with a device certificate of the same name."""
    return init_certs(tmp_path_factory.mktemp("other") / "pki", devices=["pump-1"])


def _serve(
    workdir: Path, pki: CertificateSet, *, mutual: bool, flags: tuple[str, ...] = ()
) -> ServerProcess:
    make_bundle(workdir / "bundle")
    command = serve_command(
        workdir,
        workdir / "bundle",
        write_admin_token(workdir),
        "--header-timeout",
        str(HEADER_TIMEOUT),
        *flags,
    )
    tls = TlsFiles(pki.server_cert, pki.server_key, client_ca=pki.ca_cert if mutual else None)
    cert, key = pki.devices["pump-1"]
    return start_server(command, workdir, tls=tls, client_tls=(pki.ca_cert, cert, key), grpc=True)


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, pki: CertificateSet
) -> Iterator[ServerProcess]:
    """HTTPS and gRPC over TLS, without client certificates."""
    server = _serve(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, pki: CertificateSet
) -> Iterator[ServerProcess]:
    """HTTPS and gRPC over TLS requiring a client certificate of ``pki``'s CA."""
    server = _serve(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield server
    stop_server(server)


def _address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _device_cert(pki: CertificateSet) -> tuple[str, str]:
    cert, key = pki.devices["pump-1"]
    return str(cert), str(key)


def _healthy_within(server: ServerProcess, pki: CertificateSet, seconds: float) -> float:
    started = time.monotonic()
    response = requests.get(
        f"{server.url}/healthz", verify=str(pki.ca_cert), cert=_device_cert(pki), timeout=seconds
    )
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started = time.monotonic()
    received = b""
    sock.settimeout(seconds)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


# HTTPS ------------------------------------------------------------------------------------


def test_rest_over_tls_answers_and_verifies_against_the_ca(
    tls_server: ServerProcess, pki: CertificateSet
) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    response = requests.get(f"{tls_server.url}/healthz", verify=str(pki.ca_cert), timeout=10)
    assert response.status_code == 200
    assert response.json()["model_version"] == "v1"
    with AdminClient(tls_server.url, ADMIN_TOKEN, ca_file=pki.ca_cert) as admin:
        assert [m["version"] for m in admin.list_models()] == ["v1"]
    # The system's roots do not know the development CA: the client refuses the server.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tls_server.url}/healthz", timeout=10)
    assert not is_healthy(tls_server.url)
    assert f"listening on {tls_server.url}" in tls_server.log()


def test_plain_http_to_the_tls_port_is_answered_nothing(
    tls_server: ServerProcess, pki: CertificateSet
) -> None:
    sock = socket.create_connection(_address(tls_server), timeout=5)
    sock.sendall(b"GET /v1/rounds/424242 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received, _ = _read_until_closed(sock, 5.0)
    sock.close()
    assert b"HTTP/" not in received
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(tls_server.url.replace("https://", "http://") + "/healthz", timeout=5)
    wait_for(lambda: "TLS handshake with 127.0.0.1 failed" in tls_server.log())
    assert "/v1/rounds/424242" not in tls_server.log()
    _healthy_within(tls_server, pki, 5.0)


# Mutual TLS --------------------------------------------------------------------------------


def test_mutual_tls_serves_a_client_with_a_device_certificate(
    mtls_server: ServerProcess, pki: CertificateSet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _healthy_within(mtls_server, pki, 10.0) < 5.0
    cert, key = pki.devices["pump-1"]
    with AdminClient(mtls_server.url, ADMIN_TOKEN, ca_file=pki.ca_cert, cert=(cert, key)) as admin:
        assert [m["version"] for m in admin.list_models()] == ["v1"]
    token_file = Path(mtls_server.coordinator.log_path or ".").parent / "admin-token"
    argv = ["models", "list", "--coordinator", mtls_server.url, "--admin-token-file",
            str(token_file), "--ca-file", str(pki.ca_cert), "--cert", str(cert), "--key",
            str(key), "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert [m["version"] for m in json.loads(capsys.readouterr().out)] == ["v1"]


@pytest.mark.parametrize("presented", ["none", "another CA's"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_the_ca_at_the_handshake(
    mtls_server: ServerProcess,
    pki: CertificateSet,
    other_pki: CertificateSet,
    presented: str,
) -> None:
    cert = None if presented == "none" else _device_cert(other_pki)
    path = f"/v1/rounds/{4000 + len(presented)}"
    before = mtls_server.log().count("TLS handshake with 127.0.0.1 failed")
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
        requests.get(
            mtls_server.url + path,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=str(pki.ca_cert),
            cert=cert,
            timeout=10,
        )
    wait_for(lambda: mtls_server.log().count("TLS handshake with 127.0.0.1 failed") > before)
    assert path not in mtls_server.log()  # no request was read, nothing was served
    assert not is_healthy(mtls_server.url, ca_file=pki.ca_cert, cert=cert)
    _healthy_within(mtls_server, pki, 5.0)


def test_admin_commands_without_the_client_certificate_cannot_reach_a_mutual_tls_coordinator(
    mtls_server: ServerProcess, pki: CertificateSet, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = Path(mtls_server.coordinator.log_path or ".").parent / "admin-token"
    base = ["models", "list", "--coordinator", mtls_server.url, "--admin-token-file",
            str(token_file), "--ca-file", str(pki.ca_cert)]  # fmt: skip
    assert main(base) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main([*base, "--cert", str(pki.devices["pump-1"][0])]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err


# Slow clients on TLS sockets ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x16\x03\x01\x02\x00\x01"],  # nothing; a ClientHello's first bytes, then nothing
    ids=["silent", "partial-client-hello"],
)
def test_a_handshake_that_never_completes_is_cut_off_and_healthz_still_answers(
    mtls_server: ServerProcess, pki: CertificateSet, sent: bytes
) -> None:
    sockets = []
    try:
        for _ in range(50):
            sock = socket.create_connection(_address(mtls_server), timeout=5)
            sock.sendall(sent)
            sockets.append(sock)
        assert _healthy_within(mtls_server, pki, 5.0) < 1.0
        for sock in sockets:
            received, _ = _read_until_closed(sock, HEADER_TIMEOUT + 5.0)  # else TimeoutError
            assert received == b""
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: "its TLS handshake did not finish within 1.5 s" in mtls_server.log())
    _healthy_within(mtls_server, pki, 5.0)


def _tls_socket(server: ServerProcess, pki: CertificateSet) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(*pki.devices["pump-1"])
    raw = socket.create_connection(_address(server), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_headers_that_trickle_over_tls_are_cut_off_after_the_header_timeout(
    mtls_server: ServerProcess, pki: CertificateSet
) -> None:
    sock = _tls_socket(mtls_server, pki)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for i in range(40):
            sock.sendall(f"X-Trickle-{i}: 1\r\n".encode())
            time.sleep(0.2)
    closed_after = time.monotonic() - started
    sock.close()
    assert closed_after < HEADER_TIMEOUT + 4.5, "the server kept a trickling request open"
    wait_for(lambda: "its request's headers did not arrive within 1.5 s" in mtls_server.log())
    _healthy_within(mtls_server, pki, 5.0)


def test_an_unauthenticated_upload_over_tls_is_refused_before_its_body(
    mtls_server: ServerProcess, pki: CertificateSet
) -> None:
    sock = _tls_socket(mtls_server, pki)
    sock.sendall(
        b"POST /v1/rounds/1/updates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n"
    )
    received = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), received[:200]
    assert json.loads(body)["error"] == "missing_token"
    _healthy_within(mtls_server, pki, 5.0)


def test_a_device_registers_polls_downloads_and_uploads_over_mutual_tls(
    tmp_path: Path, pki: CertificateSet
) -> None:
    """A device's calls on one TLS session: the model files' digests intact, an 8 MB body
    read whole (and refused for what it holds), then a real update accepted."""
    one = ("--clients-per-round", "1", "--min-clients", "1", "--retry-after", "1")
    server = _serve(tmp_path, pki, mutual=True, flags=one)
    session = requests.Session()
    tls = {"verify": str(pki.ca_cert), "cert": _device_cert(pki), "timeout": 30}
    try:
        response = session.post(f"{server.url}/v1/clients", json={"region": "north"}, **tls)
        assert response.status_code == 201, response.text
        token = response.json()["token"]

        def poll() -> dict[str, Any] | None:
            answer = session.get(f"{server.url}/v1/tasks/next", headers=bearer(token), **tls)
            return answer.json() if answer.status_code == 200 else None

        task = wait_for(poll)
        assert task["kind"] == "train"
        session.headers.update(bearer(token))
        answer = session.get(f"{server.url}/v1/models/v1/manifest", **tls)
        manifest = BundleManifest.from_json(answer.content)
        assert manifest.files
        for name, entry in manifest.files.items():
            body = session.get(f"{server.url}/v1/models/v1/files/{name}", **tls).content
            assert hashlib.sha256(body).hexdigest() == entry.sha256
        garbage = os.urandom(8 << 20)
        refused = session.post(
            f"{server.url}/v1/rounds/{task['round_id']}/updates",
            data=garbage,
            headers=upload_headers(token, task["task_id"], key="garbage-0001"),
            **tls,
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "malformed_weights"
        assert f"only {len(garbage) - 8} follow" in refused.json()["detail"]  # read whole
        accepted = session.post(
            f"{server.url}/v1/rounds/{task['round_id']}/updates",
            data=delta(3).to_bytes(),
            headers=upload_headers(token, task["task_id"], key="update-0001"),
            **tls,
        )
        assert accepted.status_code == 201, accepted.text
        rounds = session.get(f"{server.url}/v1/rounds", headers=bearer(ADMIN_TOKEN), **tls)
        accepted_rounds = [r for r in rounds.json()["rounds"] if r["num_updates"] >= 1]
        assert accepted_rounds
        assert accepted_rounds[0]["bytes_up"] >= len(delta(3).to_bytes())
    finally:
        session.close()
        stop_server(server)


# gRPC over TLS ----------------------------------------------------------------------------


def _signing_keys(
    server: ServerProcess,
    pki: CertificateSet,
    cert: tuple[Path, Path] | None,
    *,
    secure: bool = True,
) -> pb.SigningKeys:
    """``GetSigningKeys`` (no token needed) over a channel trusting ``pki``'s CA and
    presenting ``cert``; ``secure`` False: a plaintext channel."""
    assert server.coordinator.grpc_url is not None
    target = server.coordinator.grpc_url.split("://", 1)[1]
    if secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca_cert.read_bytes(),
            private_key=None if cert is None else cert[1].read_bytes(),
            certificate_chain=None if cert is None else cert[0].read_bytes(),
        )
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(
            "/fedge.v1.Fleet/GetSigningKeys",
            request_serializer=pb.SigningKeysRequest.SerializeToString,
            response_deserializer=pb.SigningKeys.FromString,
        )
        answer: pb.SigningKeys = call(pb.SigningKeysRequest(), timeout=10)
        return answer


def _rest_key_id(server: ServerProcess, pki: CertificateSet) -> str:
    response = requests.get(
        f"{server.url}/v1/keys", verify=str(pki.ca_cert), cert=_device_cert(pki), timeout=10
    )
    assert response.status_code == 200
    key_id: str = response.json()["current"]["key_id"]
    return key_id


def test_grpc_over_tls_answers_and_a_plaintext_channel_is_refused(
    tls_server: ServerProcess, pki: CertificateSet
) -> None:
    assert tls_server.coordinator.grpc_url is not None
    assert tls_server.coordinator.grpc_url.startswith("grpcs://127.0.0.1:")
    keys = _signing_keys(tls_server, pki, None)
    assert keys.current.key_id == _rest_key_id(tls_server, pki)
    with pytest.raises(grpc.RpcError) as refused:
        _signing_keys(tls_server, pki, None, secure=False)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"gRPC on {tls_server.coordinator.grpc_url}" in tls_server.log()


@pytest.mark.parametrize("presented", ["none", "another CA's"])
def test_grpc_mutual_tls_serves_a_device_certificate_and_refuses_others(
    mtls_server: ServerProcess,
    pki: CertificateSet,
    other_pki: CertificateSet,
    presented: str,
) -> None:
    key_id = _rest_key_id(mtls_server, pki)
    assert _signing_keys(mtls_server, pki, pki.devices["pump-1"]).current.key_id == key_id
    cert = None if presented == "none" else other_pki.devices["pump-1"]
    with pytest.raises(grpc.RpcError) as refused:
        _signing_keys(mtls_server, pki, cert)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as plaintext:
        _signing_keys(mtls_server, pki, None, secure=False)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # The server still serves a device with its certificate, on both transports.
    assert _signing_keys(mtls_server, pki, pki.devices["pump-1"]).current.key_id == key_id
    _healthy_within(mtls_server, pki, 5.0)


# Flags -------------------------------------------------------------------------------------


def _serve_argv(tmp_path: Path, *flags: str) -> list[str]:
    make_bundle(tmp_path / "bundle")
    return ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"),
            "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "a"),
            "--open-enrollment", *flags]  # fmt: skip


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_non_loopback_host_without_tls_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    assert main(_serve_argv(tmp_path, "--host", host)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"fedge-coordinator: error: --host {host} is not a loopback address")
    assert "--insecure" in lines[0]
    assert not (tmp_path / "state.db").exists()


def test_a_non_loopback_host_without_tls_serves_with_insecure(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path), "--host", "0.0.0.0",
        "--insecure",
    )  # fmt: skip
    server = start_server(command, tmp_path)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert "--insecure: serving plain HTTP on 0.0.0.0" in server.log()
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-cert", "{server_cert}"), "--tls-cert and --tls-key go together"),
        (("--tls-key", "{server_key}"), "--tls-cert and --tls-key go together"),
        (("--client-ca", "{ca_cert}"), "--client-ca needs --tls-cert and --tls-key"),
        (
            ("--tls-cert", "{server_cert}", "--tls-key", "{device_key}"),
            "do not load as a pair",
        ),
        (("--tls-cert", "{missing}", "--tls-key", "{server_key}"), "cannot read the TLS"),
        (
            (
                "--tls-cert",
                "{server_cert}",
                "--tls-key",
                "{server_key}",
                "--client-ca",
                "{server_key}",
            ),
            "holds no usable certificate",
        ),
    ],
)
def test_incomplete_or_unusable_tls_flags_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: CertificateSet,
    flags: tuple[str, ...],
    message: str,
) -> None:
    names = {
        "server_cert": pki.server_cert,
        "server_key": pki.server_key,
        "ca_cert": pki.ca_cert,
        "device_key": pki.devices["pump-1"][1],
        "missing": tmp_path / "missing.pem",
    }
    argv = _serve_argv(tmp_path, *(flag.format(**names) for flag in flags))
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fedge-coordinator: error: ")
    assert message in lines[0]
    assert not (tmp_path / "state.db").exists()


def test_the_launcher_serves_plain_grpc_beside_plain_http(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    command = serve_command(tmp_path, tmp_path / "bundle", write_admin_token(tmp_path))
    server = start_server(command, tmp_path, grpc=True)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        grpc_url = server.coordinator.grpc_url
        assert grpc_url is not None
        assert grpc_url.startswith("grpc://127.0.0.1:")
        with grpc.insecure_channel(grpc_url.split("://", 1)[1]) as channel:
            call = channel.unary_unary(
                "/fedge.v1.Fleet/GetSigningKeys",
                request_serializer=pb.SigningKeysRequest.SerializeToString,
                response_deserializer=pb.SigningKeys.FromString,
            )
            keys = call(pb.SigningKeysRequest(), timeout=10)
        rest = requests.get(f"{server.url}/v1/keys", timeout=10).json()
        assert keys.current.key_id == rest["current"]["key_id"]
    finally:
        stop_server(server)


def test_the_launcher_owns_the_tls_and_grpc_flags(tmp_path: Path, pki: CertificateSet) -> None:
    tls = TlsFiles(pki.server_cert, pki.server_key)
    for args, kwargs in (
        (["--tls-cert", str(pki.server_cert)], {"tls": tls}),
        (["--grpc-port", "0"], {"grpc": True}),
    ):
        with pytest.raises(ConfigError, match=f"must not hold {args[0]}"):
            launch_coordinator(args, port_file=tmp_path / "port", **kwargs)


def test_the_launcher_needs_a_client_certificate_for_mutual_tls(
    tmp_path: Path, pki: CertificateSet
) -> None:
    tls = TlsFiles(pki.server_cert, pki.server_key, client_ca=pki.ca_cert)
    with pytest.raises(ConfigError, match="give client_tls=\\(ca, cert, key\\)"):
        launch_coordinator(
            ["--task", "taxi"],
            port_file=tmp_path / "port",
            tls=tls,
            client_tls=(pki.ca_cert, None, None),
        )
    assert not (tmp_path / "port").exists()
