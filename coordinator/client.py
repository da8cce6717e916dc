"""A client of the coordinator's admin API over HTTP (``requests``), for operators' tools.

::

    with AdminClient("http://127.0.0.1:8080", token) as admin:
        round_ = admin.open_round({"epochs": 2})
        admin.show_round(round_["round_id"])["state"]
        admin.promote("v3")

Over HTTPS, ``ca_file`` names the CA that signed the coordinator's certificate (else the
system's roots), and ``cert=(certificate, key)`` the client certificate a coordinator
with mutual TLS asks for.

Every method returns the JSON document of the REST API (the same documents
:mod:`coordinator.views` builds), so it is also an :class:`~coordinator.admin.AdminBackend`.
Failures are coordinator errors, mapped in :meth:`AdminClient.call` only: an error answer
becomes the :class:`~coordinator.errors.CoordinatorError` subclass of its status (404
:class:`~coordinator.errors.NotFoundError`, 409 :class:`~coordinator.errors.ConflictError`,
...) with the server's ``error`` code; a coordinator that cannot be reached or answers
5xx is :class:`~coordinator.errors.CoordinatorUnavailableError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from coordinator.errors import (
    AuthenticationError,
    ConflictError,
    CoordinatorError,
    CoordinatorUnavailableError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
    UpdateRejectedError,
)

__all__ = ["DEFAULT_TIMEOUT", "AdminClient", "ClientCert", "is_healthy"]

ClientCert = tuple[str | os.PathLike[str], str | os.PathLike[str]]
"""A client certificate and its key (PEM files), for mutual TLS."""

DEFAULT_TIMEOUT = 30.0
"""Seconds one request may take (connect and read)."""

_BY_STATUS: dict[int, type[CoordinatorError]] = {
    cls.status: cls
    for cls in (
        CoordinatorError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        UpdateRejectedError,
    )
}


def _verify(ca_file: str | os.PathLike[str] | None) -> bool | str:
    return True if ca_file is None else os.fspath(ca_file)


def _cert(cert: ClientCert | None) -> tuple[str, str] | None:
    return None if cert is None else (os.fspath(cert[0]), os.fspath(cert[1]))


def is_healthy(
    url: str,
    *,
    timeout: float = 2.0,
    ca_file: str | os.PathLike[str] | None = None,
    cert: ClientCert | None = None,
) -> bool:
    """Whether the coordinator at ``url`` answers ``GET /healthz`` with 200 (no token);
    over HTTPS verified against ``ca_file`` (else the system's roots), presenting ``cert``."""
    with contextlib.suppress(requests.RequestException):
        response = requests.get(
            url.rstrip("/") + "/healthz",
            timeout=timeout,
            verify=_verify(ca_file),
            cert=_cert(cert),
        )
        return response.status_code == 200
    return False


def _refusal(response: requests.Response) -> CoordinatorError:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        code = str(document.get("error", "error"))
        detail = str(document.get("detail", response.reason))
    else:
        code, detail = "error", (response.text[:200] or str(response.reason))
    message = f"HTTP {response.status_code} {code}: {detail}"
    if response.status_code >= 500:
        return CoordinatorUnavailableError(message, code=code)
    return _BY_STATUS.get(response.status_code, CoordinatorError)(message, code=code)


class AdminClient:
    """The admin API of the coordinator at ``base_url``, authenticated with ``token``.

    One ``requests.Session`` (connection reuse); :meth:`close` it, or use ``with``. Over
    HTTPS the coordinator's certificate is verified against ``ca_file`` (else the system's
    roots) and ``cert`` is presented to a coordinator that requires client certificates.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: str | os.PathLike[str] | None = None,
        cert: ClientCert | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        # Given with each request: a session's own ``verify`` loses to REQUESTS_CA_BUNDLE.
        self._verify = _verify(ca_file)
        self._cert = _cert(cert)

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str | float] | None = None,
    ) -> Any:
        """``method path`` (e.g. ``GET /v1/models``) and its JSON answer; the one place
        where HTTP and its failures become coordinator errors."""
        where = f"{method} {path}"
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                json=json,
                params=params,
                timeout=self.timeout,
                verify=self._verify,
                cert=self._cert,
            )
        except requests.RequestException as exc:
            raise CoordinatorUnavailableError(
                f"cannot reach {self.base_url} ({where}): {type(exc).__name__}",
                code="unreachable",
            ) from exc
        if not response.ok:
            raise _refusal(response)
        try:
            return response.json()
        except ValueError as exc:
            raise CoordinatorError(
                f"{where}: the answer is not JSON (is {self.base_url} a coordinator?)",
                code="bad_response",
            ) from exc

    def _document(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        document = self.call(method, path, **kwargs)
        if not isinstance(document, dict):
            raise CoordinatorError(f"{method} {path}: expected a JSON object", code="bad_response")
        return document

    def _listing(
        self, path: str, key: str, *, method: str = "GET", **kwargs: Any
    ) -> list[dict[str, Any]]:
        items = self._document(method, path, **kwargs).get(key)
        if not isinstance(items, list):
            raise CoordinatorError(
                f"{method} {path}: expected a list of {key}", code="bad_response"
            )
        return items

    # Service ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: status and the production model version."""
        return self._document("GET", "/healthz")

    # Clients and tasks --------------------------------------------------------------------

    def list_clients(self) -> list[dict[str, Any]]:
        return self._listing("/v1/clients", "clients")

    def revoke_client(self, client_id: str) -> dict[str, Any]:
        """Revoke a client (its token stops working, it is never selected again, its
        pending tasks expire); the client, with ``revoked_at``."""
        return self._document("POST", f"/v1/clients/{quote(client_id, safe='')}/revoke")

    # Enrollment tokens --------------------------------------------------------------------

    def create_enrollment_token(
        self,
        *,
        label: str | None = None,
        expires_in: float | None = None,
        max_uses: int | None = None,
    ) -> dict[str, Any]:
        """A managed enrollment token: its record and ``token``, the only time it is shown."""
        body: dict[str, Any] = {}
        for name, value in (("label", label), ("expires_in", expires_in), ("max_uses", max_uses)):
            if value is not None:
                body[name] = value
        return self._document("POST", "/v1/enrollment-tokens", json=body)

    def list_enrollment_tokens(self) -> list[dict[str, Any]]:
        """The managed enrollment tokens (never their values)."""
        return self._listing("/v1/enrollment-tokens", "enrollment_tokens")

    def revoke_enrollment_token(self, token_id: str) -> dict[str, Any]:
        """Revoke an enrollment token: no client registers with it any more."""
        return self._document("POST", f"/v1/enrollment-tokens/{quote(token_id, safe='')}/revoke")

    def create_tasks(
        self,
        kind: str,
        *,
        client_ids: Sequence[str] | None = None,
        deadline_seconds: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Ask clients (all registered ones by default) for an evaluation, statistics or
        embeddings (``kind`` evaluate, stats, features); the tasks created."""
        body: dict[str, Any] = {"kind": kind}
        if client_ids is not None:
            body["client_ids"] = list(client_ids)
        if deadline_seconds is not None:
            body["deadline_seconds"] = deadline_seconds
        if config is not None:
            body["config"] = dict(config)
        return self._listing("/v1/tasks", "tasks", method="POST", json=body)

    # Rounds -------------------------------------------------------------------------------

    def open_round(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Open a round now (on-demand mode), with ``overrides`` of the round defaults."""
        return self._document("POST", "/v1/rounds", json=dict(overrides or {}))

    def list_rounds(self) -> list[dict[str, Any]]:
        return self._listing("/v1/rounds", "rounds")

    def show_round(self, round_id: int) -> dict[str, Any]:
        """One round with its accepted updates."""
        return self._document("GET", f"/v1/rounds/{int(round_id)}")

    def cancel_round(self, round_id: int) -> dict[str, Any]:
        """Cancel an active round (it fails, "cancelled by an operator"); the round."""
        return self._document("POST", f"/v1/rounds/{int(round_id)}/cancel")

    # Models -------------------------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        return self._listing("/v1/models", "models")

    def show_model(self, version: str) -> dict[str, Any]:
        """One version (``vN``, or ``current`` for production) with its events."""
        return self._document("GET", f"/v1/models/{quote(version, safe='')}")

    def promote(self, version: str) -> dict[str, Any]:
        """Make ``version`` production; the promoted version."""
        return self._document("POST", f"/v1/models/{quote(version, safe='')}/promote")

    def rollback(self, *, before: str | None = None) -> dict[str, Any]:
        """Make the previous production version production again, or with ``before`` (an
        ISO 8601 time) the version that was production then; that version."""
        body = None if before is None else {"before": before}
        return self._document("POST", "/v1/models/rollback", json=body)

    # Quarantine ---------------------------------------------------------------------------

    def list_quarantined(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """The updates held in quarantine (of ``client_id`` when given), with their reasons."""
        params = {} if client_id is None else {"client_id": client_id}
        return self._listing("/v1/quarantine", "updates", params=params)

    def release_quarantine(self, client_id: str) -> dict[str, Any]:
        """Release the client's quarantined updates; ``{client_id, released}``."""
        return self._document("POST", f"/v1/quarantine/{quote(client_id, safe='')}/release")

    # Monitoring ---------------------------------------------------------------------------

    def list_reports(
        self,
        kind: str | None = None,
        *,
        task_id: str | None = None,
        model_version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Client reports, by task kind (evaluate, stats, features), task or model version."""
        wanted = {"kind": kind, "task_id": task_id, "model_version": model_version}
        params = {name: value for name, value in wanted.items() if value is not None}
        return self._listing("/v1/reports", "reports", params=params)

    def list_alerts(
        self, kind: str | None = None, *, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Alerts, by kind and since a time (seconds since the epoch)."""
        params: dict[str, str | float] = {}
        if kind is not None:
            params["kind"] = kind
        if since is not None:
            params["since"] = since
        return self._listing("/v1/alerts", "alerts", params=params)

    # Lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
