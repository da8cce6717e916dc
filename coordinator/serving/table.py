"""Prediction tables for static and hybrid serving: an artifact per table, and a small index.

``fedge-coordinator predict-batch`` scores every key of a table once and stores the
predictions as a JSON artifact (content-addressed, in the coordinator's artifact
directory); the index ``<artifacts>/serving/tables.json`` maps each model version to its
latest table. The server re-reads the index when its modification time changes, so a table
written by another process is served at the next request. Nothing here touches the state
database.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.artifacts import ArtifactStore
from fedge.data.tables import canonical_category
from fedge.errors import ConfigError
from fedge.fileio import atomic_write_text

__all__ = ["INDEX_PATH", "PredictionTable", "TableStore", "key_text"]

logger = logging.getLogger(__name__)

INDEX_PATH = Path("serving") / "tables.json"
"""Where the index lives, relative to the artifact directory."""

_FORMAT = "fedge.prediction_table"
_INDEX_FORMAT = "fedge.prediction_tables"
_KEPT = 2  # tables held in memory: the production version's and one more


def key_text(value: object) -> str | None:
    """A key as the table stores it: text as a CSV categorical field reads (stripped,
    ``"8.0"`` -> ``"8"``); integers and integral floats as their digits; None for a
    missing key (null, empty text). ConfigError for anything else (a list, a bool, NaN)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"a key must be a string or a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"a key must be a finite number, got {value!r}")
        return canonical_category(repr(value))
    if isinstance(value, str):
        return canonical_category(value)
    raise ConfigError(f"a key must be a string or a number, got {type(value).__name__}")


@dataclass(frozen=True)
class PredictionTable:
    """The predictions of one model version for a set of keys."""

    model_version: str
    key_column: str
    predictions: Mapping[str, Mapping[str, Any]]
    created_at: float
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _FORMAT,
                "model_version": self.model_version,
                "key_column": self.key_column,
                "created_at": self.created_at,
                "source": self.source,
                "predictions": self.predictions,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, data: bytes) -> PredictionTable:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ConfigError(f"not a {_FORMAT} document")
        return cls(
            model_version=str(document["model_version"]),
            key_column=str(document["key_column"]),
            predictions=dict(document["predictions"]),
            created_at=float(document["created_at"]),
            source=str(document.get("source", "")),
        )

    def info(self, digest: str) -> dict[str, Any]:
        """The index entry of this table stored as ``digest``."""
        return {
            "model_version": self.model_version,
            "key_column": self.key_column,
            "rows": len(self.predictions),
            "created_at": self.created_at,
            "source": self.source,
            "sha256": digest,
        }


class TableStore:
    """The prediction tables of an artifact directory, by model version (thread-safe)."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self._artifacts = artifacts
        self.index_path = artifacts.root / INDEX_PATH
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._index: dict[str, dict[str, Any]] = {}
        self._tables: dict[str, PredictionTable] = {}

    def save(self, table: PredictionTable) -> dict[str, Any]:
        """Store ``table`` and make it its version's table; returns its index entry."""
        digest = self._artifacts.put_bytes(table.to_json().encode("utf-8"))
        entry = table.info(digest)
        with self._lock:
            index = self._read_index()
            index[table.model_version] = entry
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            document = {"format": _INDEX_FORMAT, "tables": index}
            atomic_write_text(self.index_path, json.dumps(document, indent=1, sort_keys=True))
            self._stamp = None
        logger.info(
            "prediction table of %s: %d keys (%s)",
            table.model_version,
            len(table.predictions),
            digest,
        )
        return entry

    def entries(self) -> dict[str, dict[str, Any]]:
        """The index: model version -> table entry."""
        with self._lock:
            self._refresh()
            return dict(self._index)

    def get(self, model_version: str) -> PredictionTable | None:
        """The table of ``model_version``, or None when there is none."""
        with self._lock:
            self._refresh()
            entry = self._index.get(model_version)
            if entry is None:
                return None
            digest = str(entry["sha256"])
            table = self._tables.get(digest)
            if table is None:
                table = PredictionTable.from_json(self._artifacts.get_bytes(digest))
                while len(self._tables) >= _KEPT:
                    self._tables.pop(next(iter(self._tables)))
                self._tables[digest] = table
            return table

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.index_path)
        except FileNotFoundError:
            self._stamp, self._index = None, {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._index = self._read_index()
            self._stamp = stamp

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            document = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the table index {self.index_path}: {exc}") from exc
        tables = document.get("tables") if isinstance(document, dict) else None
        if not isinstance(tables, dict):
            raise ConfigError(f"{self.index_path} is not a {_INDEX_FORMAT} document")
        return {str(k): dict(v) for k, v in tables.items()}
