"""The model zoo: one small Keras model per task, split into a backbone and a head.

Every layer is named ``backbone_*`` or ``head_*``. The backbone ends with the layer named
:data:`EMBEDDING_LAYER` (the features the edge can send back); the head is the part devices
train. Models output logits, never probabilities, so losses use ``from_logits=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import tensorflow as tf

from fedge.errors import ConfigError

__all__ = [
    "BACKBONE_PREFIX",
    "EMBEDDING_LAYER",
    "HEAD_PREFIX",
    "MODEL_NAMES",
    "backbone_layer_names",
    "build_digits_model",
    "build_model",
    "build_table_model",
    "build_taxi_model",
    "compile_model",
    "embedding_model",
    "freeze_backbone",
    "head_layer_names",
]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone_"
HEAD_PREFIX = "head_"
EMBEDDING_LAYER = "backbone_embedding"
"""The last backbone layer: its output is the embedding."""


def build_digits_model(
    input_shape: tuple[int, ...] = (8, 8), *, num_classes: int = 10
) -> tf.keras.Model:
    """A small CNN: (8, 8) pixels -> two 3x3 convs -> Dense(64) embedding -> head -> logits."""
    _check_shape(input_shape, rank=2, what="digits")
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, name="backbone_input")
    x = layers.Reshape((*input_shape, 1), name="backbone_reshape")(inputs)
    x = layers.Conv2D(16, 3, activation="relu", name="backbone_conv1")(x)
    x = layers.Conv2D(32, 3, activation="relu", name="backbone_conv2")(x)
    x = layers.Flatten(name="backbone_flatten")(x)
    x = layers.Dense(64, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dense(32, activation="relu", name="head_hidden")(x)
    outputs = layers.Dense(num_classes, name="head_out")(x)
    return tf.keras.Model(inputs, outputs, name="digits_cnn")


def build_taxi_model(input_shape: tuple[int, ...], *, num_classes: int = 2) -> tf.keras.Model:
    """A small MLP over the transformed taxi features: Dense(64) -> Dense(32) embedding -> head."""
    _check_shape(input_shape, rank=1, what="taxi")
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, name="backbone_input")
    x = layers.Dense(64, activation="relu", name="backbone_dense1")(inputs)
    x = layers.Dense(32, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dense(16, activation="relu", name="head_hidden")(x)
    outputs = layers.Dense(num_classes, name="head_out")(x)
    return tf.keras.Model(inputs, outputs, name="taxi_mlp")


def build_table_model(input_shape: tuple[int, ...], *, num_classes: int = 2) -> tf.keras.Model:
    """The taxi MLP over a user's transformed table (``fedge-train --data``)."""
    _check_shape(input_shape, rank=1, what="table")
    model = build_taxi_model(input_shape, num_classes=num_classes)
    return tf.keras.Model(model.inputs, model.outputs, name="table_mlp")


_BUILDERS: dict[str, Callable[..., tf.keras.Model]] = {
    "digits": build_digits_model,
    "table": build_table_model,
    "taxi": build_taxi_model,
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))
"""Tasks that have a model in the zoo."""


def build_model(task: str, *, input_shape: tuple[int, ...], num_classes: int) -> tf.keras.Model:
    """The zoo model of ``task`` for per-example ``input_shape`` (the feature transform's)."""
    try:
        builder = _BUILDERS[task]
    except KeyError:
        raise ConfigError(f"no model for task {task!r}; known: {list(MODEL_NAMES)}") from None
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return builder(tuple(input_shape), num_classes=num_classes)


def compile_model(model: tf.keras.Model, *, learning_rate: float = 1e-3) -> None:
    """Compile for integer labels and logits, with built-in objects only.

    Only built-in losses and metrics are used so the exported SavedModel loads with
    ``tf.keras.models.load_model`` and no ``custom_objects``.
    """
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def backbone_layer_names(model: tf.keras.Model) -> list[str]:
    """Names of the backbone layers, in model order."""
    return [layer.name for layer in model.layers if layer.name.startswith(BACKBONE_PREFIX)]


def head_layer_names(model: tf.keras.Model) -> list[str]:
    """Names of the head layers (the part devices train), in model order."""
    return [layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]


def freeze_backbone(model: tf.keras.Model) -> tf.keras.Model:
    """Set every backbone layer ``trainable=False``, every head layer trainable; returns ``model``.

    The model is changed in place (Keras trainability is layer state). Recompile it before
    training again: Keras reads trainability when it compiles.
    """
    _check_split(model)
    for layer in model.layers:
        if layer.name.startswith(BACKBONE_PREFIX):
            layer.trainable = False
        elif layer.name.startswith(HEAD_PREFIX):
            layer.trainable = True
    return model


def embedding_model(model: tf.keras.Model) -> tf.keras.Model:
    """A model sharing ``model``'s backbone weights that outputs the embedding."""
    _check_split(model)
    try:
        embedding = model.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise ConfigError(f"model {model.name!r} has no layer {EMBEDDING_LAYER!r}") from None
    return tf.keras.Model(model.inputs, embedding.output, name=f"{model.name}_embedding")


def _check_split(model: tf.keras.Model) -> None:
    if not head_layer_names(model) or not backbone_layer_names(model):
        raise ConfigError(
            f"model {model.name!r} needs layers named {BACKBONE_PREFIX!r}* and {HEAD_PREFIX!r}*, "
            f"got {[layer.name for layer in model.layers]}"
        )


def _check_shape(shape: tuple[int, ...], *, rank: int, what: str) -> None:
    if len(shape) != rank or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"the {what} model needs an input shape of rank {rank}, got {shape}")
