"""``/healthz`` means health, on a real server: a wiped artifact directory or a disk below
the free-space minimum is a 503 naming the check; temporary files of unfinished artifact
writes are gone after a start."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from coordinator.launch import SERVE_PROGRAM
from fedge import processes
from tests.support import REPO_ROOT
from tests.support.coordinator import (
    HTTP_TIMEOUT,
    ServerProcess,
    make_bundle,
    serve_command,
    wait_for,
    write_admin_token,
)

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]


def _answer(url: str) -> list[requests.Response]:
    """``[response]`` (a Response of a 4xx/5xx is falsy), or [] when nothing listens yet."""
    try:
        return [requests.get(url, timeout=HTTP_TIMEOUT)]
    except requests.ConnectionError:
        return []


def _health(server: ServerProcess) -> requests.Response:
    return requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT)


def test_healthz_reports_each_check_when_healthy(serve: StartServer) -> None:
    server = serve()
    response = _health(server)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model_version": "v1",
        "checks": {"store": "ok", "artifacts": "ok"},
    }


def test_healthz_is_503_when_the_artifact_directory_is_wiped(
    serve: StartServer, tmp_path: Path
) -> None:
    server = serve()
    assert _health(server).status_code == 200
    shutil.rmtree(tmp_path / "artifacts")
    response = _health(server)
    assert response.status_code == 503
    document = response.json()
    assert document["status"] == "failing"
    assert document["checks"]["store"] == "ok"
    assert "is missing" in document["checks"]["artifacts"]
    assert "healthz" in server.log()  # the server still answers and logs
    assert requests.get(f"{server.url}/v1/openapi.json", timeout=HTTP_TIMEOUT).status_code == 200


def _unhealthy_server(tmp_path: Path, *flags: str) -> tuple[processes.Child, str]:
    """A coordinator that never reports healthy (the launcher waits for a 200): started
    directly, its URL once its port file names a port."""
    make_bundle(tmp_path / "bundle")
    command = serve_command(tmp_path, tmp_path / "bundle", write_admin_token(tmp_path), *flags)
    child = processes.start(
        [*SERVE_PROGRAM, "serve", *command, "--port-file", str(tmp_path / "port")],
        name="coordinator",
        log_path=tmp_path / "server.log",
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    port = wait_for(
        lambda: (tmp_path / "port").is_file() and (tmp_path / "port").read_text().strip()
    )
    return child, f"http://127.0.0.1:{port}"


def test_healthz_is_503_below_the_free_space_minimum(tmp_path: Path) -> None:
    child, url = _unhealthy_server(tmp_path, "--min-free-bytes", str(1 << 60))
    try:
        (response,) = wait_for(lambda: _answer(f"{url}/healthz"))
    finally:
        processes.stop([child])
    assert response.status_code == 503
    detail = response.json()["checks"]["artifacts"]
    assert f"below the {1 << 60}-byte minimum" in detail
    assert response.json()["model_version"] == "v1"


def test_healthz_is_503_when_the_artifact_directory_is_read_only(
    serve: StartServer, tmp_path: Path
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only directories")
    server = serve()
    (tmp_path / "artifacts" / "tmp").chmod(0o500)
    try:
        response = _health(server)
    finally:
        (tmp_path / "artifacts" / "tmp").chmod(0o700)
    assert response.status_code == 503
    assert "not writable" in response.json()["checks"]["artifacts"]


def test_start_removes_temporary_files_of_unfinished_writes(
    serve: StartServer, tmp_path: Path
) -> None:
    leftover = tmp_path / "artifacts" / "tmp" / "0123456789abcdef.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a model")
    server = serve()
    assert _health(server).status_code == 200
    assert not leftover.exists()
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []
    assert "removed 1 temporary file(s)" in server.log()
