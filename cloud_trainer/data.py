"""Training data of a task: the seeded held-out split, the feature spec, model-ready arrays.

The held-out test split depends only on ``(task, test_fraction, seed)``, so the quantizer
and the registry can rebuild it from ``training_record.json``. The feature spec comes from
statistics of the training examples actually used, never from the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_trainer.config import DEFAULT_TEST_FRACTION, TABLE_TASK
from fedge.data import Dataset, UserTable, infer_table, load_task, train_test_split
from fedge.errors import ConfigError
from fedge.features import MINMAX, FeatureSpec
from fedge.stats import compute_stats
from fedge.validation import check_fraction

__all__ = [
    "NORMALIZATION",
    "TaskData",
    "build_feature_spec",
    "prepare_table_data",
    "prepare_task_data",
    "split_task",
]

NORMALIZATION: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {"digits": MappingProxyType({"pixels": MINMAX}), "taxi": MappingProxyType({})}
)
"""Per-task normalization overrides for :meth:`FeatureSpec.from_stats` (z-score otherwise)."""


@dataclass(frozen=True, eq=False)
class TaskData:
    """Model-ready float32 features and int64 labels of one task's train and test parts."""

    task: str
    spec: FeatureSpec
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    num_classes: int
    fingerprint: str
    """``Dataset.fingerprint()`` of the raw training examples used."""
    test_fraction: float
    data_fraction: float
    seed: int
    region: str | None = None
    """The schema's region column (per-slice metrics), if it has one."""
    test_regions: npt.NDArray[Any] | None = None
    """That column's raw values over the test examples."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def split_task(
    dataset: Dataset, *, test_fraction: float, seed: int, data_fraction: float = 1.0
) -> tuple[Dataset, Dataset]:
    """``(train, test)`` raw data: a stratified split fixed by ``seed``, then a seeded,
    stratified ``data_fraction`` of the training part (the test part never shrinks)."""
    check_fraction(data_fraction, "data_fraction", zero_ok=False, one_ok=True)
    train_idx, test_idx = train_test_split(dataset, test_fraction=test_fraction, seed=seed)
    train = dataset.take(train_idx)
    if data_fraction < 1.0:
        if len(train) < 2:
            raise ConfigError("too few training examples to take a fraction of them")
        # The left-out part of a second stratified split: every class keeps its share.
        keep, _ = train_test_split(train, test_fraction=1.0 - data_fraction, seed=seed)
        train = train.take(keep)
    return train, dataset.take(test_idx)


def build_feature_spec(train: Dataset, *, task: str | None = None) -> FeatureSpec:
    """The feature spec of ``train``'s schema from ``train``'s statistics only, with the
    normalization overrides of ``task`` (``train.name`` by default)."""
    stats = compute_stats(train.columns, schema=train.schema, labels=train.labels)
    return FeatureSpec.from_stats(
        stats, schema=train.schema, normalization=NORMALIZATION.get(task or train.name, {})
    )


def prepare_table_data(
    path: str,
    *,
    label_column: str,
    numeric: tuple[str, ...] = (),
    categorical: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    data_fraction: float = 1.0,
) -> tuple[TaskData, UserTable]:
    """A user's file as :func:`prepare_task_data` prepares a task: inferred schema, seeded
    split, z-scored numbers and one-hot categories from the training split's statistics.

    The task is :data:`~cloud_trainer.config.TABLE_TASK`; the same split comes back from
    ``fedge.data.read_table(path, schema, label_names)`` and :func:`split_task`.
    """
    check_fraction(test_fraction, "test_fraction", zero_ok=False)
    table = infer_table(
        path, label_column=label_column, numeric=numeric, categorical=categorical, exclude=exclude
    )
    return _task_data(TABLE_TASK, table.dataset, seed, test_fraction, data_fraction), table


def prepare_task_data(
    task: str,
    *,
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    data_fraction: float = 1.0,
) -> TaskData:
    """Load ``task``, split it, build the spec from the training part, transform both parts."""
    check_fraction(test_fraction, "test_fraction", zero_ok=False)
    return _task_data(task, load_task(task), seed, test_fraction, data_fraction)


def _task_data(
    task: str, dataset: Dataset, seed: int, test_fraction: float, data_fraction: float
) -> TaskData:
    train, test = split_task(
        dataset, test_fraction=test_fraction, seed=seed, data_fraction=data_fraction
    )
    spec = build_feature_spec(train, task=task)
    return TaskData(
        task=task,
        spec=spec,
        x_train=spec.transform(train.columns),
        y_train=np.asarray(train.labels, dtype=np.int64),
        x_test=spec.transform(test.columns),
        y_test=np.asarray(test.labels, dtype=np.int64),
        num_classes=dataset.schema.num_classes,
        fingerprint=train.fingerprint(),
        test_fraction=test_fraction,
        data_fraction=data_fraction,
        seed=seed,
        region=test.schema.region,
        test_regions=None if test.schema.region is None else test.columns[test.schema.region],
    )
