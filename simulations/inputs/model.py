"""The user's Keras model (``Settings.model_file``), checked, prepared and bundled for the
devices.

The layers the user left trainable are the part devices train; everything below them is
the frozen backbone. A fully trainable model trains whole: its backbone is the identity (an
identity ``backbone_embedding`` layer on the input), the head is the whole model. A
``fedge-train`` export directory (``saved_model/`` inside) is accepted as is: its
``backbone_*`` layers are frozen and its ``head_*`` layers trained, as ``fedge-quantize
bundle`` splits it. A model is refused, with the layer named, when:

- it has no trainable layer;
- a trainable layer is not ``Dense`` (only Dense gradients are TFLite builtins): freeze it;
- a frozen layer with weights sits above a trainable one (the trainable part must be the
  top of the model), or the trainable part does not start from the last frozen layer;
- it has several inputs or outputs, nested models, or does not output ``[batch, classes]``.

The accepted model is cloned with fedge's layer names (``backbone_*``, the last frozen layer
``backbone_embedding``, ``head_*``), a softmax output turned into logits, and the init
weights applied first, keyed by the user's Keras weight names (``dense_1/kernel``): its
trainable weights or all of them. The bundle's manifest maps each head tensor back to that
name (``weight_names``), so the weights a run saves load back as an init file.
``relu`` in the trainable part is rewritten for the device by :mod:`quantize.trainable`.
:func:`bundle_user_model` then builds the edge bundle with :mod:`quantize` and saves the
prepared model for the TFF engine, in the conversion cache of
:mod:`simulations.inputs.model_cache` (keyed by the files' content; found there without
TensorFlow).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedge.bundle import MANIFEST_NAME
from fedge.data import Dataset
from fedge.errors import ConfigError, FedgeError
from fedge.features import FeatureSpec
from fedge.fileio import publish_directory
from fedge.schema import Schema
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.inputs.files import WEIGHT_NAMES, init_mismatch
from simulations.inputs.model_cache import (
    BUNDLE,
    EXPORT_SAVED_MODEL,
    SAVED_MODEL,
    ModelFacts,
    conversion_entry,
    conversion_version,
    export_feature_spec,
    export_label_names,
    find_conversion,
    model_digest,
)

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["UserModel", "bundle_user_model", "load_user_model"]

logger = logging.getLogger(__name__)

_REPRESENTATIVE = 200
BACKBONE_PREFIX = "backbone_"
HEAD_PREFIX = "head_"
EMBEDDING_LAYER = "backbone_embedding"


@dataclass(frozen=True, eq=False)
class UserModel:
    """The prepared model (fedge layer names, logits, init weights applied) and its origin."""

    model: tf.keras.Model
    source: Path
    digest: str
    """sha256 over the model file(s) and the initial weights."""
    input_shape: tuple[int, ...]
    num_classes: int
    feature_spec: FeatureSpec | None = None
    """The export's ``feature_spec.json`` (a ``fedge-train`` export): how it was trained to
    read raw columns, used instead of a spec built from the simulation's rows."""
    label_names: tuple[str, ...] | None = None
    """The export's ``schema.json`` label names (a ``fedge-train --data`` export); the
    bundle carries that file too."""
    weight_names: Mapping[str, str] = field(default_factory=dict)
    """Each trainable weight of ``model`` (``head_dense/kernel``) -> its name in the user's
    model (``dense/kernel``); the bundle's manifest records it as ``weight_names``."""

    @property
    def head(self) -> Weights:
        from quantize.trainable import trainable_weights

        return Weights(trainable_weights(self.model))

    @property
    def facts(self) -> ModelFacts:
        """What a later run needs of this model without loading it again."""
        return ModelFacts(
            source=self.source,
            digest=self.digest,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            feature_spec=self.feature_spec,
            label_names=self.label_names,
        )


def load_user_model(path: str | os.PathLike[str], *, init: Weights | None = None) -> UserModel:
    """Load a model file (.keras, .h5 or a SavedModel directory), check it and prepare it."""
    import tensorflow as tf

    source = Path(path)
    what = f"model file {os.fspath(path)}"
    if not source.exists():
        raise ConfigError(f"{what}: no such file or directory")
    saved = source / EXPORT_SAVED_MODEL if (source / EXPORT_SAVED_MODEL).is_dir() else source
    try:
        model = tf.keras.models.load_model(saved, compile=False)
    except Exception as exc:  # anything from OSError to a protobuf DecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}: cannot load a Keras model: {first}") from exc
    if not isinstance(model, tf.keras.Model):
        raise ConfigError(f"{what}: holds a {type(model).__name__}, not a Keras model")
    input_shape, num_classes = _check_io(model, what)
    _freeze_fedge_backbone(model)
    split = _check_layers(model, what)
    if init is not None:
        _apply_init(model, init, os.fspath(path))
    prepared = _prepare(model, split, what)
    from quantize.trainable import trainable_weight_names

    return UserModel(
        model=prepared,
        source=source,
        digest=model_digest(source, init),
        input_shape=input_shape,
        num_classes=num_classes,
        feature_spec=export_feature_spec(source, what),
        label_names=export_label_names(source, what),
        weight_names=dict(
            zip(
                trainable_weight_names(prepared),
                (keras_weight_name(v) for v in model.trainable_variables),
                strict=True,
            )
        ),
    )


def _freeze_fedge_backbone(model: tf.keras.Model) -> None:
    """A model with fedge's layer names (a ``fedge-train`` export: ``backbone_*`` and
    ``head_*``) trains its head on the devices, as ``fedge-quantize bundle`` bundles it:
    its backbone is frozen here. Other models keep the trainability their author set."""
    names = [layer.name for layer in _layers(model)]
    if any(n.startswith(BACKBONE_PREFIX) for n in names) and any(
        n.startswith(HEAD_PREFIX) for n in names
    ):
        for layer in _layers(model):
            if layer.name.startswith(BACKBONE_PREFIX):
                layer.trainable = False
            elif layer.name.startswith(HEAD_PREFIX):
                layer.trainable = True


def _check_io(model: tf.keras.Model, what: str) -> tuple[tuple[int, ...], int]:
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"{what}: needs one input and one output, has {len(inputs)} and {len(outputs)} "
            "(build it with tf.keras.Input)"
        )
    shape = tuple(inputs[0].shape[1:])
    if not shape or any(d is None for d in shape):
        raise ConfigError(f"{what}: the input shape {shape} must be fully known")
    out = tuple(outputs[0].shape[1:])
    if len(out) != 1 or out[0] is None or out[0] < 2:
        raise ConfigError(f"{what}: must output [batch, classes] with >= 2 classes, got {out}")
    return tuple(int(d) for d in shape), int(out[0])


def _layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    import tensorflow as tf

    return [la for la in model.layers if not isinstance(la, tf.keras.layers.InputLayer)]


def _check_layers(model: tf.keras.Model, what: str) -> int:
    """Index (in :func:`_layers`) of the first trainable layer, after every check."""
    import tensorflow as tf

    layers = _layers(model)
    nested = [la.name for la in layers if isinstance(la, tf.keras.Model)]
    if nested:
        raise ConfigError(f"{what}: nested models are not supported ({nested}); flatten the model")
    trainable = [i for i, la in enumerate(layers) if la.trainable_weights]
    if not trainable:
        raise ConfigError(
            f"{what}: no layer is trainable: leave trainable the layers the devices should "
            "train (e.g. the last Dense layers) and freeze the rest"
        )
    start = trainable[0]
    for layer in layers[start:]:
        if layer.trainable_weights and not isinstance(layer, tf.keras.layers.Dense):
            raise ConfigError(
                f"{what}: layer {layer.name!r} ({type(layer).__name__}) is trainable, but only "
                "Dense layers can train on the device (their gradients are TFLite builtins); "
                "freeze it: layer.trainable = False (it then becomes part of the backbone)"
            )
        if layer.non_trainable_weights:
            raise ConfigError(
                f"{what}: layer {layer.name!r} is frozen but sits above the trainable layer "
                f"{layers[start].name!r}: the part devices train must be the top of the model"
            )
    if start == 0:  # fully trainable: the backbone is the identity
        return start
    try:
        connected = layers[start].input is layers[start - 1].output
    except AttributeError:
        connected = False
    if not connected:
        raise ConfigError(
            f"{what}: the trainable part must start from the last frozen layer "
            f"({layers[start - 1].name!r}), but {layers[start].name!r} takes another input"
        )
    return start


def _apply_init(model: tf.keras.Model, init: Weights, source: str) -> None:
    """Assign ``init`` to ``model``: its trainable weights, or every one of its weights,
    keyed by the Keras weight names (``dense_1/kernel``)."""
    from quantize.trainable import trainable_weight_names

    trainable = dict(zip(trainable_weight_names(model), model.trainable_variables, strict=True))
    every = {keras_weight_name(v): v for v in model.weights}
    names = set(init.names)
    if names == set(every) and names != set(trainable):
        targets = every
    elif names - set(trainable) and not names - set(every):
        targets = every  # some frozen weights given: all of them are expected
    else:
        targets = trainable
    shapes = {name: tuple(int(d) for d in v.shape) for name, v in targets.items()}
    problem = init_mismatch(init, shapes)
    if problem is not None:
        part = "weights" if targets is every else "trainable part"
        raise SettingsError(
            f"the init weights do not fit the {part} of model file {source}: {problem}",
            fields=["init_file"],
        )
    for name, variable in targets.items():
        variable.assign(init[name])


def keras_weight_name(variable: tf.Variable) -> str:
    """A Keras weight's name without the ``:0`` suffix (``dense_1/kernel``): the keys of a
    plain init file and of the weights a run saves."""
    return str(variable.name).rsplit(":", 1)[0]


def _is_softmax(layer: tf.keras.layers.Layer) -> bool:
    import tensorflow as tf

    activation = getattr(layer, "activation", None)
    return isinstance(layer, tf.keras.layers.Dense | tf.keras.layers.Activation) and (
        getattr(activation, "__name__", None) == "softmax"
    )


def _prepare(model: tf.keras.Model, start: int, what: str) -> tf.keras.Model:
    import tensorflow as tf

    layers = _layers(model)
    names: dict[str, str] = {}
    for i, layer in enumerate(layers):
        if i == start - 1:
            names[layer.name] = "backbone_embedding"
        elif i < start:
            prefixed = layer.name.startswith(BACKBONE_PREFIX)
            names[layer.name] = layer.name if prefixed else f"{BACKBONE_PREFIX}{layer.name}"
        else:
            prefixed = layer.name.startswith(HEAD_PREFIX)
            names[layer.name] = layer.name if prefixed else f"{HEAD_PREFIX}{layer.name}"
    taken = [n for n in names.values()]
    for old, new in list(names.items()):
        if taken.count(new) > 1 and new != "backbone_embedding":
            names[old] = f"{new}_{uuid.uuid4().hex[:4]}"
    output = layers[-1]

    def clone_layer(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        config = layer.get_config()
        config["name"] = names.get(layer.name, layer.name)
        if layer is output and _is_softmax(layer):
            config["activation"] = "linear"  # devices and TFF train on logits
        return type(layer).from_config(config)

    try:
        clone = tf.keras.models.clone_model(model, clone_function=clone_layer)
        if start == 0:
            clone = _with_identity_backbone(clone)
        for layer in layers:
            copy = clone.get_layer(names[layer.name])
            copy.set_weights(layer.get_weights())
            copy.trainable = layer.trainable
    except Exception as exc:
        raise ConfigError(f"{what}: cannot copy the model to prepare it: {exc}") from exc
    return clone


def _with_identity_backbone(model: tf.keras.Model) -> tf.keras.Model:
    """``model`` (untrained copy) with an identity ``backbone_embedding`` layer between its
    input and its first layer: the backbone of a fully trainable model, whose embedding is
    the input itself."""
    import tensorflow as tf

    identity = {
        "class_name": "Activation",
        "config": {"name": EMBEDDING_LAYER, "trainable": False, "activation": "linear"},
    }
    config = model.get_config()
    if isinstance(model, tf.keras.Sequential):
        layers = list(config["layers"])
        at = 1 if layers and layers[0]["class_name"] == "InputLayer" else 0
        config["layers"] = [*layers[:at], identity, *layers[at:]]
        return tf.keras.Sequential.from_config(config)
    (source, _, _), *_ = config["input_layers"]

    def rewire(node: object) -> object:
        if isinstance(node, list):
            if node and node[0] == source and all(isinstance(i, int) for i in node[1:3]):
                return [EMBEDDING_LAYER, *node[1:]]
            return [rewire(item) for item in node]
        return node

    for layer in config["layers"]:
        layer["inbound_nodes"] = rewire(layer["inbound_nodes"])
    inbound = [[[source, 0, 0, {}]]]
    config["layers"].insert(1, {**identity, "name": EMBEDDING_LAYER, "inbound_nodes": inbound})
    return tf.keras.Model.from_config(config)


def bundle_user_model(
    user: UserModel,
    *,
    task: str,
    spec: FeatureSpec,
    schema: Schema,
    test: Dataset,
    batch_size: int,
    seed: int,
    cache_dir: Path,
    step: Callable[[str], None],
) -> tuple[Path, Path]:
    """The edge bundle of ``user``'s model and its saved Keras copy: (bundle, SavedModel).

    The int8 models are calibrated on test rows (cloud-side data; no client row leaves
    its client). Cached under ``cache_dir/<task>-model-<key>``
    (:func:`~simulations.inputs.model_cache.conversion_entry`).
    """
    entry = conversion_entry(
        user.digest,
        cache_dir=cache_dir,
        task=task,
        spec=spec,
        schema=schema,
        test=test,
        batch_size=batch_size,
        seed=seed,
    )
    found = find_conversion(entry)
    if found is not None:
        logger.info("reusing the bundle of your model in %s", entry)
        return found
    step("building the edge bundle of your model")
    from quantize.bundle import write_bundle
    from quantize.inputs import HeldOut, TaskArrays

    x_test = spec.transform(test.columns)
    y_test = np.asarray(test.labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(x_test))[:_REPRESENTATIVE])
    sample = x_test[chosen]
    arrays = TaskArrays(
        held_out=HeldOut(
            task=task,
            seed=seed,
            test_fraction=0.0,
            data_fraction=1.0,
            num_train_examples=len(sample),
            num_test_examples=len(test),
            data_fingerprint=test.fingerprint(),
            fingerprint_matches_record=None,
        ),
        spec=spec,
        schema=schema,
        num_classes=schema.num_classes,
        x_train=sample,
        y_train=y_test[chosen],
        x_test=x_test,
        y_test=y_test,
        label_names=user.label_names,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{entry.name}.{uuid.uuid4().hex[:8]}.partial"
    (staging / BUNDLE).mkdir(parents=True)
    try:
        user.model.save(staging / SAVED_MODEL)
        try:
            write_bundle(
                user.model,
                arrays,
                staging / BUNDLE,
                representative=sample,
                batch_size=batch_size,
                version=conversion_version(entry),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                training_record=None,
                extra_metadata={
                    "source_model": str(user.source.resolve()),
                    WEIGHT_NAMES: dict(user.weight_names),
                },
            )
        except FedgeError as exc:
            raise ConfigError(f"model file {user.source}: {exc}") from exc
        try:
            publish_directory(staging, entry)
        except OSError:
            if not (entry / BUNDLE / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry / BUNDLE, entry / SAVED_MODEL
