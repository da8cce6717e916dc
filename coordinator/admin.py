"""Admin operations for the CLI, against a running server or the database directly.

:class:`AdminBackend` is what the CLI needs; :class:`coordinator.client.AdminClient` (over
HTTP) and :class:`DirectAdmin` (on the database) both provide it and return the same JSON
documents (:mod:`coordinator.views`), so ``fedge-coordinator models show v2 --json``
prints the same thing either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from coordinator import admin_api
from coordinator.admin_api import model_detail
from coordinator.alerts import AlertMonitor
from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.errors import CoordinatorError
from coordinator.service import CoordinatorService
from coordinator.store import open_store
from coordinator.views import client_document, model_document, round_document

__all__ = ["AdminBackend", "DirectAdmin"]


class AdminBackend(Protocol):
    def list_models(self) -> list[dict[str, Any]]: ...
    def show_model(self, version: str) -> dict[str, Any]: ...
    def promote(self, version: str) -> dict[str, Any]: ...
    def rollback(self, *, before: str | None = None) -> dict[str, Any]: ...
    def list_rounds(self) -> list[dict[str, Any]]: ...
    def show_round(self, round_id: int) -> dict[str, Any]: ...
    def cancel_round(self, round_id: int) -> dict[str, Any]: ...
    def list_clients(self) -> list[dict[str, Any]]: ...
    def revoke_client(self, client_id: str) -> dict[str, Any]: ...
    def list_quarantined(self, client_id: str | None = None) -> list[dict[str, Any]]: ...
    def release_quarantine(self, client_id: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


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
        return model_detail(self._service, self._service.registry.resolve(version))

    def promote(self, version: str) -> dict[str, Any]:
        return model_detail(self._service, self._service.promote(version))

    def rollback(self, *, before: str | None = None) -> dict[str, Any]:
        return admin_api.rollback(self._service, {} if before is None else {"before": before})

    def register_candidate(self, bundle: str | Path) -> dict[str, Any]:
        """Register ``bundle`` as a candidate version (never promoted here)."""
        model = self._service.registry.register_candidate(bundle)
        return model_document(model, self._service.model_events(model.version))

    @property
    def alerts(self) -> AlertMonitor:
        """The alert rules over this database (for alerts raised outside the server)."""
        return self._service.alerts

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

    def cancel_round(self, round_id: int) -> dict[str, Any]:
        round_ = self._service.cancel_round(round_id)
        return round_document(round_, self._service.store.list_updates(round_id))

    def list_clients(self) -> list[dict[str, Any]]:
        return [client_document(c) for c in self._service.store.list_clients()]

    def revoke_client(self, client_id: str) -> dict[str, Any]:
        return client_document(self._service.revoke_client(client_id))

    def list_quarantined(self, client_id: str | None = None) -> list[dict[str, Any]]:
        query = {} if client_id is None else {"client_id": client_id}
        updates: list[dict[str, Any]] = admin_api.list_quarantine(self._service, query)["updates"]
        return updates

    def release_quarantine(self, client_id: str) -> dict[str, Any]:
        return admin_api.release_quarantine(self._service, client_id)

    def close(self) -> None:
        self._service.store.close()
