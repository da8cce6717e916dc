"""``handle(task, context)`` on real bundles with in-memory data, as the simulation uses it."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import EdgeModel, ModelCache
from edge_client.privacy import private_stats, slice_groups
from edge_client.runtime import TrainableModel
from fedge.bundle import read_manifest, write_manifest
from fedge.data import Dataset, load_digits, load_taxi
from fedge.errors import BundleError, ConfigError, DataError
from fedge.messages import EvalReport, FeatureBatch, ModelUpdate, StatsReport, Task, TaskConfig
from fedge.stats import OTHER_CATEGORY
from fedge.weights import Weights

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

DIGITS = load_digits()


def _task(kind: str, version: str, **config: object) -> Task:
    round_id = 1 if kind == "train" else None
    options = {"epochs": 1, "batch_size": 32, "learning_rate": 0.05, **config}
    return Task(f"{kind}-1", kind, round_id, version, TaskConfig(**options), time.time() + 600)  # type: ignore[arg-type]


def _context(models: ModelCache, start: int, train: int = 120, holdout: int = 40) -> ClientContext:
    rows = np.arange(start, start + train + holdout)
    data = MemoryData(DIGITS.take(rows[:train]), DIGITS.take(rows[train:]))
    return ClientContext(data=data, models=models, rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def models(edge_digits_bundle: Path) -> ModelCache:
    return ModelCache({"digits-v1": edge_digits_bundle})


def test_train_reply_is_the_delta_of_plain_sgd_in_file_order(
    models: ModelCache, edge_digits_bundle: Path
) -> None:
    context = _context(models, 0)
    reply = handle(_task("train", "digits-v1", epochs=2), context)
    assert isinstance(reply, ModelUpdate)
    assert reply.num_examples == 120
    assert reply.round_id == 1
    assert set(reply.metrics) == {"loss", "accuracy"}

    model = models.model("digits-v1")
    reference = TrainableModel(edge_digits_bundle / "trainable.tflite")
    reference.set_weights(dict(model.global_weights))
    train = context.data.train()
    result = reference.train(
        model.transform(train.columns), train.labels, epochs=2, learning_rate=0.05
    )
    expected = Weights(reference.get_weights()).delta(model.global_weights)
    assert reply.delta.allclose(expected, rtol=0, atol=0)
    assert reply.metrics["loss"] == pytest.approx(result.epoch_losses[-1])


def test_train_is_deterministic_and_shuffles_only_when_asked(models: ModelCache) -> None:
    plain = [handle(_task("train", "digits-v1"), _context(models, 0)) for _ in range(2)]
    shuffled = [
        handle(_task("train", "digits-v1", options={"shuffle_seed": 5}), _context(models, 0))
        for _ in range(2)
    ]
    assert isinstance(plain[0], ModelUpdate)
    assert isinstance(plain[1], ModelUpdate)
    assert isinstance(shuffled[0], ModelUpdate)
    assert isinstance(shuffled[1], ModelUpdate)
    assert plain[0].delta == plain[1].delta
    assert shuffled[0].delta == shuffled[1].delta
    assert not shuffled[0].delta.allclose(plain[0].delta, atol=1e-7)


def test_shuffled_batches_follow_the_simulation_rule(
    models: ModelCache, edge_digits_bundle: Path
) -> None:
    context = _context(models, 0)
    context.client_id = "client_003"
    options = {"shuffle_seed": 11, "shuffle_round": 4}
    reply = handle(_task("train", "digits-v1", epochs=2, options=options), context)
    assert isinstance(reply, ModelUpdate)
    # simulations.workload.batch_order: one permutation per epoch from this seed sequence.
    key = int.from_bytes(hashlib.sha256(b"client_003").digest()[:8], "little")
    rng = np.random.default_rng([11, 4, key])
    model = models.model("digits-v1")
    reference = TrainableModel(edge_digits_bundle / "trainable.tflite")
    reference.set_weights(dict(model.global_weights))
    train = context.data.train()
    reference.train(
        model.transform(train.columns), train.labels, epochs=2, learning_rate=0.05, rng=rng
    )
    expected = Weights(reference.get_weights()).delta(model.global_weights)
    assert reply.delta.allclose(expected, rtol=0, atol=0)


def test_max_examples_caps_the_local_rows(models: ModelCache) -> None:
    reply = handle(_task("train", "digits-v1", max_examples=50), _context(models, 0))
    assert isinstance(reply, ModelUpdate)
    assert reply.num_examples == 50


def test_contexts_share_one_runtime_and_never_see_each_others_weights(
    models: ModelCache,
) -> None:
    a, b = _context(models, 0), _context(models, 400)
    alone = handle(_task("train", "digits-v1"), _context(models, 0))
    handle(_task("train", "digits-v1", epochs=3), b)
    handle(_task("evaluate", "digits-v1"), b)  # leaves b's personal head in the interpreter
    after = handle(_task("train", "digits-v1"), a)
    assert isinstance(alone, ModelUpdate)
    assert isinstance(after, ModelUpdate)
    assert after.delta == alone.delta
    assert a.models.model("digits-v1").runtime is b.models.model("digits-v1").runtime


def test_round_versions_with_the_same_files_share_the_interpreters(
    edge_digits_bundle: Path, tmp_path: Path
) -> None:
    v2 = tmp_path / "v2"
    shutil.copytree(edge_digits_bundle, v2)
    model = EdgeModel.load(edge_digits_bundle)
    changed = Weights({n: a + 0.01 for n, a in model.global_weights.items()})
    (v2 / "weights.safetensors").write_bytes(changed.to_bytes())
    manifest = read_manifest(edge_digits_bundle)
    write_manifest(
        v2, model_version="digits-v2", task=manifest.task, schema=manifest.schema,
        feature_spec=manifest.feature_spec, train_batch_size=manifest.train_batch_size,
        created_at=manifest.created_at, head=manifest.head, extra_files=["backbone.tflite"],
    )  # fmt: skip
    cache = ModelCache({"digits-v1": edge_digits_bundle, "digits-v2": v2})
    first, second = cache.model("digits-v1"), cache.model("digits-v2")
    assert first.runtime is second.runtime
    assert first.int8_current
    assert not second.int8_current
    x = first.transform(DIGITS.take(np.arange(20)).columns)
    # The stale int8 file is not used for v2: its global predictions are its own weights'.
    np.testing.assert_array_equal(second.predict_scores(x), second.logits(x))
    assert not np.allclose(second.logits(x), first.logits(x))
    with pytest.raises(BundleError, match="no bundle for model version"):
        cache.model("digits-v9")


def test_evaluate_reports_global_and_personalized_metrics(models: ModelCache) -> None:
    context = _context(models, 0)
    reply = handle(_task("evaluate", "digits-v1"), context)
    assert isinstance(reply, EvalReport)
    assert reply.num_examples == 40
    assert set(reply.metrics) == {"accuracy", "loss", "int8_accuracy"}
    assert set(reply.personalized_metrics) == {"accuracy", "loss"}
    assert reply.slice_metrics == {}  # digits has no region column
    head = context.heads.get()
    assert head is not None
    assert head.base_version == "digits-v1"
    again = handle(_task("evaluate", "digits-v1"), context)
    assert isinstance(again, EvalReport)
    assert again.personalized_metrics == reply.personalized_metrics
    assert context.heads.get() is head  # fine-tuned once per global version


def test_evaluate_with_no_holdout_reports_zero_examples(models: ModelCache) -> None:
    context = _context(models, 0, holdout=0)
    reply = handle(_task("evaluate", "digits-v1"), context)
    assert isinstance(reply, EvalReport)
    assert reply.num_examples == 0
    assert reply.metrics == {}


def test_features_are_backbone_embeddings_with_labels(models: ModelCache) -> None:
    context = _context(models, 0)
    reply = handle(_task("features", "digits-v1"), context)
    assert isinstance(reply, FeatureBatch)
    model = models.model("digits-v1")
    train = context.data.train()
    assert reply.embeddings.shape == (120, 64)
    np.testing.assert_array_equal(reply.embeddings, model.embed(model.transform(train.columns)))
    np.testing.assert_array_equal(reply.labels, train.labels)


def test_stats_have_no_extremes(models: ModelCache) -> None:
    reply = handle(_task("stats", "digits-v1"), _context(models, 0))
    assert isinstance(reply, StatsReport)
    assert reply.stats.num_rows == 160
    pixels = reply.stats.numeric("pixels")
    assert pixels.min is None
    assert pixels.max is None


def test_train_without_local_rows_is_a_data_error(models: ModelCache) -> None:
    empty = DIGITS.take(np.arange(0))
    context = ClientContext(data=MemoryData(empty), models=models)
    with pytest.raises(DataError, match="no labelled local training rows"):
        handle(_task("train", "digits-v1"), context)


def test_data_of_another_schema_is_refused(models: ModelCache) -> None:
    taxi = load_taxi()
    context = ClientContext(data=MemoryData(taxi.take(np.arange(10))), models=models)
    with pytest.raises(ConfigError, match="schema"):
        handle(_task("stats", "digits-v1"), context)


# Privacy of the aggregates ------------------------------------------------------------------


def _taxi_with_marker(n: int) -> Dataset:
    taxi = load_taxi().take(np.arange(n))
    columns = {k: np.array(v, copy=True) for k, v in taxi.columns.items()}
    columns["company"][0] = "CANARY-COMPANY"
    columns["pickup_community_area"][0] = "CANARY-AREA"
    columns["fare"][0] = 98765.4321
    columns["dropoff_latitude"][:] = np.nan
    columns["dropoff_latitude"][1] = 41.8765432  # the only value present
    return Dataset(name="t", schema=taxi.schema, columns=columns, labels=taxi.labels)


def test_private_stats_fold_rare_values_and_hide_lonely_numbers() -> None:
    table = _taxi_with_marker(200)
    stats = private_stats(table, k=5)
    text = json.dumps(stats.to_dict())
    assert "CANARY" not in text
    assert "98765.4321" not in text
    assert "41.8765432" not in text
    assert OTHER_CATEGORY in stats.categorical("company").value_counts
    lonely = stats.numeric("dropoff_latitude")
    assert (lonely.count, lonely.missing) == (0, 200)
    fare = stats.numeric("fare")
    assert fare.count == 200
    assert fare.min is None
    assert fare.max is None


def test_slices_need_k_rows_and_pool_the_rest() -> None:
    values = np.array(["a"] * 6 + ["b"] * 2 + [None] * 2 + ["c"] * 5, dtype=object)
    groups = slice_groups(values, k=5)
    assert sorted(groups) == ["a", "c"]
    assert slice_groups(values, k=2).keys() == {"a", "b", "c", OTHER_CATEGORY}
    pooled = slice_groups(np.array(["x", "y", "z", "w", "v"], dtype=object), k=2)
    assert list(pooled) == [OTHER_CATEGORY]
    assert pooled[OTHER_CATEGORY].size == 5
