"""The demo's data: the held-out test split, the cloud's proxy share, the devices' partitions.

:func:`split_demo_data` makes the split ``fedge-train --data-fraction F --test-fraction T
--seed S`` makes (``cloud_trainer.data.split_task``: a stratified test split, then a
stratified share ``F`` of the training part), and keeps what the trainer drops: the pool.
Only the pool is partitioned among the devices (Dirichlet over labels), so no device row
was pretrained on and none is in the test split. :func:`check_trainer_split` compares the
split with the training record the trainer wrote, so a change in either one is caught
before a device trains on rows the cloud has seen.

:func:`write_device_files` writes each device's partition as one ``.npz`` file in the
layout :class:`edge_client.local_data.DirectoryData` reads: one array per raw column
(numeric as float64, categorical as strings, ``""`` for missing) plus the label.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.data import Dataset, Partition, dirichlet, load_task, train_test_split
from fedge.fileio import atomic_write_bytes
from simulations.errors import DemoError

__all__ = ["DemoData", "check_trainer_split", "split_demo_data", "write_device_files"]

DATA_FILE = "partition.npz"


@dataclass(frozen=True, eq=False)
class DemoData:
    """Test rows, the cloud's proxy share, the pool and its partition into devices."""

    test: Dataset
    proxy: Dataset
    pool: Dataset
    partition: Partition

    def device_rows(self, client_id: str) -> Dataset:
        return self.pool.take(self.partition[client_id].indices)


def split_demo_data(
    task: str,
    *,
    seed: int,
    test_fraction: float,
    proxy_fraction: float,
    devices: int,
    alpha: float,
) -> DemoData:
    """The trainer's split of ``task`` and a Dirichlet(``alpha``) partition of the pool."""
    dataset = load_task(task)
    train_idx, test_idx = train_test_split(dataset, test_fraction=test_fraction, seed=seed)
    train = dataset.take(train_idx)
    # Exactly cloud_trainer.data.split_task's second split; its left-out part is the pool.
    proxy_idx, pool_idx = train_test_split(train, test_fraction=1.0 - proxy_fraction, seed=seed)
    pool = train.take(pool_idx)
    partition = dirichlet(
        np.arange(len(pool)),
        pool.labels,
        num_clients=devices,
        alpha=alpha,
        seed=seed,
        holdout_fraction=0.0,  # each daemon keeps its own local holdout
    )
    return DemoData(
        test=dataset.take(test_idx), proxy=train.take(proxy_idx), pool=pool, partition=partition
    )


def check_trainer_split(data: DemoData, record: Mapping[str, Any]) -> None:
    """DemoError unless the trainer trained on exactly ``data.proxy`` and tested on as many
    rows as ``data.test`` holds (``record`` is its ``training_record.json``)."""
    fingerprint = record.get("data_fingerprint")
    if fingerprint != data.proxy.fingerprint():
        raise DemoError(
            "fedge-train did not train on the demo's proxy share (data fingerprints differ): "
            "the devices' rows could overlap the cloud's"
        )
    if record.get("num_test_examples") != len(data.test):
        raise DemoError(
            f"fedge-train held out {record.get('num_test_examples')} test rows, the demo "
            f"{len(data.test)}: the splits differ"
        )


def _column(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if values.dtype.kind == "O":  # categorical: strings, "" for missing
        return np.array(["" if v is None else str(v) for v in values], dtype=str)
    return np.asarray(values)


def write_npz(path: Path, rows: Dataset) -> None:
    """``rows`` as a DirectoryData ``.npz`` file, written atomically (a hidden temporary
    file that the daemon ignores, then a rename), so a daemon never reads half a file."""
    arrays = {name: _column(values) for name, values in rows.columns.items()}
    arrays[rows.schema.label] = np.asarray(rows.labels, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def write_device_files(data: DemoData, directories: Sequence[Path]) -> list[int]:
    """One partition per directory (in partition order); returns the rows written to each."""
    if len(directories) != data.partition.num_clients:
        raise DemoError(
            f"{len(directories)} device directories for {data.partition.num_clients} partitions"
        )
    sizes = []
    for client_id, directory in zip(data.partition, directories, strict=True):
        directory.mkdir(parents=True, exist_ok=True)
        rows = data.device_rows(client_id)
        write_npz(directory / DATA_FILE, rows)
        sizes.append(len(rows))
    return sizes
