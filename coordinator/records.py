"""What the coordinator stores: frozen records with one JSON codec each store uses.

Records are immutable; a state change is a new record saved over the old one. ``to_dict``
gives plain JSON values and ``from_dict`` rebuilds the record exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Self, TypeAlias

from coordinator.config import RoundConfig
from fedge.messages import TaskConfig

__all__ = [
    "ACTIVE_ROUND_STATES",
    "ROUND_STATES",
    "STAGES",
    "AlertRecord",
    "ClientRecord",
    "EnrollmentTokenRecord",
    "ModelEvent",
    "ModelRecord",
    "RejectionRecord",
    "ReportRecord",
    "RoundRecord",
    "RoundState",
    "SecAggRecord",
    "Stage",
    "TaskRecord",
    "UpdateRecord",
]

RoundState: TypeAlias = Literal[
    "open", "collecting", "aggregating", "gating", "committed", "failed"
]
ROUND_STATES: tuple[RoundState, ...] = (
    "open",
    "collecting",
    "aggregating",
    "gating",
    "committed",
    "failed",
)
ACTIVE_ROUND_STATES: tuple[RoundState, ...] = ("open", "collecting", "aggregating", "gating")
"""``gating``: the round registered its candidate (``result_version``) and the gate
(:mod:`coordinator.gate`) is evaluating it; it ends committed (promoted) or failed (the
candidate rejected)."""
Stage: TypeAlias = Literal["candidate", "production", "archived", "rejected"]
STAGES: tuple[Stage, ...] = ("candidate", "production", "archived", "rejected")


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


# The names of each record class's fields that _Record._freeze freezes.
_FROZEN_FIELDS: dict[type, tuple[str, ...]] = {}


class _Record:
    """JSON codec shared by the records: mappings are frozen, sequences become tuples."""

    _decoders: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def _freeze(self) -> None:
        # Tuples are left as they are (_frozen returns them unchanged).
        names = _FROZEN_FIELDS.get(type(self))
        if names is None:
            fields = dataclasses.fields(self)  # type: ignore[arg-type]
            names = tuple(f.name for f in fields if f.name not in self._decoders)
            _FROZEN_FIELDS[type(self)] = names
        for name in names:
            value = getattr(self, name)
            if isinstance(value, Mapping | list):
                object.__setattr__(self, name, _frozen(value))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {
            k: cls._decoders[k](v) if k in cls._decoders and v is not None else v
            for k, v in data.items()
            if k in names
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class ClientRecord(_Record):
    client_id: str
    token_hash: str
    registered_at: float
    region: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    revoked_at: float | None = None
    """When an operator revoked the client: its token stops working, it is never selected."""

    def __post_init__(self) -> None:
        self._freeze()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class EnrollmentTokenRecord(_Record):
    """A managed enrollment token (only its sha256 is kept): it registers at most
    ``max_uses`` clients (None: any number), until ``expires_at`` (None: no expiry) or until
    an operator revokes it."""

    token_id: str
    token_hash: str
    created_at: float
    label: str | None = None
    expires_at: float | None = None
    max_uses: int | None = None
    uses: int = 0
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class RoundRecord(_Record):
    """One round. ``deadline`` is set when it opens (by then it must have started) and
    again when collecting starts (by then the updates must be in); ``base_version`` is
    fixed when collecting starts. ``bytes_up``/``bytes_down`` count the round's traffic
    (:meth:`~coordinator.service.CoordinatorService.count_traffic`): up, the bodies its
    clients posted for it; down, its task documents, secure-aggregation payloads and the
    base model files its selected clients downloaded while it was active."""

    _decoders: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "config": RoundConfig.from_dict,
        "selected": tuple,
    }

    round_id: int
    state: RoundState
    config: RoundConfig
    opened_at: float
    base_version: str | None = None
    collecting_at: float | None = None
    deadline: float | None = None
    closed_at: float | None = None
    selected: tuple[str, ...] = ()
    result_version: str | None = None
    failure_reason: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    measurements: Mapping[str, float] = field(default_factory=dict)
    secagg: Mapping[str, Any] | None = None
    """A secure round's state (:mod:`coordinator.secagg`): its stage, the clients' ids in
    the protocol and the server's public state; never a vector or a share."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "selected", tuple(self.selected))
        self._freeze()

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_ROUND_STATES


@dataclass(frozen=True)
class TaskRecord(_Record):
    """A task handed (or to hand) to one client; ``status`` pending/completed/expired."""

    _decoders: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"config": TaskConfig.from_dict}

    task_id: str
    kind: str
    client_id: str
    model_version: str
    config: TaskConfig
    created_at: float
    deadline: float
    round_id: int | None = None
    status: str = "pending"
    completed_at: float | None = None

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class UpdateRecord(_Record):
    """An accepted update: its delta is the artifact ``sha256`` (fsynced before this row)."""

    round_id: int
    client_id: str
    task_id: str
    idempotency_key: str
    sha256: str
    size: int
    num_examples: int
    l2_norm: float
    received_at: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    quarantine: str | None = None
    """Why the update was held out of aggregation (its client's latest statistics showed
    anomalies, :mod:`coordinator.quarantine`); None when it never was. Its artifact and
    this record stay."""
    released_at: float | None = None
    """When an operator released the quarantined update; it keeps its reason and counts
    again (in its round, while that round still collects)."""

    def __post_init__(self) -> None:
        self._freeze()

    @property
    def quarantined(self) -> bool:
        """Held out of aggregation: quarantined and not released."""
        return self.quarantine is not None and self.released_at is None


@dataclass(frozen=True)
class SecAggRecord(_Record):
    """One client's accepted message of one secure-aggregation ``stage`` (advertise, share,
    mask, unmask) in a round: the posted document (public keys, sealed bundles, unmask
    shares) or, for ``mask``, the artifact ``artifact`` holding the masked vector.
    ``digest`` is the sha256 of what was posted (an idempotent retry must match it)."""

    round_id: int
    stage: str
    client_id: str
    secagg_id: int
    task_id: str
    idempotency_key: str
    digest: str
    size: int
    received_at: float
    document: Mapping[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class RejectionRecord(_Record):
    at: float
    reason: str
    detail: str
    client_id: str | None = None
    round_id: int | None = None

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class ModelRecord(_Record):
    """A registry entry: lineage, metrics, stage, times and artifacts (name -> sha256).

    ``artifacts`` holds the bundle files, ``manifest.json`` (the served manifest) and
    ``server_state`` (the server optimizer state after this version). ``privacy`` is the
    version's differential-privacy guarantee (:mod:`coordinator.privacy`; ``None`` in
    records of older coordinators). ``signature`` is the coordinator's Ed25519 signature
    over the served manifest (``<key id>:<base64>``, :mod:`fedge.signing`) and
    ``signing_key_id`` the id of the key that made it (``None`` in older records).
    ``gate`` is the gate's evaluation of a round's candidate (:mod:`coordinator.gate`:
    its status, the cloud holdout and federated cohort metrics of the candidate and its
    parent, the reason of the decision); ``None`` for a version no gate evaluated.
    """

    version: str
    seq: int
    stage: Stage
    created_at: float
    parent: str | None = None
    round_id: int | None = None
    training_job: str | None = None
    participants: int | None = None
    data_fingerprint: str | None = None
    stats_id: int | None = None
    trainer_host: str | None = None
    trainer_user: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    slice_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    promoted_at: float | None = None
    deployed_at: float | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)
    privacy: Mapping[str, Any] | None = None
    signing_key_id: str | None = None
    signature: str | None = None
    gate: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class ModelEvent(_Record):
    """A registry event: registered, promoted, rolled_back, archived, rejected (by the
    gate; ``detail`` holds the reason), or an operator's action on a client,
    client_revoked or quarantine_released (``version`` is then ``""`` and ``detail`` starts
    with ``client <id>``). ``actor`` names the operator's token of a promotion, rollback,
    revocation or release an operator asked for (``admin:<first 12 hex of
    sha256(token)>``); None for what the coordinator did itself."""

    seq: int
    version: str
    kind: str
    at: float
    previous: str | None = None
    detail: str = ""
    actor: str | None = None

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class ReportRecord(_Record):
    """A client report: ``kind`` stats / evaluation / features, ``document`` its content
    (the statistics or evaluation document; for features the artifact and its shape)."""

    report_id: int
    kind: str
    client_id: str
    task_id: str
    received_at: float
    model_version: str | None = None
    document: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._freeze()


@dataclass(frozen=True)
class AlertRecord(_Record):
    alert_id: int
    kind: str
    severity: str
    message: str
    created_at: float
    round_id: int | None = None
    model_version: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._freeze()
