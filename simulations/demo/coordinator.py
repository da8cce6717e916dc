"""The demo's side of the coordinator: start ``fedge-coordinator serve``, call its admin API.

:func:`serve_command` is the command line (REST and gRPC on loopback, SQLite, on-demand
rounds that promote on commit, so the demo decides how many rounds run);
:func:`wait_until_serving` waits, bounded, for the port file and ``/healthz``
(:mod:`coordinator.launch`), and :func:`wait_for_grpc` for the gRPC port file.
:class:`AdminApi` is the coordinator's admin client (:class:`coordinator.client.AdminClient`,
whose failures are coordinator errors) with the demo's wait for a round.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator import launch
from coordinator.client import AdminClient
from coordinator.config import DEFAULT_MIN_COHORT
from fedge import processes
from fedge.errors import ProcessError
from fedge.fileio import atomic_write_text
from simulations.demo.tools import tool_command
from simulations.errors import DemoError

__all__ = ["AdminApi", "CoordinatorPaths", "serve_command", "wait_for_grpc", "wait_until_serving"]

_TIMEOUT = 30.0
_POLL = 0.1


@dataclass(frozen=True)
class CoordinatorPaths:
    """Where the coordinator keeps its state, under one directory."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    @property
    def grpc_port_file(self) -> Path:
        return self.root / "grpc-port"

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin-token"

    @property
    def enrollment_token_file(self) -> Path:
        return self.root / "enrollment-token"

    def write_enrollment_token(self) -> None:
        """A fresh enrollment token, written owner-only: the devices register with it."""
        self.root.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        atomic_write_text(self.enrollment_token_file, token + "\n", mode=0o600)

    def write_admin_token(self) -> str:
        """A fresh admin token, written owner-only; returned for the demo's own calls."""
        self.root.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        path = self.admin_token_file
        atomic_write_text(path, token + "\n", mode=0o600)
        return token


def serve_command(
    paths: CoordinatorPaths,
    *,
    task: str,
    bundle: Path,
    clients_per_round: int,
    epochs: int,
    learning_rate: float,
    round_timeout: float,
    seed: int,
    secure_aggregation: bool,
) -> list[str]:
    """``fedge-coordinator serve`` for the demo (see the module docstring): REST and gRPC
    (a free port, written to ``paths.grpc_port_file``); with ``secure_aggregation`` every
    round runs SecAgg+."""
    secure = ["--secure-aggregation"] if secure_aggregation else []
    return [
        *tool_command("fedge-coordinator", "coordinator.cli"), "serve",
        "--task", task, "--bundle", str(bundle),
        "--db", str(paths.db), "--artifacts", str(paths.artifacts),
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(paths.port_file),
        "--grpc-port", "0", "--grpc-port-file", str(paths.grpc_port_file),
        "--admin-token-file", str(paths.admin_token_file),
        "--enrollment-token-file", str(paths.enrollment_token_file),
        "--on-demand", "--auto-promote",
        "--clients-per-round", str(clients_per_round), "--min-clients", str(clients_per_round),
        "--epochs", str(epochs), "--learning-rate", repr(learning_rate),
        "--aggregator", "fedavg", "--deadline-seconds", repr(round_timeout),
        "--retry-after", "1", "--tick-seconds", "0.2", "--seed", str(seed), *secure,
        # The evaluate step asks every device, and the demo may run fewer than the default
        # cohort of ten: the cohort is its clients per round (at most the default).
        "--min-cohort", str(min(clients_per_round, DEFAULT_MIN_COHORT)),
    ]  # fmt: skip


def wait_until_serving(process: processes.Child, port_file: Path, *, timeout: float) -> str:
    """The coordinator's URL once its port file exists and ``/healthz`` answers 200."""
    try:
        return launch.wait_until_serving(process, port_file, timeout=timeout, log_tail=False)
    except ProcessError as exc:
        raise DemoError(str(exc)) from None


def wait_for_grpc(process: processes.Child, port_file: Path, *, timeout: float) -> str:
    """The coordinator's ``grpc://`` URL once it has written its gRPC port file."""
    found: list[int] = []

    def written() -> bool:
        try:
            text = port_file.read_text().strip()
        except OSError:
            return False
        if text.isdigit():
            found.append(int(text))
        return bool(found)

    try:
        processes.wait_until(
            written, timeout=timeout, watch=[process], interval=_POLL, what="serving gRPC"
        )
    except ProcessError as exc:
        raise DemoError(str(exc)) from None
    return f"grpc://127.0.0.1:{found[-1]}"


class AdminApi(AdminClient):
    """The coordinator's admin client with the admin token, and the demo's wait for a round."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, timeout=_TIMEOUT)

    @property
    def url(self) -> str:
        return self.base_url

    def wait_round(
        self, round_id: int, *, timeout: float, check: Callable[[], None]
    ) -> dict[str, Any]:
        """The round once committed; DemoError when it fails or ``timeout`` passes.
        ``check`` runs on every poll (it raises when a process the round needs died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = self.show_round(round_id)
            if document["state"] == "committed":
                return document
            if document["state"] == "failed":
                raise DemoError(f"round {round_id} failed: {document.get('failure_reason')}")
            check()
            time.sleep(_POLL)
        raise DemoError(f"round {round_id} did not commit within {timeout:.0f} s")
