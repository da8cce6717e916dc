"""The TFF reference engine: a :class:`~simulations.workload.Workload` run by TFF's FedAvg.

``fedge-simulate --engine tff`` runs this next to the native engine (the real coordinator
and edge client) to check it: both do plain mini-batch SGD on the head with the backbone
frozen, weight client models by example count and apply the mean update with server
learning rate 1, so from the same initial weights and batch order they must agree.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.

Importing this module installs :func:`fedge.processes.install_child_reaper`: TFF's C++
runtime runs in a ``worker_binary`` child that would otherwise outlive this process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tensorflow as tf
import tensorflow_federated as tff

from cloud_trainer.export import load_exported_model
from cloud_trainer.models import freeze_backbone
from cloud_trainer.record import SAVED_MODEL_DIR
from fedge.errors import ConfigError
from fedge.processes import install_child_reaper
from fedge.weights import Weights
from quantize.trainable import trainable_weight_names, trainable_weights
from simulations.workload import RoundMetrics, Workload

__all__ = ["TffResult", "build_client_dataset", "keras_model_factory", "run_tff"]

logger = logging.getLogger(__name__)

install_child_reaper()

ModelFn = Callable[[], tf.keras.Model]
_EVAL_CHUNK = 1024


@dataclass(frozen=True, eq=False)
class TffResult:
    """The global head after the last round, and what each round measured."""

    final_head: Weights
    """Head tensors named and ordered as ``trainable_weight_names(model)``."""
    rounds: tuple[RoundMetrics, ...]


def build_client_dataset(workload: Workload, round_index: int, client_id: str) -> tf.data.Dataset:
    """One client's local-training stream for one round: ``epochs`` passes of batches.

    Epoch ``e`` visits the examples in row ``e`` of :meth:`Workload.batch_order` and is cut
    into batches on its own, so a short last batch closes every epoch (as ``.repeat`` after
    ``.batch`` would), never straddles two.
    """
    client = workload.client(client_id)
    order = workload.batch_order(round_index, client_id)
    x = tf.constant(client.x)
    y = tf.constant(client.y)
    batch_size = workload.hyperparams.batch_size

    def epoch(indices: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(x, indices), tf.gather(y, indices))
        ).batch(batch_size)

    return tf.data.Dataset.from_tensor_slices(order).flat_map(epoch)


def run_tff(
    workload: Workload,
    *,
    model_fn: ModelFn,
    on_round: Callable[[RoundMetrics], None] | None = None,
) -> TffResult:
    """Run ``workload`` with ``tff.learning.algorithms.build_weighted_fed_avg``.

    ``model_fn`` returns a new Keras model (logits) of the workload's task each call, with
    the backbone weights to use; its backbone is frozen here. The head starts from
    ``workload.initial_head``. Clients run plain SGD at the workload's learning rate on the
    mean sparse softmax cross-entropy of each batch; the server applies the example-weighted
    mean of the client updates with SGD at learning rate 1. ``on_round`` sees each round's
    metrics as soon as they are known.
    """
    reference = freeze_backbone(_keras_model(model_fn()))
    names = trainable_weight_names(reference)
    _check_model(reference, workload)
    workload.initial_head.validate_against(Weights(trainable_weights(reference)))
    backbone = [np.asarray(v.numpy()) for v in reference.non_trainable_variables]
    head = [workload.initial_head[name] for name in names]
    input_spec = (
        tf.TensorSpec([None, *workload.feature_shape], tf.float32),
        tf.TensorSpec([None], tf.int64),
    )

    def tff_model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            _uncompiled(freeze_backbone(_keras_model(model_fn()))),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=input_spec,
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        tff_model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(
            learning_rate=workload.hyperparams.learning_rate
        ),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
        client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
    )
    state = process.initialize()
    state = process.set_model_weights(
        state, tff.learning.models.ModelWeights(trainable=head, non_trainable=backbone)
    )
    # Keras swaps the base classes of its model classes when a model is built inside a
    # tf.compat.v1 graph, as TFF just did, and models built before then fail when called; a
    # model built eagerly now swaps them back. It evaluates with the backbone TFF was given.
    evaluator = freeze_backbone(_keras_model(model_fn()))
    for variable, value in zip(evaluator.non_trainable_variables, backbone, strict=True):
        variable.assign(value)

    rounds: list[RoundMetrics] = []
    for round_index, participants in enumerate(workload.schedule):
        datasets = [build_client_dataset(workload, round_index, c) for c in participants]
        started = time.perf_counter()
        output = process.next(state, datasets)
        seconds = time.perf_counter() - started
        state = output.state
        head = list(process.get_model_weights(state).trainable)
        metrics = RoundMetrics(
            round=round_index,
            participants=participants,
            train_loss=float(output.metrics["client_work"]["train"]["loss"]),
            seconds=seconds,
            test_accuracy=_accuracy(evaluator, head, workload.test_x, workload.test_y),
        )
        logger.info(
            "tff round %d: %d clients, train loss %.4f, test accuracy %.4f, %.2fs",
            round_index,
            len(participants),
            metrics.train_loss,
            metrics.test_accuracy,
            seconds,
        )
        rounds.append(metrics)
        if on_round is not None:
            on_round(metrics)
    return TffResult(
        final_head=Weights.from_pairs(zip(names, head, strict=True)), rounds=tuple(rounds)
    )


def _keras_model(model: object) -> tf.keras.Model:
    if not isinstance(model, tf.keras.Model):
        raise ConfigError(f"model_fn must return a tf.keras.Model, got {type(model).__name__}")
    return model


def _uncompiled(model: tf.keras.Model) -> tf.keras.Model:
    """``model``, or an uncompiled clone of it with fresh weights: TFF refuses compiled models.

    ``load_exported_model`` returns compiled models. The clone's weights do not matter:
    ``set_model_weights`` overwrites every one with the head of the workload and the
    backbone of the eager ``model_fn()`` call in :func:`run_tff`.
    """
    if not getattr(model, "_is_compiled", False):
        return model
    clone = tf.keras.models.clone_model(model)
    for original, copy in zip(model.layers, clone.layers, strict=True):
        copy.trainable = original.trainable
    return clone


def _check_model(model: tf.keras.Model, workload: Workload) -> None:
    expected = tuple(workload.feature_shape)
    got = tuple(model.input_shape[1:])
    if got != expected:
        raise ConfigError(f"model_fn's model takes inputs {got}, the workload has {expected}")
    num_classes = int(model.output_shape[-1])
    labels = [c.y for c in workload.clients] + [workload.test_y]
    top = max(int(y.max(initial=0)) for y in labels)
    if top >= num_classes:
        raise ConfigError(
            f"the workload has label {top}, model_fn's model outputs {num_classes} classes"
        )


def _accuracy(
    model: tf.keras.Model,
    head: list[npt.NDArray[np.float32]],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> float:
    """Accuracy of ``model`` with its trainable variables set to ``head``."""
    for variable, value in zip(model.trainable_variables, head, strict=True):
        variable.assign(value)
    correct = 0
    for start in range(0, len(x), _EVAL_CHUNK):
        logits = model(x[start : start + _EVAL_CHUNK], training=False)
        correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == y[start : start + _EVAL_CHUNK]))
    return correct / len(x)


def keras_model_factory(path: Path) -> ModelFn:
    """A ``model_fn``: the Keras model at ``path`` (an export directory or a SavedModel),
    loaded afresh on each call."""
    is_export = (path / SAVED_MODEL_DIR).is_dir()

    def model_fn() -> tf.keras.Model:
        if is_export:
            return load_exported_model(path)
        return tf.keras.models.load_model(path)

    return model_fn
