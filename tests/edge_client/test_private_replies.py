"""Private replies: each mechanism's noise has the stated scale, the handler answers only
within the device's policy (and charges its ledger), "off" restores the old replies, and a
real daemon refuses a task against the real coordinator."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_client.cli import main
from edge_client.errors import PolicyRefusal
from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import ModelCache
from edge_client.policy import UNPROTECTED, DevicePolicy, MemoryLedgerStore
from edge_client.privacy import noisy_stats as make_noisy_stats
from edge_client.privacy import (
    private_prototypes,
    private_rows,
    private_stats,
    prototype_noise,
    stats_noise_unit,
)
from fedge.data import Dataset, load_taxi
from fedge.dp import gaussian_sigma
from fedge.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedge.messages import FeatureBatch, ModelUpdate, StatsReport, Task, TaskConfig
from fedge.schema import Schema
from fedge.stats import OTHER_CATEGORY
from tests.support.edge import (
    admin,
    coordinator,
    register,
    round_state,
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

EPS, DELTA = 1.0, 1e-6
TAXI = load_taxi()


def _close(measured: float, stated: float, tolerance: float = 0.1) -> bool:
    return abs(measured - stated) <= tolerance * stated


# The mechanisms, statistically ----------------------------------------------------------------


def test_prototype_sums_and_counts_get_the_stated_noise() -> None:
    rng = np.random.default_rng(1)
    clip = 2.0
    sum_std, count_std = prototype_noise(EPS, DELTA, clip)
    assert sum_std == pytest.approx(gaussian_sigma(EPS, DELTA, math.sqrt(2)) * clip)
    assert count_std == pytest.approx(sum_std / clip)
    # 1000 zero embeddings of one class: the prototype times its count is the sum's noise.
    release = private_prototypes(
        np.zeros((1000, 4000)), np.zeros(1000, dtype=np.int64), num_classes=2, epsilon=EPS,
        delta=DELTA, clip=clip, min_class_rows=20, rng=rng,
    )  # fmt: skip
    assert release.labels.tolist() == [0]
    noise = release.embeddings[0].astype(np.float64) * release.counts[0]
    assert _close(float(np.std(noise)), sum_std, 0.05)
    counts = [
        private_prototypes(
            np.ones((500, 1)), np.zeros(500, dtype=np.int64), num_classes=2, epsilon=EPS,
            delta=DELTA, clip=clip, min_class_rows=20, rng=rng,
        ).counts[0]
        for _ in range(1500)
    ]  # fmt: skip
    assert abs(float(np.mean(counts)) - 500) < 1.0
    assert _close(float(np.std(counts)), count_std)


def test_prototypes_are_clipped_means_of_classes_whose_noisy_count_reaches_k() -> None:
    rng = np.random.default_rng(2)
    rows = np.concatenate([np.full((5000, 3), 10.0), np.full((2, 3), -10.0)])
    labels = np.concatenate([np.zeros(5000, dtype=np.int64), np.ones(2, dtype=np.int64)])
    release = private_prototypes(
        rows, labels, num_classes=3, epsilon=EPS, delta=DELTA, clip=1.0, min_class_rows=60,
        rng=rng,
    )  # fmt: skip
    assert release.labels.tolist() == [0]  # class 1 (2 rows) and class 2 (none) never sent
    # each row clipped to L2 norm 1: the prototype is near (1, 1, 1) / sqrt(3)
    assert np.allclose(release.embeddings[0], 1 / math.sqrt(3), atol=0.02)
    with pytest.raises(PolicyRefusal, match="min_class_rows") as caught:
        private_prototypes(
            rows[-2:], labels[-2:], num_classes=3, epsilon=EPS, delta=DELTA, clip=1.0,
            min_class_rows=60, rng=rng,
        )  # fmt: skip
    assert caught.value.epsilon == EPS  # the noise was drawn: the budget pays


def test_row_features_get_gaussian_noise_and_randomized_response_labels() -> None:
    rng = np.random.default_rng(3)
    clip, classes = 1.5, 4
    truth = rng.integers(0, classes, size=20000)
    embeddings = np.zeros((20000, 8))
    noisy, labels = private_rows(
        embeddings, truth, num_classes=classes, epsilon=EPS, delta=DELTA, clip=clip, rng=rng
    )
    assert _close(float(np.std(noisy)), gaussian_sigma(EPS / 2, DELTA, 2 * clip), 0.03)
    keep = math.exp(EPS / 2) / (math.exp(EPS / 2) + classes - 1)
    assert abs(float(np.mean(labels == truth)) - keep) < 0.02
    assert set(labels.tolist()) == set(range(classes))


def _table(n: int, rng: np.random.Generator) -> tuple[Dataset, FeatureSpec]:
    schema = Schema(numeric=("x",), categorical=("c",), label="y", num_classes=3)
    values = rng.uniform(-3.0, 3.0, size=n)
    categories = np.array(["a"] * (n - 1) + ["lonely"], dtype=object)
    labels = rng.integers(0, 3, size=n)
    spec = FeatureSpec(
        numeric=(NumericFeature("x", "zscore", offset=0.0, scale=1.0, fill=0.0, clip=(-2, 2)),),
        categorical=(CategoricalFeature("c", ("a", "b")),),
    )
    return Dataset("t", schema, {"x": values, "c": categories}, labels), spec


def test_statistics_get_the_stated_noise_per_block() -> None:
    rng = np.random.default_rng(4)
    table, spec = _table(400, rng)
    unit = stats_noise_unit(EPS, DELTA, 5)  # labels, x (histogram, sum, squares), c
    sums, labels = [], []
    true_sum = float(np.clip(table.columns["x"], -2, 2).sum())
    true_labels = np.bincount(table.labels, minlength=3)
    for _ in range(1000):
        stats = make_noisy_stats(table, spec=spec, epsilon=EPS, delta=DELTA, k=20, rng=rng)
        column = stats.numeric("x")
        sums.append(column.mean * column.count - true_sum)
        assert stats.label_counts is not None
        labels.append(stats.label_counts[0] - true_labels[0])
    assert _close(float(np.std(sums)), 1 * 2.0 * unit, 0.1)  # width 1, half-width 2
    assert abs(float(np.mean(labels))) < 1.0
    assert _close(float(np.std(labels)), unit, 0.1)


def test_a_min_max_feature_is_clipped_to_its_training_range() -> None:
    rng = np.random.default_rng(6)
    table, _ = _table(400, rng)
    spec = FeatureSpec(
        numeric=(NumericFeature("x", "minmax", offset=-1.0, scale=3.0, fill=0.0),),
        categorical=(CategoricalFeature("c", ("a",)),),
    )
    unit = stats_noise_unit(EPS, DELTA, 5)
    true_sum = float((np.clip(table.columns["x"], -1.0, 2.0) - 0.5).sum())  # centred on 0.5
    sums = []
    for _ in range(600):
        column = make_noisy_stats(table, spec=spec, epsilon=EPS, delta=DELTA, k=20, rng=rng)
        x = column.numeric("x")
        sums.append((x.mean - 0.5) * x.count - true_sum)
    assert _close(float(np.std(sums)), 1.5 * unit, 0.1)  # half of the range [-1, 2]


def test_statistics_suppress_rare_bins_and_categories_and_hide_extremes() -> None:
    rng = np.random.default_rng(5)
    table, spec = _table(400, rng)
    stats = make_noisy_stats(table, spec=spec, epsilon=EPS, delta=DELTA, k=60, rng=rng)
    column = stats.numeric("x")
    assert column.min is None
    assert column.max is None
    assert all(c == 0 or c >= 60 for c in column.counts)
    categories = stats.categorical("c").value_counts
    assert "lonely" not in categories  # out of the vocabulary: counted as __other__
    assert set(categories) <= {"a", "b", OTHER_CATEGORY}
    assert "b" not in categories  # no row: its noisy count stays under k
    assert all(c >= 60 for c in categories.values())
    assert stats.num_rows == sum(stats.label_counts or ())


# The handler within the policy --------------------------------------------------------------


@pytest.fixture(scope="module")
def models(edge_taxi_bundle: Path) -> ModelCache:
    return ModelCache({"taxi-v1": edge_taxi_bundle})


def _task(kind: str, task_id: str = "t-1", **options: bool) -> Task:
    round_id = 1 if kind == "train" else None
    config = TaskConfig(epochs=1, batch_size=32, learning_rate=0.05, options=options)
    return Task(task_id, kind, round_id, "taxi-v1", config, time.time() + 600)  # type: ignore[arg-type]


def _context(
    models: ModelCache, policy: DevicePolicy, *, train: int = 200, holdout: int = 60
) -> ClientContext:
    data = MemoryData(TAXI.take(np.arange(train)), TAXI.take(np.arange(train, train + holdout)))
    return ClientContext(
        data=data, models=models, policy=policy, ledger=MemoryLedgerStore(),
        noise_rng=np.random.default_rng(7), clock=lambda: 1000.0,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["train", "evaluate", "stats", "features"])
def test_a_device_with_fewer_than_min_rows_answers_nothing(models: ModelCache, kind: str) -> None:
    context = _context(models, DevicePolicy(), train=12, holdout=5)
    with pytest.raises(PolicyRefusal, match="needs at least 20") as caught:
        handle(_task(kind), context)
    assert caught.value.reason == "min_rows"
    assert context.ledger.load().answers == ()


def test_features_default_to_noised_prototypes_charged_to_the_ledger(models: ModelCache) -> None:
    context = _context(models, DevicePolicy(min_class_rows=20), train=400)
    reply = handle(_task("features", row_features=True), context)  # rows not allowed
    assert isinstance(reply, FeatureBatch)
    assert reply.privacy is not None
    assert (reply.privacy.mode, reply.privacy.epsilon) == ("prototypes", 1.0)
    assert reply.counts is not None
    assert len(reply.counts) == len(reply.labels)
    assert len(set(reply.labels.tolist())) == len(reply.labels) <= 2  # one row per class
    assert reply.embeddings.shape[1] == 32
    ledger = context.ledger.load()
    assert ledger.epsilon_spent == 1.0
    assert ledger.last_answered == {"features": 1000.0}
    with pytest.raises(PolicyRefusal, match="every 3600 s"):
        handle(_task("features", "t-2"), context)


def test_row_features_only_when_the_policy_allows_them(models: ModelCache) -> None:
    context = _context(models, DevicePolicy(allow_row_features=True), train=100)
    reply = handle(_task("features", row_features=True), context)
    assert isinstance(reply, FeatureBatch)
    assert reply.privacy is not None
    assert reply.privacy.mode == "rows"
    assert reply.counts is None
    assert len(reply.labels) == 100
    assert float(np.max(np.linalg.norm(reply.embeddings, axis=1))) > 1.0  # noise on top


def test_statistics_are_noised_and_the_budget_runs_out(models: ModelCache) -> None:
    policy = DevicePolicy(epsilon_budget=1.5, min_interval_seconds={"stats": 0})
    context = _context(models, policy)
    reply = handle(_task("stats"), context)
    assert isinstance(reply, StatsReport)
    assert reply.privacy is not None
    assert reply.privacy.to_dict() == {
        "mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6, "mode": "statistics",
    }  # fmt: skip
    exact = private_stats(context.data.everything())
    assert reply.stats.label_counts != exact.label_counts or reply.stats.num_rows != 260
    with pytest.raises(PolicyRefusal, match="privacy budget exhausted") as caught:
        handle(_task("stats", "t-2"), context)
    assert caught.value.reason == "budget"
    assert context.ledger.load().epsilon_spent == 1.0


def test_kinds_the_owner_did_not_list_are_refused(models: ModelCache) -> None:
    context = _context(models, DevicePolicy(task_kinds=("train",)))
    with pytest.raises(PolicyRefusal, match="does not answer stats"):
        handle(_task("stats"), context)
    assert isinstance(handle(_task("train"), context), ModelUpdate)


def test_off_restores_exact_rows_and_statistics(models: ModelCache) -> None:
    assert ClientContext(data=MemoryData(TAXI), models=models).policy == UNPROTECTED
    context = _context(models, UNPROTECTED, train=8, holdout=4)  # under min_rows: answered
    features = handle(_task("features"), context)
    assert isinstance(features, FeatureBatch)
    train = context.data.train()
    model = models.model("taxi-v1")
    assert features.privacy is None
    assert features.labels.tolist() == train.labels.tolist()
    assert np.array_equal(features.embeddings, model.embed(model.transform(train.columns)))
    stats = handle(_task("stats"), context)
    assert isinstance(stats, StatsReport)
    assert stats.privacy is None
    assert stats.stats == private_stats(context.data.everything())
    assert context.ledger.load().answers == ()


# The daemon and the CLI -----------------------------------------------------------------------


def test_a_bad_policy_file_exits_2_naming_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"epsilon_budget": "lots"}))
    (tmp_path / "data").mkdir()
    code = main(["run", "--coordinator", "http://127.0.0.1:9", "--token-file",
                 str(tmp_path / "token"), "--data", str(tmp_path / "data"), "--state",
                 str(tmp_path / "state"), "--policy", str(policy)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert str(policy) in err
    assert "epsilon_budget" in err


def test_a_daemon_with_too_few_rows_sends_no_update_and_says_why(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    data, state, token = tmp_path / "data", tmp_path / "state", tmp_path / "token"
    data.mkdir()
    write_csv(data / "few.csv", taxi_rows(0, 12))
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        register(server.url, token, state)
        daemon = start_daemon(server.url, token, data, state)
        try:
            admin(server.url, "POST", "/v1/rounds", {})

            def refused() -> dict[str, object] | None:
                path = state / "status.json"
                status = json.loads(path.read_text()) if path.is_file() else {}
                policy = status.get("policy") or {}
                refusal = policy.get("last_refusal")
                return status if refusal and refusal.get("reason") == "min_rows" else None

            status = wait_for(refused, timeout=60)
            assert "refused by the device policy" in status["last_error"]["message"]
            assert status["policy"]["privacy"] == "on"
            assert status["policy"]["epsilon_budget"] == 10.0
            assert store_counts(tmp_path)["updates"] == 0
            # The daemon declined the task: the round stops waiting for it and fails
            # (its only client sent nothing), instead of holding the device's queue until
            # the deadline.
            failed = wait_for(
                lambda: (r := round_state(server.url, 1))["state"] == "failed" and r, timeout=60
            )
            assert "only 0 of the" in failed["failure_reason"]
            declined = _declined_tasks(tmp_path)
            assert [(t.kind, t.round_id) for t in declined] == [("train", 1)]
            assert admin(server.url, "GET", "/healthz") is not None  # still answers
        finally:
            assert stop_daemon(daemon) == 0


def _declined_tasks(workdir: Path) -> list[Any]:
    """The coordinator's declined tasks (its database, read directly)."""
    from coordinator.sqlite_store import SQLiteStore

    store = SQLiteStore(workdir / "state.db")
    try:
        return store.list_tasks(status="declined")
    finally:
        store.close()
