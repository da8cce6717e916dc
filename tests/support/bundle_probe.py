"""Device-side probe of an edge bundle, run where TensorFlow cannot be imported.

``python -m tests.support.bundle_probe WORKDIR BUNDLE STEPS`` (from the repository root) blocks
TensorFlow, ``quantize`` and ``cloud_trainer`` (:mod:`tests.support.blocker`) before any
other import, then does what a device does with BUNDLE: verifies the manifest's sha256s,
rebuilds the held-out data from the manifest alone (raw task data + the manifest's feature
spec + the split in its training record), runs the three models with the TFLite runtime
and trains the head for STEPS steps. It compares with the Keras reference the test left in
``WORKDIR/reference.npz`` and writes ``WORKDIR/results.json`` for the test to judge.
"""

from __future__ import annotations

import sys

from tests.support.blocker import TENSORFLOW, block_imports, import_fails, loaded

BLOCKED = (*TENSORFLOW, "quantize", "cloud_trainer")
block_imports(BLOCKED)

import json  # noqa: E402  (the blocker must be in place before any other import)
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from edge_client.runtime import InferenceModel, TrainableModel, load_interpreter  # noqa: E402
from fedge.bundle import WEIGHTS_FILE, verify_bundle  # noqa: E402
from fedge.data import load_task, train_test_split  # noqa: E402
from fedge.features import FeatureSpec  # noqa: E402
from fedge.weights import Weights  # noqa: E402

LEARNING_RATE = 0.05


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows (rows that are all zero in both count as 1)."""
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.abs(a).sum(axis=1) == 0) & (np.abs(b).sum(axis=1) == 0)
    cosine = np.where(both_zero, 1.0, dot / np.maximum(norms, 1e-12))
    return float(cosine.mean())


def probe(workdir: Path, bundle: Path, steps: int) -> dict[str, Any]:
    """Everything a device does with a bundle, measured for the test to judge."""
    manifest = verify_bundle(bundle)
    reference = np.load(workdir / "reference.npz")
    keras_logits = reference["keras_logits"]

    # Held-out data from the manifest alone: raw data, its spec, the record's split.
    record = manifest.metadata["training_record"]
    dataset = load_task(manifest.task)
    train_idx, test_idx = train_test_split(
        dataset, test_fraction=record["test_fraction"], seed=record["seed"]
    )
    spec = FeatureSpec.from_dict(manifest.feature_spec)
    x_test = spec.transform(dataset.take(test_idx).columns)
    train = dataset.take(train_idx)  # the record's data_fraction is 1.0 for these exports
    x_train, y_train = spec.transform(train.columns), np.asarray(train.labels)

    inference = InferenceModel(bundle / "inference.tflite")
    int8_logits = inference.logits(x_test)

    trainable = TrainableModel(bundle / "trainable.tflite")
    runtime = type(load_interpreter(bundle / "trainable.tflite")).__module__
    device_logits = trainable.logits(x_test)
    shipped = Weights.from_bytes((bundle / WEIGHTS_FILE).read_bytes())
    initial = trainable.get_weights()
    initial_probabilities = trainable.infer(x_test)

    batch = trainable.batch_size
    seen = slice(0, steps * batch)
    loss_before = _cross_entropy(trainable.infer(x_train[seen]), y_train[seen])
    step_losses = [
        trainable.train_step(
            x_train[i * batch : (i + 1) * batch],
            y_train[i * batch : (i + 1) * batch],
            np.ones(batch, np.float32),
            LEARNING_RATE,
        )
        for i in range(steps)
    ]
    loss_after = _cross_entropy(trainable.infer(x_train[seen]), y_train[seen])
    trained = trainable.get_weights()
    trained_probabilities = trainable.infer(x_test)

    trainable.set_weights(initial)
    restored = trainable.get_weights()
    restored_probabilities = trainable.infer(x_test)
    trainable.set_weights(trained)

    embedding = InferenceModel(bundle / "backbone.tflite").logits(x_test[:200])
    keras_embedding = reference["keras_embedding"]
    return {
        "tensorflow_import_fails": import_fails("tensorflow"),
        "blocked_modules_loaded": loaded(BLOCKED),
        "runtime": runtime,
        "verified_files": sorted(manifest.files),
        "transform_max_abs_diff": float(np.abs(x_test - reference["x_test"]).max()),
        "inference_input_dtype": inference.input_dtype.name,
        "inference_agreement": float(
            (int8_logits.argmax(axis=1) == keras_logits.argmax(axis=1)).mean()
        ),
        "trainable_max_logit_gap": float(np.abs(device_logits - keras_logits).max()),
        "initial_weights_equal_safetensors": set(initial) == set(shipped.names)
        and all(initial[name].tobytes() == shipped[name].tobytes() for name in shipped.names),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "step_losses": step_losses,
        "roundtrip_bit_exact": all(
            restored[name].tobytes() == initial[name].tobytes() for name in initial
        ),
        "restored_predictions_equal": bool(
            np.array_equal(restored_probabilities, initial_probabilities)
        ),
        "trained_predictions_restored": bool(
            np.array_equal(trainable.infer(x_test), trained_probabilities)
        ),
        "training_changed_predictions_by": float(
            np.abs(trained_probabilities - initial_probabilities).max()
        ),
        "embedding_shape": list(embedding.shape),
        "embedding_mean_cosine": _mean_cosine(embedding, keras_embedding),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m tests.support.bundle_probe WORKDIR BUNDLE STEPS", file=sys.stderr)
        return 2
    workdir, bundle, steps = Path(argv[0]), Path(argv[1]), int(argv[2])
    (workdir / "results.json").write_text(json.dumps(probe(workdir, bundle, steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
