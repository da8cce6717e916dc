"""The edge bundle manifest: written by the quantizer, served by the coordinator, verified
by the edge client.

A bundle is one flat directory::

    manifest.json          this document
    inference.tflite       int8 model for predictions
    trainable.tflite       float32 model with infer/train_step/get_weights/set_weights
    weights.safetensors    the trainable head's weights (names = ``head``)

``manifest.json`` records the sha256 and size of every file, the raw-data
:class:`~fedge.schema.Schema`, the :class:`~fedge.features.FeatureSpec` document, the
static training batch size and the head's tensor names. File names are plain names (no
``/``, no ``..``): :func:`verify_bundle` refuses anything that could escape the directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from fedge.errors import BundleError, ConfigError, FeatureError, WeightsError
from fedge.features import FeatureSpec
from fedge.fileio import atomic_write_text
from fedge.schema import Schema
from fedge.weights import Weights

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "REQUIRED_FILES",
    "WEIGHTS_FILE",
    "BundleManifest",
    "FileEntry",
    "check_file_name",
    "read_manifest",
    "sha256_file",
    "verify_bundle",
    "write_manifest",
]

BUNDLE_FORMAT = "fedge.bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
REQUIRED_FILES: tuple[str, ...] = ("inference.tflite", "trainable.tflite", WEIGHTS_FILE)
MAX_MANIFEST_BYTES = 16 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


def check_file_name(name: object) -> str:
    """``name`` if it is a plain file name (no path separator, no ``..``); else BundleError."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise BundleError(
            f"unsafe bundle file name {name!r}: expected a plain name of letters, digits "
            "and '._-' without '/' or '..'",
            file=name if isinstance(name, str) else None,
        )
    return name


@dataclass(frozen=True)
class FileEntry:
    """One bundle file: its lowercase hex sha256 and its size in bytes."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise BundleError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise BundleError(f"size must be an integer >= 0, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class BundleManifest:
    """What ``manifest.json`` says about a bundle. Validates when built (BundleError)."""

    FORMAT: ClassVar[str] = BUNDLE_FORMAT
    FORMAT_VERSION: ClassVar[int] = BUNDLE_FORMAT_VERSION

    model_version: str
    task: str
    files: Mapping[str, FileEntry]
    schema: Schema
    feature_spec: Mapping[str, Any]
    train_batch_size: int
    head: tuple[str, ...]
    num_classes: int
    created_at: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what in ("model_version", "task"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value.strip() or len(value) > 128:
                raise BundleError(f"{what} must be a non-empty string, got {value!r}")
        if not isinstance(self.files, Mapping):
            raise BundleError("files must map file names to entries")
        files = {check_file_name(name): entry for name, entry in self.files.items()}
        if MANIFEST_NAME in files:
            raise BundleError(f"{MANIFEST_NAME} cannot list itself", file=MANIFEST_NAME)
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise BundleError(f"the manifest lists no entry for {missing}", file=missing[0])
        if not all(isinstance(e, FileEntry) for e in files.values()):
            raise BundleError("every file entry must be a FileEntry")
        object.__setattr__(self, "files", MappingProxyType(files))
        if not isinstance(self.schema, Schema):
            raise BundleError(f"schema must be a Schema, got {type(self.schema).__name__}")
        try:
            FeatureSpec.from_dict(self.feature_spec)
        except (FeatureError, TypeError) as exc:
            raise BundleError(f"feature_spec: {exc}") from exc
        object.__setattr__(self, "feature_spec", MappingProxyType(dict(self.feature_spec)))
        for what in ("train_batch_size", "num_classes"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"{what} must be an integer >= 1, got {value!r}")
        if self.num_classes != self.schema.num_classes:
            raise BundleError(
                f"num_classes is {self.num_classes} but the schema says {self.schema.num_classes}"
            )
        head = tuple(self.head)
        if not head or not all(isinstance(n, str) and n for n in head):
            raise BundleError(f"head must list the trainable tensor names, got {self.head!r}")
        if len(set(head)) != len(head):
            raise BundleError(f"head lists a tensor twice: {list(head)}")
        object.__setattr__(self, "head", head)
        try:
            datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError) as exc:
            raise BundleError(
                f"created_at must be an ISO 8601 time, got {self.created_at!r}"
            ) from exc
        if not isinstance(self.metadata, Mapping):
            raise BundleError("metadata must be an object")
        try:
            json.dumps(dict(self.metadata), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"metadata must be plain JSON: {exc}") from exc
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def derive(
        self,
        *,
        model_version: str,
        files: Mapping[str, FileEntry],
        created_at: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> BundleManifest:
        """A manifest for a new version: ``files`` replace entries of the same name."""
        return dataclasses.replace(
            self,
            model_version=model_version,
            files={**self.files, **files},
            created_at=created_at,
            metadata=self.metadata if metadata is None else metadata,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_version": self.model_version,
            "task": self.task,
            "files": {name: entry.to_dict() for name, entry in sorted(self.files.items())},
            "schema": self.schema.to_dict(),
            "feature_spec": dict(self.feature_spec),
            "train_batch_size": self.train_batch_size,
            "head": list(self.head),
            "num_classes": self.num_classes,
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same manifest always gives the same text."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleManifest:
        if not isinstance(data, Mapping):
            raise BundleError(f"a manifest must be a JSON object, got {type(data).__name__}")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"not a bundle manifest: format is {data.get('format')!r}")
        if data.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"unsupported bundle format version {data.get('format_version')!r}; "
                f"this reader knows {BUNDLE_FORMAT_VERSION}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - {"metadata"} - set(data))
        if missing:
            raise BundleError(f"the manifest lacks {missing}")
        unknown = sorted(set(data) - fields - {"format", "format_version"})
        if unknown:
            raise BundleError(f"the manifest has unknown keys {unknown}")
        try:
            files = {
                name: FileEntry(sha256=entry["sha256"], size=entry["size"])
                for name, entry in data["files"].items()
            }
            schema = Schema.from_dict(data["schema"])
            head = data["head"]
            if not isinstance(head, list):
                raise BundleError(f"head must be a list of names, got {head!r}")
            return cls(
                model_version=data["model_version"],
                task=data["task"],
                files=files,
                schema=schema,
                feature_spec=data["feature_spec"],
                train_batch_size=data["train_batch_size"],
                head=tuple(head),
                num_classes=data["num_classes"],
                created_at=data["created_at"],
                metadata=data.get("metadata", {}),
            )
        except ConfigError as exc:
            raise BundleError(f"schema: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"malformed manifest: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> BundleManifest:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"the manifest is not JSON: {exc}") from exc
        return cls.from_dict(data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike[str]) -> BundleManifest:
    """The manifest of the bundle in ``directory`` (files are not checked: see verify)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is over {MAX_MANIFEST_BYTES} bytes", file=MANIFEST_NAME)
        text = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST_NAME} in {directory}", file=MANIFEST_NAME) from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}", file=MANIFEST_NAME) from exc
    return BundleManifest.from_json(text)


def _bundle_file(directory: Path, name: str) -> Path:
    """The path of bundle file ``name``: a regular file, not a link, inside ``directory``."""
    path = directory / check_file_name(name)
    if path.is_symlink():
        raise BundleError(f"bundle file {name!r} is a symbolic link; refusing it", file=name)
    if not path.is_file():
        raise BundleError(f"bundle file {name!r} is missing from {directory}", file=name)
    return path


def verify_bundle(directory: str | os.PathLike[str]) -> BundleManifest:
    """Check every listed file's presence, size and sha256, and that ``head`` names exactly
    the tensors of ``weights.safetensors``; return the manifest."""
    root = Path(directory)
    manifest = read_manifest(root)
    for name, entry in manifest.files.items():
        path = _bundle_file(root, name)
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"bundle file {name!r} is {size} bytes, the manifest says {entry.size}", file=name
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(
                f"bundle file {name!r} has sha256 {digest}, the manifest says {entry.sha256}",
                file=name,
            )
    names = _weights_names(root / WEIGHTS_FILE)
    if names != manifest.head:
        raise BundleError(
            f"head {list(manifest.head)} differs from the tensors of {WEIGHTS_FILE}: {list(names)}",
            file=WEIGHTS_FILE,
        )
    return manifest


def _weights_names(path: Path) -> tuple[str, ...]:
    try:
        return Weights.from_bytes(path.read_bytes()).names
    except WeightsError as exc:
        raise BundleError(f"{WEIGHTS_FILE}: {exc}", file=WEIGHTS_FILE) from exc


def write_manifest(
    directory: str | os.PathLike[str],
    *,
    model_version: str,
    task: str,
    schema: Schema,
    feature_spec: Mapping[str, Any],
    train_batch_size: int,
    created_at: str,
    head: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra_files: Sequence[str] = (),
) -> BundleManifest:
    """Hash the bundle files in ``directory`` and write its ``manifest.json`` atomically.

    ``head`` defaults to the tensor names of ``weights.safetensors``; ``extra_files`` lists
    further plain file names to include. Returns the manifest written.
    """
    root = Path(directory)
    names = (*REQUIRED_FILES, *(n for n in extra_files if n not in REQUIRED_FILES))
    files = {}
    for name in names:
        path = _bundle_file(root, name)
        files[name] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    manifest = BundleManifest(
        model_version=model_version,
        task=task,
        files=files,
        schema=schema,
        feature_spec=feature_spec,
        train_batch_size=train_batch_size,
        head=tuple(head) if head is not None else _weights_names(root / WEIGHTS_FILE),
        num_classes=schema.num_classes,
        created_at=created_at,
        metadata=metadata or {},
    )
    atomic_write_text(root / MANIFEST_NAME, manifest.to_json())
    return manifest
