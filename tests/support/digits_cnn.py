"""A small digits CNN for the conversion tests: conv backbone + Dense head, trained briefly."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

layers = tf.keras.layers


def digits_split() -> dict[str, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1] as (n, 8, 8, 1): 1400 to train, 397 to test."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    return {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}


def trained_digits_cnn(
    digits: dict[str, np.ndarray], *, backbone_units: int, metrics: list[str] | None = None
) -> tf.keras.Model:
    """Conv2D -> Flatten -> Dense(backbone_units) backbone, relu Dense(16) -> Dense(10) head."""
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, activation="relu", name="backbone_conv"),
            layers.Flatten(name="backbone_flatten"),
            layers.Dense(backbone_units, activation="relu", name="backbone_dense"),
            layers.Dense(16, activation="relu", name="head_hidden"),
            layers.Dense(10, name="head_out"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.01),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics or [],
    )
    model.fit(digits["x_train"], digits["y_train"], epochs=4, batch_size=32, verbose=0)
    return model
