"""Train/test splits and client partitioners (IID, Dirichlet over labels, natural keys).

Every function takes a ``seed`` and is deterministic for it: the same seed gives identical
results, another seed different ones. ``indices`` are positions in a data set (typically its
training split); ``labels`` and ``keys`` are arrays over the *whole* data set, indexed by
``indices``. Each client's examples are then split into train and holdout with
:func:`~fedge.data.clients.split_holdout`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from fedge.data.clients import (
    ClientSplit,
    IndexArray,
    Partition,
    as_indices,
    check_fraction,
    split_holdout,
)
from fedge.data.dataset import Dataset
from fedge.errors import ConfigError, DataError

__all__ = [
    "PartitionScheme",
    "by_key",
    "dirichlet",
    "iid",
    "parse_partition",
    "train_test_split",
]

_INTEGER = re.compile(r"[+-]?\d+")
_SPEC_FORMS = (
    "'iid', 'dirichlet:<alpha>' with alpha > 0 (e.g. dirichlet:0.5) "
    "or 'by:<column>' (e.g. by:pickup_community_area)"
)


def train_test_split(
    data: int | Dataset, *, test_fraction: float = 0.2, seed: int
) -> tuple[IndexArray, IndexArray]:
    """Sorted, disjoint ``(train, test)`` indices covering ``range(n)``.

    ``data`` is an example count or a data set; a data set is split stratified by label
    (each class contributes to the test set in proportion to its size, by largest
    remainder). Both parts get at least one example.
    """
    if isinstance(data, Dataset):
        labels = data.labels
    elif isinstance(data, int) and not isinstance(data, bool):
        labels = np.zeros(data, dtype=np.int64) if data > 0 else np.empty(0, dtype=np.int64)
    else:
        raise ConfigError(f"expected an example count or a Dataset, got {type(data).__name__}")
    check_fraction("test_fraction", test_fraction, allow_zero=False)
    n = labels.size
    if n < 2:
        raise DataError(f"cannot split {n} example(s) into a train and a test part")
    n_test = min(max(int(np.floor(n * test_fraction + 0.5)), 1), n - 1)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * n_test / n
    take = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - take), kind="stable")
    take[order[: n_test - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    test = np.sort(
        np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[:k]
                for c, k in zip(classes, take, strict=True)
            ]
        )
    ).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), test, assume_unique=True)
    return train, test


def iid(
    indices: NDArray[np.integer[Any]], *, num_clients: int, seed: int, holdout_fraction: float = 0.2
) -> Partition:
    """Shuffle ``indices`` and deal them into ``num_clients`` clients of near-equal size."""
    pool = _pool(indices)
    _check_num_clients(num_clients, pool.size)
    check_fraction("holdout_fraction", holdout_fraction, allow_zero=True)
    rng = np.random.default_rng(seed)
    shards = np.array_split(rng.permutation(pool), num_clients)
    return _build(zip(_client_ids(num_clients), shards, strict=True), holdout_fraction, rng)


def dirichlet(
    indices: NDArray[np.integer[Any]],
    labels: NDArray[np.integer[Any]],
    *,
    num_clients: int,
    alpha: float,
    seed: int,
    holdout_fraction: float = 0.2,
    min_size: int = 2,
    max_tries: int = 1000,
) -> Partition:
    """Label-skewed clients: each class is shared out in proportions drawn from Dir(alpha).

    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019; the per-class split is the usual implementation
    (Yurochkin et al., 2019). Small ``alpha`` gives clients few classes, large ``alpha``
    approaches IID. Draws are repeated (up to ``max_tries``) until every client holds at
    least ``min_size`` examples; otherwise a DataError says what to relax.
    """
    pool = _pool(indices)
    pool_labels = _over_pool(labels, pool, what="labels")
    _check_num_clients(num_clients, pool.size)
    check_fraction("holdout_fraction", holdout_fraction, allow_zero=True)
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")
    if min_size < 1 or max_tries < 1:
        raise ConfigError(f"min_size and max_tries must be >= 1, got {min_size}, {max_tries}")
    if num_clients * min_size > pool.size:
        raise DataError(
            f"{pool.size} examples cannot give {num_clients} clients {min_size} examples each"
        )
    rng = np.random.default_rng(seed)
    members = [pool[pool_labels == c] for c in np.unique(pool_labels)]
    for _ in range(max_tries):
        shards = _dirichlet_draw(members, num_clients, alpha, rng)
        if min(s.size for s in shards) >= min_size:
            return _build(zip(_client_ids(num_clients), shards, strict=True), holdout_fraction, rng)
    raise DataError(
        f"no Dirichlet({alpha}) draw in {max_tries} tries gave each of {num_clients} clients "
        f"at least {min_size} examples; raise alpha, or lower num_clients or min_size"
    )


def by_key(
    indices: NDArray[np.integer[Any]],
    keys: NDArray[Any],
    *,
    seed: int,
    holdout_fraction: float = 0.2,
    min_size: int = 1,
    key_name: str = "key",
    max_clients: int | None = None,
) -> Partition:
    """Natural clients: one per distinct non-missing key value among ``indices``.

    Client ids read ``"<key_name>=<value>"`` (e.g. ``"pickup_community_area=8"``), ordered by
    value (integers numerically). Rows whose key is missing (``None``, ``NaN``, ``""``) go to
    ``unassigned``, and so do the rows of keys with fewer than ``min_size`` examples. With
    ``max_clients``, only that many of the largest groups become clients; the rest are
    unassigned too.
    """
    pool = _pool(indices)
    pool_keys = _over_pool(keys, pool, what="keys")
    check_fraction("holdout_fraction", holdout_fraction, allow_zero=True)
    if min_size < 1:
        raise ConfigError(f"min_size must be >= 1, got {min_size}")
    if max_clients is not None and max_clients < 1:
        raise ConfigError(f"max_clients must be >= 1, got {max_clients}")
    groups: dict[str, list[int]] = {}
    unassigned: list[int] = []
    for index, value in zip(pool.tolist(), pool_keys.tolist(), strict=True):
        text = _key_text(value)
        if text is None:
            unassigned.append(index)
        else:
            groups.setdefault(text, []).append(index)
    kept = sorted((t for t in groups if len(groups[t]) >= min_size), key=_natural)
    if max_clients is not None and len(kept) > max_clients:
        largest = sorted(kept, key=lambda t: -len(groups[t]))[:max_clients]
        kept = sorted(largest, key=_natural)
    if not kept:
        raise DataError(
            f"no {key_name} value has {min_size} or more examples among {pool.size} indices"
        )
    for text in set(groups) - set(kept):
        unassigned.extend(groups[text])
    rng = np.random.default_rng(seed)
    clients = ((f"{key_name}={t}", np.asarray(groups[t], dtype=np.int64)) for t in kept)
    return _build(clients, holdout_fraction, rng, unassigned=np.sort(unassigned))


@dataclass(frozen=True)
class PartitionScheme:
    """A parsed partition spec: ``iid``, ``dirichlet:<alpha>`` or ``by:<column>``."""

    kind: Literal["iid", "dirichlet", "by"]
    alpha: float | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("iid", "dirichlet", "by"):
            raise ConfigError(f"unknown partition kind {self.kind!r}; accepted: {_SPEC_FORMS}")
        if self.kind == "dirichlet":
            alpha = self.alpha
            if alpha is None or not (math.isfinite(alpha) and alpha > 0):
                raise ConfigError(f"dirichlet needs a finite alpha > 0, got {alpha!r}")
        elif self.alpha is not None:
            raise ConfigError(f"only dirichlet takes an alpha, not {self.kind!r}")
        if (self.kind == "by") != bool(self.key):
            raise ConfigError(f"a key goes with 'by' and only with it; accepted: {_SPEC_FORMS}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha!r}"
        if self.kind == "by":
            return f"by:{self.key}"
        return "iid"

    def apply(
        self,
        dataset: Dataset,
        train_indices: NDArray[np.integer[Any]],
        *,
        num_clients: int | None,
        seed: int,
        holdout_fraction: float = 0.2,
    ) -> Partition:
        """Partition ``train_indices`` of ``dataset`` into clients.

        ``num_clients`` is the client count for ``iid`` and ``dirichlet``; for ``by`` it caps
        the number of clients (the largest groups are kept) and ``None`` keeps one client per
        key value.
        """
        if self.kind == "by":
            assert self.key is not None
            if self.key not in dataset.columns:
                raise ConfigError(
                    f"no column {self.key!r} to partition by; columns: {sorted(dataset.columns)}"
                )
            return by_key(
                train_indices,
                dataset.columns[self.key],
                seed=seed,
                holdout_fraction=holdout_fraction,
                key_name=self.key,
                max_clients=num_clients,
            )
        if num_clients is None:
            raise ConfigError(f"the {self.kind} partition needs num_clients")
        if self.kind == "dirichlet":
            assert self.alpha is not None
            return dirichlet(
                train_indices,
                dataset.labels,
                num_clients=num_clients,
                alpha=self.alpha,
                seed=seed,
                holdout_fraction=holdout_fraction,
            )
        return iid(
            train_indices, num_clients=num_clients, seed=seed, holdout_fraction=holdout_fraction
        )


def parse_partition(spec: str) -> PartitionScheme:
    """Parse a CLI partition spec: ``iid``, ``dirichlet:0.5`` or ``by:pickup_community_area``."""
    if not isinstance(spec, str):
        raise ConfigError(f"a partition spec is a string, got {type(spec).__name__}")
    kind, colon, arg = spec.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind == "iid" and not colon:
        return PartitionScheme(kind="iid")
    if kind == "dirichlet" and arg:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return PartitionScheme(kind="dirichlet", alpha=alpha)
    if kind == "by" and arg:
        return PartitionScheme(kind="by", key=arg)
    raise ConfigError(f"bad partition spec {spec!r}; accepted: {_SPEC_FORMS}")


def _pool(indices: NDArray[np.integer[Any]]) -> IndexArray:
    pool = as_indices(indices)
    if np.unique(pool).size != pool.size:
        raise DataError("indices to partition must be distinct")
    return pool


def _over_pool(values: NDArray[Any], pool: NDArray[Any], *, what: str) -> NDArray[Any]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{what} must be a 1-D array over the data set, got shape {array.shape}")
    if pool.size and pool.max() >= array.size:
        raise DataError(f"index {int(pool.max())} is out of range for {array.size} {what}")
    selected: NDArray[Any] = array[pool]
    return selected


def _check_num_clients(num_clients: int, available: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > available:
        raise DataError(f"cannot make {num_clients} non-empty clients from {available} examples")


def _client_ids(count: int) -> list[str]:
    width = max(3, len(str(count - 1)))
    return [f"client_{i:0{width}d}" for i in range(count)]


def _dirichlet_draw(
    members: Sequence[NDArray[Any]], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[NDArray[Any]]:
    parts: list[list[NDArray[Any]]] = [[] for _ in range(num_clients)]
    for class_members in members:
        proportions = rng.dirichlet(np.full(num_clients, float(alpha)))
        if not np.isfinite(proportions).all():
            # Tiny alphas can underflow to 0/0; an empty draw is simply rejected and redrawn.
            return [np.empty(0, dtype=np.int64)] * num_clients
        cuts = np.minimum(
            (np.cumsum(proportions)[:-1] * class_members.size).astype(np.int64),
            class_members.size,
        )
        for part, chunk in zip(parts, np.split(rng.permutation(class_members), cuts), strict=True):
            part.append(chunk)
    return [np.concatenate(p) for p in parts]


def _build(
    groups: Iterable[tuple[str, NDArray[Any]]],
    holdout_fraction: float,
    rng: np.random.Generator,
    *,
    unassigned: IndexArray | None = None,
) -> Partition:
    clients: dict[str, ClientSplit] = {
        client_id: split_holdout(members, holdout_fraction, rng) for client_id, members in groups
    }
    if unassigned is None:
        return Partition(clients=clients)
    return Partition(clients=clients, unassigned=unassigned.astype(np.int64))


def _key_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def _natural(text: str) -> tuple[int, int, str]:
    return (0, int(text), "") if _INTEGER.fullmatch(text) else (1, 0, text)
