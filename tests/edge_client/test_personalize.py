"""Acceptance 5: on label-skewed (non-IID) digits clients, personal heads beat the global
model on each client's own holdout, on average; and heads persist across restarts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import EdgeModel, ModelCache
from edge_client.personalize import FileHeadStore, PersonalizationConfig, fine_tune
from fedge.data import dirichlet, load_digits
from fedge.messages import EvalReport, Task, TaskConfig

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

SEED = 0
NUM_CLIENTS = 6
ALPHA = 0.1


def test_personalized_accuracy_beats_global_on_non_iid_digits(edge_digits_bundle: Path) -> None:
    digits = load_digits()
    partition = dirichlet(
        np.arange(len(digits)), digits.labels, num_clients=NUM_CLIENTS, alpha=ALPHA, seed=SEED
    )
    models = ModelCache({"digits-v1": edge_digits_bundle})  # one runtime for every client
    task = Task("evaluate-1", "evaluate", None, "digits-v1", TaskConfig(), time.time() + 600)
    global_accuracy, personal_accuracy = [], []
    for client_id, split in partition.items():
        data = MemoryData(digits.take(split.train), digits.take(split.holdout))
        context = ClientContext(
            data=data, models=models, rng=np.random.default_rng(SEED), client_id=client_id
        )
        reply = handle(task, context)
        assert isinstance(reply, EvalReport)
        assert reply.num_examples == len(split.holdout) > 0
        global_accuracy.append(reply.metrics["accuracy"])
        personal_accuracy.append(reply.personalized_metrics["accuracy"])
    # Label skew is real: most clients hold few of the ten classes.
    classes = [np.unique(digits.labels[s.train]).size for s in partition.values()]
    assert np.median(classes) <= 7
    assert np.mean(personal_accuracy) > np.mean(global_accuracy)
    assert sum(p >= g for p, g in zip(personal_accuracy, global_accuracy, strict=True)) >= 4


def test_personal_head_survives_a_restart_and_serves_predictions(
    edge_digits_bundle: Path, tmp_path: Path
) -> None:
    digits = load_digits()
    model = EdgeModel.load(edge_digits_bundle)
    device_rows = np.flatnonzero(np.isin(digits.labels, [3, 8]))  # a device that sees 3s and 8s
    train, held_out = digits.take(device_rows[:150]), digits.take(device_rows[150:])
    head = fine_tune(
        model, train, config=PersonalizationConfig(epochs=5), rng=np.random.default_rng(0)
    )
    assert head is not None
    assert head.base_version == "digits-v1"
    FileHeadStore(tmp_path).put(head)
    restored = FileHeadStore(tmp_path).get()  # a new process reads it back
    assert restored is not None
    assert restored.weights == head.weights
    assert restored.base_version == head.base_version
    assert dict(restored.metrics) == pytest.approx(dict(head.metrics))
    # Judged on the device's rows that fine-tuning never saw.
    x = model.transform(held_out.columns)
    personal = model.predict_scores(x, head=restored.weights).argmax(axis=1)
    global_ = model.predict_scores(x).argmax(axis=1)
    assert (personal == held_out.labels).mean() > (global_ == held_out.labels).mean()


def test_personalization_can_be_turned_off(edge_digits_bundle: Path) -> None:
    digits = load_digits()
    model = EdgeModel.load(edge_digits_bundle)
    off = PersonalizationConfig(enabled=False)
    assert (
        fine_tune(model, digits.take(np.arange(50)), config=off, rng=np.random.default_rng(0))
        is None
    )
