"""Registry versions loaded for serving: the device's serving path, computed in the cloud.

:class:`ServedModel` runs exactly what a device runs for one version (the path rule of the
edge client's ``EdgeModel.serving_path``):

- ``"int8"``: the bundle's ``inference.tflite``, when the version's head equals the
  bundle's original head (the one the int8 file was quantized with);
- ``"int8-backbone+float-head"``: for a bundle with ``head.tflite`` and ``backbone.tflite``
  whose version's head differs: int8 ``backbone.tflite`` embeddings, then ``head.tflite``
  with the version's head;
- ``"float"``: otherwise, ``trainable.tflite`` with the version's head.

Rows go through in chunks of 1024, as on the device. :class:`ModelPool` keeps a few
versions loaded and shares the interpreters of versions built on the same files (round
versions change only ``weights.safetensors``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from coordinator.registry import ModelRegistry
from coordinator.serving.runtime import PlainModel, SignatureModel
from fedge.bundle import BundleManifest
from fedge.data.user_table import SCHEMA_FILE, load_schema_json
from fedge.errors import BundleError, ConfigError
from fedge.features import FeatureSpec
from fedge.weights import Weights

__all__ = [
    "BACKBONE_FILE",
    "FLOAT_PATH",
    "HEAD_FILE",
    "INFERENCE_FILE",
    "INT8_HEAD_PATH",
    "INT8_PATH",
    "TRAINABLE_FILE",
    "ModelPool",
    "ServedModel",
]

logger = logging.getLogger(__name__)

INFERENCE_FILE = "inference.tflite"
TRAINABLE_FILE = "trainable.tflite"
BACKBONE_FILE = "backbone.tflite"
HEAD_FILE = "head.tflite"
INT8_PATH = "int8"
INT8_HEAD_PATH = "int8-backbone+float-head"
FLOAT_PATH = "float"
_CHUNK = 1024


class _Runtime:
    """The interpreters of one set of bundle files (loaded on first use), and their lock."""

    def __init__(self, read: Callable[[str], bytes], manifest: BundleManifest) -> None:
        self.lock = threading.Lock()
        self._read = read
        self._files = set(manifest.files)
        self._head_names = manifest.head
        self._models: dict[str, Any] = {}

    @property
    def has_head_model(self) -> bool:
        return HEAD_FILE in self._files and BACKBONE_FILE in self._files

    def plain(self, name: str) -> PlainModel:
        if name not in self._models:
            self._models[name] = PlainModel(self._read(name), what=name)
        model: PlainModel = self._models[name]
        return model

    def signatures(self, name: str) -> SignatureModel:
        if name not in self._models:
            self._models[name] = SignatureModel(self._read(name), what=name)
        model: SignatureModel = self._models[name]
        return model

    def original_head(self) -> Weights:
        """The head the bundle's files were built with (what ``inference.tflite`` computes):
        ``trainable.tflite``'s built-in weights, as the device reads them."""
        built_in = self.signatures(TRAINABLE_FILE).get_weights()
        return Weights({name: built_in[name] for name in self._head_names})


def _chunked(
    run: Callable[[NDArray[np.float32]], NDArray[np.float32]],
    x: NDArray[np.float32],
    num_classes: int,
) -> NDArray[np.float32]:
    parts = [run(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]
    return np.concatenate(parts) if parts else np.empty((0, num_classes), np.float32)


class ServedModel:
    """One registry version, ready to score rows the way devices do."""

    def __init__(
        self,
        version: str,
        manifest: BundleManifest,
        head: Weights,
        runtime: _Runtime,
        *,
        label_names: tuple[str, ...] | None = None,
    ) -> None:
        self.version = version
        self.manifest = manifest
        self.label_names = label_names or tuple(str(k) for k in range(manifest.num_classes))
        self.spec = FeatureSpec.from_dict(manifest.feature_spec)
        self.head = head
        self._runtime = runtime
        with runtime.lock:
            int8_current = head == runtime.original_head()
            self.path = (
                INT8_PATH
                if int8_current
                else INT8_HEAD_PATH
                if runtime.has_head_model
                else FLOAT_PATH
            )
        self.input_shape = self.spec.output_shape

    @classmethod
    def load(cls, registry: ModelRegistry, version: str) -> ServedModel:
        """Version ``version`` (``production``/``current``: the production version)."""
        return _load(registry, version, {})

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def scores(self, x: NDArray[Any]) -> NDArray[np.float32]:
        """Logits ``[n, num_classes]`` of model inputs ``[n, *input_shape]`` on :attr:`path`."""
        features = np.asarray(x, dtype=np.float32)
        if features.ndim != len(self.input_shape) + 1 or features.shape[1:] != self.input_shape:
            raise ConfigError(
                f"model {self.version} takes inputs of shape "
                f"[n, {', '.join(map(str, self.input_shape))}], got {features.shape}"
            )
        runtime = self._runtime
        with runtime.lock:
            if self.path == INT8_PATH:
                return _chunked(runtime.plain(INFERENCE_FILE).run, features, self.num_classes)
            if self.path == INT8_HEAD_PATH:
                backbone, head = runtime.plain(BACKBONE_FILE), runtime.signatures(HEAD_FILE)
                head.set_weights({name: self.head[name] for name in self.head.names})

                def through_head(chunk: NDArray[np.float32]) -> NDArray[np.float32]:
                    return head.logits(backbone.run(chunk))

                return _chunked(through_head, features, self.num_classes)
            trainable = runtime.signatures(TRAINABLE_FILE)
            trainable.set_weights({name: self.head[name] for name in self.head.names})
            return _chunked(trainable.logits, features, self.num_classes)

    def transform(self, columns: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        """Model inputs of raw columns through the bundle's feature spec (FeatureError)."""
        return self.spec.transform(columns)

    def predict_columns(self, columns: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        """Logits of raw columns: the feature spec, then :meth:`scores`."""
        return self.scores(self.transform(columns))


def _load(
    registry: ModelRegistry, version: str, runtimes: dict[tuple[str, ...], _Runtime]
) -> ServedModel:
    record = registry.resolve(version)
    manifest = registry.manifest(record)
    digests = {name: registry.file(record, name) for name in manifest.files}

    def read(name: str) -> bytes:
        digest, path = digests[name]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(f"{name} of {record.version} does not match its sha256", file=name)
        return data

    key = tuple(
        digests[n][0] if n in digests else ""
        for n in (TRAINABLE_FILE, INFERENCE_FILE, BACKBONE_FILE, HEAD_FILE)
    )
    runtime = runtimes.get(key)
    if runtime is None:
        runtime = _Runtime(read, manifest)
        runtimes[key] = runtime
    weights = registry.weights(record)
    head = Weights({name: weights[name] for name in manifest.head})
    names = None
    if SCHEMA_FILE in digests:
        names = load_schema_json(digests[SCHEMA_FILE][1])[1]
    model = ServedModel(record.version, manifest, head, runtime, label_names=names)
    logger.info("serving model %s on the %s path", record.version, model.path)
    return model


class ModelPool:
    """Loaded versions (at most ``max_versions``, least recently used dropped); thread-safe.

    ``get("production")`` resolves the production version at every call, so a promotion
    or a rollback is served at once.
    """

    def __init__(self, registry: ModelRegistry, *, max_versions: int = 4) -> None:
        if isinstance(max_versions, bool) or not isinstance(max_versions, int) or max_versions < 1:
            raise ConfigError(f"max_versions must be an integer >= 1, got {max_versions!r}")
        self.registry = registry
        self._max = max_versions
        self._models: OrderedDict[str, ServedModel] = OrderedDict()
        self._runtimes: dict[tuple[str, ...], _Runtime] = {}
        self._lock = threading.Lock()

    def get(self, version: str) -> ServedModel:
        """The loaded model of ``version`` (``production``/``current`` resolved now);
        NotFoundError (``model_not_found``) for an unknown version."""
        name = self.registry.resolve(version).version
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                return model
            model = _load(self.registry, name, self._runtimes)
            self._models[name] = model
            while len(self._models) > self._max:
                self._models.popitem(last=False)
            live = {id(m._runtime) for m in self._models.values()}
            self._runtimes = {k: r for k, r in self._runtimes.items() if id(r) in live}
            return model
