"""What one simulated federation is made of, whichever engine runs it.

A :class:`Scenario` names the edge bundle every client starts from, the raw rows the
clients hold (a *pool* and a :class:`~fedge.data.Partition` of it into clients, each with a
local holdout), a test split nobody trains on, the schedule of participants and the local
hyperparameters. The native engine hands each client its raw rows (the edge client applies
the bundle's feature spec itself); :func:`build_workload` turns the same rows into the
model-ready :class:`~simulations.workload.Workload` the TFF reference engine reads, so both
engines see identical inputs.

For the reference tasks the rows come from :func:`split_task_rows`: the seeded test split,
the cloud's proxy share (what :mod:`simulations.pretrain` trains on) and the pool, which is
every other training row and is disjoint from the proxy share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.bundle import WEIGHTS_FILE, BundleManifest, read_manifest
from fedge.data import Dataset, Partition, load_task, parse_partition, train_test_split
from fedge.errors import DataError
from fedge.features import FeatureSpec
from fedge.weights import Weights
from simulations.workload import (
    Hyperparams,
    Schedule,
    Workload,
    build_full_schedule,
    build_random_schedule,
    check_schedule,
    clients_from_partition,
)

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "Scenario",
    "TaskRows",
    "build_task_partition",
    "build_workload",
    "initial_head",
    "plan_schedule",
    "split_task_rows",
]

DEFAULT_HOLDOUT_FRACTION = 0.2
"""Share of each client's rows kept as its local holdout (personalization is measured there)."""


@dataclass(frozen=True, eq=False)
class TaskRows:
    """A reference task's rows, split three ways: test, the cloud's proxy share, the pool."""

    proxy: Dataset
    pool: Dataset
    test: Dataset


def split_task_rows(
    task: str, *, seed: int, test_fraction: float, proxy_fraction: float
) -> TaskRows:
    """The split ``cloud_trainer`` makes for ``data_fraction=proxy_fraction``, plus the pool.

    ``cloud_trainer.data.split_task`` keeps the first part of a second stratified split of
    the training rows; the pool is that split's other part, so no pool row was pretrained on.
    """
    dataset = load_task(task)
    train_idx, test_idx = train_test_split(dataset, test_fraction=test_fraction, seed=seed)
    train = dataset.take(train_idx)
    proxy_idx, pool_idx = train_test_split(train, test_fraction=1.0 - proxy_fraction, seed=seed)
    return TaskRows(
        proxy=train.take(proxy_idx), pool=train.take(pool_idx), test=dataset.take(test_idx)
    )


def build_task_partition(
    pool: Dataset, spec: str, *, clients: int, seed: int, holdout_fraction: float
) -> Partition:
    """``pool`` partitioned by a CLI spec (``iid``, ``dirichlet:A``, ``by:COLUMN``).

    For ``by:COLUMN`` the ``clients`` largest groups become clients.
    """
    scheme = parse_partition(spec)
    return scheme.apply(
        pool,
        np.arange(len(pool)),
        num_clients=clients,
        seed=seed,
        holdout_fraction=holdout_fraction,
    )


def plan_schedule(
    client_ids: Sequence[str],
    *,
    rounds: int,
    per_round: int,
    seed: int,
    fixed: Schedule | None = None,
) -> Schedule:
    """Who trains in which round: ``fixed`` (a schedule file) checked against the clients,
    else every client when ``per_round`` covers them all, else ``per_round`` clients drawn
    for each round from ``seed``."""
    if fixed is not None:
        return check_schedule(fixed, client_ids=client_ids)
    if per_round >= len(client_ids):
        return build_full_schedule(client_ids, rounds=rounds)
    return build_random_schedule(client_ids, rounds=rounds, per_round=per_round, seed=seed)


@dataclass(frozen=True, eq=False)
class Scenario:
    """One federation: bundle, clients' rows, test rows, schedule and hyperparameters.

    ``keras_model`` is what the TFF engine loads for its ``model_fn`` (an export directory
    or a SavedModel directory); ``details`` describes where the rows came from, for reports.
    """

    task: str
    bundle_dir: Path
    keras_model: Path
    pool: Dataset
    partition: Partition
    test: Dataset
    schedule: Schedule
    hyperparams: Hyperparams
    seed: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.test) == 0:
            raise DataError("the scenario needs at least one test row")
        top = int(self.partition.assigned().max(initial=-1))
        if top >= len(self.pool):
            raise DataError(f"the partition addresses row {top}, the pool has {len(self.pool)}")
        object.__setattr__(
            self, "schedule", check_schedule(self.schedule, client_ids=self.client_ids)
        )
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(self.partition)

    @property
    def num_rounds(self) -> int:
        return len(self.schedule)

    def manifest(self) -> BundleManifest:
        return read_manifest(self.bundle_dir)

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.manifest().feature_spec)

    def train_rows(self) -> npt.NDArray[np.int64]:
        """Pool rows in some client's training part (their union), sorted."""
        parts = [split.train for split in self.partition.values()]
        return np.sort(np.concatenate(parts))

    def test_arrays(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Model-ready test inputs and labels."""
        return self.feature_spec().transform(self.test.columns), np.asarray(self.test.labels)


def initial_head(bundle_dir: str | Path) -> Weights:
    """The head every client starts from: the bundle's ``weights.safetensors`` (head order)."""
    manifest = read_manifest(bundle_dir)
    weights = Weights.from_bytes((Path(bundle_dir) / WEIGHTS_FILE).read_bytes())
    return Weights.from_pairs((name, weights[name]) for name in manifest.head)


def build_workload(scenario: Scenario) -> Workload:
    """The scenario as the TFF engine reads it: the same rows through the bundle's feature
    spec, the same schedule, hyperparameters and initial head."""
    pool_x = scenario.feature_spec().transform(scenario.pool.columns)
    test_x, test_y = scenario.test_arrays()
    return Workload(
        task=scenario.task,
        clients=clients_from_partition(pool_x, scenario.pool.labels, scenario.partition),
        schedule=scenario.schedule,
        hyperparams=scenario.hyperparams,
        initial_head=initial_head(scenario.bundle_dir),
        test_x=test_x,
        test_y=test_y,
    )
