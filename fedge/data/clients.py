"""Which examples each simulated client holds: :class:`ClientSplit` and :class:`Partition`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import ConfigError, DataError

__all__ = [
    "PARTITION_FORMAT",
    "ClientSplit",
    "IndexArray",
    "Partition",
    "as_indices",
    "check_fraction",
    "split_holdout",
]

IndexArray = NDArray[np.int64]
"""A 1-D array of example positions."""

PARTITION_FORMAT = "fedge.partition/1"
"""The ``format`` tag :meth:`Partition.to_dict` writes."""


def as_indices(values: object, *, what: str = "indices") -> IndexArray:
    """``values`` as a read-only 1-D int64 array of non-negative indices (DataError if not)."""
    array = np.array(values, copy=True)
    if array.ndim != 1 or not (array.dtype.kind in "iu" or array.size == 0):
        raise DataError(
            f"{what} must be a 1-D list of integers, got dtype {array.dtype} "
            f"and shape {array.shape}"
        )
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise DataError(f"{what} must be non-negative, found {int(array.min())}")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's example indices: ``train`` (never empty) and ``holdout`` (local eval)."""

    train: IndexArray
    holdout: IndexArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        train = as_indices(self.train, what="train indices")
        holdout = as_indices(self.holdout, what="holdout indices")
        if train.size == 0:
            raise DataError("a client needs at least one training example")
        both = np.concatenate([train, holdout])
        if np.unique(both).size != both.size:
            raise DataError("a client's train and holdout indices must be distinct")
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "holdout", holdout)

    def __len__(self) -> int:
        return int(self.train.size + self.holdout.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientSplit):
            return NotImplemented
        return np.array_equal(self.train, other.train) and np.array_equal(
            self.holdout, other.holdout
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def indices(self) -> IndexArray:
        """All of the client's indices (train and holdout), sorted."""
        return np.sort(np.concatenate([self.train, self.holdout]))


@dataclass(frozen=True, eq=False)
class Partition(Mapping[str, ClientSplit]):
    """An ordered mapping ``client_id -> ClientSplit`` plus the indices no client holds.

    No index belongs to two clients, and none is both assigned and ``unassigned``. Save and
    load with :meth:`to_dict` / :meth:`from_dict` (JSON-able).
    """

    clients: Mapping[str, ClientSplit]
    unassigned: IndexArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        clients = dict(self.clients)
        if not clients:
            raise DataError("a partition needs at least one client")
        for client_id, split in clients.items():
            if not isinstance(client_id, str) or not client_id:
                raise DataError(f"client ids must be non-empty strings, got {client_id!r}")
            if not isinstance(split, ClientSplit):
                raise DataError(f"client {client_id!r}: expected a ClientSplit")
        unassigned = as_indices(self.unassigned, what="unassigned indices")
        held = np.concatenate([*(s.indices for s in clients.values()), unassigned])
        values, counts = np.unique(held, return_counts=True)
        if (counts > 1).any():
            raise DataError(
                f"indices held twice in the partition: {values[counts > 1][:10].tolist()}"
            )
        object.__setattr__(self, "clients", MappingProxyType(clients))
        object.__setattr__(self, "unassigned", unassigned)

    def __getitem__(self, client_id: str) -> ClientSplit:
        return self.clients[client_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.clients)

    def __len__(self) -> int:
        return len(self.clients)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return list(self.clients.items()) == list(other.clients.items()) and np.array_equal(
            self.unassigned, other.unassigned
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def sizes(self) -> dict[str, int]:
        """Examples per client, train and holdout together."""
        return {client_id: len(split) for client_id, split in self.clients.items()}

    def assigned(self) -> IndexArray:
        """Every index some client holds (train or holdout), sorted."""
        return np.sort(np.concatenate([s.indices for s in self.clients.values()]))

    def to_dict(self) -> dict[str, object]:
        """A JSON-able document; :meth:`from_dict` reads it back."""
        return {
            "format": PARTITION_FORMAT,
            "clients": {
                client_id: {"train": split.train.tolist(), "holdout": split.holdout.tolist()}
                for client_id, split in self.clients.items()
            },
            "unassigned": self.unassigned.tolist(),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, object], *, holdout_fraction: float = 0.0, seed: int = 0
    ) -> Partition:
        """Read :meth:`to_dict` output, or the hand-written form ``{client_id: [indices]}``.

        In the hand-written form each client's indices are split into train and holdout by
        ``holdout_fraction`` (none held out by default) with ``seed``; the full form keeps
        the split it records and ignores both options.
        """
        if not isinstance(data, Mapping):
            raise DataError("a partition document must be a JSON object")
        if "format" in data:
            return _from_full(data)
        rng = np.random.default_rng(seed)
        check_fraction("holdout_fraction", holdout_fraction, allow_zero=True)
        clients = {}
        for client_id, values in data.items():
            if not isinstance(values, Sequence) or isinstance(values, str):
                raise DataError(f"client {client_id!r}: expected a list of indices")
            indices = as_indices(values, what=f"client {client_id!r} indices")
            clients[str(client_id)] = split_holdout(indices, holdout_fraction, rng)
        return cls(clients=clients)


def _from_full(data: Mapping[str, object]) -> Partition:
    if data.get("format") != PARTITION_FORMAT:
        raise DataError(f"unknown partition format {data.get('format')!r}")
    clients = data.get("clients")
    if not isinstance(clients, Mapping):
        raise DataError("a partition document needs a 'clients' object")
    splits = {}
    for client_id, entry in clients.items():
        if not isinstance(entry, Mapping) or "train" not in entry:
            raise DataError(f"client {client_id!r}: expected {{'train': [...], 'holdout': [...]}}")
        splits[str(client_id)] = ClientSplit(
            train=as_indices(entry["train"], what=f"client {client_id!r} train indices"),
            holdout=as_indices(entry.get("holdout", []), what=f"client {client_id!r} holdout"),
        )
    unassigned = as_indices(data.get("unassigned", []), what="unassigned indices")
    return Partition(clients=splits, unassigned=unassigned)


def check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    """ConfigError unless ``value`` lies in [0, 1) (or (0, 1) without ``allow_zero``)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and (value >= 0 if allow_zero else value > 0) and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must lie in {interval}, got {value!r}")


def split_holdout(
    indices: NDArray[np.integer[Any]], holdout_fraction: float, rng: np.random.Generator
) -> ClientSplit:
    """Split one client's indices at random into train and holdout (both sorted).

    ``round(n * holdout_fraction)`` examples are held out, but at least one when the client
    has two or more examples and the fraction is positive, and never all: a client always
    keeps a training example, and only a one-example client has an empty holdout.
    """
    shuffled = rng.permutation(np.asarray(indices, dtype=np.int64))
    n = shuffled.size
    held = 0
    if n > 1 and holdout_fraction > 0:
        held = min(max(int(np.floor(n * holdout_fraction + 0.5)), 1), n - 1)
    return ClientSplit(train=np.sort(shuffled[held:]), holdout=np.sort(shuffled[:held]))
