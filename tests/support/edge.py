"""Helpers for the edge client tests: real bundles, a real coordinator, a real daemon.

- real bundles come from the session fixtures of ``tests.support.bundles``;
- :func:`coordinator`: ``fedge-coordinator serve`` as a subprocess on loopback, with the
  admin helpers the tests need (open a round, create tasks, read the store's counts).
- :func:`start_daemon` / :func:`stop_daemon`: ``fedge-edge`` in a separate process through
  ``tests/support/edge_launcher.py`` (TensorFlow blocked, every request sent captured), always
  killed by the caller's ``finally``.
- taxi-style CSV files with a ``big_tipper`` label, written atomically.

Plain helpers, imported by the test modules (the fixtures live in ``tests.support.bundles``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.client import AdminClient
from coordinator.launch import ClientTlsFiles
from coordinator.tls import TlsFiles
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    REPO_ROOT,
    ServerProcess,
    admin_client,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)

__all__ = [
    "DaemonProcess",
    "admin",
    "coordinator",
    "coordinator_command",
    "launcher_command",
    "register",
    "restart_coordinator",
    "start_daemon",
    "stop_daemon",
    "store_counts",
    "taxi_rows",
    "wait_committed",
    "wait_for",
    "write_csv",
]

LAUNCHER = REPO_ROOT / "tests" / "support" / "edge_launcher.py"
# The coordinator ------------------------------------------------------------------------


@contextlib.contextmanager
def coordinator(
    workdir: Path,
    bundle: Path,
    task: str,
    *extra: str,
    tls: TlsFiles | None = None,
    client_tls: ClientTlsFiles | None = None,
    grpc: bool = False,
) -> Iterator[ServerProcess]:
    """A coordinator on loopback serving ``bundle``: on-demand rounds of one client,
    promoted on commit, polled every second (``tls``, ``client_tls``, ``grpc``: as
    :func:`coordinator.launch.launch_coordinator`'s)."""
    command = coordinator_command(workdir, bundle, task, *extra)
    server = start_server(command, workdir, tls=tls, client_tls=client_tls, grpc=grpc)
    try:
        yield server
    finally:
        stop_server(server)


def coordinator_command(workdir: Path, bundle: Path, task: str, *extra: str) -> list[str]:
    command = serve_command(workdir, bundle, write_admin_token(workdir))
    command[command.index("--task") + 1] = task
    return [
        *command,
        "--on-demand", "--auto-promote", "--clients-per-round", "1", "--min-clients", "1",
        "--deadline-seconds", "120", "--retry-after", "1", *extra,
    ]  # fmt: skip


def restart_coordinator(
    workdir: Path, bundle: Path, task: str, port: int, *extra: str
) -> ServerProcess:
    """The same coordinator (database, artifacts) again, on the same port."""
    return start_server(
        coordinator_command(workdir, bundle, task, "--port", str(port), *extra), workdir
    )


def admin(
    url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    tls: ClientTlsFiles | None = None,
) -> Any:
    """``method path`` of the admin API (a coordinator error when it is refused); ``tls``:
    (CA, certificate, key) for an ``https://`` coordinator."""
    if tls is None:
        with admin_client(url) as client:
            return client.call(method, path, json=body)
    ca, cert, key = tls
    pair = None if cert is None or key is None else (cert, key)
    with AdminClient(url, ADMIN_TOKEN, timeout=HTTP_TIMEOUT, ca_file=ca, cert=pair) as client:
        return client.call(method, path, json=body)


def round_state(url: str, round_id: int, *, tls: ClientTlsFiles | None = None) -> dict[str, Any]:
    document: dict[str, Any] = admin(url, "GET", f"/v1/rounds/{round_id}", tls=tls)
    return document


def wait_committed(
    url: str, round_id: int, *, timeout: float = 60.0, tls: ClientTlsFiles | None = None
) -> dict[str, Any]:
    """The round once committed (AssertionError if it fails or the wait runs out)."""

    def closed() -> dict[str, Any] | None:
        document = round_state(url, round_id, tls=tls)
        return document if document["state"] in ("committed", "failed") else None

    document: dict[str, Any] = wait_for(closed, timeout=timeout, interval=0.2)
    assert document["state"] == "committed", document
    return document


def store_counts(workdir: Path) -> dict[str, int]:
    """What the coordinator's database holds: updates and reports by kind."""
    from coordinator.sqlite_store import SQLiteStore

    store = SQLiteStore(workdir / "state.db")
    try:
        counts = {"updates": store.count_updates()}
        for kind in ("stats", "evaluation", "features"):
            counts[kind] = len(store.list_reports(kind=kind))
        return counts
    finally:
        store.close()


# The daemon ---------------------------------------------------------------------------------


def launcher_command(
    args: Sequence[str], *, capture: Path | None = None, report: Path | None = None
) -> list[str]:
    command = [sys.executable, str(LAUNCHER)]
    if capture is not None:
        command += ["--capture", str(capture)]
    if report is not None:
        command += ["--report", str(report)]
    return [*command, "--", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


def register(
    url: str,
    token_file: Path,
    state: Path,
    *extra: str,
    capture: Path | None = None,
    region: str = "north",
) -> str:
    """``fedge-edge register`` (more flags in ``extra``: ``--ca-file``...) in a
    TensorFlow-free process; returns the client id."""
    args = ["register", "--coordinator", url, "--token-file", str(token_file),
            "--state", str(state), "--region", region, "--json", *extra]  # fmt: skip
    run = subprocess.run(
        launcher_command(args, capture=capture),
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    client_id: str = json.loads(run.stdout)["client_id"]
    return client_id


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.log().count(text)


def start_daemon(
    url: str,
    token_file: Path,
    data: Path,
    state: Path,
    *extra: str,
    capture: Path | None = None,
    report: Path | None = None,
) -> DaemonProcess:
    """``fedge-edge run`` in its own process (TensorFlow blocked); stop it in ``finally``."""
    args = ["run", "--coordinator", url, "--token-file", str(token_file), "--data", str(data),
            "--state", str(state), "--settle-seconds", "0", "--backoff-base", "0.2",
            "--backoff-cap", "1", "--timeout", "5", *extra]  # fmt: skip
    log_path = state.parent / f"daemon-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            launcher_command(args, capture=capture, report=report),
            cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return DaemonProcess(process, log_path)


def stop_daemon(daemon: DaemonProcess, *, timeout: float = 30.0) -> int:
    """SIGTERM, wait (bounded), SIGKILL if it did not stop. Returns the exit code."""
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait(timeout=10)
    return daemon.process.returncode


# Local data -----------------------------------------------------------------------------------


def taxi_rows(start: int, count: int) -> list[dict[str, str]]:
    """Rows of the bundled taxi CSV, with the ``big_tipper`` label added (tips > 20% fare)."""
    from importlib import resources

    text = resources.files("fedge").joinpath("datasets", "taxi.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))[start : start + count]
    for row in rows:
        fare = float(row["fare"] or 0)
        tips = float(row["tips"] or 0)
        row["big_tipper"] = str(int(tips > 0.2 * fare))
        del row["tips"]
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> None:
    """Write ``rows`` with a header, atomically (a hidden temporary file, then rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def csv_lines(path: Path) -> list[str]:
    """The data lines of a CSV file as written."""
    return path.read_text().splitlines()[1:]


def float_encodings(value: float) -> list[bytes]:
    """``value`` as float32/float64, little and big endian."""
    return [np.array([value], dtype=dtype).tobytes() for dtype in ("<f4", ">f4", "<f8", ">f8")]
