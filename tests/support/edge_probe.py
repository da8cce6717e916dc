"""Device-side probe: drives a trainable TFLite model where TensorFlow cannot be imported.

Run as ``python tests/edge_probe.py WORKDIR [--block MODULE ...]``. WORKDIR holds
``trainable.tflite`` and ``data.npz`` (``x_test``, ``keras_probabilities``, ``x_train``,
``y_train``); the probe writes ``results.json`` there for the test to judge. A meta-path
blocker installed before anything else makes ``tensorflow``/``keras`` (and any ``--block``
module, e.g. ``tflite_runtime`` to exercise the fallback runtime) unimportable.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_ALWAYS_BLOCKED = ("tensorflow", "keras", "tensorflow_federated", "tf_keras")


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = frozenset(roots)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in self.roots:
            raise ImportError(f"{fullname} is blocked: the edge has no TensorFlow")
        return None


def _install_blocker(argv: list[str]) -> list[str]:
    extra = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--block"]
    roots = (*_ALWAYS_BLOCKED, *extra)
    already = sorted(name for name in sys.modules if name.split(".", 1)[0] in roots)
    if already:
        raise SystemExit(f"blocked modules were imported before the blocker: {already}")
    sys.meta_path.insert(0, _Blocker(roots))
    return extra


_EXTRA_BLOCKED = _install_blocker(sys.argv[1:])

import json  # noqa: E402  (the blocker must be in place before any other import)
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edge_client.runtime import TrainableModel, load_interpreter  # noqa: E402

STEPS = 20
LEARNING_RATE = 0.05


def _tensorflow_import_fails() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return True
    return False


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(picked, 1e-12)).mean())


def main(workdir: Path) -> dict[str, object]:
    assert _tensorflow_import_fails(), "import tensorflow must fail inside the probe"
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
        "tensorflow_blocked": _tensorflow_import_fails(),
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
