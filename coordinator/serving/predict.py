"""Cloud predictions in TensorFlow Serving's REST format, from the model or a table.

A request is ``{"instances": [row, ...]}`` (a row is an object of raw column values by
name, null for a missing value; with one feature column a bare value is accepted) or
``{"inputs": {column: [values]}}``. The answer is ``{"predictions": [entry, ...]}``, one
entry per row: ``class_id``, ``label``, ``probabilities`` and ``logits`` (what the device's
serving path computes, :mod:`coordinator.serving.model`).

Modes (:class:`ServingConfig`): ``dynamic`` runs the model; ``static`` answers only from
the version's prediction table (``predict-batch``), rows naming their key; ``hybrid``
answers the keys the table has from it and the rest from the model, behind an LRU cache of
rows. A request is checked whole before anything is computed or cached, so a refused
request changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coordinator.artifacts import ArtifactStore
from coordinator.errors import CoordinatorError, NotFoundError, PayloadTooLargeError, describe
from coordinator.registry import ModelRegistry
from coordinator.serving.model import ModelPool, ServedModel
from coordinator.serving.stats import ServingStats
from coordinator.serving.table import PredictionTable, TableStore, key_text
from fedge.errors import ConfigError, FeatureError, FedgeError
from fedge.features import CategoricalFeature, NumericFeature
from fedge.validation import check_int

__all__ = [
    "MODES",
    "Predictor",
    "ServingConfig",
    "decode_columns",
    "prediction_entries",
    "request_rows",
]

MODES = ("dynamic", "static", "hybrid")
_SHOWN = 10


@dataclass(frozen=True)
class ServingConfig:
    """How the predict route answers: ``mode`` (one of :data:`MODES`), ``cache_rows`` (the
    hybrid mode's LRU cache; 0 turns it off), ``max_instances`` (rows per request) and
    ``max_versions`` (models kept loaded)."""

    mode: str = "dynamic"
    cache_rows: int = 10_000
    max_instances: int = 1000
    max_versions: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"serving mode must be one of {list(MODES)}, got {self.mode!r}")
        check_int(self.cache_rows, "serving cache_rows", low=0)
        check_int(self.max_instances, "serving max_instances", low=1)
        check_int(self.max_versions, "serving max_versions", low=1)


def _invalid(message: str) -> CoordinatorError:
    return CoordinatorError(message, code="invalid_instances")


def request_rows(body: Mapping[str, Any], *, max_instances: int) -> list[Any]:
    """The rows of a request body (``instances``, or ``inputs`` turned into rows)."""
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown or ("instances" in body) == ("inputs" in body):
        raise _invalid(
            'the body must hold exactly one of "instances" (a list of rows) or "inputs" '
            f"(an object of columns){f'; unknown fields {unknown}' if unknown else ''}"
        )
    rows: list[Any]
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise _invalid(f'"instances" must be a list of rows, got {type(rows).__name__}')
    else:
        inputs = body["inputs"]
        if isinstance(inputs, list):
            rows = inputs
        elif isinstance(inputs, dict) and inputs:
            lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in inputs.items()}
            if any(n < 0 for n in lengths.values()) or len(set(lengths.values())) != 1:
                raise _invalid(
                    f'"inputs" must map each column to a list of one length, got {lengths}'
                )
            n = next(iter(lengths.values()))
            rows = [{k: v[i] for k, v in inputs.items()} for i in range(n)]
        else:
            raise _invalid('"inputs" must be a non-empty object of columns (or a list)')
    if not rows:
        raise _invalid("no rows to predict: the request holds no instances")
    if len(rows) > max_instances:
        raise PayloadTooLargeError(
            f"{len(rows)} rows in one request; at most {max_instances}",
            code="too_many_instances",
        )
    return rows


def _numeric(feature: NumericFeature, value: object, where: str) -> NDArray[np.float64]:
    if value is None:
        return np.full(feature.shape, np.nan)
    if isinstance(value, bool | str | dict):
        raise _invalid(
            f"{where}: numeric column {feature.name!r} needs a number, got {value!r}"[:300]
        )
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _invalid(
            f"{where}: numeric column {feature.name!r} needs numbers (null for missing): {exc}"
        ) from exc
    if array.shape != feature.shape:
        if array.size != feature.width or not feature.shape:
            raise _invalid(
                f"{where}: column {feature.name!r} needs shape {list(feature.shape)}, "
                f"got {list(array.shape)}"
            )
        array = array.reshape(feature.shape)
    if np.isinf(array).any():
        raise _invalid(f"{where}: column {feature.name!r} holds an infinite value")
    return array


def _category(feature: CategoricalFeature, value: object, where: str) -> str | None:
    try:
        return key_text(value)
    except ConfigError as exc:
        raise _invalid(
            f"{where}: categorical column {feature.name!r} needs a string or null, got {value!r}"[
                :300
            ]
        ) from exc


def decode_columns(model: ServedModel, rows: Sequence[Any]) -> dict[str, NDArray[Any]]:
    """The raw columns of JSON rows, checked against the model's feature columns."""
    features = model.spec.features
    single = features[0].name if len(features) == 1 else None
    values: dict[str, list[Any]] = {f.name: [] for f in features}
    for i, row in enumerate(rows):
        where = f"row {i}"
        if not isinstance(row, dict):
            if single is None:
                raise _invalid(
                    f"{where}: a row must be an object of columns {list(values)}, got "
                    f"{type(row).__name__}"
                )
            row = {single: row}
        for feature in features:
            if feature.name not in row:
                raise _invalid(
                    f"{where} lacks column {feature.name!r} (null marks a missing value); "
                    f"the model reads {list(values)}"
                )
            raw = row[feature.name]
            if isinstance(feature, NumericFeature):
                values[feature.name].append(_numeric(feature, raw, where))
            else:
                values[feature.name].append(_category(feature, raw, where))
    columns: dict[str, NDArray[Any]] = {}
    for feature in features:
        if isinstance(feature, NumericFeature):
            columns[feature.name] = np.stack(values[feature.name]).astype(np.float64)
        else:
            column = np.empty(len(rows), dtype=object)
            column[:] = values[feature.name]
            columns[feature.name] = column
    return columns


def prediction_entries(model: ServedModel, logits: NDArray[np.float32]) -> list[dict[str, Any]]:
    """One response entry per row of ``logits``."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    classes = logits.argmax(axis=-1)
    names = model.label_names
    return [
        {
            "class_id": int(k),
            "label": names[int(k)],
            "probabilities": p.tolist(),
            "logits": z.tolist(),
        }
        for k, p, z in zip(classes, probabilities, logits, strict=True)
    ]


def _row_key(row: Any, key_column: str, *, bare_is_key: bool) -> str | None:
    if isinstance(row, dict):
        value = row.get(key_column)
    elif bare_is_key:
        value = row
    else:
        return None
    try:
        return key_text(value)
    except ConfigError as exc:
        raise _invalid(f"key column {key_column!r}: {exc}") from exc


class _RowCache:
    """An LRU cache of prediction entries by (model version, row content)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], entry: dict[str, Any]) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Predictor:
    """The predict operation over the registry, the loaded models and the tables."""

    def __init__(
        self,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        config: ServingConfig,
        *,
        stats: ServingStats | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.pool = ModelPool(registry, max_versions=config.max_versions)
        self.tables = TableStore(artifacts)
        self.cache = _RowCache(config.cache_rows)
        self.stats = stats if stats is not None else ServingStats()

    def predict(self, version: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to a predict request for ``version`` (``production`` allowed); a
        refused request raises and is counted by its error code, nothing else changes."""
        try:
            return self._predict(version, body)
        except FedgeError as exc:
            self.stats.refuse(self.config.mode, describe(exc)[1])
            raise

    def _predict(self, version: str, body: Mapping[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        mode = self.config.mode
        rows = request_rows(body, max_instances=self.config.max_instances)
        name = self.registry.resolve(version).version
        table = self.tables.get(name) if mode != "dynamic" else None
        if mode == "static" and table is None:
            raise NotFoundError(
                f"no prediction table for model {name}: the static mode answers only from one "
                "(written by fedge-coordinator predict-batch)",
                code="table_not_found",
            )
        results: list[dict[str, Any] | None] = [None] * len(rows)
        counts = {"table": 0, "cache": 0, "model": 0}
        if table is not None:
            self._from_table(table, rows, results, static=mode == "static")
        rest = [i for i, entry in enumerate(results) if entry is None]
        counts["table"] = len(rows) - len(rest)
        if rest:
            model = self.pool.get(name)
            columns = decode_columns(model, [rows[i] for i in rest])
            hybrid = mode == "hybrid"
            keys = (
                [self._cache_key(name, model, columns, j) for j in range(len(rest))]
                if hybrid
                else []
            )
            missing = []
            for j in range(len(rest)):
                cached = self.cache.get(keys[j]) if hybrid else None
                if cached is not None:
                    results[rest[j]] = cached
                    counts["cache"] += 1
                else:
                    missing.append(j)
            if missing:
                subset = {k: v[missing] for k, v in columns.items()}
                try:
                    logits = model.predict_columns(subset)
                except FeatureError as exc:
                    raise _invalid(str(exc)) from exc
                for j, entry in zip(missing, prediction_entries(model, logits), strict=True):
                    results[rest[j]] = entry
                    if hybrid:
                        self.cache.put(keys[j], entry)
                counts["model"] = len(missing)
        self.stats.record(mode, counts, time.perf_counter() - started)
        return {"model_version": name, "predictions": results}

    def _from_table(
        self,
        table: PredictionTable,
        rows: Sequence[Any],
        results: list[dict[str, Any] | None],
        *,
        static: bool,
    ) -> None:
        absent: list[str] = []
        for i, row in enumerate(rows):
            key = _row_key(row, table.key_column, bare_is_key=static)
            if key is None:
                if static:
                    raise _invalid(
                        f"row {i} names no key: the static mode needs the key column "
                        f"{table.key_column!r} in every row (or the bare key)"
                    )
                continue
            entry = table.predictions.get(key)
            if entry is not None:
                results[i] = dict(entry)
            elif static:
                absent.append(key)
        if absent:
            shown = ", ".join(repr(k[:64]) for k in absent[:_SHOWN])
            more = f" and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
            raise NotFoundError(
                f"{len(absent)} key(s) not in the prediction table of {table.model_version} "
                f"({table.key_column}): {shown}{more}",
                code="key_not_found",
            )

    @staticmethod
    def _cache_key(
        name: str, model: ServedModel, columns: Mapping[str, NDArray[Any]], j: int
    ) -> tuple[str, str]:
        row = {
            f.name: (
                columns[f.name][j].tolist() if isinstance(f, NumericFeature) else columns[f.name][j]
            )
            for f in model.spec.features
        }
        return name, json.dumps(row, sort_keys=True, allow_nan=True)
