"""The class counts an evaluation reply carries: exact with the policy off, noised under it
(charged to the ledger while the budget pays, left out after), and a real daemon's report
summed by a real coordinator into the model's prediction distribution."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as coordinator_main
from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import ModelCache
from edge_client.policy import UNPROTECTED, DevicePolicy, MemoryLedgerStore
from edge_client.privacy import class_counts, private_class_counts
from fedge.data import load_taxi
from fedge.dp import gaussian_sigma
from fedge.messages import EvalReport, Task, TaskConfig
from tests.support.coordinator import write_admin_token
from tests.support.edge import (
    admin,
    coordinator,
    register,
    start_daemon,
    stop_daemon,
    store_counts,
    taxi_rows,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

TAXI = load_taxi()


@pytest.fixture(scope="module")
def models(edge_taxi_bundle: Path) -> ModelCache:
    return ModelCache({"taxi-v1": edge_taxi_bundle})


def _evaluate(context: ClientContext, task_id: str = "e-1") -> EvalReport:
    task = Task(task_id, "evaluate", None, "taxi-v1", TaskConfig(), time.time() + 600)
    reply = handle(task, context)
    assert isinstance(reply, EvalReport)
    return reply


def _context(models: ModelCache, policy: DevicePolicy, holdout: int = 300) -> ClientContext:
    data = MemoryData(TAXI.take(np.arange(100)), TAXI.take(np.arange(100, 100 + holdout)))
    return ClientContext(
        data=data, models=models, policy=policy, ledger=MemoryLedgerStore(),
        noise_rng=np.random.default_rng(3), clock=lambda: 1000.0,
    )  # fmt: skip


def test_the_policy_off_sends_the_exact_counts(models: ModelCache) -> None:
    context = _context(models, UNPROTECTED)
    reply = _evaluate(context)
    model = models.model("taxi-v1")
    holdout = context.data.holdout()
    predicted = np.argmax(model.logits(model.transform(holdout.columns)), axis=1)
    assert reply.prediction_counts == tuple(np.bincount(predicted, minlength=2).tolist())
    assert reply.label_counts == tuple(np.bincount(holdout.labels, minlength=2).tolist())
    assert sum(reply.label_counts) == reply.num_examples == 300
    assert reply.privacy is None
    # The counts agree with the accuracy the same reply reports.
    hits = np.mean(predicted == holdout.labels)
    assert reply.metrics["accuracy"] == pytest.approx(hits)


def test_under_the_policy_the_counts_are_noised_and_charged(models: ModelCache) -> None:
    policy = DevicePolicy(min_interval_seconds={"evaluate": 0})
    context = _context(models, policy)
    reply = _evaluate(context)
    assert reply.privacy is not None
    assert reply.privacy.to_dict() == {
        "mechanism": "gaussian", "epsilon": 0.5, "delta": 1e-6, "mode": "statistics",
    }  # fmt: skip
    exact = class_counts(context.data.holdout().labels, 2)
    assert reply.label_counts is not None
    assert reply.prediction_counts is not None
    assert reply.label_counts != exact  # noise of stddev ~10 rows
    assert all(c == 0 or c >= policy.min_class_rows for c in reply.label_counts)
    sigma = gaussian_sigma(0.5, 1e-6, np.sqrt(2))
    assert np.max(np.abs(np.subtract(reply.label_counts, exact))) < 6 * sigma + 1
    ledger = context.ledger.load()
    assert ledger.epsilon_spent == pytest.approx(0.5)
    assert ledger.last_answered == {"evaluate": 1000.0}


def test_a_spent_budget_sends_the_metrics_without_counts(models: ModelCache) -> None:
    policy = DevicePolicy(epsilon_budget=0.7, min_interval_seconds={"evaluate": 0})
    context = _context(models, policy)
    assert _evaluate(context).label_counts is not None
    second = _evaluate(context, "e-2")  # 0.5 + 0.5 > 0.7
    assert (second.prediction_counts, second.label_counts, second.privacy) == (None, None, None)
    assert 0.0 <= second.metrics["accuracy"] <= 1.0
    assert context.ledger.load().epsilon_spent == pytest.approx(0.5)


def test_the_count_noise_has_the_stated_scale() -> None:
    rng = np.random.default_rng(11)
    predictions = np.repeat([0, 1, 2], [1000, 500, 500])
    labels = np.repeat([0, 1, 2], [800, 800, 400])
    draws = np.array(
        [
            private_class_counts(
                predictions, labels, num_classes=3, epsilon=1.0, delta=1e-6, k=1, rng=rng
            )
            for _ in range(2000)
        ]
    )
    sigma = gaussian_sigma(1.0, 1e-6, np.sqrt(2))
    assert np.std(draws[:, 0, 0]) == pytest.approx(sigma, rel=0.1)
    assert np.mean(draws[:, 1, 2]) == pytest.approx(400, abs=1.0)
    small = private_class_counts(
        np.zeros(30, dtype=np.int64), np.zeros(30, dtype=np.int64),
        num_classes=2, epsilon=1.0, delta=1e-6, k=20, rng=rng,
    )  # fmt: skip
    assert small[0][0] >= 20  # 30 rows, noised, stay over k
    assert small[0][1] == 0  # an empty class stays under k
    assert small[1][1] == 0


def test_a_real_daemons_evaluation_reaches_the_models_prediction_distribution(
    edge_taxi_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, state, token = tmp_path / "data", tmp_path / "state", tmp_path / "token"
    data.mkdir()
    write_csv(data / "a.csv", taxi_rows(0, 400))
    with coordinator(tmp_path, edge_taxi_bundle, "taxi", "--min-cohort", "1") as server:
        client_id = register(server.url, token, state)
        daemon = start_daemon(server.url, token, data, state)
        try:
            admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate", "client_ids": [client_id]})
            wait_for(lambda: store_counts(tmp_path)["evaluation"], timeout=60)
            (listed,) = admin(server.url, "GET", "/v1/reports?kind=evaluate")["reports"]
            report = listed["document"]
            assert report["privacy"]["epsilon"] == 0.5  # the daemon's default policy
            assert len(report["prediction_counts"]) == len(report["label_counts"]) == 2
            version = listed["model_version"]
            section = admin(server.url, "GET", f"/v1/models/{version}")["predictions"]
            assert section["distribution"]["reports"] == 1
            assert section["distribution"]["label_counts"] == report["label_counts"]
            assert section["compared_with"] is None
            status = json.loads((state / "status.json").read_text())
            assert status["policy"]["epsilon_spent"] == pytest.approx(0.5)
            args = ["models", "predictions", "--coordinator", server.url, "--json"]
            args += ["--admin-token-file", str(write_admin_token(tmp_path))]
            assert coordinator_main(args) == 0
            (shown,) = json.loads(capsys.readouterr().out)
            assert shown == {"version": version, "predictions": section}
        finally:
            assert stop_daemon(daemon) == 0
