"""The model registry: versions, lineage, stages, and the artifacts of each version.

Version ids are ``v1``, ``v2``... in registration order. Exactly one version is in stage
``production`` once the first is registered: it is the base of the next round and what
``/v1/models/current`` serves. :meth:`ModelRegistry.promote` and
:meth:`ModelRegistry.rollback` (and :meth:`ModelRegistry.rollback_before`, to the version
that was production at a given time) are one call each, atomic, and recorded as events.
Every version's served ``manifest.json`` is derived from the imported bundle's: same
schema, feature spec and .tflite files (same sha256), its own weights and version id.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coordinator.artifacts import ArtifactStore
from coordinator.errors import ConflictError, NotFoundError
from coordinator.keys import StaticSigner
from coordinator.privacy import public_privacy
from coordinator.records import ModelEvent, ModelRecord
from coordinator.store import Store
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE, BundleManifest, FileEntry, verify_bundle
from fedge.errors import ConfigError, SignatureError
from fedge.signing import key_id, read_signature_file, verify_manifest
from fedge.weights import Weights

__all__ = ["CLIENT_EVENTS", "SERVER_STATE", "SOURCE_MANIFEST", "ModelRegistry", "iso_time"]

logger = logging.getLogger(__name__)
SERVER_STATE = "server_state"
SOURCE_MANIFEST = "source_manifest"
_CACHE_SIZE = 8
_PRODUCTION_CHANGES = ("promoted", "rolled_back")
"""The events that name the version that became production."""
CLIENT_EVENTS = ("client_revoked", "quarantine_released")
"""The history's events about a client rather than a version (their version is ``""``)."""


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _float_map(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


class ModelRegistry:
    """Registry operations over a Store and an ArtifactStore."""

    def __init__(
        self,
        store: Store,
        artifacts: ArtifactStore,
        now: Callable[[], float],
        signer: StaticSigner | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._now = now
        self.signer = signer if signer is not None else StaticSigner()
        self._cache: OrderedDict[str, Weights] = OrderedDict()
        self._cache_lock = threading.Lock()

    # Reading ------------------------------------------------------------------------------

    def get(self, version: str) -> ModelRecord:
        model = self._store.get_model(version)
        if model is None:
            raise NotFoundError(f"no model version {version!r}", code="model_not_found")
        return model

    def production(self) -> ModelRecord:
        models = self._store.list_models(stage="production")
        if not models:
            raise NotFoundError("no production model: import a bundle first", code="no_model")
        return models[-1]

    def resolve(self, version: str) -> ModelRecord:
        """``current`` (or ``production``) names the production version."""
        return self.production() if version in ("current", "production") else self.get(version)

    def manifest(self, model: ModelRecord) -> BundleManifest:
        return BundleManifest.from_json(self._artifacts.get_bytes(model.artifacts[MANIFEST_NAME]))

    def file(self, model: ModelRecord, name: str) -> tuple[str, Path]:
        """The sha256 and path of bundle file ``name`` of ``model`` (manifest included)."""
        if name not in model.artifacts or name in (SERVER_STATE, SOURCE_MANIFEST):
            raise NotFoundError(
                f"model {model.version} has no file {name!r}; files: {self.file_names(model)}",
                code="file_not_found",
            )
        digest = model.artifacts[name]
        return digest, self._artifacts.path(digest)

    def signature(self, model: ModelRecord) -> str:
        """The manifest signature of ``model``: the one recorded at registration, or (for a
        version registered before manifests were signed) one made now with the current key."""
        if model.signature is not None:
            return model.signature
        return self.signer.sign(self._artifacts.get_bytes(model.artifacts[MANIFEST_NAME]))

    def file_names(self, model: ModelRecord) -> list[str]:
        return sorted(n for n in model.artifacts if n not in (SERVER_STATE, SOURCE_MANIFEST))

    def weights(self, model: ModelRecord) -> Weights:
        digest = model.artifacts[WEIGHTS_FILE]
        with self._cache_lock:
            if digest in self._cache:
                self._cache.move_to_end(digest)
                return self._cache[digest]
        weights = Weights.from_bytes(self._artifacts.get_bytes(digest))
        with self._cache_lock:
            self._cache[digest] = weights
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return weights

    def events(self, version: str | None = None) -> list[ModelEvent]:
        """The history of ``version``; all of it when None (``""``: the operators' actions
        on clients, :data:`CLIENT_EVENTS`)."""
        return self._store.list_model_events(version)

    def record_client_action(
        self, kind: str, client_id: str, *, detail: str = "", actor: str | None = None
    ) -> ModelEvent:
        """Record an action on a client in the registry's history (one audit log for
        models and clients): an event of ``kind`` (one of :data:`CLIENT_EVENTS`) with no
        version (``""``), ``client <id>`` and ``detail`` as its detail, and ``actor`` the
        operator's token id (None: the coordinator itself or a local command)."""
        if kind not in CLIENT_EVENTS:
            raise ValueError(f"kind must be one of {CLIENT_EVENTS}, got {kind!r}")
        text = f"client {client_id}" + (f": {detail}" if detail else "")
        return self._store.add_model_event(
            ModelEvent(0, "", kind, self._now(), detail=text, actor=actor)
        )

    # Writing ------------------------------------------------------------------------------

    def import_bundle(
        self,
        directory: str | Path,
        *,
        task: str,
        trusted_key: Ed25519PublicKey | None = None,
        candidate: bool = False,
    ) -> ModelRecord:
        """Verify a bundle, store its files, register it (idempotent for the same bundle).

        The first version becomes production (unless ``candidate``: then it stays a
        candidate until promoted); a later import is a candidate whose parent is the
        production version. Lineage comes from ``metadata["training_record"]``. An
        imported bundle counts as trained on public data: its privacy record says epsilon 0
        (:func:`coordinator.privacy.public_privacy`). With ``trusted_key`` the bundle's
        ``manifest.sig`` must verify against that key (ConfigError otherwise).
        """
        manifest = verify_bundle(directory)
        if manifest.task != task:
            raise ConfigError(f"the bundle is for task {manifest.task!r}, not {task!r}")
        root = Path(directory)
        if trusted_key is not None:
            try:
                verify_manifest(
                    (root / MANIFEST_NAME).read_bytes(),
                    read_signature_file(root),
                    {key_id(trusted_key): trusted_key},
                )
            except SignatureError as exc:
                raise ConfigError(f"bundle {root} refused: {exc}") from exc
        source = self._artifacts.put_file(root / MANIFEST_NAME)
        for model in self._store.list_models():
            if model.artifacts.get(SOURCE_MANIFEST) == source:
                logger.info("bundle %s is already registered as %s", root, model.version)
                return model
        files = {name: self._artifacts.put_file(root / name) for name in manifest.files}
        record = manifest.metadata.get("training_record", {})
        record = record if isinstance(record, Mapping) else {}
        metadata = {**manifest.metadata, "source_model_version": manifest.model_version}
        with self._store.transaction():
            models = self._store.list_models()
            parent = self.production() if models else None
            model = self._register(
                manifest,
                files={n: FileEntry(d, manifest.files[n].size) for n, d in files.items()},
                metadata=metadata,
                extra_artifacts={SOURCE_MANIFEST: source},
                parent=parent.version if parent else None,
                training_job=_text(record.get("training_job")),
                data_fingerprint=_text(record.get("data_fingerprint")),
                trainer_host=_text(record.get("host")),
                trainer_user=_text(record.get("user")),
                metrics=_float_map(record.get("metrics")),
                slice_metrics=_slice_map(record.get("slice_metrics")),
                privacy=public_privacy(),
            )
            if parent is None and not candidate:
                model = self.promote(model.version, detail="first version")
        logger.info("registered bundle %s as %s (%s)", root, model.version, model.stage)
        return model

    def register_candidate(
        self, directory: str | Path, *, trusted_key: Ed25519PublicKey | None = None
    ) -> ModelRecord:
        """Register a bundle as a candidate version, never promoted (not even the first).

        The bundle's task must be the production version's task when there is one
        (ConfigError otherwise); its parent is the production version, if any.
        """
        task = verify_bundle(directory).task
        models = self._store.list_models(stage="production")
        if models:
            expected = self.manifest(models[-1]).task
            if task != expected:
                raise ConfigError(
                    f"the bundle is for task {task!r}, but production {models[-1].version} "
                    f"is for {expected!r}"
                )
        return self.import_bundle(directory, task=task, trusted_key=trusted_key, candidate=True)

    def register_round_version(
        self,
        parent: ModelRecord,
        weights: Weights,
        server_state: bytes,
        **lineage: Any,
    ) -> ModelRecord:
        """A new candidate version: ``weights`` on top of ``parent``'s bundle files."""
        body = weights.to_bytes()
        digest = self._artifacts.put_bytes(body)
        state = self._artifacts.put_bytes(server_state)
        base = self.manifest(parent)
        metadata = {**base.metadata, "parent_version": parent.version}
        if lineage.get("round_id") is not None:
            metadata["round_id"] = lineage["round_id"]
        return self._register(
            base,
            files={WEIGHTS_FILE: FileEntry(digest, len(body))},
            metadata=metadata,
            extra_artifacts={SERVER_STATE: state},
            parent=parent.version,
            **lineage,
        )

    def _register(
        self,
        manifest: BundleManifest,
        *,
        files: Mapping[str, FileEntry],
        metadata: Mapping[str, Any],
        extra_artifacts: Mapping[str, str],
        **fields: Any,
    ) -> ModelRecord:
        with self._store.transaction():
            seq = len(self._store.list_models()) + 1
            version, now = f"v{seq}", self._now()
            derived = manifest.derive(
                model_version=version, files=files, created_at=iso_time(now), metadata=metadata
            )
            manifest_bytes = derived.to_json().encode("utf-8")
            manifest_sha = self._artifacts.put_bytes(manifest_bytes)
            artifacts = {n: e.sha256 for n, e in derived.files.items()}
            artifacts.update({MANIFEST_NAME: manifest_sha, **extra_artifacts})
            key = self.signer.key
            model = ModelRecord(
                version=version,
                seq=seq,
                stage="candidate",
                created_at=now,
                artifacts=artifacts,
                signing_key_id=key.key_id,
                signature=key.sign(manifest_bytes),
                **fields,
            )
            self._store.add_model(model)
            self._store.add_model_event(ModelEvent(0, version, "registered", now))
            return model

    def promote(self, version: str, *, detail: str = "", actor: str | None = None) -> ModelRecord:
        """Make ``version`` production (the old production is archived). Idempotent.
        ``actor``: the operator's token id, recorded on the event."""
        with self._store.transaction():
            target = self.get(version)
            if target.stage == "production":
                return target
            current = self._store.list_models(stage="production")
            now = self._now()
            for old in current:
                self._store.save_model(dataclasses.replace(old, stage="archived"))
            promoted = dataclasses.replace(target, stage="production", promoted_at=now)
            self._store.save_model(promoted)
            previous = current[-1].version if current else None
            self._store.add_model_event(
                ModelEvent(
                    0, version, "promoted", now, previous=previous, detail=detail, actor=actor
                )
            )
            logger.info("promoted %s (previous production: %s)", version, previous)
            return promoted

    def rollback(self, *, reason: str = "", actor: str | None = None) -> ModelRecord:
        """Make the version that was production before the current one production again;
        ``reason`` (e.g. the alert that asked for it) is added to the event's detail."""
        with self._store.transaction():
            current = self.production()
            promotions = [e for e in self.events(current.version) if e.kind == "promoted"]
            previous = promotions[-1].previous if promotions else None
            if previous is None:
                raise ConflictError(
                    f"{current.version} has no previous production version to roll back to",
                    code="no_previous_version",
                )
            detail = f"rolled back from {current.version}"
            return self._restore(current, self.get(previous), _joined(detail, reason), actor)

    def rollback_before(
        self, when: float, *, reason: str = "", actor: str | None = None
    ) -> ModelRecord:
        """Make production the version that was production at ``when`` (seconds since the
        epoch): the one the last promotion or rollback before ``when`` made production (a
        change at exactly ``when`` is not before it). ConflictError ``no_version_before``
        when no version was production then. When that version is production now, nothing
        changes and no event is recorded."""
        with self._store.transaction():
            changes = sorted(
                (e for e in self.events() if e.kind in _PRODUCTION_CHANGES and e.at < when),
                key=lambda e: (e.at, e.seq),
            )
            if not changes:
                raise ConflictError(
                    f"no version was production before {iso_time(when)}",
                    code="no_version_before",
                )
            current = self.production()
            target = self.get(changes[-1].version)
            if target.version == current.version:
                return current
            detail = (
                f"rolled back from {current.version} to the production version of {iso_time(when)}"
            )
            return self._restore(current, target, _joined(detail, reason), actor)

    def _restore(
        self, current: ModelRecord, target: ModelRecord, detail: str, actor: str | None
    ) -> ModelRecord:
        """``target`` becomes production in place of ``current`` (a ``rolled_back`` event);
        the caller holds a store transaction."""
        now = self._now()
        self._store.save_model(dataclasses.replace(current, stage="archived"))
        restored = dataclasses.replace(target, stage="production", promoted_at=now)
        self._store.save_model(restored)
        self._store.add_model_event(
            ModelEvent(
                0,
                target.version,
                "rolled_back",
                now,
                previous=current.version,
                detail=detail,
                actor=actor,
            )
        )
        logger.warning("rolled back from %s to %s", current.version, target.version)
        return restored

    def reject(
        self, version: str, reason: str, *, gate: Mapping[str, Any] | None = None
    ) -> ModelRecord:
        """Keep candidate ``version`` as a rejected candidate: stage ``rejected``, an event
        ``rejected`` with ``reason`` as its detail, and (when given) the gate's evaluation
        on its record. Production is unchanged. Idempotent; a version that is production,
        archived or rejected already conflicts (``not_a_candidate``) unless it is rejected."""
        with self._store.transaction():
            model = self.get(version)
            if model.stage == "rejected":
                return model
            if model.stage != "candidate":
                raise ConflictError(
                    f"{version} is {model.stage}; only a candidate can be rejected",
                    code="not_a_candidate",
                )
            rejected = dataclasses.replace(
                model, stage="rejected", gate=model.gate if gate is None else gate
            )
            self._store.save_model(rejected)
            self._store.add_model_event(
                ModelEvent(0, version, "rejected", self._now(), detail=reason)
            )
            logger.warning("rejected candidate %s: %s", version, reason)
            return rejected

    def set_gate(self, version: str, gate: Mapping[str, Any]) -> ModelRecord:
        """Record the gate's evaluation (its progress or result) on ``version``."""
        with self._store.transaction():
            model = dataclasses.replace(self.get(version), gate=gate)
            self._store.save_model(model)
            return model

    def mark_deployed(self, version: str) -> None:
        """Record the first time a version was handed to clients (its first round)."""
        with self._store.transaction():
            model = self.get(version)
            if model.deployed_at is None:
                self._store.save_model(dataclasses.replace(model, deployed_at=self._now()))


def _joined(detail: str, reason: str) -> str:
    return f"{detail}: {reason}" if reason else detail


def _slice_map(value: object) -> dict[str, dict[str, float]]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): _float_map(v) for k, v in value.items()}


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
