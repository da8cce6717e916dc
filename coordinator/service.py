"""The coordinator service, transport-agnostic: clients, tasks, update intake, reports,
rounds, the registry, alerts. REST (and gRPC) adapters only decode, call and encode.

Time and randomness are injected (``now``, ``rng``) so tests drive rounds with a fake
clock; a ``selector`` (:class:`~coordinator.selection.ClientSelector`) decides who trains
in each round. Deadlines are checked on every call (:meth:`tick`); a server process also
ticks from a timer thread. One re-entrant lock serialises state transitions; the expensive
part of an upload (decoding and checking the tensors, writing the artifact) runs outside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coordinator.alerts import AlertMonitor
from coordinator.artifacts import ArtifactStore
from coordinator.auth import hash_token, new_token, registration_identity, token_matches
from coordinator.config import ServiceConfig
from coordinator.errors import (
    AuthenticationError,
    ConflictError,
    CoordinatorError,
    NotFoundError,
    PermissionDeniedError,
    describe,
)
from coordinator.gate import Gate, HoldoutScorer, HoldoutSet
from coordinator.intake import (
    UpdateReceipt,
    UpdateSubmission,
    check_idempotency_key,
    validate_update,
)
from coordinator.keys import StaticSigner
from coordinator.leadership import Leadership, SoleLeadership
from coordinator.logsafe import printable
from coordinator.quarantine import Quarantine
from coordinator.records import (
    ACTIVE_ROUND_STATES,
    ClientRecord,
    EnrollmentTokenRecord,
    ModelEvent,
    ModelRecord,
    RejectionRecord,
    ReportRecord,
    RoundRecord,
    TaskRecord,
    UpdateRecord,
)
from coordinator.registry import ModelRegistry
from coordinator.reports import ReportIntake, complete_task
from coordinator.rounds import RoundEngine
from coordinator.secagg import SecAggIntake, SecAggReceipt
from coordinator.selection import ClientSelector, RandomSelector
from coordinator.store import Store
from fedge.errors import FedgeError
from fedge.messages import EvalReport, FeatureBatch, StatsReport, Task, TaskConfig

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2

__all__ = ["CoordinatorService", "IssuedEnrollmentToken", "Registration", "document_bytes"]

logger = logging.getLogger(__name__)
_MAX_ROUND_ID = 1 << 63
MAX_DECLINE_REASON = 500
"""The longest reason a client may give for declining a task."""
SEEN_WRITE_SECONDS = 60.0
"""A client's last-seen time is written to the store at most this often (or when its
transport changes): the dashboard's "last seen" is that much late at most."""
_SEEN_CACHE = 1_000_000
_PROPOSED_TOKEN = re.compile(r"fedge_[A-Za-z0-9_-]{43}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,63}")


def document_bytes(document: Mapping[str, Any]) -> int:
    """The size of ``document`` as compact JSON, as the REST transport serves it."""
    return len(json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8"))


@dataclass(frozen=True)
class Registration:
    """A new client's id and its token; the token is shown once and stored only hashed."""

    client_id: str
    token: str = dataclasses.field(repr=False)
    created: bool = True
    """False when a registration key named a client registered before (a retry)."""


@dataclass(frozen=True)
class IssuedEnrollmentToken:
    """A new managed enrollment token: its record and the token, shown once."""

    record: EnrollmentTokenRecord
    token: str = dataclasses.field(repr=False)


def _replayed_registration(
    client: ClientRecord, token: str, region: str | None, labels: Mapping[str, str]
) -> Registration:
    """The answer to a registration whose key named ``client`` already."""
    if not token_matches(token, client.token_hash):
        raise ConflictError(
            f"the registration key does not match client {client.client_id}",
            code="registration_key_conflict",
        )
    if client.revoked:
        raise ConflictError(
            f"client {client.client_id} was revoked; register with a new key",
            code="client_revoked",
        )
    if client.region != region or dict(client.metadata) != dict(labels):
        raise ConflictError(
            f"this registration key registered client {client.client_id} with another region "
            "or metadata",
            code="registration_key_reused",
        )
    logger.info("registration retried: client %s already exists", client.client_id)
    return Registration(client.client_id, token, created=False)


class CoordinatorService:
    """Everything the coordinator does, callable in-process.
    ``quarantine_schema`` is the schema client statistics are validated against before
    their updates are aggregated (None: inferred, :mod:`coordinator.quarantine`).

    ``rng`` defaults to a generator seeded with ``config.seed``; ``selector`` picks each
    round's clients from the registered ones (default: :class:`RandomSelector` over ``rng``);
    ``signer`` signs every registered version's manifest (default: one in-memory key,
    :class:`coordinator.keys.StaticSigner`). ``holdout`` is the cloud's holdout set: with
    one, rounds that promote on commit are gated (:mod:`coordinator.gate`), their candidates
    scored by ``holdout_scorer`` (default: the served model,
    :func:`coordinator.gate.served_scores`).
    """

    def __init__(
        self,
        *,
        store: Store,
        artifacts: ArtifactStore,
        config: ServiceConfig,
        now: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
        quarantine_schema: schema_pb2.Schema | None = None,
        selector: ClientSelector | None = None,
        signer: StaticSigner | None = None,
        holdout: HoldoutSet | None = None,
        holdout_scorer: HoldoutScorer | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.config = config
        self.now = now
        self._lock = threading.RLock()
        self._seen: dict[str, tuple[float, str]] = {}  # client id -> (written at, transport)
        self._seen_lock = threading.Lock()
        # Which replica ticks: the server sets it (coordinator.leadership); alone, always.
        self.leadership: Leadership = SoleLeadership()
        self.registry = ModelRegistry(store, artifacts, now, signer)
        self.alerts = AlertMonitor(store, config.alerts, now, rollback=self._rollback_on_alert)
        self.reports = ReportIntake(
            store=store, artifacts=artifacts, registry=self.registry, alerts=self.alerts,
            now=now, lock=self._lock,
        )  # fmt: skip
        rng = rng if rng is not None else np.random.default_rng(config.seed)
        self.gate = Gate(
            store=store,
            registry=self.registry,
            now=now,
            rng=rng,
            holdout=holdout,
            scorer=holdout_scorer,
            min_cohort=config.min_cohort,
            cohort_window_seconds=config.cohort_window_seconds,
        )
        self.rounds = RoundEngine(
            store=store,
            artifacts=artifacts,
            registry=self.registry,
            alerts=self.alerts,
            defaults=config.rounds,
            now=now,
            rng=rng,
            selector=selector if selector is not None else RandomSelector(),
            quarantine=self._judge_quarantine,
            privacy_budget=config.privacy_budget,
            gate=self.gate,
        )
        self.secagg = SecAggIntake(
            store=store,
            artifacts=artifacts,
            now=now,
            get_round=self._round,
            retry_after=config.retry_after_seconds,
        )
        self.quarantine = Quarantine(
            store=store, registry=self.registry, now=now, schema=quarantine_schema
        )

    def import_bundle(
        self, directory: str | Path, *, trusted_key: Ed25519PublicKey | None = None
    ) -> ModelRecord:
        """Verify and register a bundle (the first becomes version v1, production); with
        ``trusted_key`` its ``manifest.sig`` must verify against that key."""
        with self._lock:
            return self.registry.import_bundle(
                directory, task=self.config.task, trusted_key=trusted_key
            )

    @property
    def signer(self) -> StaticSigner:
        """The manifest signer (a key ring, or one in-memory key when none was given)."""
        return self.registry.signer

    def tick(self) -> None:
        """Apply deadlines and advance rounds (see :meth:`RoundEngine.tick`); a no-op in a
        replica that does not hold the leadership (:mod:`coordinator.leadership`)."""
        if not self.leadership.held():
            return
        with self._lock:
            if self.store.list_models(stage="production"):
                self.rounds.tick()

    # Clients ------------------------------------------------------------------------------

    def register_client(
        self,
        *,
        region: str | None = None,
        metadata: Mapping[str, str] | None = None,
        registration_key: str | None = None,
        enrollment_token: str | None = None,
    ) -> Registration:
        """A new client; with ``registration_key`` (see
        :func:`coordinator.auth.registration_identity`) the same client and token for every
        retry with that key and the same region and metadata, never a second client.

        With a managed ``enrollment_token`` (:meth:`create_enrollment_token`) the new client
        counts one use of it, in the transaction that stores the client; a retry that
        answers an existing client counts none. An expired, used-up or revoked token is an
        AuthenticationError (``enrollment_token_expired`` / ``_used_up`` / ``_revoked``)."""
        if region is not None and (not isinstance(region, str) or not _LABEL.fullmatch(region)):
            raise CoordinatorError(
                f"region must be 1-64 characters of letters, digits and ' ._:/-', got {region!r}",
                code="invalid_region",
            )
        labels = dict(metadata or {})
        if len(labels) > 32 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in labels.items()
        ):
            raise CoordinatorError(
                "metadata must map at most 32 names (<= 64 chars) to strings (<= 256 chars)",
                code="invalid_metadata",
            )
        if registration_key is None:
            client_id, token = f"c-{secrets.token_hex(6)}", new_token()
        else:
            client_id, token = registration_identity(registration_key)
            existing = self.store.get_client(client_id)
            if existing is not None:
                return _replayed_registration(existing, token, region, labels)
        client = ClientRecord(
            client_id=client_id,
            token_hash=hash_token(token),
            registered_at=self.now(),
            region=region,
            metadata=labels,
        )
        try:
            with self._lock, self.store.transaction():
                if enrollment_token is not None:
                    self._use_enrollment_token(enrollment_token)
                self.store.add_client(client)
        except ConflictError:
            existing = self.store.get_client(client_id)
            if registration_key is None or existing is None:
                raise
            return _replayed_registration(existing, token, region, labels)  # a concurrent retry
        logger.info("registered client %s (region %s)", client.client_id, region)
        self.tick()
        return Registration(client.client_id, token)

    def authenticate(self, token: str) -> ClientRecord:
        client = self.store.find_client(hash_token(token))
        if client is None or not token_matches(token, client.token_hash):
            raise AuthenticationError("unknown client token", code="invalid_token")
        if client.revoked:
            raise AuthenticationError(
                f"client {client.client_id} was revoked: its token no longer works; to take part "
                "again the device enrolls as a new client (a new registration key)",
                code="client_revoked",
            )
        return client

    def client_seen(self, client: ClientRecord, transport: str) -> None:
        """Note an authenticated call of ``client`` over ``transport`` (``rest``/``grpc``):
        written to the store (:meth:`Store.set_client_seen`) when this process has not
        written one for it in :data:`SEEN_WRITE_SECONDS` or its transport changed, so a
        client polling every second costs one write a minute. A store error is logged,
        never the caller's."""
        now = self.now()
        with self._seen_lock:
            last = self._seen.get(client.client_id)
            if last is not None and last[1] == transport and now - last[0] < SEEN_WRITE_SECONDS:
                return
            if last is None and len(self._seen) >= _SEEN_CACHE:
                self._seen.clear()
            self._seen[client.client_id] = (now, transport)
        try:
            self.store.set_client_seen(client.client_id, now, transport)
        except FedgeError as exc:
            logger.warning("could not record that client %s was seen: %s", client.client_id, exc)

    def revoke_client(self, client_id: str, *, actor: str | None = None) -> ClientRecord:
        """Revoke a client: its token stops working at once, it is never selected again, and
        its pending tasks expire (a round waiting on it closes without it). The revocation
        is a ``client_revoked`` event of the registry's history, with ``actor`` (the
        operator's token id) on it; revoking a revoked client again changes nothing."""
        with self._lock:
            client = self.store.get_client(client_id)
            if client is None:
                raise NotFoundError(f"no client {client_id!r}", code="client_not_found")
            if client.revoked:
                return client
            revoked = dataclasses.replace(client, revoked_at=self.now())
            with self.store.transaction():
                self.store.save_client(revoked)
                for task in self.store.list_tasks(client_id=client_id, status="pending"):
                    self.store.save_task(dataclasses.replace(task, status="expired"))
                self.registry.record_client_action("client_revoked", client_id, actor=actor)
            logger.warning("revoked client %s (%s)", client_id, actor or "coordinator")
            return revoked

    def rotate_client_token(self, client: ClientRecord, proposed: str | None = None) -> str:
        """A new token for ``client`` (``proposed``, a device-made ``fedge_`` + 43 random
        urlsafe characters, or a random one); its old token stops working at once. A device
        that proposes its token can store it before it asks, so a crash before the answer
        is stored leaves it a token that works; proposing the token it calls with again
        answers that token (a retry)."""
        if proposed is not None and (
            not isinstance(proposed, str) or not _PROPOSED_TOKEN.fullmatch(proposed)
        ):
            raise CoordinatorError(
                "token must be 'fedge_' and 43 characters of letters, digits, '_' and '-'",
                code="invalid_token_proposal",
            )
        token = proposed if proposed is not None else new_token()
        if token_matches(token, client.token_hash):
            return token
        with self._lock:
            self.store.set_client_token(client.client_id, hash_token(token))
            logger.info("rotated the token of client %s", client.client_id)
            return token

    # Enrollment tokens --------------------------------------------------------------------

    def create_enrollment_token(
        self,
        *,
        label: str | None = None,
        expires_in: float | None = None,
        max_uses: int | None = None,
    ) -> IssuedEnrollmentToken:
        """A managed enrollment token; only its hash is stored, the token is shown once."""
        if label is not None and (not isinstance(label, str) or not _LABEL.fullmatch(label)):
            raise CoordinatorError(
                f"label must be 1-64 characters of letters, digits and ' ._:/-', got {label!r}",
                code="invalid_label",
            )
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or not 0 < expires_in <= 10 * 365 * 86400
        ):
            raise CoordinatorError(
                "expires_in must be a number of seconds above 0 and at most ten years",
                code="invalid_expiry",
            )
        if max_uses is not None and (
            isinstance(max_uses, bool) or not isinstance(max_uses, int) or not 0 < max_uses <= 10**9
        ):
            raise CoordinatorError(
                "max_uses must be a whole number from 1 to 1000000000", code="invalid_max_uses"
            )
        token = new_token()
        now = self.now()
        record = EnrollmentTokenRecord(
            token_id=f"e-{secrets.token_hex(6)}",
            token_hash=hash_token(token),
            created_at=now,
            label=label,
            expires_at=None if expires_in is None else now + float(expires_in),
            max_uses=max_uses,
        )
        self.store.add_enrollment_token(record)
        logger.info("created enrollment token %s (label %s)", record.token_id, label)
        return IssuedEnrollmentToken(record, token)

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRecord]:
        return self.store.list_enrollment_tokens()

    def revoke_enrollment_token(self, token_id: str) -> EnrollmentTokenRecord:
        """Revoke an enrollment token: no client registers with it any more (the clients it
        registered keep their own tokens)."""
        with self._lock, self.store.transaction():
            record = self.store.get_enrollment_token(token_id)
            if record is None:
                raise NotFoundError(
                    f"no enrollment token {token_id!r}", code="enrollment_token_not_found"
                )
            if record.revoked:
                return record
            revoked = dataclasses.replace(record, revoked_at=self.now())
            self.store.save_enrollment_token(revoked)
            logger.warning("revoked enrollment token %s", token_id)
            return revoked

    def check_enrollment_token(
        self, token: str, *, uses: bool = True
    ) -> EnrollmentTokenRecord | None:
        """The managed enrollment token ``token`` is, or None when it is none; an expired,
        revoked or (with ``uses``) used-up one is an AuthenticationError. Counts nothing.
        Without ``uses`` a used-up token passes: a registration retry answers the client it
        registered without counting a use."""
        record = self.store.find_enrollment_token(hash_token(token))
        if record is None or not token_matches(token, record.token_hash):
            return None
        if record.revoked:
            raise AuthenticationError(
                f"enrollment token {record.token_id} was revoked",
                code="enrollment_token_revoked",
            )
        if record.expires_at is not None and self.now() >= record.expires_at:
            raise AuthenticationError(
                f"enrollment token {record.token_id} expired", code="enrollment_token_expired"
            )
        if uses and record.max_uses is not None and record.uses >= record.max_uses:
            raise AuthenticationError(
                f"enrollment token {record.token_id} was used {record.uses} of "
                f"{record.max_uses} times",
                code="enrollment_token_used_up",
            )
        return record

    def _use_enrollment_token(self, token: str) -> None:
        """Count one use of a managed token (inside the caller's transaction)."""
        record = self.check_enrollment_token(token)
        if record is None:
            raise AuthenticationError("unknown enrollment token", code="invalid_token")
        self.store.save_enrollment_token(dataclasses.replace(record, uses=record.uses + 1))

    def next_task(self, client: ClientRecord) -> Task | None:
        """The client's oldest pending, unexpired task, or None (poll again later)."""
        self.tick()
        now = self.now()
        for record in self.store.list_tasks(client_id=client.client_id, status="pending"):
            with self._lock:  # async mode: a task too stale to be accepted is not handed out
                stale = self.rounds.expire_if_stale(record)
            if record.deadline > now and not stale:
                task = Task(
                    task_id=record.task_id,
                    kind=record.kind,  # type: ignore[arg-type]
                    round_id=record.round_id,
                    model_version=record.model_version,
                    config=record.config,
                    deadline=record.deadline,
                )
                if task.round_id is not None:
                    self.count_traffic(task.round_id, down=document_bytes(task.to_dict()))
                return task
        with self._lock:  # async mode: a train task of the collecting buffer, on demand
            created = self.rounds.buffer_task(client.client_id)
        if created is None:
            return None
        return Task(
            task_id=created.task_id,
            kind="train",
            round_id=created.round_id,
            model_version=created.model_version,
            config=created.config,
            deadline=created.deadline,
        )

    def create_tasks(
        self,
        kind: str,
        *,
        client_ids: Sequence[str] | None = None,
        deadline_seconds: float = 3600.0,
        config: TaskConfig | None = None,
    ) -> list[TaskRecord]:
        """Ask clients (all by default) for an evaluation, statistics or embeddings.

        The cohort rule (``config.min_cohort`` > 1, see :class:`ServiceConfig`) refuses,
        with a ConflictError and nothing created, a request that targets fewer than
        ``min_cohort`` distinct clients (``cohort_too_small``) or a client that a task of
        this kind was created for less than ``cohort_window_seconds`` ago
        (``cohort_window``): the same device asked twice, before and after one of its rows
        changed, gives that row away in the difference of its answers. A client id listed
        twice is refused (``duplicate_client``) rather than counted twice.
        """
        if kind not in ("evaluate", "stats", "features"):
            raise CoordinatorError(
                f"kind must be evaluate, stats or features (train tasks come from rounds), "
                f"got {kind!r}",
                code="invalid_task_kind",
            )
        if not 0 < deadline_seconds <= 30 * 86400:
            raise CoordinatorError(
                "deadline_seconds must be in (0, 30 days]", code="invalid_deadline"
            )
        ids = (
            list(client_ids)
            if client_ids is not None
            else [c.client_id for c in self.store.list_clients() if not c.revoked]
        )
        repeated = sorted(c for c, n in Counter(ids).items() if n > 1)
        if repeated:
            raise CoordinatorError(
                f"client_ids lists {repeated} more than once", code="duplicate_client"
            )
        records = {c: self.store.get_client(c) for c in ids}
        unknown = [c for c, record in records.items() if record is None]
        if unknown:
            raise NotFoundError(f"unknown clients {unknown}", code="client_not_found")
        revoked = [c for c, record in records.items() if record is not None and record.revoked]
        if revoked:
            raise ConflictError(f"revoked clients {revoked}", code="client_revoked")
        version = self.registry.production().version
        with self._lock:  # two requests must not both pass the window check
            now = self.now()
            self._check_cohort(kind, ids, now)
            tasks = [
                TaskRecord(
                    task_id=f"{kind}-{secrets.token_hex(6)}",
                    kind=kind,
                    client_id=client_id,
                    model_version=version,
                    config=config or TaskConfig(),
                    created_at=now,
                    deadline=now + deadline_seconds,
                )
                for client_id in ids
            ]
            with self.store.transaction():
                for task in tasks:
                    self.store.add_task(task)
        return tasks

    def _check_cohort(self, kind: str, ids: Sequence[str], now: float) -> None:
        """The cohort rule of :meth:`create_tasks` (off when ``min_cohort`` is 1)."""
        minimum = self.config.min_cohort
        if minimum <= 1:
            return
        if len(ids) < minimum:
            raise ConflictError(
                f"a {kind} task must target at least {minimum} clients (the minimum cohort), "
                f"got {len(ids)}: fewer answers could single out one device's data",
                code="cohort_too_small",
            )
        window = self.config.cohort_window_seconds
        if window <= 0:
            return
        recent = sorted(
            client_id
            for client_id in ids
            if any(
                task.kind == kind and now - task.created_at < window
                for task in self.store.list_tasks(client_id=client_id)
            )
        )
        if recent:
            shown = ", ".join(recent[:5]) + (
                f" and {len(recent) - 5} more" if len(recent) > 5 else ""
            )
            raise ConflictError(
                f"clients {shown} were given a {kind} task less than {window:g} s ago (the "
                "cohort window): asking them again could single out what changed between "
                "the two answers",
                code="cohort_window",
            )

    # Update intake ------------------------------------------------------------------------

    def submit_update(self, client: ClientRecord, submission: UpdateSubmission) -> UpdateReceipt:
        """Validate and durably record one update; every rejection is recorded by code.

        The body counts as the round's upload traffic when the client was selected for it,
        accepted or not (a retry moves its bytes again)."""
        self._count_upload(client, submission.round_id, len(submission.body))
        try:
            return self._submit(client, submission)
        except FedgeError as exc:
            self.reject_update(client, submission.round_id, exc)
            raise

    def decline_task(self, client: ClientRecord, task_id: str, reason: str) -> TaskRecord:
        """The client will not do its pending task ``task_id`` (its owner's policy refuses
        it, or secure aggregation refused a request): the task becomes ``declined``, so the
        client's later tasks are handed out and a round stops waiting for it; the reason is
        recorded as a ``task_declined`` rejection. Declining it again answers the same."""
        if not isinstance(reason, str) or not 0 < len(reason) <= MAX_DECLINE_REASON:
            raise CoordinatorError(
                f"reason must be a text of 1 to {MAX_DECLINE_REASON} characters",
                code="invalid_reason",
            )
        with self._lock:
            task = self.store.get_task(task_id)
            if task is None or task.client_id != client.client_id:
                raise NotFoundError(
                    f"client {client.client_id} has no task {task_id!r}", code="task_not_found"
                )
            if task.status == "declined":
                return task
            if task.status != "pending":
                raise ConflictError(
                    f"task {task_id} is {task.status}; only a pending task can be declined",
                    code="task_not_pending",
                )
            declined = dataclasses.replace(task, status="declined", completed_at=self.now())
            with self.store.transaction():
                self.store.save_task(declined)
                self.store.add_rejection(
                    RejectionRecord(
                        at=self.now(),
                        reason="task_declined",
                        detail=f"{task.kind} task {task_id}: {reason}",
                        client_id=client.client_id,
                        round_id=task.round_id,
                    )
                )
            logger.info(
                "client %s declined %s task %s: %s",
                client.client_id,
                task.kind,
                task_id,
                printable(reason, limit=200),
            )
        self.tick()
        return declined

    def reject_update(self, client: ClientRecord, round_id: int | None, error: FedgeError) -> None:
        """Record a refused upload under its code (transports call it for decoding errors)."""
        _, code = describe(error)
        self.store.add_rejection(
            RejectionRecord(
                at=self.now(),
                reason=code,
                detail=str(error),
                client_id=client.client_id,
                round_id=round_id,
            )
        )
        logger.info("rejected update from %s: %s (%s)", client.client_id, code, error)
        self.alerts.rejection()

    def _submit(self, client: ClientRecord, submission: UpdateSubmission) -> UpdateReceipt:
        self.tick()
        key = check_idempotency_key(submission.idempotency_key)
        round_ = self._buffer_of(self._round(submission.round_id))
        replay = self._replay(client, submission)
        if replay is not None:
            return replay
        self._check_assignment(client, round_, submission.task_id)
        update = validate_update(
            submission,
            reference=self.registry.weights(self.registry.get(str(round_.base_version))),
            config=round_.config,
            max_bytes=self.config.max_update_bytes,
        )
        digest = self.artifacts.put_bytes(submission.body)
        # The checks and the insert are one write transaction: no replica's round
        # transition (also a write) falls between them, so an update acknowledged here was
        # added while its round was still collecting and its commit counts it.
        with self._lock:
            with self.store.transaction():
                replay = self._replay(client, submission)
                if replay is not None:
                    return replay
                round_ = self._check_assignment(
                    client, self._round(round_.round_id), update.task_id
                )
                record = UpdateRecord(
                    round_id=round_.round_id,
                    client_id=client.client_id,
                    task_id=update.task_id,
                    idempotency_key=key,
                    sha256=digest,
                    size=len(submission.body),
                    num_examples=update.num_examples,
                    l2_norm=update.delta.l2_norm(),
                    received_at=self.now(),
                    metrics=update.metrics,
                )
                self.store.add_update(record)
                complete_task(self.store, update.task_id, self.now())
            logger.info(
                "accepted update from %s for round %d (%d examples)",
                client.client_id,
                round_.round_id,
                update.num_examples,
            )
            try:
                self.tick()  # the last expected update closes the round now
            except Exception:
                # The update is durable and acknowledged whatever happens here; the timer
                # (or the next call) retries the transition.
                logger.exception("advancing round %d after an update failed", round_.round_id)
        return UpdateReceipt(
            round_.round_id, client.client_id, update.task_id, digest, update.num_examples,
            record.received_at,
        )  # fmt: skip

    def _count_upload(self, client: ClientRecord, round_id: object, size: int) -> None:
        if not isinstance(round_id, int) or not 0 < round_id < _MAX_ROUND_ID:
            return
        round_ = self.store.get_round(round_id)
        if round_ is not None and client.client_id in round_.selected:
            self.count_traffic(round_id, up=size)

    def _replay(self, client: ClientRecord, submission: UpdateSubmission) -> UpdateReceipt | None:
        """The original receipt when this exact upload was accepted before (a retry)."""
        previous = self.store.find_update(client.client_id, submission.idempotency_key)
        if previous is None:
            return None
        task = self.store.get_task(previous.task_id)
        same = (
            # an async update is kept in the buffer it went to, its task's round may be older
            submission.round_id in (previous.round_id, task.round_id if task else None)
            and previous.task_id == submission.task_id
            and previous.num_examples == submission.num_examples
            and previous.sha256 == hashlib.sha256(submission.body).hexdigest()
        )
        if not same:
            raise ConflictError(
                "Idempotency-Key was already used for a different update "
                f"(round {previous.round_id}); use a new key for a new update",
                code="idempotency_conflict",
            )
        return UpdateReceipt(
            previous.round_id, client.client_id, previous.task_id, previous.sha256,
            previous.num_examples, previous.received_at, duplicate=True,
        )  # fmt: skip

    def _round(self, round_id: int) -> RoundRecord:
        if not 0 < round_id < _MAX_ROUND_ID:  # beyond SQLite's 64-bit integers: no such round
            raise NotFoundError(f"no round {round_id}", code="round_not_found")
        round_ = self.store.get_round(round_id)
        if round_ is None:
            raise NotFoundError(f"no round {round_id}", code="round_not_found")
        return round_

    def _buffer_of(self, round_: RoundRecord) -> RoundRecord:
        """The round an update of ``round_`` goes to: itself, or in async mode the buffer
        collecting now (an update of an earlier buffer's task goes into it)."""
        if round_.config.buffered and round_.state != "collecting":
            with self._lock:
                current = self.rounds.collecting_buffer()
            if current is not None and current.round_id > round_.round_id:
                return current
        return round_

    def _check_assignment(
        self, client: ClientRecord, round_: RoundRecord, task_id: str
    ) -> RoundRecord:
        if round_.state != "collecting":
            detail = {
                "open": "has not started collecting",
                "aggregating": "is closed and aggregating",
                "gating": f"is closed (its candidate {round_.result_version} is being gated)",
                "committed": f"is closed (committed as {round_.result_version})",
                "failed": f"is closed (failed: {round_.failure_reason})",
            }[round_.state]
            raise ConflictError(
                f"round {round_.round_id} {detail}; it accepts no updates", code="round_closed"
            )
        if round_.config.buffered:
            return self._check_buffered(client, round_, task_id)
        if client.client_id not in round_.selected:
            raise PermissionDeniedError(
                f"client {client.client_id} was not selected for round {round_.round_id}",
                code="not_assigned",
            )
        task = self.store.get_task(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", code="task_not_found")
        if task.client_id != client.client_id:
            raise PermissionDeniedError(
                f"task {task_id!r} is assigned to another client", code="task_not_assigned"
            )
        if task.round_id != round_.round_id:
            raise CoordinatorError(
                f"task {task_id!r} belongs to round {task.round_id}, not {round_.round_id}",
                code="task_round_mismatch",
            )
        if self.store.get_update(round_.round_id, client.client_id) is not None:
            raise ConflictError(
                f"client {client.client_id} already submitted an update for round "
                f"{round_.round_id}",
                code="duplicate_update",
            )
        return round_

    def _check_buffered(
        self, client: ClientRecord, round_: RoundRecord, task_id: str
    ) -> RoundRecord:
        """An update for an async buffer: its client's pending train task of this buffer or
        an earlier one, no staler than ``max_staleness``, the first of the client here."""
        task = self.store.get_task(task_id) if isinstance(task_id, str) else None
        if task is None or task.kind != "train":
            raise NotFoundError(f"no train task {task_id!r}", code="task_not_found")
        if task.client_id != client.client_id:
            raise PermissionDeniedError(
                f"task {task_id!r} is assigned to another client", code="task_not_assigned"
            )
        if task.round_id is None or task.round_id > round_.round_id:
            raise CoordinatorError(
                f"task {task_id!r} belongs to round {task.round_id}, not {round_.round_id}",
                code="task_round_mismatch",
            )
        if task.status != "pending":
            raise ConflictError(
                f"task {task_id!r} is {task.status}; it accepts no update", code="round_closed"
            )
        limit = round_.config.max_staleness
        staleness = self.rounds.staleness(task.model_version, limit)
        if staleness is None:
            raise ConflictError(
                f"the update of task {task_id!r} was trained on {task.model_version}, more "
                f"than max_staleness {limit} versions behind {round_.base_version}; it is "
                "dropped",
                code="too_stale",
            )
        if self.store.get_update(round_.round_id, client.client_id) is not None:
            raise ConflictError(
                f"client {client.client_id} already submitted an update for round "
                f"{round_.round_id}",
                code="duplicate_update",
            )
        return round_

    # Secure aggregation -------------------------------------------------------------------

    def secagg_payload(self, client: ClientRecord, round_id: int, stage: str) -> dict[str, Any]:
        """The document a client of a secure round fetches for ``stage`` (share, mask,
        unmask); see :class:`~coordinator.secagg.SecAggIntake`."""
        self.tick()
        with self._lock:
            document = self.secagg.payload(client, round_id, stage)
            self.count_traffic(round_id, down=document_bytes(document))
            return document

    def submit_secagg(
        self,
        client: ClientRecord,
        round_id: int,
        stage: str,
        *,
        task_id: str,
        idempotency_key: str,
        document: Mapping[str, Any] | None,
        body: bytes | None,
        metrics: Mapping[str, float] | None = None,
    ) -> SecAggReceipt:
        """Validate and store a client's reply to a secure-aggregation ``stage``
        (advertise, share, mask, unmask); every refusal is recorded by code and changes
        nothing else. The last expected reply closes the stage at once. Its bytes count
        as the round's ``bytes_up`` (accepted or refused)."""
        try:
            size = len(body) if body is not None else document_bytes(document or {})
        except (TypeError, ValueError):  # not JSON: its decoding refuses it below
            size = 0
        self._count_upload(client, round_id, size)
        try:
            self.tick()
            with self._lock:
                receipt = self.secagg.submit(
                    client, round_id, stage, task_id=task_id, idempotency_key=idempotency_key,
                    document=document, body=body, metrics=metrics,
                )  # fmt: skip
        except FedgeError as exc:
            self.reject_update(client, round_id, exc)
            raise
        if not receipt.duplicate:
            try:
                self.tick()
            except Exception:
                logger.exception("advancing round %d after a secure message failed", round_id)
        return receipt

    # Traffic ------------------------------------------------------------------------------

    def count_traffic(self, round_id: int, *, up: int = 0, down: int = 0) -> RoundRecord:
        """Add ``up`` and ``down`` bytes to round ``round_id``'s ``bytes_up``/``bytes_down``
        (saved at once) and return the updated record; NotFoundError for no such round.

        Re-reads the round under the service lock: a caller holding a round record must
        not save that (now stale) copy over this count afterwards.
        """
        for name, value in (("up", up), ("down", down)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CoordinatorError(
                    f"{name} must be a byte count >= 0, got {value!r}", code="invalid_traffic"
                )
        with self._lock, self.store.transaction():  # other replicas count too
            round_ = self._round(round_id)
            if not (up or down):
                return round_
            counted = dataclasses.replace(
                round_, bytes_up=round_.bytes_up + up, bytes_down=round_.bytes_down + down
            )
            self.store.save_round(counted)
            return counted

    def count_download(self, client: ClientRecord, version: str, size: int) -> None:
        """Count ``size`` bytes of model ``version``'s files that ``client`` downloaded
        against each active round built on that version that selected it."""
        for round_ in self.store.list_rounds(ACTIVE_ROUND_STATES):
            if round_.base_version == version and client.client_id in round_.selected:
                self.count_traffic(round_.round_id, down=size)

    # Reports ------------------------------------------------------------------------------

    def submit_stats(self, client: ClientRecord, report: StatsReport) -> ReportRecord:
        return self.reports.submit_stats(client, report)

    def submit_evaluation(self, client: ClientRecord, report: EvalReport) -> ReportRecord:
        return self.reports.submit_evaluation(client, report)

    def submit_features(self, client: ClientRecord, batch: FeatureBatch) -> ReportRecord:
        return self.reports.submit_features(client, batch)

    def list_reports(
        self,
        kind: str | None = None,
        *,
        task_id: str | None = None,
        model_version: str | None = None,
    ) -> list[ReportRecord]:
        return self.reports.list_reports(kind, task_id=task_id, model_version=model_version)

    # Quarantine ---------------------------------------------------------------------------

    def list_quarantined(self, client_id: str | None = None) -> list[UpdateRecord]:
        """The updates held in quarantine (of ``client_id`` when given), oldest first, each
        with its reason (``UpdateRecord.quarantine``); NotFoundError for an unknown client."""
        if client_id is not None:
            self._client(client_id)
        return self.store.list_quarantined_updates(client_id)

    def release_quarantine(self, client_id: str, *, actor: str | None = None) -> list[UpdateRecord]:
        """Release the client's quarantined updates (:meth:`Quarantine.release`): they count
        again, in their round when it is still to be aggregated, and the client's later
        updates are judged by its next statistics. Returns the released updates. A release
        of at least one update is a ``quarantine_released`` event of the registry's
        history, with ``actor`` (the operator's token id) on it."""
        with self._lock:
            self._client(client_id)
            released = self.quarantine.release(client_id)
            if released:
                rounds = ", ".join(str(u.round_id) for u in released)
                self.registry.record_client_action(
                    "quarantine_released",
                    client_id,
                    detail=f"{len(released)} update(s) of round(s) {rounds}",
                    actor=actor,
                )
        self.tick()
        return released

    def _client(self, client_id: str) -> ClientRecord:
        client = self.store.get_client(client_id)
        if client is None:
            raise NotFoundError(f"no client {client_id!r}", code="client_not_found")
        return client

    def _judge_quarantine(self, round_: RoundRecord) -> list[UpdateRecord]:
        return self.quarantine.judge(round_)

    # Rounds and models (admin) ------------------------------------------------------------

    def open_round(self, overrides: Mapping[str, Any] | None = None) -> RoundRecord:
        """Open a round now (continuous mode opens them itself: this then conflicts)."""
        with self._lock:
            self.tick()
            return self.rounds.open(overrides)

    def cancel_round(self, round_id: int) -> RoundRecord:
        """Fail an active round now ("cancelled by an operator"); the global model is kept."""
        with self._lock:
            self._round(round_id)
            return self.rounds.cancel(round_id)

    def get_round(self, round_id: int) -> RoundRecord:
        self.tick()
        return self._round(round_id)

    def list_rounds(self) -> list[RoundRecord]:
        self.tick()
        return self.store.list_rounds()

    def round_updates(self, round_id: int) -> list[UpdateRecord]:
        return self.store.list_updates(self._round(round_id).round_id)

    def list_models(self) -> list[ModelRecord]:
        return self.store.list_models()

    def get_model(self, version: str) -> ModelRecord:
        return self.registry.resolve(version)

    def model_events(self, version: str | None = None) -> list[ModelEvent]:
        return self.registry.events(version)

    def promote(self, version: str, *, actor: str | None = None) -> ModelRecord:
        """Promote ``version``; ``actor`` (the operator's token id) goes on the event."""
        with self._lock:
            model = self.registry.promote(version, detail="promoted by an operator", actor=actor)
            self.rounds.fail_superseded(model.version)
            return model

    def rollback(self, *, actor: str | None = None) -> ModelRecord:
        with self._lock:
            model = self.registry.rollback(actor=actor)
            self.rounds.fail_superseded(model.version)
            return model

    def rollback_before(self, when: float, *, actor: str | None = None) -> ModelRecord:
        """Production becomes the version that was production at ``when`` (seconds since
        the epoch; :meth:`ModelRegistry.rollback_before`), e.g. the state before a data
        corruption; rounds on the superseded version fail."""
        with self._lock:
            model = self.registry.rollback_before(when, actor=actor)
            self.rounds.fail_superseded(model.version)
            return model

    def _rollback_on_alert(self, version: str, reason: str) -> ModelRecord | None:
        """The rollback policy's action (:class:`~coordinator.alerts.AlertMonitor`): the
        previous production version back, while ``version`` is still production."""
        with self._lock:
            if self.registry.production().version != version:
                return None
            model = self.registry.rollback(reason=reason)
            self.rounds.fail_superseded(model.version)
            return model
