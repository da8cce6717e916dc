"""Int8 that stays current: every round version of a bundle with ``head.tflite`` serves int8
(the int8 backbone, then the float head the rounds train), personal heads too, and
personalization trains the head on cached int8 embeddings; a bundle without ``head.tflite``
keeps the float path of old."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.artifacts import ArtifactStore
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.intake import UpdateSubmission
from coordinator.service import CoordinatorService
from coordinator.store import MemoryStore
from edge_client.cli import main
from edge_client.handler import ClientContext, handle
from edge_client.local_data import MemoryData
from edge_client.model import (
    FLOAT_PATH,
    INT8_HEAD_PATH,
    INT8_PATH,
    EdgeModel,
    EmbeddingCache,
    ModelCache,
)
from edge_client.personalize import PersonalizationConfig, fine_tune
from fedge.bundle import read_manifest, write_manifest
from fedge.data import load_digits
from fedge.errors import BundleError
from fedge.messages import EvalReport, ModelUpdate, Task, TaskConfig
from simulations.native_engine import BundleMirror
from tests.support.coordinator import FakeClock

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

DIGITS = load_digits()
ROUNDS = 10
CLIENTS = 3
CLIENT_ROWS = 100
TEST_ROWS = np.arange(1400, len(DIGITS))  # no client trains on these


@pytest.fixture(scope="module")
def after_ten_rounds(
    edge_digits_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The bundle directories of v1 and of the production version after ten digits rounds
    run by the coordinator service with real edge clients answering the train tasks."""
    workdir = tmp_path_factory.mktemp("int8-rounds")
    service = CoordinatorService(
        store=MemoryStore(),
        artifacts=ArtifactStore(workdir / "artifacts"),
        config=ServiceConfig(
            task="digits",
            rounds=RoundConfig(
                clients_per_round=CLIENTS, min_clients=CLIENTS, epochs=1, learning_rate=0.05
            ),
            min_cohort=1,
        ),
        now=FakeClock(),
    )
    service.import_bundle(edge_digits_bundle)
    mirror = BundleMirror(service, workdir / "bundles")
    models = ModelCache(mirror.ensure)
    clients = []
    for i in range(CLIENTS):
        record = service.authenticate(service.register_client().token)
        rows = np.arange(i * CLIENT_ROWS, (i + 1) * CLIENT_ROWS)
        data = MemoryData(DIGITS.take(rows), DIGITS.take(rows[:0]))
        clients.append((record, ClientContext(data=data, models=models, client_id=f"c{i}")))
    for _ in range(ROUNDS):
        for record, context in clients:
            task = service.next_task(record)
            assert task is not None
            assert task.kind == "train"
            reply = handle(task, context)
            assert isinstance(reply, ModelUpdate)
            service.submit_update(
                record,
                UpdateSubmission(
                    round_id=reply.round_id,
                    task_id=reply.task_id,
                    num_examples=reply.num_examples,
                    idempotency_key=reply.task_id,
                    body=reply.delta.to_bytes(),
                    metrics=dict(reply.metrics),
                ),
            )
    production = service.registry.production().version
    assert production == f"v{ROUNDS + 1}"
    return mirror.ensure("v1"), mirror.ensure(production)


def _without_head_file(bundle: Path, target: Path) -> Path:
    """``bundle`` as an older quantizer wrote it: no ``head.tflite`` in files or manifest."""
    shutil.copytree(bundle, target)
    (target / "head.tflite").unlink()
    manifest = read_manifest(bundle)
    write_manifest(
        target, model_version=manifest.model_version, task=manifest.task,
        schema=manifest.schema, feature_spec=manifest.feature_spec,
        train_batch_size=manifest.train_batch_size, created_at=manifest.created_at,
        head=manifest.head, metadata=manifest.metadata, extra_files=["backbone.tflite"],
    )  # fmt: skip
    return target


def _predict_json(
    bundle: Path, rows: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, object]:
    code = main(["predict", "--bundle", str(bundle), "--input", str(rows), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    document: dict[str, object] = json.loads(out)
    return document


# Acceptance 4 ---------------------------------------------------------------------------


def test_after_ten_rounds_predict_serves_int8_and_agrees_with_the_float_model(
    after_ten_rounds: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, current = after_ten_rounds
    test = DIGITS.take(TEST_ROWS)
    rows = tmp_path / "rows.npz"
    np.savez(rows, pixels=test.columns["pixels"])
    model = EdgeModel.load(current)
    assert model.version == f"v{ROUNDS + 1}"
    assert not model.int8_current  # the rounds changed the head: inference.tflite is stale
    assert model.serving_path() == INT8_HEAD_PATH
    assert EdgeModel.load(v1).serving_path() == INT8_PATH

    document = _predict_json(current, rows, capsys)
    assert document["path"] == INT8_HEAD_PATH
    served = np.array([p["class"] for p in document["predictions"]])  # type: ignore[attr-defined]
    x = model.transform(test.columns)
    float_classes = model.logits(x).argmax(axis=1)
    agreement = float((served == float_classes).mean())
    assert agreement >= 0.99, agreement
    np.testing.assert_array_equal(served, model.predict_scores(x).argmax(axis=1))

    # The same rows through the same version without head.tflite: the float model, as before.
    old = EdgeModel.load(_without_head_file(current, tmp_path / "old"))
    assert old.serving_path() == FLOAT_PATH
    np.testing.assert_array_equal(old.predict_scores(x), old.logits(x))
    text_code = main(["predict", "--bundle", str(tmp_path / "old"), "--input", str(rows)])
    out, _ = capsys.readouterr()
    assert text_code == 0
    assert out.splitlines()[0].startswith(f"# model v{ROUNDS + 1}, global head, path float, ")
    old_served = [int(line.split("\t")[1]) for line in out.splitlines()[1:]]
    assert old_served == float_classes.tolist()


def test_personal_heads_serve_int8_and_train_on_cached_embeddings(
    after_ten_rounds: tuple[Path, Path],
) -> None:
    _, current = after_ten_rounds
    model = EdgeModel.load(current)
    device_rows = np.flatnonzero(np.isin(DIGITS.labels, [3, 8]))
    train, held_out = DIGITS.take(device_rows[:150]), DIGITS.take(device_rows[150:])
    cache = model.runtime.embeddings
    assert len(cache) == 0
    config = PersonalizationConfig(epochs=3)
    head = fine_tune(model, train, config=config, rng=np.random.default_rng(0))
    assert head is not None
    assert len(cache) == 1
    cached_bytes = cache.nbytes
    again = fine_tune(model, train, config=config, rng=np.random.default_rng(0))
    assert again is not None
    assert again.weights == head.weights  # the same batches on the same embeddings
    assert (len(cache), cache.nbytes) == (1, cached_bytes)  # embedded once

    # The head trained exactly as head.tflite trains on the int8 embeddings.
    x = model.transform(train.columns)
    np.testing.assert_array_equal(model.cached_embeddings(x), model.embed(x))
    expected, _ = model.train_head(
        model.embed(x), train.labels, start=model.global_weights, epochs=3,
        learning_rate=config.learning_rate, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert head.weights == expected

    assert model.serving_path(head.weights) == INT8_HEAD_PATH
    x_out = model.transform(held_out.columns)
    personal = model.predict_scores(x_out, head=head.weights).argmax(axis=1)
    global_ = model.predict_scores(x_out).argmax(axis=1)
    assert (personal == held_out.labels).mean() > (global_ == held_out.labels).mean()


def test_evaluate_reports_the_served_int8_accuracy_of_a_round_version(
    after_ten_rounds: tuple[Path, Path],
) -> None:
    _, current = after_ten_rounds
    version = f"v{ROUNDS + 1}"
    models = ModelCache({version: current})
    holdout = DIGITS.take(TEST_ROWS[:100])
    context = ClientContext(data=MemoryData(DIGITS.take(np.arange(100)), holdout), models=models)
    task = Task("e-1", "evaluate", None, version, TaskConfig(), time.time() + 600)
    reply = handle(task, context)
    assert isinstance(reply, EvalReport)
    model = models.model(version)
    x = model.transform(holdout.columns)
    served = model.predict_scores(x)
    assert reply.metrics["accuracy"] == pytest.approx((served.argmax(1) == holdout.labels).mean())
    assert reply.metrics["int8_accuracy"] == reply.metrics["accuracy"]
    assert reply.prediction_counts == tuple(np.bincount(served.argmax(1), minlength=10).tolist())


def test_a_head_file_that_does_not_match_the_bundle_is_refused(
    edge_digits_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(edge_digits_bundle, bundle)
    shutil.copyfile(bundle / "trainable.tflite", bundle / "head.tflite")  # takes pixels
    manifest = read_manifest(bundle)
    write_manifest(
        bundle, model_version=manifest.model_version, task=manifest.task,
        schema=manifest.schema, feature_spec=manifest.feature_spec,
        train_batch_size=manifest.train_batch_size, created_at=manifest.created_at,
        head=manifest.head, metadata=manifest.metadata,
        extra_files=["backbone.tflite", "head.tflite"],
    )  # fmt: skip
    with pytest.raises(BundleError, match=r"head.tflite has input shape, train batch") as error:
        EdgeModel.load(bundle)
    assert "(8, 8)" in str(error.value)


def test_embedding_cache_evicts_the_least_recently_used_beyond_its_bound() -> None:
    cache = EmbeddingCache(max_bytes=2 * 4 * 10)  # two [1, 10] float32 rows
    rows = [np.full((1, 10), i, np.float32) for i in range(3)]
    keys = [EmbeddingCache.rows_key(r) for r in rows]
    assert len(set(keys)) == 3
    cache.put("b", keys[0], rows[0])
    cache.put("b", keys[1], rows[1])
    assert cache.get("b", keys[0]) is not None  # 0 is now the most recent
    cache.put("b", keys[2], rows[2])
    assert cache.get("b", keys[1]) is None
    assert cache.get("b", keys[0]) is not None
    assert cache.get("other-backbone", keys[0]) is None
    assert cache.nbytes == 80
    cache.put("b", "huge", np.zeros((3, 10), np.float32))  # over the bound alone: not kept
    assert cache.get("b", "huge") is None
    stored = cache.get("b", keys[2])
    assert stored is not None
    assert not stored.flags.writeable
