"""The daemon's state directory: everything a device keeps across restarts.

::

    STATE/
      client.json           client id, coordinator URL, registration time
      model.json            the model version in use and the one before it
      status.json           what the daemon did last (``fedge-edge status`` reads it)
      trust.json            the coordinator's pinned manifest signing key, its rotations
      bundles/<version>/    verified bundles (the one in use and the previous one)
      personal/             the personal head (safetensors)
      outbox/               replies not yet acknowledged (and failed/ ones)
      secagg/               secure-aggregation secrets of the round in progress (0600)
      compression/          the top-k error-feedback residual (safetensors, 0600)
      policy.json           the owner's privacy policy, when no --policy file is given
      policy_ledger.json    epsilon spent and last answers (:mod:`edge_client.policy`, 0600)

The client token lives in its own file (``--token-file``, mode 0600), never here in
plain text with the rest, and so does the registration key beside it
(``TOKEN_FILE.registration-key``, :func:`registration_key`). Every JSON file is written
atomically.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from edge_client.bundles import BundleStore
from edge_client.compress import FileFeedbackStore
from edge_client.outbox import Outbox
from edge_client.personalize import FileHeadStore
from edge_client.policy import PolicyLedger
from fedge.errors import ConfigError
from fedge.fileio import atomic_write_text

__all__ = ["ClientState", "FileLedgerStore", "read_token", "registration_key", "write_token"]

logger = logging.getLogger(__name__)


def read_token(path: str | Path) -> str:
    """The client token stored in ``path``; ConfigError when missing or empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no token file at {path}: register first (fedge-edge register)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def write_token(path: str | Path, token: str) -> None:
    """Store ``token`` readable by its owner only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, token + "\n", mode=0o600)


def registration_key(token_file: str | Path) -> str:
    """The device's registration key, kept beside its token file (mode 0600) and created
    before the first registration attempt, so that every retry sends the same key and the
    coordinator answers the same client and token instead of creating another client."""
    path = Path(token_file).with_name(Path(token_file).name + ".registration-key")
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        raise ConfigError(f"cannot read the registration key {path}: {exc}") from exc
    if not key:
        key = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, key + "\n", mode=0o600)
    return key


class FileLedgerStore:
    """The policy ledger in one JSON file, mode 0600, replaced atomically. A missing file
    is an empty ledger; a damaged one is a ConfigError (never a refilled budget)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> PolicyLedger:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return PolicyLedger()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the policy ledger {self.path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"the policy ledger {self.path} is not a JSON object")
        return PolicyLedger.from_dict(document)

    def save(self, ledger: PolicyLedger) -> None:
        data = json.dumps(ledger.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_text(self.path, data, mode=0o600)


class ClientState:
    """Typed access to a state directory (created on first use)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the state directory {directory}: {exc}") from exc
        self.bundles = BundleStore(self.directory / "bundles")
        self.outbox = Outbox(self.directory / "outbox")
        self.heads = FileHeadStore(self.directory / "personal")
        self.feedback = FileFeedbackStore(self.directory / "compression")
        self.ledger = FileLedgerStore(self.directory / "policy_ledger.json")
        self.policy_path = self.directory / "policy.json"

    def _read(self, name: str) -> dict[str, Any]:
        path = self.directory / name
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
            return {}
        return document if isinstance(document, dict) else {}

    def _write(self, name: str, document: dict[str, Any]) -> None:
        data = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_text(self.directory / name, data)

    # Identity -----------------------------------------------------------------------------

    def client(self) -> dict[str, Any]:
        return self._read("client.json")

    def save_client(self, *, client_id: str, coordinator: str, registered_at: float) -> None:
        self._write(
            "client.json",
            {"client_id": client_id, "coordinator": coordinator, "registered_at": registered_at},
        )

    # Trust ------------------------------------------------------------------------------

    def trust(self) -> dict[str, Any]:
        """``trust.json``: the pinned signing key and the rotation statements accepted since
        (:mod:`edge_client.trust`); empty when no key is pinned yet."""
        return self._read("trust.json")

    def save_trust(self, document: dict[str, Any]) -> None:
        self._write("trust.json", document)

    # Model in use -------------------------------------------------------------------------

    @property
    def current_version(self) -> str | None:
        value = self._read("model.json").get("current")
        return value if isinstance(value, str) else None

    @property
    def previous_version(self) -> str | None:
        value = self._read("model.json").get("previous")
        return value if isinstance(value, str) else None

    def use_version(self, version: str) -> None:
        """Make ``version`` (already verified) the model in use; keep one previous."""
        current = self.current_version
        if version == current:
            return
        self._write("model.json", {"current": version, "previous": current})
        self.bundles.prune({v for v in (version, current) if v is not None})
        logger.info("model in use: %s (previous: %s)", version, current)

    def current_bundle(self) -> Path | None:
        version = self.current_version
        if version is None or not self.bundles.has(version):
            return None
        return self.bundles.path(version)

    # Status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._read("status.json")

    def save_status(self, document: dict[str, Any]) -> None:
        self._write("status.json", document)
