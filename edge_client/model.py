"""The edge model over a verified bundle, and the cache that shares it between clients.

Loading interpreters is the expensive part, so it lives in :class:`BundleRuntime` (the
int8 inference model, the trainable model and the int8 backbone of one set of ``.tflite``
files) and :class:`ModelCache` shares one runtime between every model version built on the
same files (the coordinator's round versions change only ``weights.safetensors``) and
between every client context that asks for it. :class:`EdgeModel` is one model version: its
manifest, feature spec and global head weights over a shared runtime.

Because the runtime's interpreters are shared, nothing may rely on the weights a previous
caller left in them: every operation that runs the trainable model sets the head it needs
first (``set_weights``), under the runtime's lock.

The int8 ``inference.tflite`` is built by the quantizer for the bundle's original weights;
later round versions reuse the file. :meth:`EdgeModel.serving_path` says what serves a
prediction (:data:`SERVING_PATHS`): ``inference.tflite`` while it matches the head asked for
(:attr:`EdgeModel.int8_current`, no personal head); else, in a bundle with ``head.tflite``,
the int8 ``backbone.tflite`` followed by ``head.tflite`` with the version's (or the personal)
head, so every version of such a bundle serves int8; else the float trainable model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge_client.runtime import InferenceModel, TrainableModel, TrainResult
from fedge.bundle import WEIGHTS_FILE, BundleManifest, read_manifest, verify_bundle
from fedge.errors import BundleError, ConfigError
from fedge.features import FeatureSpec
from fedge.schema import Schema
from fedge.weights import Weights

__all__ = [
    "BACKBONE_FILE",
    "FLOAT_PATH",
    "HEAD_FILE",
    "INFERENCE_FILE",
    "INT8_HEAD_PATH",
    "INT8_PATH",
    "SERVING_PATHS",
    "TRAINABLE_FILE",
    "BundleRuntime",
    "EdgeModel",
    "EmbeddingCache",
    "ModelCache",
    "ModelProvider",
    "accuracy",
    "cross_entropy",
]

logger = logging.getLogger(__name__)

INFERENCE_FILE = "inference.tflite"
TRAINABLE_FILE = "trainable.tflite"
BACKBONE_FILE = "backbone.tflite"
HEAD_FILE = "head.tflite"
_CHUNK = 1024

INT8_PATH = "int8"
"""``inference.tflite``: the bundle's original head, quantized with the backbone."""
INT8_HEAD_PATH = "int8-backbone+float-head"
"""``backbone.tflite`` (int8) embeddings, then ``head.tflite`` with the head asked for."""
FLOAT_PATH = "float"
"""``trainable.tflite``: float backbone and head (bundles without ``head.tflite``)."""
SERVING_PATHS = (INT8_PATH, INT8_HEAD_PATH, FLOAT_PATH)
DEFAULT_EMBEDDING_CACHE_BYTES = 64 * 1024 * 1024


def cross_entropy(logits: NDArray[np.float32], labels: NDArray[Any]) -> float:
    """Mean sparse softmax cross-entropy of ``logits`` (computed in float64)."""
    if len(labels) == 0:
        return 0.0
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def accuracy(scores: NDArray[np.float32], labels: NDArray[Any]) -> float:
    """Share of rows whose highest score is the label."""
    if len(labels) == 0:
        return 0.0
    return float((scores.argmax(axis=1) == labels).mean())


class EmbeddingCache:
    """Embeddings of rows, keyed by the backbone's sha256 and the rows' content hash;
    least recently used entries leave first once ``max_bytes`` would be exceeded."""

    def __init__(self, max_bytes: int = DEFAULT_EMBEDDING_CACHE_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def rows_key(x: NDArray[Any]) -> str:
        """The content hash of model inputs (shape, dtype and bytes)."""
        rows = np.ascontiguousarray(x)
        digest = hashlib.sha256(f"{rows.dtype.str}{rows.shape}".encode())
        digest.update(rows.tobytes())
        return digest.hexdigest()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, backbone_sha256: str, rows_key: str) -> NDArray[np.float32] | None:
        with self._lock:
            found = self._entries.get((backbone_sha256, rows_key))
            if found is not None:
                self._entries.move_to_end((backbone_sha256, rows_key))
            return found

    def put(self, backbone_sha256: str, rows_key: str, embeddings: NDArray[np.float32]) -> None:
        """Keep ``embeddings`` (read-only) unless they alone exceed ``max_bytes``."""
        if embeddings.nbytes > self.max_bytes:
            return
        frozen = np.array(embeddings, dtype=np.float32)
        frozen.flags.writeable = False
        key = (backbone_sha256, rows_key)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = frozen
            self._bytes += frozen.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes


class BundleRuntime:
    """The interpreters of one set of bundle files; shareable, guarded by :attr:`lock`."""

    def __init__(
        self, directory: Path, manifest: BundleManifest, *, num_threads: int | None = None
    ) -> None:
        self.lock = threading.RLock()
        self.trainable = TrainableModel(directory / TRAINABLE_FILE, num_threads=num_threads)
        if manifest.train_batch_size != self.trainable.batch_size:
            raise BundleError(
                f"the manifest says train batch {manifest.train_batch_size}, "
                f"{TRAINABLE_FILE} has {self.trainable.batch_size}",
                file=TRAINABLE_FILE,
            )
        self.inference = InferenceModel(directory / INFERENCE_FILE, num_threads=num_threads)
        built_in = self.trainable.get_weights()
        self.initial_weights = Weights({name: built_in[name] for name in manifest.head})
        # Kept as bytes so the runtime outlives its directory (the bundle store prunes).
        self._backbone_bytes = (
            (directory / BACKBONE_FILE).read_bytes() if BACKBONE_FILE in manifest.files else None
        )
        self._backbone: InferenceModel | None = None
        self._num_threads = num_threads
        self._heads: dict[str, TrainableModel] = {}
        self.embeddings = EmbeddingCache()
        """Embeddings of rows already seen (personalization reuses them)."""

    def head_model(self, sha256: str, flatbuffer: bytes) -> TrainableModel:
        """The ``head.tflite`` interpreter of that digest (loaded on first use)."""
        with self.lock:
            found = self._heads.get(sha256)
            if found is None:
                found = TrainableModel(flatbuffer, num_threads=self._num_threads)
                self._heads[sha256] = found
            return found

    @property
    def backbone(self) -> InferenceModel:
        """The int8 embedding model (loaded on first use)."""
        if self._backbone is None:
            if self._backbone_bytes is None:
                raise BundleError(
                    f"this bundle has no {BACKBONE_FILE}: it cannot compute embeddings",
                    file=BACKBONE_FILE,
                )
            self._backbone = InferenceModel(self._backbone_bytes, num_threads=self._num_threads)
        return self._backbone


class EdgeModel:
    """One model version on the device: manifest, feature spec, global head, runtime."""

    def __init__(self, directory: Path, manifest: BundleManifest, runtime: BundleRuntime) -> None:
        self.directory = directory
        self.manifest = manifest
        self.runtime = runtime
        self.spec = FeatureSpec.from_dict(manifest.feature_spec)
        if self.spec.output_shape != runtime.trainable.input_shape:
            raise BundleError(
                f"the feature spec gives inputs of shape {self.spec.output_shape}, the model "
                f"takes {runtime.trainable.input_shape}"
            )
        weights = Weights.from_bytes((directory / WEIGHTS_FILE).read_bytes())
        self.global_weights = Weights({name: weights[name] for name in manifest.head})
        self.int8_current = self.global_weights == runtime.initial_weights
        self._head_file: tuple[str, bytes] | None = None
        if HEAD_FILE in manifest.files and BACKBONE_FILE in manifest.files:
            self._head_file = (
                manifest.files[HEAD_FILE].sha256,
                (directory / HEAD_FILE).read_bytes(),
            )
            self._check_head_model()

    def _check_head_model(self) -> None:
        head = self._head_model()
        manifest, trainable = self.manifest, self.runtime.trainable
        expected = (
            self.runtime.backbone.output_shape,
            trainable.batch_size,
            trainable.num_classes,
            tuple(sorted(manifest.head)),
        )
        found = (head.input_shape, head.batch_size, head.num_classes, head.weight_names)
        if found != expected:
            raise BundleError(
                f"{HEAD_FILE} has input shape, train batch, classes and tensors {found}; "
                f"{BACKBONE_FILE}, {TRAINABLE_FILE} and the manifest say {expected}",
                file=HEAD_FILE,
            )

    def _head_model(self) -> TrainableModel:
        if self._head_file is None:
            raise BundleError(
                f"this bundle has no {HEAD_FILE} (or no {BACKBONE_FILE})", file=HEAD_FILE
            )
        return self.runtime.head_model(*self._head_file)

    @property
    def has_head_model(self) -> bool:
        """Whether the bundle has ``head.tflite`` (and ``backbone.tflite``): its head can run
        and train on int8 embeddings."""
        return self._head_file is not None

    @classmethod
    def load(cls, directory: str | Path, *, num_threads: int | None = None) -> EdgeModel:
        """Verify the bundle in ``directory`` (sha256 of every file) and load it."""
        root = Path(directory)
        manifest = verify_bundle(root)
        return cls(root, manifest, BundleRuntime(root, manifest, num_threads=num_threads))

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def schema(self) -> Schema:
        return self.manifest.schema

    @property
    def batch_size(self) -> int:
        return self.runtime.trainable.batch_size

    def transform(self, columns: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        """Model inputs of raw columns, with the bundle's feature spec."""
        return self.spec.transform(columns)

    def _set_head(self, head: Weights | None) -> None:
        weights = self.global_weights if head is None else head
        self.runtime.trainable.set_weights({name: weights[name] for name in weights.names})

    def logits(self, x: NDArray[np.float32], *, head: Weights | None = None) -> NDArray[np.float32]:
        """Float logits of the trainable model with ``head`` (default: the global head)."""
        with self.runtime.lock:
            self._set_head(head)
            parts = [
                self.runtime.trainable.logits(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)
            ]
        return (
            np.concatenate(parts) if parts else np.empty((0, self.manifest.num_classes), np.float32)
        )

    def int8_logits(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Outputs of the int8 inference model (the bundle's original head)."""
        with self.runtime.lock:
            parts = [
                self.runtime.inference.logits(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)
            ]
        return (
            np.concatenate(parts) if parts else np.empty((0, self.manifest.num_classes), np.float32)
        )

    def serving_path(self, head: Weights | None = None) -> str:
        """What :meth:`predict_scores` runs for ``head`` (one of :data:`SERVING_PATHS`)."""
        if head is None and self.int8_current:
            return INT8_PATH
        if self._head_file is not None:
            return INT8_HEAD_PATH
        return FLOAT_PATH

    def predict_scores(
        self, x: NDArray[np.float32], *, head: Weights | None = None
    ) -> NDArray[np.float32]:
        """Logits on the serving path (:meth:`serving_path`) for ``head`` (default: the
        version's global head)."""
        path = self.serving_path(head)
        if path == INT8_PATH:
            return self.int8_logits(x)
        if path == INT8_HEAD_PATH:
            return self.head_logits(self._embed_rows(x), head=head)
        return self.logits(x, head=head)

    def head_logits(
        self, embeddings: NDArray[np.float32], *, head: Weights | None = None
    ) -> NDArray[np.float32]:
        """Logits of ``head.tflite`` on ``embeddings`` with ``head`` (default: global)."""
        weights = self.global_weights if head is None else head
        with self.runtime.lock:
            model = self._head_model()
            model.set_weights({name: weights[name] for name in weights.names})
            parts = [
                model.logits(embeddings[i : i + _CHUNK]) for i in range(0, len(embeddings), _CHUNK)
            ]
        return (
            np.concatenate(parts) if parts else np.empty((0, self.manifest.num_classes), np.float32)
        )

    def train_head(
        self,
        embeddings: NDArray[np.float32],
        y: NDArray[Any],
        *,
        start: Weights,
        epochs: int,
        learning_rate: float,
        rng: np.random.Generator | None = None,
    ) -> tuple[Weights, TrainResult]:
        """SGD on the head through ``head.tflite`` from ``start`` on embeddings; the same
        batches and steps as :meth:`train` on the rows they embed."""
        with self.runtime.lock:
            model = self._head_model()
            model.set_weights({name: start[name] for name in start.names})
            result = model.train(embeddings, y, epochs=epochs, learning_rate=learning_rate, rng=rng)
            trained = model.get_weights()
        return Weights({name: trained[name] for name in start.names}), result

    def cached_embeddings(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """:meth:`embed` of ``x``, computed once per backbone and row content
        (:class:`EmbeddingCache`, whose arrays are read-only)."""
        backbone = self.manifest.files.get(BACKBONE_FILE)
        if backbone is None:
            return self.embed(x)
        cache = self.runtime.embeddings
        key = cache.rows_key(x)
        found = cache.get(backbone.sha256, key)
        if found is None:
            found = self.embed(x)
            cache.put(backbone.sha256, key, found)
        return found

    def _embed_rows(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """:meth:`embed`, with no rows giving ``[0, embedding_dim]``."""
        if len(x) == 0:
            return np.empty((0, *self._head_model().input_shape), np.float32)
        return self.embed(x)

    def embed(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Backbone embeddings (int8 model, dequantized to float32)."""
        with self.runtime.lock:
            backbone = self.runtime.backbone
            parts = [backbone.logits(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]
        if not parts:
            raise ConfigError("no rows to embed")
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def train(
        self,
        x: NDArray[np.float32],
        y: NDArray[Any],
        *,
        start: Weights,
        epochs: int,
        learning_rate: float,
        rng: np.random.Generator | None = None,
    ) -> tuple[Weights, TrainResult]:
        """SGD on the head from ``start``; returns the trained head (manifest order)."""
        with self.runtime.lock:
            self._set_head(start)
            result = self.runtime.trainable.train(
                x, y, epochs=epochs, learning_rate=learning_rate, rng=rng
            )
            trained = self.runtime.trainable.get_weights()
        return Weights({name: trained[name] for name in start.names}), result


class ModelProvider(Protocol):
    """Where a client context gets the model for a task's ``model_version``."""

    def model(self, version: str) -> EdgeModel: ...


Locator = Callable[[str], Path]


class ModelCache:
    """Loads model versions on demand and shares them (see the module docstring).

    ``locate`` maps a version to its bundle directory: a mapping for fixed bundles (a
    simulation), or a function that downloads and verifies (the daemon's bundle store).
    Up to ``max_versions`` versions stay loaded; runtimes are shared by file digests.
    """

    def __init__(
        self,
        locate: Locator | Mapping[str, str | Path],
        *,
        max_versions: int = 4,
        num_threads: int | None = None,
        verify: bool = True,
    ) -> None:
        if max_versions < 1:
            raise ConfigError(f"max_versions must be >= 1, got {max_versions}")
        if isinstance(locate, Mapping):
            paths = {str(k): Path(v) for k, v in locate.items()}

            def by_name(version: str) -> Path:
                if version not in paths:
                    raise BundleError(f"no bundle for model version {version!r}")
                return paths[version]

            self._locate: Locator = by_name
        else:
            self._locate = locate
        self._max = max_versions
        self._num_threads = num_threads
        self._verify = verify
        self._models: OrderedDict[str, EdgeModel] = OrderedDict()
        self._runtimes: dict[tuple[str, ...], BundleRuntime] = {}
        self._lock = threading.Lock()

    def model(self, version: str) -> EdgeModel:
        with self._lock:
            cached = self._models.get(version)
            if cached is not None:
                self._models.move_to_end(version)
                return cached
        directory = self._locate(version)
        manifest = verify_bundle(directory) if self._verify else read_manifest(directory)
        if manifest.model_version != version:
            raise BundleError(
                f"the bundle at {directory} is version {manifest.model_version}, not {version}"
            )
        key = tuple(
            manifest.files[name].sha256 if name in manifest.files else ""
            for name in (TRAINABLE_FILE, INFERENCE_FILE, BACKBONE_FILE)
        )
        with self._lock:
            runtime = self._runtimes.get(key)
            if runtime is None:
                runtime = BundleRuntime(directory, manifest, num_threads=self._num_threads)
                self._runtimes[key] = runtime
            model = EdgeModel(directory, manifest, runtime)
            self._models[version] = model
            while len(self._models) > self._max:
                self._models.popitem(last=False)
            live = {
                k
                for k, r in self._runtimes.items()
                if any(m.runtime is r for m in self._models.values())
            }
            self._runtimes = {k: self._runtimes[k] for k in live}
            logger.debug("loaded model %s (serving path %s)", version, model.serving_path())
            return model
