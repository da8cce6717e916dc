"""The conversion cache of the user's model, found without TensorFlow.

Converting a Keras model (``--model``) into an edge bundle takes seconds and TensorFlow;
its result is cached under ``cache_dir`` by the content of the model file(s) and the init
weights (:func:`model_digest`) together with every setting that changes the bundle
(:func:`conversion_entry`). Two kinds of entries:

- ``model-<digest>.json`` (:class:`ModelFacts`): what the run needs to know about an
  accepted model before it is converted (input shape, class count, and a ``fedge-train``
  export's feature spec and label names, read from its own files), written once the model
  has been loaded and checked;
- ``<task>-model-<key>/{bundle,saved_model}``: the edge bundle and the prepared Keras model
  (the TFF engine's), keyed by the digest, the feature spec, the schema, the static batch,
  the seed and the calibration rows.

A run whose model is in both finds them by hashing files and reading JSON: nothing here
imports TensorFlow. A model edited in place has another digest, so it is converted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.bundle import MANIFEST_NAME
from fedge.data import Dataset
from fedge.data.user_table import SCHEMA_FILE, load_schema_json
from fedge.errors import ConfigError, FedgeError
from fedge.features import FeatureSpec
from fedge.fileio import atomic_write_text
from fedge.schema import Schema
from fedge.weights import Weights

__all__ = [
    "BUNDLE",
    "CACHE_FORMAT",
    "EXPORT_FEATURE_SPEC",
    "EXPORT_SAVED_MODEL",
    "SAVED_MODEL",
    "ModelFacts",
    "cached_facts",
    "conversion_entry",
    "conversion_version",
    "export_feature_spec",
    "export_label_names",
    "find_conversion",
    "model_digest",
    "remember_facts",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Bump when the conversion (checks, preparation, bundle layout) changes its result."""
SAVED_MODEL = "saved_model"
BUNDLE = "bundle"
EXPORT_SAVED_MODEL = "saved_model"
"""The SavedModel inside a ``fedge-train`` export directory."""
EXPORT_FEATURE_SPEC = "feature_spec.json"
_CHUNK = 1 << 20


def model_digest(path: Path, init: Weights | None) -> str:
    """sha256 over the model file (or every file of a model directory, with its relative
    path) and the init weights."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    if init is not None:
        digest.update(init.to_bytes())
    return digest.hexdigest()


def export_label_names(source: Path, what: str) -> tuple[str, ...] | None:
    """A ``fedge-train --data`` export's label names (its ``schema.json``), or None."""
    path = source / SCHEMA_FILE
    if not source.is_dir() or not path.is_file():
        return None
    try:
        return load_schema_json(path)[1]
    except FedgeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def export_feature_spec(source: Path, what: str) -> FeatureSpec | None:
    """A ``fedge-train`` export's ``feature_spec.json``, or None."""
    path = source / EXPORT_FEATURE_SPEC
    if not source.is_dir() or not path.is_file():
        return None
    try:
        return FeatureSpec.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, FedgeError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot read {EXPORT_FEATURE_SPEC}: {exc}") from exc


@dataclass(frozen=True)
class ModelFacts:
    """What a run needs of an accepted model before converting it (no Keras object)."""

    source: Path
    digest: str
    """:func:`model_digest` of the model file(s) and the init weights."""
    input_shape: tuple[int, ...]
    num_classes: int
    feature_spec: FeatureSpec | None = None
    label_names: tuple[str, ...] | None = None


def _facts_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"model-{digest[:16]}.json"


def cached_facts(source: Path, init: Weights | None, cache_dir: Path) -> ModelFacts | None:
    """The facts of ``source`` with ``init`` when an earlier run accepted exactly that model
    (same file content, same init), else None."""
    if not source.exists():
        return None
    digest = model_digest(source, init)
    path = _facts_path(cache_dir, digest)
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if document.get("format") != CACHE_FORMAT or document.get("digest") != digest:
        return None
    try:
        input_shape = tuple(int(d) for d in document["input_shape"])
        num_classes = int(document["num_classes"])
    except (KeyError, TypeError, ValueError):
        logger.warning("ignoring the damaged cache entry %s", path)
        return None
    what = f"model file {os.fspath(source)}"
    return ModelFacts(
        source=source,
        digest=digest,
        input_shape=input_shape,
        num_classes=num_classes,
        feature_spec=export_feature_spec(source, what),
        label_names=export_label_names(source, what),
    )


def remember_facts(facts: ModelFacts, cache_dir: Path) -> None:
    """Record ``facts`` (of a model just loaded and accepted) for later runs."""
    document = {
        "format": CACHE_FORMAT,
        "digest": facts.digest,
        "source": os.fspath(facts.source),
        "input_shape": list(facts.input_shape),
        "num_classes": facts.num_classes,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_facts_path(cache_dir, facts.digest), json.dumps(document, indent=2))


def conversion_entry(
    digest: str,
    *,
    cache_dir: Path,
    task: str,
    spec: FeatureSpec,
    schema: Schema,
    test: Dataset,
    batch_size: int,
    seed: int,
) -> Path:
    """The cache folder of the bundle of the model ``digest`` names, for these settings."""
    key = hashlib.sha256(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "model": digest,
                "spec": spec.to_dict(),
                "schema": schema.to_dict(),
                "batch_size": batch_size,
                "seed": seed,
                "test": test.fingerprint(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return cache_dir / f"{task}-model-{key[:16]}"


def find_conversion(entry: Path) -> tuple[Path, Path] | None:
    """``(bundle, saved_model)`` of a complete cache entry, else None."""
    if (entry / BUNDLE / MANIFEST_NAME).is_file() and (entry / SAVED_MODEL).is_dir():
        return entry / BUNDLE, entry / SAVED_MODEL
    return None


def conversion_version(entry: Path) -> str:
    """The model version of the bundle in ``entry``: the task and 12 digits of the key."""
    return entry.name[:-4]
