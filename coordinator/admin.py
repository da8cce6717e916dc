"""Admin operations for the CLI, against a running server (HTTP) or the database directly.

Both backends return the same JSON documents (:mod:`coordinator.views`), so
``fedge-coordinator models show v2 --json`` prints the same thing either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.errors import CoordinatorError
from coordinator.service import CoordinatorService
from coordinator.store import open_store
from coordinator.views import model_document, round_document

__all__ = ["AdminBackend", "AdminRequestError", "DirectAdmin", "HttpAdmin"]


class AdminRequestError(CoordinatorError):
    """The server refused an admin request or could not be reached."""


class AdminBackend(Protocol):
    def list_models(self) -> list[dict[str, Any]]: ...
    def show_model(self, version: str) -> dict[str, Any]: ...
    def promote(self, version: str) -> dict[str, Any]: ...
    def rollback(self) -> dict[str, Any]: ...
    def list_rounds(self) -> list[dict[str, Any]]: ...
    def show_round(self, round_id: int) -> dict[str, Any]: ...
    def close(self) -> None: ...


class HttpAdmin:
    """Admin calls over the REST API with the admin token."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        import requests

        self._url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout

    def _call(self, method: str, path: str) -> dict[str, Any]:
        import requests

        try:
            response = self._session.request(method, self._url + path, timeout=self._timeout)
        except requests.RequestException as exc:
            raise AdminRequestError(
                f"cannot reach {self._url}: {type(exc).__name__}", code="unreachable"
            ) from exc
        try:
            document = response.json()
        except ValueError:
            document = {}
        if not response.ok:
            error = document.get("error", "error") if isinstance(document, dict) else "error"
            detail = document.get("detail", response.reason) if isinstance(document, dict) else ""
            raise AdminRequestError(f"HTTP {response.status_code} {error}: {detail}", code=error)
        if not isinstance(document, dict):
            raise AdminRequestError(f"unexpected response from {path}", code="bad_response")
        return document

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models")["models"])

    def show_model(self, version: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{version}")

    def promote(self, version: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/models/{version}/promote")

    def rollback(self) -> dict[str, Any]:
        return self._call("POST", "/v1/models/rollback")

    def list_rounds(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/rounds")["rounds"])

    def show_round(self, round_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/rounds/{round_id}")

    def close(self) -> None:
        self._session.close()


class DirectAdmin:
    """Admin calls on the database and artifact directory (the server may be running: the
    store serialises writers). Never advances rounds: only the server does that."""

    def __init__(self, db: str, artifacts: str | Path) -> None:
        store = open_store(db)
        self._service = CoordinatorService(
            store=store,
            artifacts=ArtifactStore(artifacts),
            config=ServiceConfig(task="admin", rounds=RoundConfig(continuous=False)),
        )

    def list_models(self) -> list[dict[str, Any]]:
        return [model_document(m) for m in self._service.store.list_models()]

    def show_model(self, version: str) -> dict[str, Any]:
        model = self._service.registry.resolve(version)
        return model_document(model, self._service.model_events(model.version))

    def promote(self, version: str) -> dict[str, Any]:
        model = self._service.promote(version)
        return model_document(model, self._service.model_events(model.version))

    def rollback(self) -> dict[str, Any]:
        model = self._service.rollback()
        return model_document(model, self._service.model_events(model.version))

    def list_rounds(self) -> list[dict[str, Any]]:
        store = self._service.store
        return [
            round_document(r, store.list_updates(r.round_id), detail=False)
            for r in store.list_rounds()
        ]

    def show_round(self, round_id: int) -> dict[str, Any]:
        round_ = self._service.store.get_round(round_id)
        if round_ is None:
            raise CoordinatorError(f"no round {round_id}", code="round_not_found")
        return round_document(round_, self._service.store.list_updates(round_id))

    def close(self) -> None:
        self._service.store.close()
