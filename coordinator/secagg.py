"""Secure-aggregation rounds (SecAgg+): the coordinator learns the sum, not one update.

A round with ``secure_aggregation`` runs the four stages of :mod:`fedge.secagg.protocol`
while it is ``collecting``; each stage has tasks, a deadline and closes when every
expected client answered (no task of the stage is pending) or at its deadline:

1. ``advertise`` - the train task: after training a client posts its two public keys.
   The deadline is the round's. Closing builds the k-regular graph over the advertisers
   (fewer than 3, or than ``min_clients``, fail the round).
2. ``share`` - a ``secagg_share`` task per advertiser: the client GETs its key roster and
   posts one sealed bundle per neighbour.
3. ``mask`` - a ``secagg_mask`` task per sharer: the client GETs the bundles sent to it
   and posts its masked vector (a binary body, stored as an artifact). Closing adds the
   inputs up; fewer than ``min_clients`` of them, or a client in the sum (or one to
   remove from it) with fewer than ``t`` surviving neighbours, fail the round.
4. ``unmask`` - a ``secagg_unmask`` task per survivor: the client GETs which neighbours
   survived and dropped and posts the matching shares. Closing moves the round to
   ``aggregating``; there the seeds and keys are recovered (fewer than ``t`` shares of one
   fail the round), the masks removed from the sum and the mean becomes one FedAvg update
   of the summed example count, stepped by the round's server optimizer.

Each later stage lasts ``secagg_stage_seconds`` (``None``: ``deadline_seconds``). The
round's state (stage, the clients' protocol ids, the server's public state; the masked
sum as an artifact) lives in :attr:`RoundRecord.secagg`, each message in the store
(:class:`~coordinator.records.SecAggRecord`), so a restarted coordinator resumes where it
stopped. What is stored is public keys, sealed bundles, masked vectors and unmask shares,
never an individual update; logs carry counts and ids only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig
from coordinator.errors import (
    ConflictError,
    CoordinatorError,
    NotFoundError,
    PermissionDeniedError,
)
from coordinator.intake import check_idempotency_key, check_metric_bounds
from coordinator.records import ClientRecord, RoundRecord, SecAggRecord, TaskRecord
from coordinator.reports import complete_task
from coordinator.store import Store
from fedge.aggregation import RoundAggregator
from fedge.errors import ProtocolError, SecAggError
from fedge.messages import TaskConfig
from fedge.secagg import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MaskingConfig,
    ServerState,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_secagg,
    encode_secagg,
    server_state_from_dict,
    server_state_to_dict,
)
from fedge.secagg.shamir import SHARE_BYTES
from fedge.strategy import ClientMetrics
from fedge.weights import Weights

__all__ = [
    "PAYLOAD_STAGES",
    "SECAGG_STAGES",
    "STAGE_TASK_KINDS",
    "SecAggIntake",
    "SecAggReceipt",
    "SecAggStageError",
    "SecureOutcome",
    "SecureRounds",
    "masking_config",
    "secagg_summary",
    "secagg_task_id",
]

logger = logging.getLogger(__name__)

SECAGG_STAGES: tuple[str, ...] = ("advertise", "share", "mask", "unmask")
"""The stages a client posts to, in order."""
PAYLOAD_STAGES: tuple[str, ...] = ("share", "mask", "unmask")
"""The stages whose payload a client fetches first."""
STAGE_TASK_KINDS: Mapping[str, str] = {
    "advertise": "train",
    "share": "secagg_share",
    "mask": "secagg_mask",
    "unmask": "secagg_unmask",
}
_MESSAGES: Mapping[str, type] = {
    "advertise": AdvertiseKeys,
    "share": ShareKeys,
    "unmask": UnmaskResponse,
}
_KEY_BYTES = 32  # an X25519 public key
_MAX_BUNDLE_BYTES = 1024  # a sealed pair of shares is about 200 bytes
_MAX_METRICS = 64


def secagg_task_id(round_id: int, client_id: str, stage: str) -> str:
    """The id of a client's task of a later stage: ``r{round}-{client}-{stage}``."""
    return f"r{round_id}-{client_id}-{stage}"


def _task_id(round_id: int, client_id: str, stage: str) -> str:
    if stage == "advertise":
        return f"r{round_id}-{client_id}"  # the train task (coordinator.rounds.train_task_id)
    return secagg_task_id(round_id, client_id, stage)


def masking_config(config: RoundConfig, dimension: int) -> MaskingConfig:
    """How a secure round's clients quantize a delta of ``dimension`` values."""
    quantization, modulus = config.secagg_bits
    return MaskingConfig(
        dimension=dimension,
        clip=config.secagg_clip,
        example_cap=config.secagg_cap,
        modulus_bits=modulus,
        quantization_bits=quantization,
    )


@dataclass(frozen=True)
class SecAggReceipt:
    """The acknowledgement of a stage message (``duplicate``: accepted before, a retry)."""

    round_id: int
    stage: str
    client_id: str
    duplicate: bool = False


class SecAggStageError(ConflictError):
    """The round is not at the stage asked for (yet, or any more); retry later."""

    default_code = "secagg_stage"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class SecureOutcome:
    """What a secure round's aggregation contributes to its commit."""

    participants: int
    fingerprint: str
    client_metrics: list[ClientMetrics]
    measurements: dict[str, float]


def secagg_summary(round_: RoundRecord) -> dict[str, Any] | None:
    """What a round document shows of a secure round: its stage, how many clients are in
    the protocol, advertised, shared keys and sent a masked input, and k and t."""
    if round_.secagg is None:
        return None
    state = round_.secagg
    server = state["server"]
    return {
        "stage": state["stage"],
        "clients": len(state["ids"]),
        "advertised": len(server["keys"]),
        "shared": len(server["shared"]),
        "survivors": len(server["survivors"]),
        "degree": server["degree"],
        "threshold": server["threshold"],
    }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _state(round_: RoundRecord) -> dict[str, Any]:
    if round_.secagg is None:
        raise ConflictError(
            f"round {round_.round_id} does not use secure aggregation", code="round_not_secure"
        )
    state: dict[str, Any] = _thaw(round_.secagg)
    return state


def _server(
    state: Mapping[str, Any], artifacts: ArtifactStore, *, with_sum: bool = False
) -> ServerState:
    """The server's protocol state; ``with_sum``: with the masked sum, read from its
    artifact (only unmasking needs it; requests of the unmask stage do not)."""
    digest = state.get("masked_sum") if with_sum else None
    masked = None if digest is None else artifacts.get_bytes(digest).decode("ascii")
    return server_state_from_dict({**state["server"], "masked_sum": masked})


def _server_fields(server: ServerState, artifacts: ArtifactStore) -> dict[str, Any]:
    """``server`` as round-record fields; the masked sum goes to an artifact."""
    doc = server_state_to_dict(server)
    masked = doc.pop("masked_sum")
    doc["masked_sum"] = None
    digest = None if masked is None else artifacts.put_bytes(masked.encode("ascii"))
    return {"server": doc, "masked_sum": digest}


def _digest(document: Mapping[str, Any] | None, body: bytes | None) -> str:
    if body is not None:
        return hashlib.sha256(body).hexdigest()
    raw = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class SecureRounds:
    """The stages of secure rounds, for :class:`~coordinator.rounds.RoundEngine` (called
    under the service's lock)."""

    def __init__(
        self,
        *,
        store: Store,
        artifacts: ArtifactStore,
        now: Callable[[], float],
        rng: np.random.Generator,
        fail: Callable[[RoundRecord, str], RoundRecord],
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._now = now
        self._rng = rng
        self._fail = fail

    def begin(
        self, config: RoundConfig, weights: Weights, selected: tuple[str, ...], task: TaskConfig
    ) -> tuple[dict[str, TaskConfig], dict[str, Any]]:
        """Each selected client's train task config (its protocol id and the masking
        settings in the options) and the round's initial secure state."""
        masking = masking_config(config, weights.num_parameters)
        server = ServerState(
            config=masking, degree=config.secagg_degree, threshold=config.secagg_threshold
        )
        ids = {client_id: index for index, client_id in enumerate(sorted(selected))}
        # The field quantization is the compression of a secure round: no second codec.
        options = {k: v for k, v in task.options.items() if not k.startswith("compression")}
        common = {
            "secagg": True,
            "secagg_clip": masking.clip,
            "secagg_quantization_bits": masking.quantization_bits,
            "secagg_modulus_bits": masking.modulus_bits,
            "secagg_example_cap": masking.example_cap,
            "secagg_dimension": masking.dimension,
        }
        tasks = {
            client_id: dataclasses.replace(
                task, options={**options, **common, "secagg_id": ids[client_id]}
            )
            for client_id in selected
        }
        state = {"stage": "advertise", "ids": ids, **_server_fields(server, self._artifacts)}
        return tasks, state

    def advance(self, round_: RoundRecord) -> RoundRecord:
        """Close the current stage when nobody it waits for is left or at its deadline."""
        state = _state(round_)
        stage = state["stage"]
        kind = STAGE_TASK_KINDS[stage]
        pending = [
            t
            for t in self._store.list_tasks(round_id=round_.round_id, status="pending")
            if t.kind == kind
        ]
        expired = round_.deadline is not None and self._now() >= round_.deadline
        if pending and not expired:
            return round_
        messages = self._store.list_secagg(round_.round_id, stage)
        try:
            if stage == "advertise":
                return self._close_advertise(round_, state, messages)
            if stage == "share":
                return self._close_share(round_, state, messages)
            if stage == "mask":
                return self._close_mask(round_, state, messages)
            return self._close_unmask(round_)
        except (SecAggError, ProtocolError) as exc:
            return self._fail(round_, f"secure aggregation failed at the {stage} stage: {exc}")

    def _close_advertise(
        self, round_: RoundRecord, state: dict[str, Any], messages: list[SecAggRecord]
    ) -> RoundRecord:
        count, needed = len(messages), max(3, round_.config.min_clients)
        if count < needed:
            return self._fail(
                round_,
                f"secure aggregation: only {count} clients advertised keys by the deadline, "
                f"{needed} needed (at least 3, and min_clients)",
            )
        adverts = [_decode(m.document, AdvertiseKeys) for m in messages]
        server, _ = _server(state, self._artifacts).collect_keys(adverts, rng=self._rng)
        return self._open(round_, state, server, "share", [m.client_id for m in messages])

    def _close_share(
        self, round_: RoundRecord, state: dict[str, Any], messages: list[SecAggRecord]
    ) -> RoundRecord:
        count, needed = len(messages), max(3, round_.config.min_clients)
        if count < needed:
            return self._fail(
                round_,
                f"secure aggregation: only {count} clients shared keys by the deadline, "
                f"{needed} needed",
            )
        shares = [_decode(m.document, ShareKeys) for m in messages]
        server, _ = _server(state, self._artifacts).collect_shares(shares)
        return self._open(round_, state, server, "mask", [m.client_id for m in messages])

    def _close_mask(
        self, round_: RoundRecord, state: dict[str, Any], messages: list[SecAggRecord]
    ) -> RoundRecord:
        needed = round_.config.min_clients
        if len(messages) < needed:
            return self._fail(
                round_,
                f"secure aggregation: only {len(messages)} of the {needed} required masked "
                "inputs arrived by the deadline",
            )
        server = _server(state, self._artifacts)
        for message in messages:  # one input at a time: O(dimension) memory
            assert message.artifact is not None
            body = self._artifacts.get_bytes(message.artifact)
            server = server.accept_masked(MaskedInput(message.secagg_id, body))
        threshold = server.threshold or 0
        for cid in sorted(server.shared):
            alive = len(server.graph[cid] & server.survivors)
            if alive < threshold:
                what = "self-mask seed" if cid in server.survivors else "mask key"
                return self._fail(
                    round_,
                    f"secure aggregation: client {cid} has {alive} surviving neighbours, fewer "
                    f"than the threshold {threshold}: its {what} cannot be recovered",
                )
        server, _ = server.unmask_requests()
        return self._open(round_, state, server, "unmask", [m.client_id for m in messages])

    def _close_unmask(self, round_: RoundRecord) -> RoundRecord:
        aggregating = dataclasses.replace(round_, state="aggregating")
        with self._store.transaction():
            self._expire(round_.round_id, STAGE_TASK_KINDS["unmask"])
            self._store.save_round(aggregating)
        return aggregating

    def _open(
        self,
        round_: RoundRecord,
        state: dict[str, Any],
        server: ServerState,
        stage: str,
        clients: list[str],
    ) -> RoundRecord:
        """Start ``stage``: a task for each of ``clients``, a new deadline, the state saved."""
        config = round_.config
        now = self._now()
        seconds = config.secagg_stage_seconds or config.deadline_seconds
        deadline = now + seconds
        previous = STAGE_TASK_KINDS[state["stage"]]
        new_state = {**state, "stage": stage, **_server_fields(server, self._artifacts)}
        opened = dataclasses.replace(round_, deadline=deadline, secagg=new_state)
        with self._store.transaction():
            self._expire(round_.round_id, previous)
            for client_id in sorted(clients):
                train = self._store.get_task(_task_id(round_.round_id, client_id, "advertise"))
                assert train is not None
                self._store.add_task(
                    TaskRecord(
                        task_id=secagg_task_id(round_.round_id, client_id, stage),
                        kind=STAGE_TASK_KINDS[stage],
                        client_id=client_id,
                        model_version=train.model_version,
                        config=train.config,
                        created_at=now,
                        deadline=deadline,
                        round_id=round_.round_id,
                    )
                )
            self._store.save_round(opened)
        logger.info(
            "round %d: secure stage %s for %d clients until %.0f",
            round_.round_id,
            stage,
            len(clients),
            deadline,
        )
        return opened

    def _expire(self, round_id: int, kind: str) -> None:
        for task in self._store.list_tasks(round_id=round_id, status="pending"):
            if task.kind == kind:
                self._store.save_task(dataclasses.replace(task, status="expired"))

    def aggregate(
        self, round_: RoundRecord, weights: Weights, aggregator: RoundAggregator
    ) -> SecureOutcome:
        """Unmask the sum and add its mean to ``aggregator`` as one update of the summed
        example count; SecAggError (with the reason) when a seed or key cannot be
        recovered."""
        state = _state(round_)
        server = _server(state, self._artifacts, with_sum=True)
        if server.stage != "unmask":
            raise SecAggError(f"the secure round ended at the {server.stage} stage")
        messages = self._store.list_secagg(round_.round_id, "unmask")
        responses = [_decode(m.document, UnmaskResponse) for m in messages]
        total = server.unmask(responses)
        delta = weights.unflatten(total.mean)
        aggregator.add(delta, total.num_examples)
        survivors = len(server.survivors)
        bound = server.config.example_cap * server.config.error_bound(survivors)
        masked = {m.client_id: m for m in self._store.list_secagg(round_.round_id, "mask")}
        lines = sorted(f"{cid}:{m.artifact}" for cid, m in masked.items())
        fingerprint = "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
        metrics = []
        for client_id, message in masked.items():
            if message.metrics:
                client = self._store.get_client(client_id)
                region = client.region if client and client.region else None
                # a secure round hides each client's count: its metrics weigh one each
                metrics.append(ClientMetrics(1, message.metrics, region))
        return SecureOutcome(
            participants=survivors,
            fingerprint=fingerprint,
            client_metrics=metrics,
            measurements={
                "secagg_survivors": float(survivors),
                "secagg_dropped": float(len(state["ids"]) - survivors),
                "secagg_error_bound": bound / max(total.num_examples, 1),
            },
        )


def _decode(document: Mapping[str, Any], kind: type) -> Any:
    message = decode_secagg(_thaw(document))
    if not isinstance(message, kind):
        raise ProtocolError(f"expected a {kind.__name__}, got {type(message).__name__}")
    return message


def _invalid(message: str) -> CoordinatorError:
    return CoordinatorError(message, code="invalid_secagg_message")


class SecAggIntake:
    """The device side of secure rounds: stage payloads and stage replies, validated
    before anything is stored (a refused message changes nothing)."""

    def __init__(
        self,
        *,
        store: Store,
        artifacts: ArtifactStore,
        now: Callable[[], float],
        get_round: Callable[[int], RoundRecord],
        retry_after: float,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._now = now
        self._get_round = get_round
        self._retry_after = max(1, math.ceil(retry_after))

    def _secure_round(
        self, client: ClientRecord, round_id: int
    ) -> tuple[RoundRecord, dict[str, Any], int]:
        round_ = self._get_round(round_id)
        state = _state(round_)
        if client.client_id not in round_.selected:
            raise PermissionDeniedError(
                f"client {client.client_id} was not selected for round {round_id}",
                code="not_assigned",
            )
        return round_, state, int(state["ids"][client.client_id])

    def _check_stage(self, round_: RoundRecord, state: Mapping[str, Any], stage: str) -> None:
        if round_.state != "collecting" or state["stage"] != stage:
            where = (
                f"is at the {state['stage']} stage"
                if round_.state == "collecting"
                else f"is {round_.state}"
            )
            raise SecAggStageError(
                f"round {round_.round_id} {where}, not {stage}", retry_after=self._retry_after
            )

    def payload(self, client: ClientRecord, round_id: int, stage: str) -> dict[str, Any]:
        """The document a client needs for ``stage`` (share: its key roster; mask: the
        bundles sent to it; unmask: which neighbours survived and dropped)."""
        if stage not in PAYLOAD_STAGES:
            raise NotFoundError(f"no secure-aggregation stage {stage!r}", code="not_found")
        round_, state, sid = self._secure_round(client, round_id)
        self._check_stage(round_, state, stage)
        task = self._store.get_task(secagg_task_id(round_id, client.client_id, stage))
        if task is None:
            raise PermissionDeniedError(
                f"client {client.client_id} is not in the {stage} stage of round {round_id} "
                "(it did not answer an earlier stage)",
                code="not_in_stage",
            )
        server = _server(state, self._artifacts)
        neighbours = server.graph[sid]
        message: KeyRoster | ShareDelivery | UnmaskRequest
        if stage == "share":
            assert server.threshold is not None
            adverts = tuple(server.keys[p] for p in sorted(neighbours))
            message = KeyRoster(sid, server.threshold, adverts)
        elif stage == "mask":
            client_of = {int(i): c for c, i in state["ids"].items()}
            bundles = {}
            for peer in sorted(neighbours & server.shared):  # O(k) reads, not O(n)
                record = self._store.get_secagg(round_id, "share", client_of[peer])
                if record is not None:
                    bundles[peer] = _decode(record.document, ShareKeys).bundles[sid]
            message = ShareDelivery(sid, bundles)
        else:
            message = UnmaskRequest(
                sid,
                survivors=frozenset(neighbours & server.survivors),
                dropped=frozenset((neighbours & server.shared) - server.survivors),
            )
        return encode_secagg(message)[0]

    def submit(
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
        """Validate and store one stage reply (call under the service's lock)."""
        if stage not in SECAGG_STAGES:
            raise NotFoundError(f"no secure-aggregation stage {stage!r}", code="not_found")
        key = check_idempotency_key(idempotency_key)
        round_, state, sid = self._secure_round(client, round_id)
        digest = _digest(document, body)
        previous = self._store.get_secagg(round_id, stage, client.client_id)
        if previous is not None:
            same_key = previous.idempotency_key == key
            if same_key and previous.digest == digest:
                return SecAggReceipt(round_id, stage, client.client_id, duplicate=True)
            raise ConflictError(
                f"client {client.client_id} already answered the {stage} stage of round "
                f"{round_id}"
                + (" with another body under this Idempotency-Key" if same_key else ""),
                code="idempotency_conflict" if same_key else "secagg_duplicate",
            )
        self._check_stage(round_, state, stage)
        self._check_task(client, round_id, stage, task_id)
        server = _server(state, self._artifacts)
        clean_metrics = _check_metrics(metrics, stage)
        stored: dict[str, Any] = {}
        if stage == "mask":
            if body is None or document is not None:
                raise _invalid("a masked input is the binary body alone")
            try:
                server.accept_masked(MaskedInput(sid, body))  # the protocol's length/range check
            except SecAggError as exc:
                raise _invalid(f"the masked input is refused: {exc}") from exc
        else:
            if document is None or body is not None:
                raise _invalid(f"a {stage} message is a JSON document")
            stored = self._check_document(server, stage, sid, document)
        artifact = self._artifacts.put_bytes(body) if body is not None else None
        now = self._now()
        record = SecAggRecord(
            round_id=round_id,
            stage=stage,
            client_id=client.client_id,
            secagg_id=sid,
            task_id=task_id,
            idempotency_key=key,
            digest=digest,
            size=len(body) if body is not None else len(json.dumps(stored)),
            received_at=now,
            document=stored,
            artifact=artifact,
            metrics=clean_metrics,
        )
        with self._store.transaction():
            # Again under the write lock: another replica's tick may have moved the stage on.
            round_, state, _ = self._secure_round(client, round_id)
            self._check_stage(round_, state, stage)
            self._check_task(client, round_id, stage, task_id)
            self._store.add_secagg(record)
            complete_task(self._store, task_id, now)
        logger.info(
            "accepted the %s message of client %s for round %d", stage, client.client_id, round_id
        )
        return SecAggReceipt(round_id, stage, client.client_id)

    def _check_task(self, client: ClientRecord, round_id: int, stage: str, task_id: str) -> None:
        task = self._store.get_task(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", code="task_not_found")
        if task.client_id != client.client_id:
            raise PermissionDeniedError(
                f"task {task_id!r} is assigned to another client", code="task_not_assigned"
            )
        if task.round_id != round_id or task.kind != STAGE_TASK_KINDS[stage]:
            raise CoordinatorError(
                f"task {task_id!r} is not the {stage} task of round {round_id}",
                code="task_round_mismatch",
            )
        if task.status != "pending":
            raise ConflictError(f"task {task_id!r} is {task.status}", code="task_closed")

    def _check_document(
        self, server: ServerState, stage: str, sid: int, document: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The stage's message decoded and checked against the protocol's state; its
        canonical document."""
        try:
            message = decode_secagg(document)
        except (ProtocolError, SecAggError) as exc:
            raise _invalid(f"the {stage} message is malformed: {exc}") from exc
        kind = _MESSAGES[stage]
        if not isinstance(message, kind):
            raise _invalid(f"the {stage} stage takes a {kind.__name__}")
        if message.client_id != sid:
            raise PermissionDeniedError(
                f"the message names client {message.client_id}, but the caller's id in this "
                f"round is {sid}",
                code="secagg_client_mismatch",
            )
        if isinstance(message, AdvertiseKeys):
            keys = (message.encryption_key, message.mask_key)
            if any(len(k) != _KEY_BYTES for k in keys) or keys[0] == keys[1]:
                raise _invalid(f"advertise two distinct {_KEY_BYTES}-byte X25519 public keys")
        elif isinstance(message, ShareKeys):
            if set(message.bundles) != server.graph[sid]:
                raise _invalid("send exactly one sealed bundle per neighbour of the roster")
            if any(len(b) > _MAX_BUNDLE_BYTES for b in message.bundles.values()):
                raise _invalid(f"a sealed bundle is at most {_MAX_BUNDLE_BYTES} bytes")
        elif isinstance(message, UnmaskResponse):
            if sid not in server.survivors:
                raise _invalid("only a client whose masked input arrived answers the unmask stage")
            neighbours = server.graph[sid]
            alive = neighbours & server.survivors
            dropped = (neighbours & server.shared) - server.survivors
            if set(message.seed_shares) != alive or set(message.key_shares) != dropped:
                raise _invalid("send exactly the shares the unmask request asks for")
            shares = [*message.seed_shares.values(), *message.key_shares.values()]
            if any(len(s) != SHARE_BYTES for s in shares):
                raise _invalid(f"a share is {SHARE_BYTES} bytes")
        return encode_secagg(message)[0]


def _check_metrics(metrics: Mapping[str, float] | None, stage: str) -> dict[str, float]:
    if not metrics:
        return {}
    if stage != "mask":
        raise _invalid("only the masked input carries the client's metrics")
    if not isinstance(metrics, Mapping) or len(metrics) > _MAX_METRICS:
        raise _invalid(f"metrics must be an object of at most {_MAX_METRICS} numbers")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 64
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _invalid(f"metrics[{name!r}] must be a finite number under a short name")
        out[name] = float(value)
    check_metric_bounds(out, "metrics", _invalid)
    return out
