"""Secure aggregation on the device: the client side of a SecAgg+ round.

A secure round's ``train`` task (``config.options["secagg"] is True``) runs the ordinary
training handler; :func:`begin` then turns its :class:`~fedge.messages.ModelUpdate` into
the first message of the protocol (the client's two public keys) and keeps the delta, as
one flat vector (:meth:`~fedge.weights.Weights.flatten`), in the round's secret store.
The coordinator then hands out ``secagg_share``, ``secagg_mask`` and ``secagg_unmask``
tasks; for each the device fetches the stage's payload and :func:`step` computes the
reply with :class:`fedge.secagg.ClientState` (the cryptography lives there, not here).
The delta never leaves the device except masked.

Differential privacy (DP-FedAvg with distributed noise, McMahan et al., ICLR 2018): when
the train task's options carry ``dp_clip`` and ``dp_noise_stddev``, :func:`begin` clips the
flat delta to L2 norm ``dp_clip`` and adds Gaussian noise of standard deviation
``dp_noise_stddev`` to every coordinate before it is kept, so what the device masks (and
the coordinator can ever sum) is already noised; the coordinator sets the per-client
stddev so that the noise of the sum is what its accountant assumes. Each client's input
then carries weight 1 (its example count is reported as ``secagg_example_cap``): an
example-weighted sum would scale each client's noise by its weight and leave the sum with
less noise than stated.

Refusals are :class:`~fedge.errors.SecAggError`: a roster whose threshold is not a strict
majority, a share bundle that does not authenticate, fewer than ``t`` surviving
neighbours, and a request for both kinds of share of one peer, in one request or across
two (the peers already revealed are kept in the store, so the refusal survives a restart).
The caller records the error and never answers the task.

The secret store (:class:`FileSecretStore`, ``STATE/secagg/``) holds, per round, the
protocol state (private keys, self-mask seed, shares held for neighbours, what was
revealed) and, until masking, the flat delta with its example count and metrics: one JSON
file per round, mode 0600, written atomically. The daemon deletes a round's file once its
unmask reply is queued, and those of earlier rounds when a later round's train task
arrives (:func:`forget_before`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from fedge.dp import clip_l2
from fedge.errors import ProtocolError, SecAggError
from fedge.fileio import atomic_write_bytes, fsync_directory
from fedge.messages import ModelUpdate, Task
from fedge.secagg import (
    AdvertiseKeys,
    ClientState,
    KeyRoster,
    MaskingConfig,
    ShareDelivery,
    UnmaskRequest,
    decode_secagg,
    encode_secagg,
)
from fedge.secagg.keys import KeyPair

__all__ = [
    "SECAGG_STAGES",
    "FileSecretStore",
    "MemorySecretStore",
    "RoundSecrets",
    "SecretStore",
    "SecureReply",
    "Stage",
    "begin",
    "dp_options",
    "forget_before",
    "is_secure",
    "masking_config",
    "privatize",
    "secrets_from_dict",
    "secrets_to_dict",
    "stage_of",
    "step",
]

logger = logging.getLogger(__name__)

Stage: TypeAlias = Literal["advertise", "share", "mask", "unmask"]
SECAGG_STAGES: Mapping[str, Stage] = MappingProxyType(
    {"secagg_share": "share", "secagg_mask": "mask", "secagg_unmask": "unmask"}
)
"""The stage each secure-aggregation task kind answers."""

_PAYLOADS: Mapping[str, type] = MappingProxyType(
    {"share": KeyRoster, "mask": ShareDelivery, "unmask": UnmaskRequest}
)
_FILE = re.compile(r"^round-([1-9][0-9]{0,18})\.json$")


@dataclass(frozen=True)
class SecureReply:
    """One protocol message ready for the coordinator: POST it to the ``stage`` route of
    round ``round_id`` (a JSON ``document``, or for the masked input the binary ``body``).

    ``task_id`` is the task it answers (the train task for ``advertise``); ``metrics``
    (the training metrics) travel with the masked input only."""

    round_id: int
    task_id: str
    stage: Stage
    document: Mapping[str, Any] | None
    body: bytes | None
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.body is None) == (self.document is None):
            raise ProtocolError("a secure reply has either a JSON document or a binary body")
        if (self.body is not None) != (self.stage == "mask"):
            raise ProtocolError(f"the {self.stage} stage's reply has the wrong form")

    def __repr__(self) -> str:
        return (
            f"SecureReply(round_id={self.round_id}, task_id={self.task_id!r}, stage={self.stage!r})"
        )


@dataclass(frozen=True, repr=False)
class RoundSecrets:
    """What the device keeps between the stages of one round. Secret: no repr content.

    ``vector`` (the flat delta) with ``num_examples`` and ``metrics`` is kept until the
    masked input is computed, then dropped."""

    round_id: int
    state: ClientState
    vector: npt.NDArray[np.float64] | None = None
    num_examples: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"RoundSecrets(round_id={self.round_id}, stage={self.state.stage!r})"


class SecretStore(Protocol):
    """Where a device keeps its :class:`RoundSecrets`, by round."""

    def load(self, round_id: int) -> RoundSecrets | None: ...

    def save(self, secrets: RoundSecrets) -> None: ...

    def delete(self, round_id: int) -> None: ...

    def round_ids(self) -> list[int]: ...


class MemorySecretStore:
    """A :class:`SecretStore` in memory (simulations, tests)."""

    def __init__(self) -> None:
        self._rounds: dict[int, RoundSecrets] = {}

    def load(self, round_id: int) -> RoundSecrets | None:
        return self._rounds.get(round_id)

    def save(self, secrets: RoundSecrets) -> None:
        self._rounds[secrets.round_id] = secrets

    def delete(self, round_id: int) -> None:
        self._rounds.pop(round_id, None)

    def round_ids(self) -> list[int]:
        return sorted(self._rounds)


class FileSecretStore:
    """A :class:`SecretStore` in ``directory`` (mode 0700): ``round-<id>.json`` files,
    mode 0600, each written atomically (:func:`fedge.fileio.atomic_write_bytes`)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, round_id: int) -> Path:
        return self.directory / f"round-{round_id}.json"

    def load(self, round_id: int) -> RoundSecrets | None:
        try:
            data = self.path(round_id).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return secrets_from_dict(json.loads(data))
        except (ValueError, TypeError, KeyError) as exc:
            raise SecAggError(
                f"the secure-aggregation secrets of round {round_id} are unreadable "
                f"({type(exc).__name__})"
            ) from exc

    def save(self, secrets: RoundSecrets) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(secrets_to_dict(secrets), sort_keys=True, allow_nan=False)
        atomic_write_bytes(self.path(secrets.round_id), data.encode("utf-8"), mode=0o600)

    def delete(self, round_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(round_id).unlink()
            fsync_directory(self.directory)

    def round_ids(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_FILE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m is not None)


# The protocol steps ---------------------------------------------------------------------


def is_secure(task: Task) -> bool:
    """Whether ``task`` is the train task of a secure round."""
    return task.kind == "train" and task.config.options.get("secagg") is True


def stage_of(task: Task) -> Stage:
    """The stage a ``secagg_*`` task answers; SecAggError for any other kind."""
    stage = SECAGG_STAGES.get(task.kind)
    if stage is None:
        raise SecAggError(f"task {task.task_id} of kind {task.kind!r} is not a protocol stage")
    return stage


def masking_config(task: Task) -> MaskingConfig:
    """The :class:`~fedge.secagg.MaskingConfig` a secure round's task carries in its
    ``secagg_*`` options; SecAggError naming the option that is missing or wrong."""
    options = task.config.options
    clip = options.get("secagg_clip")
    if isinstance(clip, bool) or not isinstance(clip, int | float):
        raise SecAggError(f"task {task.task_id}: option secagg_clip must be a number, got {clip!r}")
    return MaskingConfig(
        dimension=_int_option(task, "secagg_dimension"),
        clip=float(clip),
        example_cap=_int_option(task, "secagg_example_cap"),
        modulus_bits=_int_option(task, "secagg_modulus_bits"),
        quantization_bits=_int_option(task, "secagg_quantization_bits"),
    )


def forget_before(store: SecretStore, round_id: int) -> None:
    """Delete the secrets of every round before ``round_id`` (a later round started: an
    earlier one can no longer need them)."""
    for old in store.round_ids():
        if old < round_id:
            store.delete(old)


def begin(
    task: Task,
    update: ModelUpdate,
    store: SecretStore,
    *,
    rng: np.random.Generator | None = None,
) -> SecureReply:
    """After training: fresh keys for this round, the delta kept in ``store`` (clipped and
    noised first when the task asks for differential privacy: :func:`privatize`), and the
    ``advertise`` reply (the two public keys). Secrets of earlier rounds are deleted.
    ``rng`` draws the privacy noise (default: a generator seeded from the OS)."""
    if not is_secure(task):
        raise SecAggError(f"task {task.task_id} is not the train task of a secure round")
    round_id = _round_id(task)
    if update.round_id != round_id or update.task_id != task.task_id:
        raise SecAggError(f"the update answers task {update.task_id}, not {task.task_id}")
    config = masking_config(task)
    vector = update.delta.flatten()
    if vector.shape != (config.dimension,):
        raise SecAggError(
            f"task {task.task_id}: the update has {vector.size} parameters, the round "
            f"expects secagg_dimension {config.dimension}"
        )
    if not np.all(np.isfinite(vector)):
        raise SecAggError(f"task {task.task_id}: the update holds NaN or infinite values")
    num_examples = update.num_examples
    dp = dp_options(task)
    if dp is not None:
        vector = privatize(vector, *dp, rng=rng if rng is not None else np.random.default_rng())
        num_examples = config.example_cap
    forget_before(store, round_id)
    if store.load(round_id) is not None:
        raise SecAggError(f"round {round_id} already has secure-aggregation keys on this device")
    state = ClientState.create(_int_option(task, "secagg_id"), config)
    store.save(
        RoundSecrets(
            round_id,
            state,
            vector=vector,
            num_examples=num_examples,
            metrics=dict(update.metrics),
        )
    )
    document, _ = encode_secagg(state.advertise())
    logger.info("round %d: advertising secure-aggregation keys", round_id)
    return SecureReply(round_id, task.task_id, "advertise", document, None)


def dp_options(task: Task) -> tuple[float, float] | None:
    """``(dp_clip, dp_noise_stddev)`` from the task's options, or None when it asks for no
    differential privacy; SecAggError when only one is given or either is not a finite
    number (the clip positive, the stddev non-negative)."""
    options = task.config.options
    present = [name for name in ("dp_clip", "dp_noise_stddev") if name in options]
    if not present:
        return None
    if len(present) == 1:
        raise SecAggError(
            f"task {task.task_id}: option {present[0]} needs "
            f"{'dp_noise_stddev' if present[0] == 'dp_clip' else 'dp_clip'} too"
        )
    clip, stddev = options["dp_clip"], options["dp_noise_stddev"]
    for name, value, low in (("dp_clip", clip, "positive"), ("dp_noise_stddev", stddev, ">= 0")):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (value <= 0 if name == "dp_clip" else value < 0)
        ):
            raise SecAggError(
                f"task {task.task_id}: option {name} must be a finite number {low}, got {value!r}"
            )
    return float(clip), float(stddev)


def privatize(
    vector: npt.NDArray[np.float64],
    clip: float,
    noise_stddev: float,
    *,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """``vector`` scaled down to L2 norm ``clip`` (when longer), plus N(0, noise_stddev^2)
    per coordinate: one client's share of the Gaussian mechanism."""
    clipped, _ = clip_l2(vector, clip)
    noised: npt.NDArray[np.float64] = clipped + rng.normal(0.0, noise_stddev, size=clipped.shape)
    return noised


def step(
    task: Task,
    payload: Mapping[str, Any],
    store: SecretStore,
    *,
    rng: np.random.Generator | None = None,
) -> SecureReply:
    """Answer a ``secagg_share`` / ``secagg_mask`` / ``secagg_unmask`` task given the stage's
    payload document (as the coordinator served it). The new protocol state is saved
    before the reply is returned, so a refusal it implies outlives a crash. ``rng`` drives
    the stochastic rounding of the masked input."""
    stage = stage_of(task)
    round_id = _round_id(task)
    secrets = store.load(round_id)
    if secrets is None:
        raise SecAggError(
            f"task {task.task_id}: no secure-aggregation secrets for round {round_id} on this "
            "device (it did not advertise keys, or the round is over for it)"
        )
    state = secrets.state
    if task.config.options.get("secagg_id") != state.client_id:
        raise SecAggError(
            f"task {task.task_id} names secagg_id {task.config.options.get('secagg_id')!r}; "
            f"this device is client {state.client_id} of round {round_id}"
        )
    message = _decode(payload, stage)
    if isinstance(message, KeyRoster):
        state, shares = state.share_keys(message)
        store.save(_replace(secrets, state))
        document, _ = encode_secagg(shares)
        return SecureReply(round_id, task.task_id, stage, document, None)
    if isinstance(message, ShareDelivery):
        if secrets.vector is None:
            raise SecAggError(f"round {round_id}: the update is no longer held to mask")
        state, masked = state.mask(
            message,
            secrets.vector,
            secrets.num_examples,
            rng=rng if rng is not None else np.random.default_rng(),
        )
        store.save(RoundSecrets(round_id, state))  # the plain delta is gone from here on
        return SecureReply(round_id, task.task_id, stage, None, masked.data, secrets.metrics)
    assert isinstance(message, UnmaskRequest)
    state, response = state.unmask(message)
    store.save(_replace(secrets, state))
    document, _ = encode_secagg(response)
    return SecureReply(round_id, task.task_id, stage, document, None)


def _decode(payload: Mapping[str, Any], stage: str) -> KeyRoster | ShareDelivery | UnmaskRequest:
    try:
        message = decode_secagg(payload)
    except ProtocolError as exc:
        raise SecAggError(f"the {stage} payload is malformed: {exc}") from exc
    expected = _PAYLOADS[stage]
    if isinstance(message, expected) and isinstance(
        message, KeyRoster | ShareDelivery | UnmaskRequest
    ):
        return message
    raise SecAggError(
        f"the {stage} payload is a {type(message).__name__}, expected a {expected.__name__}"
    )


def _replace(secrets: RoundSecrets, state: ClientState) -> RoundSecrets:
    return RoundSecrets(
        secrets.round_id, state, secrets.vector, secrets.num_examples, secrets.metrics
    )


def _round_id(task: Task) -> int:
    if task.round_id is None:
        raise SecAggError(f"task {task.task_id} names no round")
    return task.round_id


def _int_option(task: Task, name: str) -> int:
    value = task.config.options.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SecAggError(
            f"task {task.task_id}: option {name} must be a non-negative integer, got {value!r}"
        )
    return value


# The store's file form ------------------------------------------------------------------


def secrets_to_dict(secrets: RoundSecrets) -> dict[str, Any]:
    """The JSON-able form of ``secrets`` (keys, seeds and shares in base64)."""
    state = secrets.state
    config = state.config
    return {
        "round_id": secrets.round_id,
        "client_id": state.client_id,
        "config": {
            "dimension": config.dimension,
            "clip": config.clip,
            "example_cap": config.example_cap,
            "modulus_bits": config.modulus_bits,
            "quantization_bits": config.quantization_bits,
        },
        "encryption_keys": [
            _b64(state.encryption_keys.private),
            _b64(state.encryption_keys.public),
        ],
        "mask_keys": [_b64(state.mask_keys.private), _b64(state.mask_keys.public)],
        "self_seed": _b64(state.self_seed),
        "stage": state.stage,
        "threshold": state.threshold,
        "neighbours": [encode_secagg(n)[0] for _, n in sorted(state.neighbours.items())],
        "held_shares": {
            str(peer): [_b64(seed), _b64(key)]
            for peer, (seed, key) in sorted(state.held_shares.items())
        },
        "revealed_seeds": sorted(state.revealed_seeds),
        "revealed_keys": sorted(state.revealed_keys),
        "vector": None
        if secrets.vector is None
        else _b64(np.ascontiguousarray(secrets.vector, dtype="<f8").tobytes()),
        "num_examples": secrets.num_examples,
        "metrics": dict(secrets.metrics),
    }


def secrets_from_dict(doc: Mapping[str, Any]) -> RoundSecrets:
    """The inverse of :func:`secrets_to_dict` (ValueError/TypeError/KeyError if it is not one)."""
    if not isinstance(doc, Mapping):
        raise TypeError("a secrets record is a JSON object")
    neighbours = [decode_secagg(n) for n in doc["neighbours"]]
    state = ClientState(
        client_id=int(doc["client_id"]),
        config=MaskingConfig(**doc["config"]),
        encryption_keys=_key_pair(doc["encryption_keys"]),
        mask_keys=_key_pair(doc["mask_keys"]),
        self_seed=_unb64(doc["self_seed"]),
        stage=str(doc["stage"]),
        threshold=int(doc["threshold"]),
        neighbours={n.client_id: n for n in neighbours if isinstance(n, AdvertiseKeys)},
        held_shares={
            int(peer): (_unb64(pair[0]), _unb64(pair[1]))
            for peer, pair in doc["held_shares"].items()
        },
        revealed_seeds=frozenset(int(p) for p in doc["revealed_seeds"]),
        revealed_keys=frozenset(int(p) for p in doc["revealed_keys"]),
    )
    if len(state.neighbours) != len(neighbours):
        raise ValueError("the neighbours are not advertised keys")
    vector = doc["vector"]
    return RoundSecrets(
        round_id=int(doc["round_id"]),
        state=state,
        vector=None
        if vector is None
        else np.frombuffer(_unb64(vector), dtype="<f8").astype(np.float64),
        num_examples=int(doc["num_examples"]),
        metrics={str(k): float(v) for k, v in doc["metrics"].items()},
    )


def _key_pair(value: Any) -> KeyPair:
    private, public = value
    return KeyPair(private=_unb64(private), public=_unb64(public))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from exc
