"""The figures a federated run is judged against, computed on the same on-device model.

- the *pretrained* head (what every client starts from) on the test split;
- the *centralized* head: the same trainable part trained by plain SGD on the union of the
  clients' training rows, as if they had been uploaded, for the epochs that match what the
  federation did (:func:`matching_epochs`).

Both run through the bundle's ``trainable.tflite`` with the edge client's runtime (the same
``train_step`` the devices run, backbone frozen), so no TensorFlow is needed and the three
figures differ only in how the head was trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_trainer.evaluation import logit_metrics
from edge_client import EdgeModel
from fedge.weights import Weights
from simulations.report import Evaluation
from simulations.scenario import Scenario

__all__ = ["evaluate_head", "matching_epochs", "train_centrally"]


def evaluate_head(
    model: EdgeModel,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.integer[Any]],
    *,
    head: Weights | None = None,
) -> Evaluation:
    """``head`` (default: the model version's global head) on ``x``/``y`` in float32."""
    metrics = logit_metrics(model.logits(x, head=head), y)
    auc = metrics.get("auc")
    return Evaluation(
        accuracy=metrics["accuracy"],
        loss=metrics["loss"],
        auc=None if auc is None or not np.isfinite(auc) else float(auc),
    )


def matching_epochs(scenario: Scenario) -> int:
    """Epochs over the clients' union that visit as many examples as the federation did:
    every participant's training rows, ``epochs`` times, every round (at least one)."""
    sizes = {c: split.train.size for c, split in scenario.partition.items()}
    visited = scenario.hyperparams.epochs * sum(sizes[c] for r in scenario.schedule for c in r)
    union = sum(sizes.values())
    return max(1, round(visited / union))


def train_centrally(
    model: EdgeModel,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.integer[Any]],
    *,
    start: Weights,
    epochs: int,
    learning_rate: float,
    seed: int,
) -> Weights:
    """Plain SGD on the head from ``start`` over ``x``/``y``, reshuffled every epoch."""
    trained, _ = model.train(
        x,
        np.asarray(y),
        start=start,
        epochs=epochs,
        learning_rate=learning_rate,
        rng=np.random.default_rng(seed),
    )
    return trained
