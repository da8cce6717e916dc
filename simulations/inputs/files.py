"""Bring your own: the user's data, initial weights, partition and schedule files.

Every loader here reads and checks one file without TensorFlow and fails with a
:class:`~fedge.errors.ConfigError` whose one-line message names the kind of file, the file
and what is wrong, so ``fedge-simulate`` refuses bad input before any training:

- the data file (``Settings.data_file``): a ``.npz`` with arrays ``x`` (model-ready float
  inputs, ``[n, ...]``) and ``y`` (integer class ids), or a table (``.csv``, ``.csv.gz``,
  ``.tfrecord``, ``.tfrecord.gz``) with a label column and numeric and categorical feature
  columns, empty fields as missing values (:mod:`fedge.data.user_table`). With a
  ``fedge-train --data`` export as the model, the table is read against the export's
  ``schema.json`` (its columns and label classes); otherwise the kinds and classes are
  inferred (labels that are all class ids keep their ids) and each column is transformed
  with statistics of the clients' rows (z-scored numbers, vocabularies with an
  out-of-vocabulary bucket). What looks wrong (empty or constant columns, empty fields,
  unscaled numbers) is logged as a warning;
- the init file: safetensors weights keyed by the model's weight names (``dense_1/kernel``):
  fedge weights or a plain safetensors file, of the trainable part or of every weight;
- the partition file: JSON ``{client_id: [row indices]}`` (non-empty, in range,
  disjoint), or a ``Partition.to_dict`` document; either way each client trains on its
  rows in the order given (the hand-written form holds out a seeded share of them);
- the test data file (``Settings.test_data_file``): the data file's format, columns and
  label values;
- the schedule file: JSON ``{"rounds": [[client ids], ...]}``.

Initial weights on a built-in model become a bundle of their own (:func:`bundle_with_head`);
:mod:`simulations.preparation` assembles the scenario from these and the user's model
(:mod:`simulations.inputs.model`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedge.bundle import WEIGHTS_FILE, read_manifest, verify_bundle, write_manifest
from fedge.data import ClientSplit, Dataset, Partition
from fedge.data.user_table import (
    SCHEMA_FILE,
    TABLE_SUFFIXES,
    UNSCALED_RANGE,
    infer_table,
    load_schema_json,
    read_table,
    table_format,
)
from fedge.errors import ConfigError, FedgeError, WeightsFormatError
from fedge.features import FeatureSpec, NumericFeature
from fedge.fileio import publish_directory
from fedge.schema import Schema
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.workload import Schedule, load_schedule

__all__ = [
    "CUSTOM_TASK",
    "WEIGHT_NAMES",
    "BundledModel",
    "UserData",
    "bundle_with_head",
    "check_init",
    "init_mismatch",
    "is_bundle",
    "load_bundled_model",
    "load_data",
    "load_init",
    "load_partition",
    "load_schedule_file",
    "load_test_data",
    "model_schema_file",
    "plain_weights",
    "user_weight_names",
]

logger = logging.getLogger(__name__)

CUSTOM_TASK = "custom"
"""The task name of a run on the user's own data."""
WEIGHT_NAMES = "weight_names"
"""The metadata key of a bundle built from the user's Keras model: each head tensor's name
(``head_dense/kernel``) -> the user's Keras weight name (``dense/kernel``)."""
_FEATURES = "x"
_LABEL = "y"
_MAX_CLASSES = 1 << 20
_CLASS_ID = re.compile(r"0|[1-9][0-9]{0,6}")


# Data ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UserData:
    """The rows of the data file: raw feature columns and int64 labels."""

    path: Path
    kind: Literal["npz", "csv", "tfrecord"]
    columns: dict[str, npt.NDArray[Any]]
    labels: npt.NDArray[np.int64]
    label: str
    table_schema: Schema | None = None
    """The columns' kinds (numeric, categorical) of a CSV or TFRecord file."""
    warnings: tuple[str, ...] = ()
    """What looked wrong in the data (empty or constant columns, gaps, unscaled numbers)."""
    label_names: tuple[str, ...] | None = None
    """A table's label values in class-id order (how its label column was read)."""
    label_ids: tuple[int, ...] | None = None
    """The class id of each of ``label_names`` when the labels were written as class ids
    (a model's output k is class k); None when the class id is the position in
    ``label_names``."""

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def min_classes(self) -> int:
        return max(2, int(self.labels.max()) + 1)

    def schema(self, num_classes: int) -> Schema:
        if self.table_schema is not None:
            return dataclasses.replace(self.table_schema, num_classes=num_classes)
        shapes = {name: tuple(c.shape[1:]) for name, c in self.columns.items() if c.ndim > 1}
        return Schema(
            numeric=tuple(self.columns),
            categorical=(),
            label=self.label,
            num_classes=num_classes,
            shapes=shapes,
        )

    def dataset(self, num_classes: int) -> Dataset:
        return Dataset(
            name=CUSTOM_TASK,
            schema=self.schema(num_classes),
            columns=self.columns,
            labels=self.labels,
        )

    def feature_spec(self, rows: Dataset) -> FeatureSpec:
        """``.npz`` inputs are model-ready (identity); CSV and TFRecord columns get the
        feature spec of the statistics of ``rows`` (the clients' rows, as their merged
        statistics would give): numeric columns z-scored, categorical ones a vocabulary
        with an out-of-vocabulary bucket, missing values filled."""
        if self.kind == "npz":
            column = self.columns[_FEATURES]
            return FeatureSpec(
                numeric=(
                    NumericFeature(
                        name=_FEATURES,
                        normalization="zscore",
                        offset=0.0,
                        scale=1.0,
                        fill=0.0,
                        shape=tuple(int(d) for d in column.shape[1:]),
                    ),
                )
            )
        from cloud_trainer.data import build_feature_spec

        return build_feature_spec(rows)


def model_schema_file(model_file: str | os.PathLike[str] | None) -> Path | None:
    """The ``schema.json`` of a ``fedge-train --data`` export (or an edge bundle) given as
    the model: the columns and label classes the model was trained on; None without one."""
    if model_file is None:
        return None
    candidate = Path(model_file) / SCHEMA_FILE
    return candidate if candidate.is_file() else None


def load_data(
    path: str | os.PathLike[str],
    *,
    label_column: str = "label",
    schema_file: Path | None = None,
) -> UserData:
    """Read and check a data file (see the module docstring). With ``schema_file`` (the
    model's ``schema.json``) a CSV or TFRecord file is read against that schema."""
    source = Path(path)
    what = f"data file {os.fspath(path)}"
    if not source.is_file():
        raise ConfigError(f"{what}: no such file")
    name = source.name.lower()
    if name.endswith(".npz"):
        data = _load_npz(source, what)
    elif name.endswith(TABLE_SUFFIXES):
        data = _load_table(source, what, label_column, schema_file)
    else:
        raise ConfigError(f"{what}: expected a .npz (arrays x and y), a .tfrecord or a .csv file")
    if len(data) < 2:
        raise ConfigError(f"{what}: needs at least 2 rows, found {len(data)}")
    if int(data.labels.max()) >= _MAX_CLASSES:
        raise ConfigError(f"{what}: class ids must be below {_MAX_CLASSES}")
    for warning in data.warnings:
        logger.warning("%s: %s", what, warning)
    return data


def load_test_data(path: str | os.PathLike[str], data: UserData) -> UserData:
    """Read and check a test data file (``--test-data``): the format, columns and label of
    the data file ``data``, a table read against ``data``'s columns and label values."""
    source = Path(path)
    what = f"test data file {os.fspath(path)}"
    if not source.is_file():
        raise ConfigError(f"{what}: no such file")
    name = source.name.lower()
    if data.kind == "npz":
        if not name.endswith(".npz"):
            raise ConfigError(f"{what}: expected a .npz file like the data file {data.path}")
        test = _load_npz(source, what)
        want, got = data.columns[_FEATURES].shape[1:], test.columns[_FEATURES].shape[1:]
        if want != got:
            raise ConfigError(f"{what}: x has rows of shape {got}, the data file's have {want}")
    else:
        if not name.endswith(TABLE_SUFFIXES):
            raise ConfigError(
                f"{what}: expected a table (.csv[.gz], .tfrecord[.gz]) like the data file "
                f"{data.path}"
            )
        assert data.table_schema is not None
        assert data.label_names is not None
        try:
            dataset = read_table(source, data.table_schema, data.label_names)
        except FedgeError as exc:
            raise ConfigError(
                f"{what}: {exc} (read with the columns and label values of {data.path})"
            ) from exc
        labels = dataset.labels
        if data.label_ids is not None:
            labels = np.asarray(data.label_ids, dtype=np.int64)[labels]
        test = dataclasses.replace(
            data,
            path=source,
            kind=table_format(source),
            columns=dict(dataset.columns),
            labels=labels,
            warnings=tuple(_column_warnings(dataset)),
        )
    if len(test) < 1:
        raise ConfigError(f"{what}: has no rows")
    for warning in test.warnings:
        logger.warning("%s: %s", what, warning)
    return test


def _load_npz(source: Path, what: str) -> UserData:
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{what}: not a readable .npz archive: {exc}") from exc
    missing = [k for k in (_FEATURES, _LABEL) if k not in arrays]
    if missing:
        raise ConfigError(
            f"{what}: needs arrays 'x' and 'y', missing {missing}; it has {sorted(arrays)}"
        )
    x, y = arrays[_FEATURES], arrays[_LABEL]
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise ConfigError(
            f"{what}: x must be numbers shaped [examples, features...], got {x.dtype} {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ConfigError(f"{what}: x holds NaN or infinite values")
    labels = _labels(y, len(x), what)
    return UserData(source, "npz", {_FEATURES: x.astype(np.float64)}, labels, _LABEL)


def _labels(y: npt.NDArray[Any], rows: int, what: str) -> npt.NDArray[np.int64]:
    if y.ndim != 1 or y.size != rows:
        raise ConfigError(
            f"{what}: y must be {rows} labels (one per row of x), got shape {y.shape}"
        )
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ConfigError(f"{what}: y must hold integer class ids, got {y.dtype}")
    if y.size and y.min() < 0:
        raise ConfigError(f"{what}: class ids must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def _load_table(source: Path, what: str, label: str, schema_file: Path | None) -> UserData:
    kind: Literal["csv", "tfrecord"] = table_format(source)
    if schema_file is not None:
        try:
            schema, names = load_schema_json(schema_file)
            dataset = read_table(source, schema, names)
        except FedgeError as exc:
            raise ConfigError(f"{what}: {exc} (read with the model's {schema_file})") from exc
        columns = dict(dataset.columns)
        warnings = tuple(_column_warnings(dataset))
        return UserData(
            source,
            kind,
            columns,
            dataset.labels,
            schema.label,
            schema,
            warnings=warnings,
            label_names=tuple(names),
        )
    if kind == "csv":
        header = _csv_header(source, what)
        if label not in header:
            raise SettingsError(
                f"{what}: no label column {label!r} (set label_column); the header has "
                f"{header[:20]}",
                fields=["label_column", "data_file"],
            )
    try:
        table = infer_table(source, label_column=label)
    except FedgeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    labels = table.dataset.labels
    label_ids = None
    if all(_CLASS_ID.fullmatch(n) for n in table.label_names):
        # labels written as class ids keep their ids (a model's output k is class k)
        label_ids = tuple(int(n) for n in table.label_names)
        labels = np.asarray(label_ids, dtype=np.int64)[labels]
    return UserData(
        source,
        kind,
        dict(table.dataset.columns),
        labels,
        label,
        table.schema,
        warnings=table.warnings,
        label_names=tuple(table.label_names),
        label_ids=label_ids,
    )


def _column_warnings(dataset: Dataset) -> list[str]:
    """Warnings about columns read against a known schema: empty in every row, empty fields,
    numbers on a large scale (the export's feature spec standardizes them)."""
    out: list[str] = []
    for name in dataset.schema.features:
        column = dataset.columns[name]
        if name in dataset.schema.numeric:
            flat = column.reshape(len(column), -1)
            missing = np.isnan(flat).any(axis=1)
        else:
            flat = None
            missing = np.asarray([v is None for v in column], dtype=bool)
        if len(column) and missing.all():
            out.append(f"column {name!r} is empty in every row")
            continue
        if missing.any():
            out.append(f"column {name!r} is empty in {int(missing.sum())} of {len(column)} rows")
        if flat is not None and len(column):
            low, high = float(np.nanmin(flat)), float(np.nanmax(flat))
            if high - low > UNSCALED_RANGE:
                out.append(
                    f"column {name!r} spans {low:g}..{high:g} (unscaled); the model's feature "
                    "spec standardizes it before the model sees it"
                )
    return out


def _csv_header(source: Path, what: str) -> list[str]:
    import csv
    import gzip

    try:
        if source.name.lower().endswith(".gz"):
            with gzip.open(source, "rt", encoding="utf-8", newline="") as stream:
                header = next(csv.reader(stream), [])
        else:
            with open(source, encoding="utf-8", newline="") as stream:
                header = next(csv.reader(stream), [])
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise ConfigError(f"{what}: cannot read the CSV header: {exc}") from exc
    header = [h.strip() for h in header]
    if not header:
        raise ConfigError(f"{what}: the file is empty (no header row)")
    return header


# Weights, partition, schedule ---------------------------------------------------------------


def load_init(path: str | os.PathLike[str]) -> Weights:
    """An init file: safetensors weights (finite float32), either fedge weights (the
    ``fedge`` metadata key: ``final_head.safetensors``) or a plain safetensors file keyed
    by the Keras model's weight names (``dense/kernel``), as
    ``safetensors.numpy.save_file({w.name[:-2]: w.numpy() for w in model.weights}, path)``
    writes it. Which names must be there is checked against the model
    (:func:`init_mismatch`)."""
    what = f"init file {os.fspath(path)}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from exc
    try:
        weights = Weights.from_bytes(data) if _has_fedge_metadata(data) else _plain(data)
        weights.check_finite()
    except FedgeError as exc:
        raise ConfigError(f"{what}: not usable safetensors weights: {exc}") from exc
    if not len(weights):
        raise ConfigError(f"{what}: holds no tensors")
    return weights


def _has_fedge_metadata(data: bytes) -> bool:
    """Whether safetensors ``data`` carries fedge's metadata key (else: a plain file)."""
    if len(data) < 8:
        return False
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return False
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "fedge" in metadata


def _plain(data: bytes) -> Weights:
    """A plain safetensors file's float tensors as Weights, sorted by name (safetensors
    hands them back in an order that changes from process to process, and the conversion
    cache's key hashes them in order)."""
    import safetensors.numpy

    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError for bad bytes
        raise WeightsFormatError(f"not a safetensors file ({exc})") from exc
    not_float = sorted(n for n, t in tensors.items() if t.dtype.kind != "f")
    if not_float:
        raise WeightsFormatError(f"tensors {not_float} are not floating point")
    return Weights.from_pairs((n, t.astype(np.float32)) for n, t in sorted(tensors.items()))


def user_weight_names(bundle: str | os.PathLike[str]) -> dict[str, str]:
    """Each head tensor of ``bundle`` -> the user's Keras weight name (its
    :data:`WEIGHT_NAMES` metadata; empty for a bundle that records none)."""
    names = read_manifest(Path(bundle)).metadata.get(WEIGHT_NAMES) or {}
    return {str(k): str(v) for k, v in dict(names).items()}


def plain_weights(head: Weights, names: Mapping[str, str]) -> bytes:
    """``head`` as a plain safetensors file keyed by ``names`` (head tensor -> the user's
    weight name; a name it lacks stays as it is): what ``--save-weights every-round``
    writes, usable as an ``--init`` file."""
    import safetensors.numpy

    renamed = {names.get(name, name): np.ascontiguousarray(head[name]) for name in head}
    if len(renamed) != len(head):
        raise ConfigError(f"two head tensors map to one weight name in {dict(names)}")
    return bytes(safetensors.numpy.save(renamed))


def init_mismatch(
    init: Weights, shapes: Mapping[str, tuple[int, ...]], *, what: str = "the model's"
) -> str | None:
    """What keeps ``init`` from being ``shapes`` (names -> shapes), in one line naming
    every missing, extra and mis-shaped tensor; None when it fits."""
    missing = [n for n in shapes if n not in init]
    extra = [n for n in init.names if n not in shapes]
    shaped = [
        f"{n} {tuple(init[n].shape)} ({what} {tuple(shapes[n])})"
        for n in shapes
        if n in init and tuple(init[n].shape) != tuple(shapes[n])
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"extra {', '.join(extra)}")
    if shaped:
        problems.append(f"mis-shaped {', '.join(shaped)}")
    return "; ".join(problems) or None


def load_partition(
    path: str | os.PathLike[str], *, rows: int, holdout_fraction: float, seed: int
) -> Partition:
    """A partition file: which rows (of the data file, or of a built-in task's client pool)
    each client holds; every index checked against ``rows``."""
    what = f"partition file {os.fspath(path)}"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(document, Mapping) or not document:
        raise ConfigError(f"{what}: expected a non-empty object {{client_id: [row indices]}}")
    if "format" in document:
        try:
            partition = Partition.from_dict(document)
        except FedgeError as exc:
            raise ConfigError(f"{what}: {exc}") from exc
        top = int(partition.assigned().max(initial=-1))
        if top >= rows:
            raise ConfigError(f"{what}: index {top} is out of range: the data has {rows} rows")
        return partition
    owner: dict[int, str] = {}
    for client_id, indices in document.items():
        if not client_id or len(client_id) > 128:
            raise ConfigError(f"{what}: client ids must be 1-128 characters, got {client_id!r}")
        if not isinstance(indices, list) or not indices:
            raise ConfigError(f"{what}: client {client_id!r} needs a non-empty list of row indices")
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int):
                raise ConfigError(f"{what}: client {client_id!r} has a non-integer index {index!r}")
            if not 0 <= index < rows:
                raise ConfigError(
                    f"{what}: client {client_id!r} index {index} is out of range: "
                    f"the data has {rows} rows (0..{rows - 1})"
                )
            if index in owner:
                other = owner[index]
                who = "twice" if other == client_id else f"by {other!r} and {client_id!r}"
                raise ConfigError(f"{what}: row {index} is held {who}; clients must be disjoint")
            owner[index] = client_id
    try:
        return _ordered_partition(document, holdout_fraction=holdout_fraction, seed=seed)
    except FedgeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _ordered_partition(
    document: Mapping[str, list[int]], *, holdout_fraction: float, seed: int
) -> Partition:
    """The hand-written form with each client's rows in the order given: the holdout is
    the seeded draw of :meth:`Partition.from_dict`, the train rows are the others, in the
    file's order (so batches are consecutive slices of that list)."""
    drawn = Partition.from_dict(document, holdout_fraction=holdout_fraction, seed=seed)
    clients = {}
    for client_id, indices in document.items():
        given = np.asarray(indices, dtype=np.int64)
        held = drawn[client_id].holdout
        clients[client_id] = ClientSplit(
            train=given[~np.isin(given, held)], holdout=given[np.isin(given, held)]
        )
    return Partition(clients=clients)


def load_schedule_file(path: str | os.PathLike[str]) -> Schedule:
    """A schedule file: ``{"rounds": [[client ids], ...]}`` (ids checked later against
    the partition)."""
    what = f"schedule file {os.fspath(path)}"
    if not Path(path).is_file():
        reason = "is a directory" if Path(path).is_dir() else "no such file"
        raise ConfigError(f"{what}: {reason}")
    try:
        return load_schedule(path)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


# Bundles and models -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BundledModel:
    """An edge bundle given as the model (``fedge-quantize bundle`` output): the devices
    train its head as it is; its feature spec reads the rows."""

    source: Path
    num_classes: int
    input_shape: tuple[int, ...]
    feature_spec: FeatureSpec
    schema: Schema


def is_bundle(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is an edge bundle directory (a ``manifest.json`` inside)."""
    return path is not None and (Path(path) / "manifest.json").is_file()


def load_bundled_model(path: str | os.PathLike[str]) -> BundledModel:
    """An edge bundle as the model, every file's sha256 verified."""
    what = f"model file {os.fspath(path)}"
    try:
        manifest = verify_bundle(path)
        spec = FeatureSpec.from_dict(manifest.feature_spec)
    except FedgeError as exc:
        raise ConfigError(f"{what}: not a usable edge bundle: {exc}") from exc
    return BundledModel(
        source=Path(path),
        num_classes=manifest.schema.num_classes,
        input_shape=tuple(spec.output_shape),
        feature_spec=spec,
        schema=manifest.schema,
    )


def check_init(init: Weights, reference: Weights) -> None:
    """A SettingsError (about ``init_file``) unless ``init`` has exactly ``reference``'s
    tensor names and shapes."""
    problem = init_mismatch(init, reference.shapes)
    if problem is not None:
        raise SettingsError(
            f"the init weights do not fit the model's trainable part {dict(reference.shapes)}: "
            f"{problem}",
            fields=["init_file"],
        )


def bundle_with_head(bundle: Path, head: Weights, cache_dir: Path) -> Path:
    """A copy of ``bundle`` that starts from ``head`` (init weights on a built-in model):
    same ``.tflite`` files, the new ``weights.safetensors``, a derived version."""
    manifest = read_manifest(bundle)
    current = Weights.from_bytes((bundle / WEIGHTS_FILE).read_bytes())
    check_init(head, Weights.from_pairs((name, current[name]) for name in manifest.head))
    ordered = Weights.from_pairs((name, head[name]) for name in manifest.head)
    digest = hashlib.sha256(ordered.to_bytes()).hexdigest()[:12]
    version = f"{manifest.model_version}-init-{digest}"
    target = cache_dir / version
    if (target / "manifest.json").is_file():
        return target
    staging = cache_dir / f".{version}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        for name in manifest.files:
            if name != WEIGHTS_FILE:
                shutil.copyfile(bundle / name, staging / name)
        (staging / WEIGHTS_FILE).write_bytes(ordered.to_bytes())
        write_manifest(
            staging,
            model_version=version,
            task=manifest.task,
            schema=manifest.schema,
            feature_spec=dict(manifest.feature_spec),
            train_batch_size=manifest.train_batch_size,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            head=manifest.head,
            metadata={
                **manifest.metadata,
                "initial_weights": "init_file",
                "parent": manifest.model_version,
            },
            extra_files=[n for n in manifest.files if n not in (WEIGHTS_FILE,)],
        )
        try:
            publish_directory(staging, target)
        except OSError:
            if not (target / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
