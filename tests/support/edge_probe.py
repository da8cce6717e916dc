"""Device-side probe: drives a trainable TFLite model where TensorFlow cannot be imported.

Run as ``python -m tests.support.edge_probe WORKDIR [--block MODULE ...]`` from the
repository root. WORKDIR holds ``trainable.tflite`` and ``data.npz`` (``x_test``,
``keras_probabilities``, ``x_train``, ``y_train``); the probe writes ``results.json`` there
for the test to judge. The blocker (:mod:`tests.support.blocker`), installed before
anything else, makes TensorFlow (and any ``--block`` module, e.g. ``tflite_runtime`` to
exercise the fallback runtime) unimportable.
"""

from __future__ import annotations

import sys

from tests.support.blocker import TENSORFLOW, block_imports, import_fails

_EXTRA_BLOCKED = [sys.argv[i + 1] for i, arg in enumerate(sys.argv[1:-1], 1) if arg == "--block"]
block_imports((*TENSORFLOW, *_EXTRA_BLOCKED))

import json  # noqa: E402  (the blocker must be in place before any other import)
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_client.runtime import TrainableModel, load_interpreter  # noqa: E402

STEPS = 20
LEARNING_RATE = 0.05


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def main(workdir: Path) -> dict[str, object]:
    assert import_fails("tensorflow"), "import tensorflow must fail inside the probe"
    model_bytes = (workdir / "trainable.tflite").read_bytes()
    data = np.load(workdir / "data.npz")
    x_test, keras_probabilities = data["x_test"], data["keras_probabilities"]
    x_train, y_train = data["x_train"], data["y_train"]

    runtime = type(load_interpreter(model_bytes)).__module__
    model = TrainableModel(workdir / "trainable.tflite")
    probabilities = model.infer(x_test)
    initial = model.get_weights()

    loss_before = _cross_entropy(model.infer(x_train), y_train)
    step_losses = []
    batch = model.batch_size
    for step in range(STEPS):
        start = (step * batch) % (x_train.shape[0] - batch)
        step_losses.append(
            model.train_step(
                x_train[start : start + batch],
                y_train[start : start + batch],
                np.ones(batch, np.float32),
                LEARNING_RATE,
            )
        )
    loss_after = _cross_entropy(model.infer(x_train), y_train)
    trained = model.get_weights()

    model.set_weights(initial)
    restored = model.get_weights()
    restored_probabilities = model.infer(x_test)
    model.set_weights(trained)
    retrained_probabilities = model.infer(x_test)

    return {
        "tensorflow_blocked": import_fails("tensorflow"),
        "tensorflow_loaded": any(m.split(".")[0] == "tensorflow" for m in sys.modules),
        "runtime": runtime,
        "blocked_runtimes": _EXTRA_BLOCKED,
        "batch_size": batch,
        "weight_names": list(model.weight_names),
        "agreement": float(
            (probabilities.argmax(axis=1) == keras_probabilities.argmax(axis=1)).mean()
        ),
        "max_probability_gap": float(np.abs(probabilities - keras_probabilities).max()),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "step_losses": step_losses,
        "roundtrip_bit_exact": all(
            restored[name].dtype == initial[name].dtype
            and restored[name].tobytes() == initial[name].tobytes()
            for name in initial
        ),
        "restored_predictions_equal": bool(np.array_equal(restored_probabilities, probabilities)),
        "set_weights_changes_predictions_by": float(
            np.abs(retrained_probabilities - probabilities).max()
        ),
    }


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    results = main(directory)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
