"""coordinator.launch: start ``fedge-coordinator serve``, wait for /healthz, stop it; a
coordinator that dies or never answers is an error with its log, and leaves nothing."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from coordinator.client import AdminClient, is_healthy
from coordinator.launch import launch_coordinator, wait_until_serving
from fedge import processes
from fedge.errors import ConfigError, ProcessError
from tests.support import REPO_ROOT
from tests.support.coordinator import (
    ADMIN_TOKEN,
    make_bundle,
    serve_command,
    write_admin_token,
)

pytestmark = pytest.mark.usefixtures("no_leftover_children")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return env


def _serve_args(tmp_path: Path) -> list[str]:
    make_bundle(tmp_path / "bundle")
    args = serve_command(tmp_path, tmp_path / "bundle", write_admin_token(tmp_path))
    port = args.index("--port")
    del args[port : port + 2]  # the launcher adds --port 0
    return args


def test_launch_serves_until_stopped_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "port").write_text("1\n")  # a stale port file from an earlier run
    coordinator = launch_coordinator(
        _serve_args(tmp_path),
        port_file=tmp_path / "port",
        log_path=tmp_path / "coordinator.log",
        env=_env(),
        cwd=REPO_ROOT,
    )
    try:
        assert coordinator.url == f"http://127.0.0.1:{coordinator.port}"
        assert coordinator.port != 1
        assert coordinator.alive()
        with AdminClient(coordinator.url, ADMIN_TOKEN) as admin:
            assert admin.health()["model_version"] == "v1"
    finally:
        code = coordinator.stop()
    assert code == 0
    assert coordinator.child.outcome == "terminated"
    assert "fedge coordinator stopped" in coordinator.log()
    assert not is_healthy(coordinator.url)
    assert coordinator.stop() == 0  # again: nothing left to stop


def test_kill_is_an_outage_without_a_clean_shutdown(tmp_path: Path) -> None:
    with launch_coordinator(
        _serve_args(tmp_path), port_file=tmp_path / "port", env=_env(), cwd=REPO_ROOT
    ) as coordinator:
        assert coordinator.kill() == -signal.SIGKILL
        assert coordinator.child.outcome == "killed"
        assert not is_healthy(coordinator.url)


def test_a_coordinator_that_dies_at_start_is_an_error_with_its_log(tmp_path: Path) -> None:
    args = _serve_args(tmp_path)
    (tmp_path / "bundle" / "inference.tflite").write_bytes(b"tampered")
    with pytest.raises(ProcessError) as caught:
        launch_coordinator(
            args,
            port_file=tmp_path / "port",
            log_path=tmp_path / "coordinator.log",
            env=_env(),
            cwd=REPO_ROOT,
        )
    message = str(caught.value)
    assert "coordinator (before serving /healthz) exited with code 2" in message
    assert "the end of its log:" in message
    assert "bundle file 'inference.tflite' is 8 bytes" in message
    assert caught.value.returncode == 2


def test_a_coordinator_that_never_answers_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    silent = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(60)"]
    with pytest.raises(ProcessError) as caught:
        launch_coordinator(
            [],
            program=silent,
            port_file=tmp_path / "port",
            log_path=tmp_path / "silent.log",
            timeout=1.0,
        )
    assert "not serving /healthz after 1 s" in str(caught.value)
    assert "starting" in str(caught.value)  # the log tail
    assert caught.value.returncode is None


def test_the_launcher_owns_the_port_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--port-file"):
        launch_coordinator(["--port-file", "elsewhere"], port_file=tmp_path / "port")


def test_a_supervisor_owns_what_it_launched(tmp_path: Path) -> None:
    with processes.Supervisor(log_dir=tmp_path / "logs", cwd=REPO_ROOT, env=_env()) as owner:
        coordinator = launch_coordinator(
            _serve_args(tmp_path), port_file=tmp_path / "port", supervisor=owner
        )
        assert owner.children == [coordinator.child]
        assert coordinator.log_path == tmp_path / "logs" / "coordinator.log"
        assert is_healthy(coordinator.url)
    assert coordinator.returncode == 0


def test_waiting_can_name_the_log_in_one_line_instead_of_quoting_it(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; print('error: no bundle'); sys.exit(3)"]
    child = processes.start(failing, name="coordinator", log_path=tmp_path / "c.log")
    try:
        with pytest.raises(ProcessError) as caught:
            wait_until_serving(child, tmp_path / "port", timeout=10, log_tail=False)
    finally:
        processes.stop([child])
    assert str(caught.value) == (
        "coordinator (before serving /healthz) exited with code 3: error: no bundle "
        f"(see {tmp_path / 'c.log'})"
    )
