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
later round versions reuse the file. :attr:`EdgeModel.int8_current` says whether it still
matches this version's head; where it does not, global predictions use the float
trainable model with this version's weights instead of a stale int8 model.
"""

from __future__ import annotations

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
    "INFERENCE_FILE",
    "TRAINABLE_FILE",
    "BundleRuntime",
    "EdgeModel",
    "ModelCache",
    "ModelProvider",
    "accuracy",
    "cross_entropy",
]

logger = logging.getLogger(__name__)

INFERENCE_FILE = "inference.tflite"
TRAINABLE_FILE = "trainable.tflite"
BACKBONE_FILE = "backbone.tflite"
_CHUNK = 1024


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

    def predict_scores(
        self, x: NDArray[np.float32], *, head: Weights | None = None
    ) -> NDArray[np.float32]:
        """Serving path: a personal ``head`` runs on the float model; the global model runs
        int8 while the int8 file matches this version, else float."""
        if head is None and self.int8_current:
            return self.int8_logits(x)
        return self.logits(x, head=head)

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
            logger.debug("loaded model %s (int8 current: %s)", version, model.int8_current)
            return model
