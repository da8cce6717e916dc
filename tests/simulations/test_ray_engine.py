"""The Ray engine (``fedge-simulate --engine ray``): the native engine's rounds with the
real edge client's ``handle`` on Ray actors.

Acceptance: on the parity workload (digits, 5 clients all taking part, E=1, 3 rounds of
FedAvg, seed 0; ``test_parity.py``) the Ray engine's global head agrees with the native
engine's within 1e-5, both run by ``fedge-simulate`` side by side (Ray starts once in this
module), and every process the command started (the local Ray's ``raylet``,
``gcs_server``, workers) is gone when it exits. With ``--ray-address`` the same command
runs on a cluster started apart (``ray start --head``), which it leaves running. Without
Ray, ``--engine ray`` is one error line and exit code 2; the default engine never imports
Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fedge.weights import Weights
from simulations.pretrain import Pretrained
from simulations.scenario import initial_head
from tests.support import REPO_ROOT
from tests.support.parallel import side_by_side

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning"),
]

TOLERANCE = 1e-5
_ARGS = [
    "--task", "digits", "--clients", "5", "--rounds", "3", "--partition", "iid",
    "--epochs", "1", "--learning-rate", "0.05", "--aggregator", "fedavg", "--seed", "0",
    "--workers", "2", "--no-baseline", "--quiet", "--json",
]  # fmt: skip


class _Descendants:
    """Every process that descends from ``pid`` while it runs (sampled in a thread)."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                for child in self._root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.seen.setdefault(child.pid, child.name())
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> dict[int, str]:
        left = {}
        for pid, name in self.seen.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.status() != psutil.STATUS_ZOMBIE:
                    left[pid] = name
        return left


def _simulate(engine: str, out: Path, cache: Path) -> tuple[Weights, dict[str, Any], set[str]]:
    """``fedge-simulate --engine ENGINE`` in a fresh process; what it left running fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "simulations.cli", *_ARGS, "--engine", engine]
    command += ["--cache-dir", str(cache), "--out", str(out)]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=REPO_ROOT, env=env)
        tree = _Descendants(process.pid)
        try:
            code = process.wait(timeout=300)
        finally:
            tree.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
        stdout.seek(0)
        stderr.seek(0)
        document, errors = stdout.read().decode(), stderr.read().decode(errors="replace")
    assert code == 0, errors[-3000:]
    left = tree.alive()
    for pid in left:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert left == {}, f"{engine}: processes left behind: {left}"
    head = Weights.from_bytes((out / "final_head.safetensors").read_bytes())
    return head, json.loads(document), set(tree.seen.values())


def test_ray_and_native_engines_agree_on_the_parity_workload(
    digits_pretrained: Pretrained, sim_cache: Path, tmp_path: Path
) -> None:
    actor_folders = set(Path(tempfile.gettempdir()).glob("fedge-ray-actor-*"))
    (native, native_doc, _), (ray, ray_doc, ray_names) = side_by_side(
        lambda: _simulate("native", tmp_path / "native", sim_cache),
        lambda: _simulate("ray", tmp_path / "ray", sim_cache),
    )
    # Ray ran for real: its daemons were the command's children, and none is left (above).
    assert {"raylet", "gcs_server"} <= ray_names, ray_names
    # ... and the actors removed their own folders (bundles, secrets) before they stopped.
    assert set(Path(tempfile.gettempdir()).glob("fedge-ray-actor-*")) <= actor_folders
    assert ray_doc["engine"] == "ray"
    assert native.names == ray.names == digits_pretrained.manifest.head
    diff = max(float(np.max(np.abs(native[n] - ray[n]))) for n in native.names)
    print(f"\nparity, digits 5 clients E=1 3 rounds: max |native - ray| = {diff:.3e}")
    assert diff < TOLERANCE
    start = initial_head(digits_pretrained.bundle_dir)
    assert max(float(np.max(np.abs(ray[n] - start[n]))) for n in ray.names) > 1e-2
    assert ray_doc["schedule"] == native_doc["schedule"]
    assert len(ray_doc["rounds"]) == 3
    for mine, theirs in zip(ray_doc["rounds"], native_doc["rounds"], strict=True):
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)
        assert mine["participants"] == theirs["participants"] == 5
    # The evaluate tasks after the last round ran on the actors too, with the same answers.
    mine, theirs = ray_doc["personalization"], native_doc["personalization"]
    assert len(mine["clients"]) == len(theirs["clients"]) == 5
    assert mine["mean_gain"] == pytest.approx(theirs["mean_gain"], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, head: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start exited with {head.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise AssertionError(f"the Ray head did not listen on {port} in {timeout} s")


def test_ray_address_runs_the_clients_on_an_existing_cluster_and_leaves_it_running(
    digits_pretrained: Pretrained, sim_cache: Path, tmp_path: Path
) -> None:
    """A cluster started apart (``ray start --head``, token authentication as a cluster
    has it): ``--ray-address`` is the only change, and the cluster outlives the run."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    logs = Path(tempfile.mkdtemp(prefix="fedge-ray-head-"))
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            str(logs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    cluster = _Descendants(head.pid)
    try:
        _wait_for_port(port, head, timeout=120)
        out = tmp_path / "out"
        result = _cli(
            [
                *_ARGS,
                "--engine",
                "ray",
                "--ray-address",
                f"127.0.0.1:{port}",
                "--cache-dir",
                str(sim_cache),
                "--out",
                str(out),
                "--no-personalization",
            ],
            env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        document = json.loads(result.stdout)
        assert document["engine"] == "ray"
        assert document["details"]["ray_address"] == f"127.0.0.1:{port}"
        assert [r["participants"] for r in document["rounds"]] == [5, 5, 5]
        head_weights = Weights.from_bytes((out / "final_head.safetensors").read_bytes())
        start = initial_head(digits_pretrained.bundle_dir)
        moved = max(float(np.max(np.abs(head_weights[n] - start[n]))) for n in start.names)
        assert moved > 1e-2
        # The run left the cluster as it found it: still up.
        assert head.poll() is None
        assert "raylet" in cluster.alive().values()
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        finally:
            cluster.stop()
            left = cluster.alive()
            for pid in left:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            if head.poll() is None:
                head.kill()
                head.wait()
            shutil.rmtree(logs, ignore_errors=True)
    assert left == {}, f"the Ray head left processes behind: {left}"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def test_ray_engine_without_ray_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    fake = tmp_path / "shadow" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO_ROOT)]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = _cli(["--engine", "ray", "--out", str(tmp_path / "out")], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "the ray engine needs Ray" in lines[0]
    assert "fedge[ray]" in lines[0]
    assert not (tmp_path / "out").exists()


def test_ray_address_needs_the_ray_engine(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = _cli(["--ray-address", "127.0.0.1:6379", "--out", str(tmp_path / "out")], env)
    assert result.returncode == 2, result.stderr
    assert "a Ray address needs the ray engine" in result.stderr
    assert "--ray-address" in result.stderr


def test_the_default_engine_never_imports_ray() -> None:
    code = (
        "import sys, simulations.cli, simulations.runner, simulations.native_engine; "
        "print('ray' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "False"
