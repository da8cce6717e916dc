"""One federated run described independently of the engine that executes it.

A :class:`Workload` holds each client's model-ready data, the schedule (which clients take
part in which round), the local-training hyperparameters, the initial head weights and a
test split. The native engine (coordinator + edge client) and the TFF reference engine read
the same workload, so their results can be compared tensor by tensor. :func:`batch_order`
is the one definition of the order in which a client visits its examples, used by both.

No TensorFlow here: the native engine must not need it to describe a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.data import Partition
from fedge.errors import ConfigError
from fedge.validation import check_int, check_positive
from fedge.weights import Weights

__all__ = [
    "ClientData",
    "Hyperparams",
    "RoundMetrics",
    "Schedule",
    "Workload",
    "batch_order",
    "build_full_schedule",
    "build_random_schedule",
    "check_schedule",
    "clients_from_partition",
    "load_schedule",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]

Schedule = tuple[tuple[str, ...], ...]
"""Client ids per round: ``schedule[r]`` are the participants of round ``r`` (0-based)."""


# Data ---------------------------------------------------------------------------------------


def _features(value: object, *, what: str) -> FloatArray:
    """A read-only float32 copy of ``value`` with a leading example axis."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise ConfigError(f"{what} must hold real numbers, got dtype {array.dtype}")
    if array.ndim < 2:
        raise ConfigError(f"{what} must have shape [examples, *features], got shape {array.shape}")
    copy = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(copy).all():
        raise ConfigError(f"{what} holds NaN or infinite values")
    copy.flags.writeable = False
    return copy


def _labels(value: object, *, what: str, count: int) -> LabelArray:
    """A read-only int64 copy of ``value``: ``count`` non-negative integer labels."""
    array = np.asarray(value)
    if array.ndim != 1 or not (array.dtype.kind in "iu" or array.size == 0):
        raise ConfigError(
            f"{what} must be a 1-D array of integer labels, "
            f"got dtype {array.dtype} and shape {array.shape}"
        )
    if array.size != count:
        raise ConfigError(f"{what} has {array.size} labels for {count} examples")
    if array.size and array.min() < 0:
        raise ConfigError(f"{what} must be non-negative, found {int(array.min())}")
    copy = np.array(array, dtype=np.int64, copy=True)
    copy.flags.writeable = False
    return copy


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's model-ready examples (inputs already transformed) and a local holdout.

    Arrays are copied read-only: ``x`` float32 ``[n, *features]`` with ``n >= 1``, ``y`` int64
    ``[n]``. The holdout may be empty (the default) and must have the same feature shape.
    """

    client_id: str
    x: FloatArray
    y: LabelArray
    holdout_x: FloatArray | None = None
    holdout_y: LabelArray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ConfigError(f"client_id must be a non-empty string, got {self.client_id!r}")
        who = f"client {self.client_id!r}"
        x = _features(self.x, what=f"{who} x")
        if x.shape[0] == 0:
            raise ConfigError(f"{who} needs at least one training example")
        y = _labels(self.y, what=f"{who} y", count=x.shape[0])
        if (self.holdout_x is None) != (self.holdout_y is None):
            raise ConfigError(f"{who}: give both holdout_x and holdout_y, or neither")
        if self.holdout_x is None:
            holdout_x = np.zeros((0, *x.shape[1:]), dtype=np.float32)
            holdout_x.flags.writeable = False
            holdout_y = _labels(np.zeros(0, dtype=np.int64), what=f"{who} holdout_y", count=0)
        else:
            holdout_x = _features(self.holdout_x, what=f"{who} holdout_x")
            holdout_y = _labels(self.holdout_y, what=f"{who} holdout_y", count=len(holdout_x))
        if holdout_x.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"{who}: holdout_x has feature shape {holdout_x.shape[1:]}, x has {x.shape[1:]}"
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "holdout_x", holdout_x)
        object.__setattr__(self, "holdout_y", holdout_y)

    @property
    def num_examples(self) -> int:
        """Training examples (what FedAvg weights this client's update by)."""
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])


def clients_from_partition(
    x: npt.ArrayLike, y: npt.ArrayLike, partition: Partition
) -> tuple[ClientData, ...]:
    """One :class:`ClientData` per client of ``partition``, whose indices address ``x``/``y``."""
    features = np.asarray(x)
    labels = np.asarray(y)
    if features.shape[:1] != labels.shape[:1]:
        raise ConfigError(f"x has {features.shape[:1]} examples, y has {labels.shape[:1]}")
    top = int(partition.assigned().max(initial=-1))
    if top >= len(labels):
        raise ConfigError(f"the partition addresses example {top}, x has only {len(labels)}")
    return tuple(
        ClientData(
            client_id=client_id,
            x=features[split.train],
            y=labels[split.train],
            holdout_x=features[split.holdout],
            holdout_y=labels[split.holdout],
        )
        for client_id, split in partition.items()
    )


# Hyperparameters and batch order --------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparams:
    """Local training of every participant: ``epochs`` passes of plain mini-batch SGD.

    Each step is SGD on the mean loss of one batch; the last batch of an epoch may be short.
    With ``shuffle=False`` every epoch visits the examples in stored order; with
    ``shuffle=True`` the order comes from :func:`batch_order` (``seed``, round, client).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    shuffle: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", check_int(self.epochs, "epochs", low=1))
        object.__setattr__(self, "batch_size", check_int(self.batch_size, "batch_size", low=1))
        object.__setattr__(
            self, "learning_rate", check_positive(self.learning_rate, "learning_rate")
        )
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"shuffle must be a bool, got {self.shuffle!r}")
        check_int(self.seed, "seed", low=0)


def _client_key(client_id: str) -> int:
    # Python's hash() of a str changes per process; a digest does not.
    return int.from_bytes(hashlib.sha256(client_id.encode("utf-8")).digest()[:8], "little")


def batch_order(
    hyperparams: Hyperparams, round_index: int, client_id: str, n: int
) -> npt.NDArray[np.int64]:
    """The example order of one client in one round: int64 ``[epochs, n]``.

    Row ``e`` is the order of epoch ``e``; the engine cuts each row into batches of
    ``batch_size`` (the last one possibly short). Without shuffling every row is
    ``0..n-1``. With shuffling each row is a permutation drawn from a generator seeded by
    ``(seed, round_index, client_id)`` only, so any engine reproduces it.
    """
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise ConfigError(f"round_index must be a non-negative int, got {round_index!r}")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"client_id must be a non-empty string, got {client_id!r}")
    n = check_int(n, "n", low=1)
    if not hyperparams.shuffle:
        return np.tile(np.arange(n, dtype=np.int64), (hyperparams.epochs, 1))
    rng = np.random.default_rng([hyperparams.seed, round_index, _client_key(client_id)])
    return np.stack(
        [rng.permutation(n).astype(np.int64) for _ in range(hyperparams.epochs)], axis=0
    )


# Schedules ----------------------------------------------------------------------------------


def check_schedule(schedule: object, *, client_ids: Sequence[str] | None = None) -> Schedule:
    """``schedule`` as a :data:`Schedule`, or a ConfigError saying what is wrong with it.

    Every round names at least one client, none twice; with ``client_ids`` every name must
    be one of them.
    """
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence) or not schedule:
        raise ConfigError(f"a schedule is a non-empty list of rounds, got {schedule!r}")
    known = None if client_ids is None else set(client_ids)
    rounds = []
    for index, participants in enumerate(schedule):
        if isinstance(participants, str | bytes) or not isinstance(participants, Sequence):
            raise ConfigError(
                f"round {index} of the schedule must be a list of client ids, got {participants!r}"
            )
        if not participants:
            raise ConfigError(f"round {index} of the schedule has no participants")
        bad = [p for p in participants if not isinstance(p, str) or not p]
        if bad:
            raise ConfigError(f"round {index}: client ids must be non-empty strings, got {bad}")
        repeated = sorted({p for p in participants if list(participants).count(p) > 1})
        if repeated:
            raise ConfigError(f"round {index} names clients more than once: {repeated}")
        if known is not None:
            unknown = [p for p in participants if p not in known]
            if unknown:
                raise ConfigError(
                    f"round {index} names unknown clients {unknown}; known: {sorted(known)}"
                )
        rounds.append(tuple(participants))
    return tuple(rounds)


def _check_ids(client_ids: Sequence[str]) -> tuple[str, ...]:
    ids = tuple(client_ids)
    if not ids:
        raise ConfigError("a schedule needs at least one client id")
    check_schedule([ids])
    return ids


def build_full_schedule(client_ids: Sequence[str], *, rounds: int) -> Schedule:
    """Every client in every one of ``rounds`` rounds, in the given order."""
    ids = _check_ids(client_ids)
    return (ids,) * check_int(rounds, "rounds", low=1)


def build_random_schedule(
    client_ids: Sequence[str], *, rounds: int, per_round: int, seed: int
) -> Schedule:
    """``per_round`` distinct clients drawn uniformly for each round, from ``seed`` alone.

    Participants keep the order of ``client_ids`` within a round.
    """
    ids = _check_ids(client_ids)
    count = check_int(rounds, "rounds", low=1)
    k = check_int(per_round, "per_round", low=1)
    if k > len(ids):
        raise ConfigError(f"per_round={k} exceeds the {len(ids)} clients available")
    rng = np.random.default_rng(seed)
    return tuple(
        tuple(ids[i] for i in np.sort(rng.choice(len(ids), size=k, replace=False)))
        for _ in range(count)
    )


def load_schedule(
    path: str | os.PathLike[str], *, client_ids: Sequence[str] | None = None
) -> Schedule:
    """Read ``{"rounds": [[client ids...], ...]}`` from a JSON file (ConfigError if bad)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            document: Any = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read schedule file {name!r}: {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"schedule file {name!r} is not valid JSON: {exc}") from exc
    if not isinstance(document, Mapping) or "rounds" not in document:
        raise ConfigError(
            f'schedule file {name!r} must hold an object {{"rounds": [[client ids...], ...]}}'
        )
    extra = sorted(set(document) - {"rounds"})
    if extra:
        raise ConfigError(f"schedule file {name!r} has unknown keys {extra}")
    try:
        return check_schedule(document["rounds"], client_ids=client_ids)
    except ConfigError as exc:
        raise ConfigError(f"schedule file {name!r}: {exc}") from exc


# The workload -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Workload:
    """Everything one federated run needs, whatever engine runs it.

    ``initial_head`` holds the head tensors in ``trainable_weight_names(model)`` order; the
    backbone comes from the engine's model factory and stays frozen.
    """

    task: str
    clients: tuple[ClientData, ...]
    schedule: Schedule
    hyperparams: Hyperparams
    initial_head: Weights
    test_x: FloatArray
    test_y: LabelArray
    _by_id: Mapping[str, ClientData] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a non-empty string, got {self.task!r}")
        clients = tuple(self.clients)
        if not clients:
            raise ConfigError("a workload needs at least one client")
        bad = [type(c).__name__ for c in clients if not isinstance(c, ClientData)]
        if bad:
            raise ConfigError(f"clients must be ClientData, got {bad}")
        by_id = {c.client_id: c for c in clients}
        if len(by_id) != len(clients):
            ids = [c.client_id for c in clients]
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"client ids must be unique, repeated: {repeated}")
        shapes = {c.feature_shape for c in clients}
        if len(shapes) != 1:
            raise ConfigError(f"clients disagree on the feature shape: {sorted(shapes)}")
        (feature_shape,) = shapes
        if not isinstance(self.hyperparams, Hyperparams):
            raise ConfigError(f"hyperparams must be Hyperparams, got {self.hyperparams!r}")
        if not isinstance(self.initial_head, Weights) or len(self.initial_head) == 0:
            raise ConfigError("initial_head must be non-empty Weights")
        self.initial_head.check_finite()
        test_x = _features(self.test_x, what="test_x")
        test_y = _labels(self.test_y, what="test_y", count=test_x.shape[0])
        if test_x.shape[0] == 0:
            raise ConfigError("test_x needs at least one example")
        if test_x.shape[1:] != feature_shape:
            raise ConfigError(
                f"test_x has feature shape {test_x.shape[1:]}, the clients have {feature_shape}"
            )
        object.__setattr__(self, "clients", clients)
        object.__setattr__(self, "schedule", check_schedule(self.schedule, client_ids=tuple(by_id)))
        object.__setattr__(self, "test_x", test_x)
        object.__setattr__(self, "test_y", test_y)
        object.__setattr__(self, "_by_id", by_id)

    @property
    def num_rounds(self) -> int:
        return len(self.schedule)

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.clients[0].feature_shape

    def client(self, client_id: str) -> ClientData:
        """The client named ``client_id`` (ConfigError if there is none)."""
        try:
            return self._by_id[client_id]
        except KeyError:
            raise ConfigError(
                f"no client {client_id!r} in the workload; known: {sorted(self._by_id)}"
            ) from None

    def batch_order(self, round_index: int, client_id: str) -> npt.NDArray[np.int64]:
        """:func:`batch_order` for one of this workload's clients."""
        return batch_order(
            self.hyperparams, round_index, client_id, self.client(client_id).num_examples
        )


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundMetrics:
    """What one engine measured in one round; ``round`` indexes ``Workload.schedule``."""

    round: int
    participants: tuple[str, ...]
    train_loss: float
    """Mean training loss over every example the participants visited this round."""
    seconds: float
    test_accuracy: float
    """Accuracy of the global model after this round on ``Workload.test_x``."""

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round,
            "participants": list(self.participants),
            "train_loss": self.train_loss,
            "seconds": self.seconds,
            "test_accuracy": self.test_accuracy,
        }
