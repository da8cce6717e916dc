"""The demo's side of the coordinator: start ``fedge-coordinator serve``, call its admin API.

:func:`serve_command` is the command line (REST on loopback, SQLite, on-demand rounds that
promote on commit, so the demo decides how many rounds run); :func:`wait_until_serving`
waits, bounded, for the port file and ``/healthz``. :class:`AdminApi` is the handful of
admin calls the demo makes with the admin token (``requests``; every failure becomes a
one-line :class:`~simulations.errors.DemoError`).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from fedge import processes
from fedge.errors import ProcessError
from fedge.fileio import atomic_write_text
from simulations.demo.tools import tool_command
from simulations.errors import DemoError

__all__ = ["AdminApi", "CoordinatorPaths", "serve_command", "wait_until_serving"]

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
    def admin_token_file(self) -> Path:
        return self.root / "admin-token"

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
) -> list[str]:
    """``fedge-coordinator serve`` for the demo (see the module docstring)."""
    return [
        *tool_command("fedge-coordinator", "coordinator.cli"), "serve",
        "--task", task, "--bundle", str(bundle),
        "--db", str(paths.db), "--artifacts", str(paths.artifacts),
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(paths.port_file),
        "--admin-token-file", str(paths.admin_token_file),
        "--on-demand", "--auto-promote",
        "--clients-per-round", str(clients_per_round), "--min-clients", str(clients_per_round),
        "--epochs", str(epochs), "--learning-rate", repr(learning_rate),
        "--aggregator", "fedavg", "--deadline-seconds", repr(round_timeout),
        "--retry-after", "1", "--tick-seconds", "0.2", "--seed", str(seed),
    ]  # fmt: skip


def wait_until_serving(process: processes.Child, port_file: Path, *, timeout: float) -> str:
    """The coordinator's URL once its port file exists and ``/healthz`` answers 200."""
    found: list[str] = []

    def healthy() -> bool:
        text = port_file.read_text().strip() if port_file.is_file() else ""
        if not text.isdigit():
            return False
        url = f"http://127.0.0.1:{int(text)}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                found.append(url)
                return True
        return False

    try:
        processes.wait_until(
            healthy, timeout=timeout, watch=[process], interval=_POLL, what="serving"
        )
    except ProcessError as exc:
        raise DemoError(f"{exc} (see {process.log_path})") from None
    return found[-1]


class AdminApi:
    """The admin calls of the demo, over REST with the admin token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = self._session.request(method, self.url + path, json=body, timeout=_TIMEOUT)
        except requests.RequestException as exc:
            raise DemoError(
                f"{method} {path}: the coordinator is unreachable ({type(exc).__name__})"
            ) from exc
        if not response.ok:
            try:
                document = response.json()
                detail = f"{document.get('error')}: {document.get('detail')}"
            except ValueError:
                detail = response.text[:200]
            raise DemoError(f"{method} {path}: HTTP {response.status_code} {detail}")
        return response.json()

    def open_round(self) -> dict[str, Any]:
        document: dict[str, Any] = self._call("POST", "/v1/rounds", {})
        return document

    def round(self, round_id: int) -> dict[str, Any]:
        document: dict[str, Any] = self._call("GET", f"/v1/rounds/{round_id}")
        return document

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models")["models"])

    def model(self, version: str) -> dict[str, Any]:
        document: dict[str, Any] = self._call("GET", f"/v1/models/{version}")
        return document

    def clients(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/clients")["clients"])

    def reports(self, kind: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/reports?kind={kind}")["reports"])

    def create_tasks(self, kind: str, *, deadline_seconds: float) -> list[dict[str, Any]]:
        body = {"kind": kind, "deadline_seconds": deadline_seconds}
        return list(self._call("POST", "/v1/tasks", body)["tasks"])

    def wait_round(
        self, round_id: int, *, timeout: float, check: Callable[[], None]
    ) -> dict[str, Any]:
        """The round once committed; DemoError when it fails or ``timeout`` passes.
        ``check`` runs on every poll (it raises when a process the round needs died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = self.round(round_id)
            if document["state"] == "committed":
                return document
            if document["state"] == "failed":
                raise DemoError(f"round {round_id} failed: {document.get('failure_reason')}")
            check()
            time.sleep(_POLL)
        raise DemoError(f"round {round_id} did not commit within {timeout:.0f} s")
