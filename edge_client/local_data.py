"""The device's own labelled data: a directory of files, read with the bundle's schema.

Every file is a *span*. CSV files (``.csv`` or ``.csv.gz``, a header row, the schema's raw
columns including the label, e.g. taxi-style columns with ``big_tipper``, or the task's own
format whose label is derived from other columns, e.g. ``tips`` and ``fare`` for taxi: see
:mod:`fedge.data.derived`) are read with :func:`fedge.data.read_csv_columns`; ``.npz`` files
hold one array per column (numeric columns as numbers, shaped ``(n, *shape)`` or flat;
categorical ones as strings, ``""`` for missing) plus the label. Files that appear later are
picked up by :meth:`DirectoryData.refresh` as new spans (the daemon refreshes before every
task); a file whose size or mtime changes is read again; a removed file's span is dropped.
Hidden files (``.name``) and names ending in ``.tmp``/``.part`` are ignored, so writing
``.name.tmp`` and renaming it is the safe way to drop a file in; a file modified less than
``settle_seconds`` ago waits for a later refresh in case it is still being written.

Each span is split into train and holdout rows on its own, with a generator seeded from
``(seed, span name)``, so the split is deterministic and a new span never reshuffles the
holdout of the old ones. :class:`MemoryData` holds fixed train/holdout data sets (the
in-memory simulation). Raw rows stay in this module's objects: replies only carry what
:mod:`edge_client.handler` derives from them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedge.bundle import BundleManifest
from fedge.data import ColumnKind, Dataset, LabelPolicy, canonical_category, read_csv_columns
from fedge.data.derived import derive_label, derived_label_sources
from fedge.data.user_table import SCHEMA_FILE, load_schema_json
from fedge.data.user_table import read_table as read_user_table
from fedge.errors import ConfigError, DataError, FedgeError
from fedge.schema import Schema

__all__ = [
    "DATA_SUFFIXES",
    "DirectoryData",
    "LocalData",
    "MemoryData",
    "Span",
    "bundle_label_names",
    "concat_tables",
    "empty_table",
    "read_columns",
    "read_table",
]

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".csv", ".csv.gz", ".npz", ".tfrecord", ".tfrecord.gz")
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial")


class LocalData(Protocol):
    """What :func:`edge_client.handler.handle` needs of a client's data."""

    @property
    def schema(self) -> Schema: ...

    def refresh(self) -> list[str]:
        """Pick up new data; returns the names of spans added or re-read."""
        ...

    def train(self) -> Dataset: ...

    def holdout(self) -> Dataset: ...

    def everything(self) -> Dataset:
        """Train and holdout rows together (for statistics)."""
        ...


def empty_table(schema: Schema, name: str = "local") -> Dataset:
    """A data set of ``schema`` with no rows."""
    columns: dict[str, NDArray[Any]] = {}
    for column in schema.numeric:
        columns[column] = np.empty((0, *schema.shape_of(column)), dtype=np.float64)
    for column in schema.categorical:
        columns[column] = np.empty(0, dtype=object)
    if schema.region is not None and schema.region not in columns:
        columns[schema.region] = np.empty(0, dtype=object)
    if schema.timestamp is not None and schema.timestamp not in columns:
        columns[schema.timestamp] = np.empty(0, dtype=np.float64)
    return Dataset(name=name, schema=schema, columns=columns, labels=np.empty(0, np.int64))


def concat_tables(schema: Schema, tables: Sequence[Dataset], name: str = "local") -> Dataset:
    """The rows of ``tables`` one after the other (columns every table has)."""
    parts = [t for t in tables if len(t)]
    if not parts:
        return empty_table(schema, name)
    if len(parts) == 1:
        return parts[0]
    shared = set(parts[0].columns).intersection(*(set(t.columns) for t in parts[1:]))
    columns = {c: np.concatenate([t.columns[c] for t in parts]) for c in sorted(shared)}
    labels = np.concatenate([t.labels for t in parts])
    return Dataset(name=name, schema=schema, columns=columns, labels=labels)


def bundle_label_names(directory: Path, manifest: BundleManifest) -> tuple[str, ...] | None:
    """The label names of a bundle that carries ``schema.json`` (a model trained with
    ``fedge-train --data``: labels in its files are these texts); None without one."""
    if SCHEMA_FILE not in manifest.files:
        return None
    schema, names = load_schema_json(directory / SCHEMA_FILE)
    if schema.to_dict() != manifest.schema.to_dict():
        raise DataError(f"{directory / SCHEMA_FILE} disagrees with the bundle's manifest schema")
    return names


def read_table(path: Path, schema: Schema, label_names: Sequence[str] | None = None) -> Dataset:
    """One data file as a labelled data set; DataError when unreadable or unlabelled."""
    columns = read_columns(path, schema, label="required", label_names=label_names)
    return Dataset.from_columns(name=path.name, schema=schema, columns=columns)


def read_columns(
    path: Path,
    schema: Schema,
    *,
    label: LabelPolicy = "optional",
    label_names: Sequence[str] | None = None,
) -> dict[str, NDArray[Any]]:
    """The raw columns of one CSV, TFRecord or ``.npz`` file (the label under
    ``schema.label`` when read: see :func:`fedge.data.read_csv_columns` for ``label``).

    With ``label_names`` (the bundle's ``schema.json``) CSV labels are those texts, and
    CSV and TFRecord files are read with :func:`fedge.data.user_table.read_table`; without,
    TFRecord labels are class ids."""
    if path.name.endswith(".npz"):
        return _read_npz(path, schema, label=label)
    if path.name.endswith((".tfrecord", ".tfrecord.gz")) or (
        label_names is not None and path.name.endswith((".csv", ".csv.gz"))
    ):
        return _read_user_table(path, schema, label=label, label_names=label_names)
    if not path.name.endswith((".csv", ".csv.gz")):
        raise DataError(f"{path.name}: expected a .csv, .csv.gz, .tfrecord(.gz) or .npz file")
    if label == "required":
        sources = derived_label_sources(schema.label, frozenset(_csv_header(path)))
        if sources:  # a file in the task's own format (taxi: tips and fare, no big_tipper)
            kept = frozenset(schema.numeric) | {schema.timestamp or ""}
            extra: dict[str, ColumnKind] = {s: "numeric" for s in sources if s not in kept}
            columns = read_csv_columns(path, schema=schema, extra=extra, label="ignore")
            labelled, dropped = derive_label(schema.label, columns, keep_sources=kept)
            if dropped:
                logger.info(
                    "%s: %d rows without %s cannot be labelled; skipped",
                    path.name,
                    dropped,
                    " or ".join(sources),
                )
            return labelled
    return read_csv_columns(path, schema=schema, label=label)


def _read_user_table(
    path: Path, schema: Schema, *, label: LabelPolicy, label_names: Sequence[str] | None
) -> dict[str, NDArray[Any]]:
    names = tuple(label_names or (str(k) for k in range(schema.num_classes)))
    with_label = label == "required"
    if label == "optional":
        try:
            read_user_table(path, schema, names, with_label=True)
            with_label = True
        except DataError:
            with_label = False  # no label column (or unusable labels): features only
    dataset = read_user_table(path, schema, names, with_label=with_label)
    columns = dict(dataset.columns)
    if with_label:
        columns[schema.label] = dataset.labels
    return columns


def _csv_header(path: Path) -> list[str]:
    """The header row of a CSV file (``.gz`` decompressed)."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8", newline="") as stream:
                row = next(csv.reader(stream), [])
        else:
            with open(path, encoding="utf-8", newline="") as stream:
                row = next(csv.reader(stream), [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return [name.strip() for name in row]


def _read_npz(path: Path, schema: Schema, *, label: LabelPolicy) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    wanted = list(schema.features)
    if label == "required" or (label == "optional" and schema.label in arrays):
        wanted.append(schema.label)
    wanted += [c for c in (schema.region, schema.timestamp) if c is not None and c not in wanted]
    missing = [c for c in wanted if c not in arrays]
    if missing:
        raise DataError(f"{path.name}: missing arrays {missing}; it has {sorted(arrays)}")
    numeric = set(schema.numeric) | ({schema.timestamp} if schema.timestamp else set())
    out: dict[str, NDArray[Any]] = {}
    rows = len(arrays[wanted[0]]) if arrays[wanted[0]].ndim else 0
    for column in wanted:
        array = arrays[column]
        if array.ndim == 0 or len(array) != rows:
            raise DataError(f"{path.name}: array {column!r} does not have {rows} rows")
        if column == schema.label:
            if array.dtype.kind not in "iu":
                raise DataError(f"{path.name}: the label {column!r} must hold integer class ids")
            out[column] = array.astype(np.int64).reshape(rows)
        elif column in numeric:
            if array.dtype.kind not in "fiu":
                raise DataError(f"{path.name}: numeric column {column!r} holds {array.dtype}")
            shape = schema.shape_of(column)
            out[column] = array.astype(np.float64).reshape((rows, *shape))
        else:
            if array.dtype.kind not in "US" or array.ndim != 1:
                raise DataError(f"{path.name}: categorical column {column!r} must be 1-D strings")
            values = np.empty(rows, dtype=object)
            values[:] = [canonical_category(str(v)) for v in array.astype(str)]
            out[column] = values
    return out


def _split_seed(seed: int, span: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{span}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _holdout_mask(n: int, fraction: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """``round(n * fraction)`` rows held out (at least one for n >= 2, never all)."""
    held = 0
    if n > 1 and fraction > 0:
        held = min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:held]] = True
    return mask


@dataclass(frozen=True)
class Span:
    """One data file as read: its identity (name, size, mtime) and its two parts."""

    name: str
    size: int
    mtime_ns: int
    train: Dataset
    holdout: Dataset

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.holdout)


class DirectoryData:
    """The labelled files of one directory, each a span (see the module docstring)."""

    def __init__(
        self,
        directory: str | Path,
        schema: Schema,
        *,
        holdout_fraction: float = 0.2,
        seed: int = 0,
        settle_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        label_names: Sequence[str] | None = None,
    ) -> None:
        if not (isinstance(holdout_fraction, int | float) and 0 <= holdout_fraction < 1):
            raise ConfigError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
        if settle_seconds < 0:
            raise ConfigError(f"settle_seconds must be >= 0, got {settle_seconds!r}")
        self.directory = Path(directory)
        self._schema = schema
        self.label_names = None if label_names is None else tuple(label_names)
        self.holdout_fraction = float(holdout_fraction)
        self.seed = seed
        self.settle_seconds = float(settle_seconds)
        self._clock = clock
        self._spans: dict[str, Span] = {}
        self._failed: dict[str, tuple[int, int]] = {}
        self._cache: dict[str, Dataset] = {}

    @property
    def schema(self) -> Schema:
        return self._schema

    @property
    def spans(self) -> tuple[Span, ...]:
        """Spans in the order they were first read."""
        return tuple(self._spans.values())

    def refresh(self) -> list[str]:
        if not self.directory.is_dir():
            raise DataError(f"the data directory {self.directory} does not exist")
        now = self._clock()
        seen: set[str] = set()
        changed: list[str] = []
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if name.startswith(".") or name.endswith(_IGNORED_SUFFIXES):
                continue
            if not name.endswith(DATA_SUFFIXES) or not path.is_file():
                continue
            seen.add(name)
            try:
                stat = path.stat()
            except OSError:
                continue
            identity = (stat.st_size, stat.st_mtime_ns)
            known = self._spans.get(name)
            if known is not None and (known.size, known.mtime_ns) == identity:
                continue
            if self._failed.get(name) == identity:
                continue
            if now - stat.st_mtime_ns / 1e9 < self.settle_seconds:
                continue  # may still be being written; take it on a later refresh
            try:
                table = read_table(path, self._schema, self.label_names)
            except FedgeError as exc:
                self._failed[name] = identity
                logger.warning("skipping data file %s: %s", name, exc)
                continue
            self._failed.pop(name, None)
            self._spans.pop(name, None)  # a re-read span moves to the end
            self._spans[name] = self._split(name, identity, table)
            changed.append(name)
            logger.info("data span %s: %d rows", name, len(table))
        for name in [n for n in self._spans if n not in seen]:
            del self._spans[name]
            changed.append(name)
            logger.info("data span %s is gone", name)
        if changed:
            self._cache.clear()
        return changed

    def _split(self, name: str, identity: tuple[int, int], table: Dataset) -> Span:
        rng = np.random.default_rng(_split_seed(self.seed, name))
        mask = _holdout_mask(len(table), self.holdout_fraction, rng)
        return Span(
            name=name,
            size=identity[0],
            mtime_ns=identity[1],
            train=table.take(np.flatnonzero(~mask)),
            holdout=table.take(np.flatnonzero(mask)),
        )

    def _part(self, part: str) -> Dataset:
        if part not in self._cache:
            if part == "train":
                tables = [s.train for s in self._spans.values()]
            elif part == "holdout":
                tables = [s.holdout for s in self._spans.values()]
            else:
                tables = [t for s in self._spans.values() for t in (s.train, s.holdout)]
            self._cache[part] = concat_tables(self._schema, tables, name=part)
        return self._cache[part]

    def train(self) -> Dataset:
        return self._part("train")

    def holdout(self) -> Dataset:
        return self._part("holdout")

    def everything(self) -> Dataset:
        return self._part("all")


class MemoryData:
    """Fixed train and holdout data sets (e.g. one client of a simulated partition)."""

    def __init__(self, train: Dataset, holdout: Dataset | None = None) -> None:
        self._schema = train.schema
        self._train = train
        self._holdout = holdout if holdout is not None else empty_table(train.schema)
        if self._holdout.schema != self._schema:
            raise ConfigError("train and holdout data must share one schema")

    @property
    def schema(self) -> Schema:
        return self._schema

    def refresh(self) -> list[str]:
        return []

    def train(self) -> Dataset:
        return self._train

    def holdout(self) -> Dataset:
        return self._holdout

    def everything(self) -> Dataset:
        return concat_tables(self._schema, [self._train, self._holdout], name="all")
