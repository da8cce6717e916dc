"""An exported Keras model -> the edge bundle a device downloads (see ``fedge.bundle``).

::

    manifest.json          fedge.bundle.write_manifest: sha256 and size of every file below,
                           schema, feature spec, train batch size, head names, and metadata
                           {"training_record": ..., "quantization": ...}
    inference.tflite       full-integer int8 model (int8 input and output) for predictions
    trainable.tflite       float32, builtin ops only: infer, train_step (static batch),
                           get_weights, set_weights over the head; backbone frozen
    weights.safetensors    the head's weights (fedge Weights, names in Keras order)
    backbone.tflite        int8 backbone -> embedding, for ``features`` tasks (extra file)
    head.tflite            float32, builtin ops only: the four signatures of trainable.tflite
                           over the head alone, whose input is the embedding (extra file;
                           only for a head that is a chain of layers after the embedding)
    schema.json            a model of a user's table (``fedge-train --data``): its schema and
                           label names, as the export's (extra file)

The backbone is frozen on a clone (``freeze_backbone``), so the caller's model is unchanged.
Before the manifest is written the bundle is checked against Keras: the trainable model's
``infer`` must match the Keras logits, its ``get_weights`` must equal ``weights.safetensors``
bit for bit (and the same for ``head.tflite`` on the float backbone's embeddings), and the
int8 model's accuracy and argmax agreement are measured on the held-out split and recorded
in the manifest's metadata; finally ``verify_bundle`` re-reads it all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.record import TrainingRecord
from fedge.bundle import WEIGHTS_FILE, BundleManifest, verify_bundle, write_manifest
from fedge.data.user_table import SCHEMA_FILE, save_schema_json
from fedge.errors import BundleError, ConfigError
from fedge.weights import Weights
from quantize.errors import ConversionError
from quantize.inputs import TaskArrays
from quantize.report import Agreement, compare_logits, convert_checked, keras_logits
from quantize.runner import TFLiteRunner, load_interpreter

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "BACKBONE_FILE",
    "HEAD_FILE",
    "INFERENCE_FILE",
    "TRAINABLE_FILE",
    "BundleResult",
    "check_version",
    "derive_version",
    "write_bundle",
]

logger = logging.getLogger(__name__)

INFERENCE_FILE = "inference.tflite"
TRAINABLE_FILE = "trainable.tflite"
BACKBONE_FILE = "backbone.tflite"
HEAD_FILE = "head.tflite"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# float32 TFLite and Keras differ by summation order only.
_TRAINABLE_LOGIT_TOLERANCE = 1e-3

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BundleResult:
    """The written manifest and what the build measured."""

    manifest: BundleManifest
    inference: Agreement
    """The int8 inference model against Keras on the held-out split."""
    trainable_max_abs_logit_diff: float
    embedding_dim: int
    head_max_abs_logit_diff: float | None = None
    """``head.tflite`` on the float embeddings against Keras; None when it was not built."""

    def quantization_metadata(self) -> dict[str, Any]:
        return _quantization_metadata(
            self.inference, self.trainable_max_abs_logit_diff, self.head_max_abs_logit_diff
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "embedding_dim": self.embedding_dim,
            **self.quantization_metadata(),
        }

    def summary(self) -> str:
        manifest = self.manifest
        size = sum(entry.size for entry in manifest.files.values())
        inference = self.inference
        return (
            f"bundle {manifest.model_version} ({manifest.task}): {len(manifest.files)} files, "
            f"{size:,} bytes; int8 accuracy {inference.converted.accuracy:.4f} (keras "
            f"{inference.reference.accuracy:.4f}), agreement {inference.argmax_agreement:.4f}; "
            f"train batch {manifest.train_batch_size}, head {len(manifest.head)} tensors"
        )


def check_version(version: str) -> str:
    """``version`` if it is a registry-safe name (letters, digits, ``._+-``, <= 128 chars)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ConfigError(
            f"version must be 1-128 letters, digits or '._+-' starting with a letter or digit, "
            f"got {version!r}"
        )
    return version


def derive_version(
    *, task: str, data_fingerprint: str, record: TrainingRecord | None, now: datetime
) -> str:
    """``<task>-<fingerprint[:12]>-<UTC time>``: the data trained on and when training ended
    (the record's ``finished_at``; ``now`` without a record)."""
    when = now
    if record is not None:
        try:
            when = datetime.fromisoformat(record.finished_at)
        except ValueError:
            logger.warning("unreadable finished_at %r in the record", record.finished_at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return check_version(f"{task}-{data_fingerprint[:12]}-{stamp}")


def write_bundle(
    model: tf.keras.Model,
    arrays: TaskArrays,
    directory: Path,
    *,
    representative: NDArray[np.float32],
    batch_size: int,
    version: str,
    created_at: str,
    training_record: Mapping[str, Any] | None,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> BundleResult:
    """Write the bundle of ``model`` into the empty ``directory`` and verify it."""
    from cloud_trainer.models import embedding_model, freeze_backbone
    from quantize.trainable import build_trainable, trainable_weights

    step = progress or (lambda _: None)
    check_version(version)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"the train batch size must be an int >= 1, got {batch_size!r}")

    step("converting the int8 inference model")
    inference = convert_checked(model, mode="int8", representative=representative)
    step("converting the int8 backbone")
    embedder = embedding_model(model)
    backbone = convert_checked(embedder, mode="int8", representative=representative)
    embedding_dim = int(embedder.outputs[0].shape[-1])

    step("building the trainable model")
    frozen = _frozen_copy(model, freeze_backbone)
    head = trainable_weights(frozen)
    try:
        trainable = build_trainable(frozen, batch_size=batch_size, num_classes=arrays.num_classes)
    except ConfigError as exc:
        raise ConversionError(str(exc)) from exc
    weights = Weights.from_pairs(list(head.items()))
    step("building the head model")
    head_flatbuffer = _build_head(frozen, embedding_dim, batch_size, arrays.num_classes, weights)

    step("checking the bundle against Keras")
    reference = keras_logits(model, arrays.x_test)
    head_gap: float | None = None
    try:
        int8_logits = TFLiteRunner(inference).logits(arrays.x_test)
        trainable_gap = _check_trainable(trainable, weights, arrays.x_test, reference)
        _check_backbone(backbone, arrays.x_test[:8], embedding_dim)
        if head_flatbuffer is not None:
            embeddings = keras_logits(embedder, arrays.x_test)
            head_gap = _check_trainable(
                head_flatbuffer, weights, embeddings, reference, what=HEAD_FILE
            )
    except ConversionError:
        raise
    except (ConfigError, ValueError, RuntimeError) as exc:  # the runtime refused a model
        raise ConversionError(f"a bundle model fails in the TFLite runtime: {exc}") from exc
    agreement = compare_logits(reference, int8_logits, arrays.y_test)

    step("writing the bundle")
    (directory / INFERENCE_FILE).write_bytes(inference)
    (directory / TRAINABLE_FILE).write_bytes(trainable)
    (directory / BACKBONE_FILE).write_bytes(backbone)
    (directory / WEIGHTS_FILE).write_bytes(weights.to_bytes())
    extra = [BACKBONE_FILE]
    if head_flatbuffer is not None:
        (directory / HEAD_FILE).write_bytes(head_flatbuffer)
        extra.append(HEAD_FILE)
    if arrays.label_names is not None:  # a model of a user's table: its columns and classes
        save_schema_json(directory / SCHEMA_FILE, arrays.schema, arrays.label_names)
        extra.append(SCHEMA_FILE)
    metadata: dict[str, Any] = {
        "training_record": None if training_record is None else dict(training_record),
        "quantization": _quantization_metadata(agreement, trainable_gap, head_gap),
        **(extra_metadata or {}),
    }
    write_manifest(
        directory,
        model_version=version,
        task=arrays.held_out.task,
        schema=arrays.schema,
        feature_spec=arrays.spec.to_dict(),
        train_batch_size=batch_size,
        created_at=created_at,
        head=list(weights.names),
        metadata=metadata,
        extra_files=extra,
    )
    try:
        manifest = verify_bundle(directory)
    except BundleError as exc:
        raise ConversionError(f"the bundle just written does not verify: {exc}") from exc
    return BundleResult(
        manifest=manifest,
        inference=agreement,
        trainable_max_abs_logit_diff=trainable_gap,
        embedding_dim=embedding_dim,
        head_max_abs_logit_diff=head_gap,
    )


def _frozen_copy(
    model: tf.keras.Model, freeze: Callable[[tf.keras.Model], tf.keras.Model]
) -> tf.keras.Model:
    import tensorflow as tf

    try:
        clone = tf.keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # clone_model fails on subclassed models with a bare error
        raise ConfigError(
            f"cannot copy model {model.name!r} to freeze its backbone: {exc}"
        ) from exc
    return freeze(clone)


def _build_head(
    frozen: tf.keras.Model,
    embedding_dim: int,
    batch_size: int,
    num_classes: int,
    weights: Weights,
) -> bytes | None:
    """``head.tflite``: the trainable signatures over the head alone (input: the embedding),
    or None with a warning when the head is not a chain of layers after the embedding."""
    from quantize.trainable import build_trainable, head_model, trainable_weight_names

    head = head_model(frozen, embedding_dim)
    if head is None:
        return None
    names = trainable_weight_names(head)
    if names != list(weights.names):
        logger.warning(
            "no %s: the head model's weights %s are not the bundle's head %s",
            HEAD_FILE,
            names,
            list(weights.names),
        )
        return None
    try:
        return build_trainable(head, batch_size=batch_size, num_classes=num_classes)
    except ConfigError as exc:
        raise ConversionError(f"the head model cannot be built: {exc}") from exc


def _check_trainable(
    trainable: bytes,
    weights: Weights,
    x: NDArray[np.float32],
    reference: NDArray[np.float32],
    *,
    what: str = TRAINABLE_FILE,
) -> float:
    """The largest |logit| gap of ``infer`` against Keras; ConversionError if the device
    model's weights or outputs are not the Keras model's."""
    interpreter = load_interpreter(trainable)
    on_device = interpreter.get_signature_runner("get_weights")()
    if set(on_device) != set(weights.names) or not all(
        np.array_equal(np.asarray(on_device[name]), weights[name]) for name in weights.names
    ):
        raise ConversionError(f"the initial weights of {what} differ from {WEIGHTS_FILE}")
    infer = interpreter.get_signature_runner("infer")
    logits = np.concatenate(
        [infer(x=np.ascontiguousarray(x[i : i + 256]))["logits"] for i in range(0, len(x), 256)]
    )
    gap = float(np.abs(logits - reference).max())
    if not gap <= _TRAINABLE_LOGIT_TOLERANCE:
        raise ConversionError(
            f"the logits of {what} differ from Keras by up to {gap:.3g} "
            f"(tolerance {_TRAINABLE_LOGIT_TOLERANCE})"
        )
    return gap


def _check_backbone(backbone: bytes, x: NDArray[np.float32], embedding_dim: int) -> None:
    out = TFLiteRunner(backbone).logits(x)
    if out.shape != (len(x), embedding_dim):
        raise ConversionError(
            f"the backbone model outputs {out.shape}, expected [n, {embedding_dim}]"
        )


def _quantization_metadata(
    inference: Agreement, trainable_gap: float, head_gap: float | None
) -> dict[str, Any]:
    extra = {} if head_gap is None else {"head_max_abs_logit_diff": head_gap}
    return {
        "inference_int8": {
            "keras": inference.reference.to_dict(),
            "tflite": inference.converted.to_dict(),
            "argmax_agreement": inference.argmax_agreement,
            "accuracy_drop": inference.accuracy_drop,
            "auc_drop": inference.auc_drop,
        },
        "trainable_max_abs_logit_diff": trainable_gap,
        **extra,
    }
