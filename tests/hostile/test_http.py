"""The HTTP layer against a hostile client, on a real ``fedge-coordinator serve`` on
loopback: slow sockets, oversized and deep bodies, unauthenticated uploads, forged log
lines. Each case checks the exact answer, that the global model is unchanged and that the
server still answers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    admin_request,
    bearer,
)

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]


def _address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _model_digest(server: ServerProcess) -> str:
    """sha256 of the production model's weights, as the coordinator serves them."""
    version = requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).json()["model_version"]
    assert admin_request(server.url, f"/v1/models/{version}")["version"] == version
    weights = requests.get(
        f"{server.url}/v1/models/{version}/weights", headers=bearer(ADMIN_TOKEN), timeout=10
    )
    assert weights.status_code == 200
    return hashlib.sha256(weights.content).hexdigest()


def _healthy_within(server: ServerProcess, seconds: float) -> float:
    started = time.monotonic()
    response = requests.get(f"{server.url}/healthz", timeout=seconds)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


@contextlib.contextmanager
def _slow_sockets(server: ServerProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each sent half a request and then nothing."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(_address(server), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _send_headers(server: ServerProcess, head: str) -> tuple[socket.socket, bytes]:
    """Send request headers only and read what the server answers (before any body)."""
    sock = socket.create_connection(_address(server), timeout=5)
    sock.sendall(head.encode("latin-1"))
    received = b""
    with contextlib.suppress(TimeoutError):
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return sock, received


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def _status_and_document(raw: bytes) -> tuple[int, dict[str, str]]:
    assert raw, "no answer within 5 s: the server waited for the body instead of refusing it"
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    document: dict[str, str] = json.loads(body)
    return status, document


def _rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


# Connections -----------------------------------------------------------------------------


def test_new_request_answers_while_300_slow_sockets_are_open(serve: StartServer) -> None:
    server = serve()
    digest = _model_digest(server)
    with _slow_sockets(server, 300):
        assert _healthy_within(server, 5.0) < 1.0
        assert _model_digest(server) == digest


def test_slow_socket_is_closed_after_the_header_timeout_even_when_it_trickles(
    serve: StartServer,
) -> None:
    server = serve("--header-timeout", "1")
    sock = socket.create_connection(_address(server), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    closed_after = None
    with contextlib.suppress(OSError):
        for i in range(40):
            sock.sendall(f"X-Trickle-{i}: 1\r\n".encode())
            time.sleep(0.2)
    closed_after = time.monotonic() - started
    sock.close()
    assert closed_after < 6.0, "the server kept a trickling request open"
    _healthy_within(server, 5.0)


@pytest.mark.parametrize("flag", ["--connection-limit", "--header-timeout", "--max-json-bytes"])
def test_serve_refuses_a_limit_below_one(flag: str, serve: StartServer) -> None:
    with pytest.raises(AssertionError, match=rf"{flag} must be"):
        serve(flag, "0")


# Bodies ------------------------------------------------------------------------------------


def test_60mb_json_registration_is_refused_before_it_is_read(serve: StartServer) -> None:
    server = serve()
    digest = _model_digest(server)
    before = _rss(server)
    body_size = 60 << 20
    sock, answer = _send_headers(
        server,
        "POST /v1/clients HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_size}\r\n\r\n",
    )
    status, document = _status_and_document(answer)
    assert status == 413
    assert document["error"] == "payload_too_large"
    assert "65536-byte limit" in document["detail"]
    chunk = b'{"k": 0, ' * 8192
    with contextlib.suppress(OSError):  # the server closed the connection: sending fails
        for _ in range(body_size // len(chunk)):
            sock.sendall(chunk)
    sock.close()
    assert _rss(server) - before < 20 << 20
    assert _model_digest(server) == digest
    assert admin_request(server.url, "/v1/clients")["clients"] == []


def test_chunked_60mb_json_registration_is_refused_at_the_limit(serve: StartServer) -> None:
    server = serve()
    before = _rss(server)
    sock = socket.create_connection(_address(server), timeout=5)
    sock.sendall(
        b"POST /v1/clients HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b'{"k": 0, ' * 4096
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with contextlib.suppress(OSError):
        while sent < 60 << 20:
            sock.sendall(chunk)
            sent += len(piece)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk_in := sock.recv(65536):
            answer += chunk_in
    sock.close()
    status, document = _status_and_document(answer)
    assert (status, document["error"]) == (413, "payload_too_large")
    assert _rss(server) - before < 20 << 20
    _healthy_within(server, 5.0)


def test_unauthenticated_upload_is_refused_before_its_body(serve: StartServer) -> None:
    server = serve()
    digest = _model_digest(server)
    sock, answer = _send_headers(
        server,
        "POST /v1/rounds/1/updates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n",
    )
    sock.close()
    status, document = _status_and_document(answer)
    assert (status, document["error"]) == (401, "missing_token")
    assert "Authorization" in document["detail"]
    assert _model_digest(server) == digest


def test_admin_route_with_a_client_sized_token_and_large_body_is_refused_first(
    serve: StartServer,
) -> None:
    server = serve()
    sock, answer = _send_headers(
        server,
        "POST /v1/rounds HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer fedge_unknown\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
    )
    sock.close()
    status, document = _status_and_document(answer)
    assert (status, document["error"]) == (401, "invalid_token")
    _healthy_within(server, 5.0)


def test_50000_deep_json_registration_is_a_400(serve: StartServer) -> None:
    server = serve()
    response = requests.post(
        f"{server.url}/v1/clients",
        data="[" * 30_000 + "]" * 30_000,
        headers={"Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert "deeper than 32 levels" in response.json()["detail"]
    _healthy_within(server, 5.0)


def test_json_body_over_the_limit_in_one_packet_is_a_413(serve: StartServer) -> None:
    server = serve("--max-json-bytes", "1024")
    response = requests.post(
        f"{server.url}/v1/clients",
        json={"region": "x", "metadata": {"a": "b" * 2000}},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "1024-byte limit" in response.json()["detail"]
    _healthy_within(server, 5.0)


# Logs ------------------------------------------------------------------------------------


def test_newline_in_the_path_cannot_forge_a_log_line(serve: StartServer) -> None:
    server = serve()
    forged = "2026-01-01 00:00:00 INFO coordinator.service: forged admin login"
    response = requests.get(
        f"{server.url}/v1/nothing%0a{forged.replace(' ', '%20')}", timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 404
    _healthy_within(server, 5.0)
    log = server.log()
    assert not any(line.startswith(forged) for line in log.splitlines())
    assert "/v1/nothing\\n2026-01-01" in log
