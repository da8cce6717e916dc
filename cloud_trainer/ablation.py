"""Leave-one-feature-out ablation: how much the held-out accuracy drops without each feature.

Every model here, the one over all features included, is trained the same way: the task's
model built after ``tf.keras.utils.set_random_seed(seed)``, ``epochs`` epochs over the
training split shuffled with ``seed``, no strategy. A feature is left out by dropping its
columns of the transformed input (its one-hot block, or its numeric values), which is what
a feature spec built without that feature would produce.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from cloud_trainer.data import TaskData
from cloud_trainer.evaluation import logit_metrics
from cloud_trainer.models import build_model, compile_model
from cloud_trainer.pipelines import array_dataset
from fedge.errors import ConfigError
from fedge.features import FeatureSpec

__all__ = ["ABLATION_FILE", "ABLATION_METRIC", "feature_columns", "run_ablation"]

logger = logging.getLogger(__name__)

ABLATION_FILE = "ablation.json"
ABLATION_METRIC = "test_accuracy"


def feature_columns(spec: FeatureSpec) -> dict[str, npt.NDArray[np.int64]]:
    """Each feature's columns in the flat transformed input, in spec order."""
    out: dict[str, npt.NDArray[np.int64]] = {}
    start = 0
    for feature in spec.features:
        out[feature.name] = np.arange(start, start + feature.width, dtype=np.int64)
        start += feature.width
    return out


def run_ablation(
    data: TaskData, *, epochs: int, batch_size: int, seed: int, learning_rate: float
) -> dict[str, Any]:
    """The report: the metric with all features and, per feature, the metric without it and
    the drop (all features minus without), sorted by drop, largest first."""
    if len(data.spec.features) < 2 or data.x_train.ndim != 2:
        raise ConfigError("ablation needs at least two features in a flat model input")

    def score(keep: npt.NDArray[np.int64] | None) -> float:
        x_train = data.x_train if keep is None else data.x_train[:, keep]
        x_test = data.x_test if keep is None else data.x_test[:, keep]
        tf.keras.utils.set_random_seed(seed)
        model = build_model(
            data.task, input_shape=(int(x_train.shape[1]),), num_classes=data.num_classes
        )
        compile_model(model, learning_rate=learning_rate)
        model.fit(
            array_dataset(x_train, data.y_train, batch_size=batch_size, shuffle_seed=seed),
            epochs=epochs,
            verbose=0,
        )
        logits = np.asarray(model(x_test, training=False), dtype=np.float32)
        return float(logit_metrics(logits, data.y_test)["accuracy"])

    everything = np.arange(data.x_train.shape[1], dtype=np.int64)
    baseline = score(None)
    rows: list[dict[str, Any]] = []
    for name, columns in feature_columns(data.spec).items():
        value = score(np.setdiff1d(everything, columns))
        logger.info("ablation: without %s %s=%.4f", name, ABLATION_METRIC, value)
        rows.append({"feature": name, ABLATION_METRIC: value, "drop": baseline - value})
    rows.sort(key=lambda row: (-float(row["drop"]), str(row["feature"])))
    return {
        "metric": ABLATION_METRIC,
        "all_features": baseline,
        "epochs": epochs,
        "seed": seed,
        "features": rows,
    }
