"""A Keras model -> a float32 TFLite model that devices can fine-tune with builtin ops only.

The flatbuffer carries four signatures over the model's variables:

- ``infer(x)`` -> ``{"logits", "probabilities"}``, any batch size;
- ``train_step(x, y, sample_weight, learning_rate)`` -> ``{"loss"}``: one plain SGD step on
  the trainable variables (the head) with a static batch size, minimising
  ``sum(w_i * loss_i) / sum(w_i)`` of the sparse softmax cross-entropy, so a short last batch
  padded with weight 0 gives exactly the mean loss of its real examples;
- ``get_weights()`` -> ``{name: tensor}`` for every trainable variable;
- ``set_weights(**{name: tensor})`` -> ``{"num_tensors"}``, assigning them.

Why the model is rewritten first (TF 2.14, measured): gradients must be TFLite builtins because
no pip runtime ships the Flex delegate. Keras' ``relu`` differentiates to ``ReluGrad`` (not a
builtin) while ``tf.where(x > 0, x, 0)`` differentiates to builtin selects, so relu, relu6,
leaky relu and elu activations of Dense, Activation, ReLU and LeakyReLU layers are rewritten that
way in a clone: same outputs, and the same gradient as ``ReluGrad`` even at exactly 0, where
``tf.maximum`` would differ. tanh, sigmoid, softplus, selu and swish need no rewrite; gelu does
not convert (``Erf``). Conv gradients are not builtins either, so only Dense layers may be
trainable; convolutions belong to the frozen backbone (gradients are taken only with respect
to trainable variables, so a frozen conv below the head needs no backward op). GradientTape
with a dynamic batch does not convert, hence the static ``train_step`` batch; ``infer`` keeps
a dynamic batch. Labels are int32. Dropout and batch normalization run in inference mode on
the device.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from fedge.errors import ConfigError
from quantize.convert import op_list

__all__ = [
    "SIGNATURES",
    "build_trainable",
    "head_model",
    "trainable_weight_names",
    "trainable_weights",
]

logger = logging.getLogger(__name__)

SIGNATURES = ("infer", "train_step", "get_weights", "set_weights")

_SUPPORTED_TRAINABLE: tuple[type[tf.keras.layers.Layer], ...] = (tf.keras.layers.Dense,)
# TF op names: a letter, digit or dot first, then these characters.
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_./-]")


def trainable_weight_names(model: tf.keras.Model) -> list[str]:
    """Stable names of ``model.trainable_variables``, in Keras order (``head_dense/kernel``).

    A name is the owning layer's path inside nested models plus the variable's own name, so it
    survives cloning and reloading, unlike ``variable.name`` which depends on build scopes.
    """
    owners: dict[int, str] = {}
    for path, layer in _leaf_layers(model, prefix=""):
        for variable in layer.trainable_weights:
            owners.setdefault(id(variable), _variable_name(path, layer, variable))
    names = [
        owners.get(id(v), _sanitize(v.name.rsplit(":", 1)[0])) for v in model.trainable_variables
    ]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"trainable variables share the names {duplicates}; give their layers unique names"
        )
    return names


def trainable_weights(model: tf.keras.Model) -> dict[str, NDArray[np.float32]]:
    """The trainable variables as float32 arrays keyed by :func:`trainable_weight_names`."""
    names = trainable_weight_names(model)
    return {
        name: np.asarray(variable.numpy(), dtype=np.float32)
        for name, variable in zip(names, model.trainable_variables, strict=True)
    }


def head_model(model: tf.keras.Model, embedding_dim: int) -> tf.keras.Model | None:
    """The head of ``model`` alone: ``Input(shape=(embedding_dim,))`` followed by copies of its
    ``head_*`` layers (same configs and weights) in order.

    None, with a warning, when the head is not a chain after the embedding layer (each head
    layer called once on the previous layer's output, the last one the model's output): such
    a head has no model of its own that takes the embedding.
    """
    from cloud_trainer.models import EMBEDDING_LAYER, HEAD_PREFIX

    reason = _not_a_chain(model, EMBEDDING_LAYER, HEAD_PREFIX)
    if reason is not None:
        logger.warning("no head-only model for %r: %s", model.name, reason)
        return None
    head_layers = [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]
    inputs = tf.keras.Input(shape=(embedding_dim,), name="embedding")
    x = inputs
    for layer in head_layers:
        try:
            copy = type(layer).from_config(layer.get_config())
            x = copy(x)
            copy.set_weights(layer.get_weights())
        except Exception as exc:  # a custom layer without a round-tripping config
            logger.warning("no head-only model for %r: layer %r: %s", model.name, layer.name, exc)
            return None
        copy.trainable = layer.trainable
    return tf.keras.Model(inputs, x, name=f"{model.name}_head")


def _not_a_chain(model: tf.keras.Model, embedding_layer: str, head_prefix: str) -> str | None:
    """Why the layers after ``embedding_layer`` are not a chain of ``head_prefix`` layers."""
    layers = list(getattr(model, "layers", []))
    if not _is_graph_network(model):
        return "it is a subclassed model"
    names = [layer.name for layer in layers]
    if embedding_layer not in names:
        return f"it has no layer {embedding_layer!r}"
    after = layers[names.index(embedding_layer) + 1 :]
    if not after or any(not layer.name.startswith(head_prefix) for layer in after):
        return f"the layers after {embedding_layer!r} are not all {head_prefix!r}* layers"
    previous = layers[names.index(embedding_layer)]
    for layer in after:
        nodes = getattr(layer, "_inbound_nodes", [])
        if len(nodes) != 1 or nodes[0].inbound_layers is not previous:
            return f"layer {layer.name!r} is not applied once to the output of {previous.name!r}"
        previous = layer
    if len(model.outputs) != 1 or model.outputs[0] is not previous.output:
        return f"the model's output is not the output of {previous.name!r}"
    return None


def build_trainable(model: tf.keras.Model, *, batch_size: int, num_classes: int) -> bytes:
    """Convert ``model`` to a float32 TFLite model with the four on-device signatures.

    The model must output logits ``[batch, num_classes]`` (a softmax on a final Dense or
    Activation layer is moved into the loss). Raises :class:`ConfigError` for a trainable
    layer that is not Dense, for a model without trainable variables, and for anything that
    would need ops outside the TFLite builtins.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not model.trainable_variables:
        raise ConfigError(f"model {model.name!r} has no trainable variables: nothing to train")
    _refuse_unsupported_trainable(model)
    names = trainable_weight_names(model)

    device_model = _rewrite_for_device(model)
    if trainable_weight_names(device_model) != names:
        raise ConfigError(f"rewriting model {model.name!r} changed its trainable variables")
    feature_shape = _feature_shape(device_model)
    _check_output(device_model, feature_shape, num_classes)

    module = _training_module(device_model, names, feature_shape, batch_size, num_classes)
    flatbuffer = _convert(module, model.name)
    foreign = [op for op in op_list(flatbuffer) if op.startswith("CUSTOM:")]
    if foreign:
        raise ConfigError(
            f"the trainable model of {model.name!r} needs non-builtin ops {foreign}; "
            "device runtimes cannot run them"
        )
    logger.info(
        "built trainable TFLite of %r: %d trainable tensors, batch %d, %d bytes",
        model.name,
        len(names),
        batch_size,
        len(flatbuffer),
    )
    return flatbuffer


def _training_module(
    model: tf.keras.Model,
    names: list[str],
    feature_shape: tuple[int, ...],
    batch_size: int,
    num_classes: int,
) -> tf.Module:
    """The four signatures as tf.functions over the (rewritten) model's variables."""
    trainable = list(model.trainable_variables)

    def infer(x: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(x, training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def train_step(
        x: tf.Tensor, y: tf.Tensor, sample_weight: tf.Tensor, learning_rate: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            # one_hot + log_softmax: SparseSoftmaxCrossEntropyWithLogits is no builtin.
            per_example = -tf.reduce_sum(
                tf.one_hot(y, num_classes) * tf.nn.log_softmax(logits), axis=-1
            )
            total_weight = tf.maximum(tf.reduce_sum(sample_weight), 1e-12)
            loss = tf.reduce_sum(per_example * sample_weight) / total_weight
        gradients = tape.gradient(loss, trainable)
        for variable, gradient in zip(trainable, gradients, strict=True):
            variable.assign_sub(learning_rate * gradient)
        return {"loss": loss}

    def get_weights() -> dict[str, tf.Tensor]:
        return {name: tf.identity(v) for name, v in zip(names, trainable, strict=True)}

    def set_weights(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        for variable, tensor in zip(trainable, tensors, strict=True):
            variable.assign(tensor)
        return {"num_tensors": tf.constant(len(tensors), tf.int32)}

    module = tf.Module(name="fedge_trainable")
    # Tracking the variables, not the Keras model, keeps Keras' own SavedModel serialization
    # (which cannot serialize the rewritten activations) out of the way.
    module.model_variables = list(model.variables)
    module.infer = tf.function(
        infer, input_signature=[tf.TensorSpec([None, *feature_shape], tf.float32, "x")]
    )
    module.train_step = tf.function(
        train_step,
        input_signature=[
            tf.TensorSpec([batch_size, *feature_shape], tf.float32, "x"),
            tf.TensorSpec([batch_size], tf.int32, "y"),
            tf.TensorSpec([batch_size], tf.float32, "sample_weight"),
            tf.TensorSpec([], tf.float32, "learning_rate"),
        ],
    )
    module.get_weights = tf.function(get_weights, input_signature=[])
    module.set_weights = tf.function(
        set_weights,
        input_signature=[
            tf.TensorSpec(v.shape, tf.float32, name)
            for name, v in zip(names, trainable, strict=True)
        ],
    )
    return module


def _convert(module: tf.Module, model_name: str) -> bytes:
    signatures = {key: getattr(module, key).get_concrete_function() for key in SIGNATURES}
    try:
        with tempfile.TemporaryDirectory(prefix="fedge-trainable-") as saved:
            tf.saved_model.save(module, saved, signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                saved, signature_keys=list(SIGNATURES)
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            converter.experimental_enable_resource_variables = True
            return bytes(converter.convert())
    except Exception as exc:  # ConverterError for non-builtin ops, ValueError for tracing
        raise ConfigError(
            f"model {model_name!r} cannot become an on-device-trainable TFLite model with "
            f"builtin ops only: {_summarize_converter_error(exc)}"
        ) from exc


def _summarize_converter_error(exc: Exception) -> str:
    """The TF ops the converter could not lower, with where they came from, else the error."""
    text = str(exc)
    found: dict[str, str] = {}
    for location, op in re.findall(
        r'fused\["(?:\w+):", "([^"@]+)@[^\n]*?\'tf\.(\w+)\' op is neither a custom op', text
    ):
        found.setdefault(op, location)
    if not found:
        return text
    listed = "; ".join(f"{op} (from {where})" for op, where in sorted(found.items()))
    return (
        f"these TF ops are not TFLite builtins: {listed}. Freeze the layers they come from "
        "or use activations with builtin gradients (tanh, sigmoid, relu)"
    )


def _leaf_layers(
    model: tf.keras.layers.Layer, *, prefix: str
) -> Iterator[tuple[str, tf.keras.layers.Layer]]:
    """Non-model layers with their nested-model path (``backbone/`` or ``""``)."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, tf.keras.Model):
            yield from _leaf_layers(layer, prefix=f"{prefix}{layer.name}/")
        else:
            yield prefix, layer


def _variable_name(path: str, layer: tf.keras.layers.Layer, variable: tf.Variable) -> str:
    full = variable.name.rsplit(":", 1)[0]
    marker = f"{layer.name}/"
    # variable.name is "<scopes>/<layer>/<var>"; keep what follows the owning layer's scope.
    local = full.rsplit(marker, 1)[1] if marker in full else full.rsplit("/", 1)[-1]
    return _sanitize(f"{path}{layer.name}/{local}")


def _sanitize(name: str) -> str:
    cleaned = _NAME_BAD_CHARS.sub("_", name)
    return cleaned if re.match(r"[A-Za-z0-9.]", cleaned) else f"w{cleaned}"


def _trainable_ids(model: tf.keras.Model) -> set[int]:
    return {id(v) for v in model.trainable_variables}


def _refuse_unsupported_trainable(model: tf.keras.Model) -> None:
    trainable_ids = _trainable_ids(model)
    for path, layer in _leaf_layers(model, prefix=""):
        if not any(id(v) in trainable_ids for v in layer.weights):
            continue
        if not isinstance(layer, _SUPPORTED_TRAINABLE):
            raise ConfigError(
                f"layer '{path}{layer.name}' ({type(layer).__name__}) is trainable, but only "
                f"{', '.join(t.__name__ for t in _SUPPORTED_TRAINABLE)} layers can train on the "
                f"device (their gradients are TFLite builtins); freeze it: "
                f"layer.trainable = False (it then becomes part of the backbone)"
            )


_ActivationFn = Callable[[tf.Tensor], tf.Tensor]


def _select_relu(
    x: tf.Tensor, *, negative_slope: float = 0.0, max_value: float | None = None
) -> tf.Tensor:
    """relu / relu6 / leaky relu built from selects, whose gradients are builtins.

    A select, unlike ``tf.maximum``, passes no gradient at ``x == 0``, exactly like ReluGrad.
    """
    positive = x
    if max_value is not None:
        cap = tf.fill(tf.shape(x), tf.constant(max_value, x.dtype))
        positive = tf.where(x < cap, x, cap)
    negative = tf.zeros_like(x) if negative_slope == 0.0 else x * negative_slope
    return tf.where(x > 0, positive, negative)


def _select_elu(x: tf.Tensor) -> tf.Tensor:
    # exp of min(x, 0): the unselected branch must stay finite or its zero gradient becomes NaN.
    return tf.where(x > 0, x, tf.exp(tf.minimum(x, tf.zeros_like(x))) - 1)


def _linear(x: tf.Tensor) -> tf.Tensor:
    return x


# Keras activations (by function name) whose gradients are not TFLite builtins.
_ACTIVATION_REWRITES: dict[str, _ActivationFn] = {
    "relu": _select_relu,
    "relu6": functools.partial(_select_relu, max_value=6.0),
    "leaky_relu": functools.partial(_select_relu, negative_slope=0.2),  # tf.nn default alpha
    "elu": _select_elu,
}


def _device_activation(layer: tf.keras.layers.Layer) -> _ActivationFn | None:
    """The builtin-differentiable replacement for ``layer``'s activation, if it needs one."""
    if isinstance(layer, tf.keras.layers.ReLU):
        if float(layer.threshold) != 0.0:
            return None  # not a plain relu: left to the converter, which names what fails
        cap = None if layer.max_value is None else float(layer.max_value)
        slope = float(layer.negative_slope)
        return functools.partial(_select_relu, negative_slope=slope, max_value=cap)
    if isinstance(layer, tf.keras.layers.LeakyReLU):
        return functools.partial(_select_relu, negative_slope=float(layer.alpha))
    if isinstance(layer, tf.keras.layers.Dense | tf.keras.layers.Activation):
        return _ACTIVATION_REWRITES.get(getattr(layer.activation, "__name__", ""))
    return None


def _has_softmax(layer: tf.keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return isinstance(layer, tf.keras.layers.Dense | tf.keras.layers.Activation) and (
        getattr(activation, "__name__", None) == "softmax"
    )


def _needs_rewrite(layer: tf.keras.layers.Layer, *, is_output: bool) -> bool:
    return _device_activation(layer) is not None or (is_output and _has_softmax(layer))


def _rewrite_for_device(model: tf.keras.Model) -> tf.keras.Model:
    """A clone whose relus are select-based and whose output is logits; ``model`` untouched."""
    output_layer = model.layers[-1] if getattr(model, "layers", None) else None
    leaves = [layer for _, layer in _leaf_layers(model, prefix="")]
    if not any(_needs_rewrite(layer, is_output=layer is output_layer) for layer in leaves):
        return model
    if not _is_graph_network(model):
        trainable_ids = _trainable_ids(model)
        for layer in leaves:
            if _device_activation(layer) is not None and any(
                id(v) in trainable_ids for v in layer.weights
            ):
                raise ConfigError(
                    f"layer {layer.name!r} of subclassed model {model.name!r} is trainable with "
                    f"{layer.activation.__name__}, whose gradient is no TFLite builtin, and "
                    "subclassed models cannot be rewritten: use tf.where(x > 0, x, 0.0) for "
                    "relu there"
                )
        return model
    try:
        clone = _clone(model, output_layer)
        clone.set_weights(model.get_weights())
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot clone model {model.name!r} to rewrite its relu activations ({exc}); "
            f"use tf.where(x > 0, x, 0.0) instead of relu in the trainable part"
        ) from exc
    return clone


def _is_graph_network(model: tf.keras.Model) -> bool:
    return isinstance(model, tf.keras.Sequential) or bool(
        getattr(model, "_is_graph_network", False)
    )


def _clone(model: tf.keras.Model, output_layer: tf.keras.layers.Layer | None) -> tf.keras.Model:
    def clone_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        if isinstance(layer, tf.keras.Model):
            if not _is_graph_network(layer):
                raise ConfigError(
                    f"nested subclassed model {layer.name!r} cannot be cloned to rewrite relu"
                )
            nested = _clone(layer, None)
            if not layer.trainable:  # setting True would unfreeze its frozen layers
                nested.trainable = False
            return nested
        new = _rewritten(layer, is_output=layer is output_layer)
        new.trainable = layer.trainable
        return new

    return tf.keras.models.clone_model(model, clone_function=clone_layer)


def _rewritten(layer: tf.keras.layers.Layer, *, is_output: bool) -> tf.keras.layers.Layer:
    activation = _device_activation(layer)
    if activation is not None and isinstance(
        layer, tf.keras.layers.ReLU | tf.keras.layers.LeakyReLU
    ):
        return tf.keras.layers.Activation(activation, name=layer.name)
    new = type(layer).from_config(layer.get_config())
    if activation is not None:
        new.activation = activation
    elif is_output and _has_softmax(layer):
        new.activation = _linear
    return new


def _feature_shape(model: tf.keras.Model) -> tuple[int, ...]:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ConfigError(
            f"model {model.name!r} has no known input shape; build it with tf.keras.Input"
        )
    if len(inputs) != 1:
        raise ConfigError(f"model {model.name!r} has {len(inputs)} inputs; one is supported")
    shape = tuple(inputs[0].shape[1:])
    if any(dim is None for dim in shape):
        raise ConfigError(f"model {model.name!r} input shape {shape} must be fully known")
    return tuple(int(dim) for dim in shape)


def _check_output(model: tf.keras.Model, feature_shape: tuple[int, ...], num_classes: int) -> None:
    output = model(np.zeros((1, *feature_shape), np.float32), training=False)
    if not isinstance(output, tf.Tensor) or tuple(output.shape) != (1, num_classes):
        shown = getattr(output, "shape", type(output).__name__)
        raise ConfigError(
            f"model {model.name!r} must output logits [batch, {num_classes}]; "
            f"for one example it returned {shown}"
        )
