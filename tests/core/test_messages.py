"""Tests of fedge.messages: validation, the JSON codec, the binary delta, no raw data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest

from fedge.errors import NonFiniteError, ProtocolError, WeightsFormatError
from fedge.messages import (
    MESSAGE_TYPES,
    EvalReport,
    FeatureBatch,
    ModelUpdate,
    StatsReport,
    Task,
    TaskConfig,
    decode_message,
    encode_message,
)
from fedge.weights import Weights
from tests.support.coordinator import head_weights, training_stats


def _task(**changes: Any) -> Task:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "kind": "train",
        "round_id": 3,
        "model_version": "v2",
        "config": TaskConfig(epochs=2, batch_size=8, learning_rate=0.05, options={"mu": 0.1}),
        "deadline": 1_700_000_600.5,
    }
    fields.update(changes)
    return Task(**fields)


def _update(**changes: Any) -> ModelUpdate:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "round_id": 3,
        "num_examples": 40,
        "metrics": {"loss": 0.25, "accuracy": 0.9},
        "delta": head_weights(1, scale=0.01),
    }
    fields.update(changes)
    return ModelUpdate(**fields)


def _roundtrip_json(document: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(document, allow_nan=False))
    return result


def test_task_roundtrips_through_json() -> None:
    task = _task()
    doc, body = encode_message(task)
    assert body is None
    assert doc["type"] == "task"
    assert decode_message(_roundtrip_json(doc)) == task


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"kind": "upload_raw"}, "kind must be one of"),
        ({"round_id": None}, "train task must name its round_id"),
        ({"round_id": 0}, "round_id must be an integer >= 1"),
        ({"task_id": "../x"}, "task_id must be"),
        ({"deadline": math.inf}, "deadline must be finite"),
        ({"model_version": ""}, "model_version must be"),
    ],
)
def test_task_refuses_invalid_fields(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ProtocolError, match=phrase):
        _task(**changes)


def test_task_without_round_is_allowed_for_stats() -> None:
    assert _task(kind="stats", round_id=None).round_id is None


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"learning_rate": -0.1}, "learning_rate must be > 0"),
        ({"learning_rate": math.nan}, "learning_rate must be finite"),
        ({"options": {"mu": [1, 2]}}, "must be a scalar"),
    ],
)
def test_task_config_refuses_invalid_fields(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ProtocolError, match=phrase):
        TaskConfig(**changes)


def test_task_from_dict_refuses_unknown_and_missing_keys() -> None:
    doc = _task().to_dict()
    with pytest.raises(ProtocolError, match=r"unknown keys \['raw_rows'\]"):
        Task.from_dict({**doc, "raw_rows": [[1, 2]]})
    del doc["deadline"]
    with pytest.raises(ProtocolError, match=r"lacks \['deadline'\]"):
        Task.from_dict(doc)


def test_from_dict_refuses_wrong_type_and_version() -> None:
    doc = _task().to_dict()
    with pytest.raises(ProtocolError, match="expected a message of type 'task'"):
        Task.from_dict({**doc, "type": "eval_report"})
    with pytest.raises(ProtocolError, match="unsupported task message version 2"):
        Task.from_dict({**doc, "version": 2})


def test_model_update_splits_metadata_and_safetensors_body() -> None:
    update = _update()
    doc, body = encode_message(update)
    assert body == update.delta.to_bytes()
    assert "delta" not in doc
    assert doc["delta_sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["delta_size"] == len(body)
    decoded = decode_message(_roundtrip_json(doc), body)
    assert isinstance(decoded, ModelUpdate)
    assert decoded.delta == update.delta
    assert decoded.metrics == update.metrics
    assert decoded.num_examples == 40


def test_model_update_body_must_match_its_digest() -> None:
    doc, _ = encode_message(_update())
    other = head_weights(2).to_bytes()
    with pytest.raises(ProtocolError, match=r"delta_sha256|delta_size"):
        decode_message(doc, other)


def test_model_update_metadata_without_digest_is_accepted() -> None:
    doc, body = encode_message(_update())
    del doc["delta_sha256"], doc["delta_size"]
    assert isinstance(decode_message(doc, body), ModelUpdate)


def test_model_update_needs_its_body() -> None:
    doc, _ = encode_message(_update())
    with pytest.raises(ProtocolError, match="needs its safetensors body"):
        decode_message(doc)


def test_model_update_truncated_body_is_a_weights_format_error() -> None:
    doc, _ = encode_message(_update())
    body = _update().delta_bytes()
    del doc["delta_sha256"], doc["delta_size"]
    with pytest.raises(WeightsFormatError, match="truncated"):
        decode_message(doc, body[: len(body) // 2])


def test_model_update_max_bytes_is_enforced() -> None:
    doc, body = encode_message(_update())
    with pytest.raises(WeightsFormatError, match="over the 10 limit"):
        decode_message(doc, body, max_body_bytes=10)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"num_examples": 0}, "num_examples must be an integer >= 1"),
        ({"num_examples": 2.5}, "num_examples must be an integer"),
        ({"metrics": {"loss": math.nan}}, r"metrics\['loss'\] must be finite"),
        ({"metrics": {"": 1.0}}, "names must be 1-128 characters"),
        ({"metrics": {f"m{i}": 1.0 for i in range(300)}}, "more than 256"),
        ({"delta": {"w": np.zeros(2)}}, "delta must be Weights"),
    ],
)
def test_model_update_refuses_invalid_fields(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(ProtocolError, match=phrase):
        _update(**changes)


def test_model_update_codec_does_not_judge_values() -> None:
    """NaN in a delta is the server's policy to refuse, not the codec's: it decodes."""
    bad = Weights({"w": np.array([np.nan, 1.0], np.float32)})
    doc, body = encode_message(_update(delta=bad))
    decoded = decode_message(doc, body)
    assert isinstance(decoded, ModelUpdate)
    with pytest.raises(NonFiniteError):
        decoded.delta.check_finite()


def test_eval_report_roundtrips_with_slices() -> None:
    report = EvalReport(
        task_id="e-1",
        model_version="v3",
        num_examples=120,
        metrics={"accuracy": 0.8},
        personalized_metrics={"accuracy": 0.85},
        slice_metrics={"north": {"accuracy": 0.9}, "south": {"accuracy": 0.7}},
    )
    doc, _ = encode_message(report)
    again = decode_message(_roundtrip_json(doc))
    assert again == report
    assert isinstance(again, EvalReport)
    assert again.slice_metrics["south"]["accuracy"] == 0.7


def test_eval_report_refuses_non_finite_slice_metric() -> None:
    with pytest.raises(ProtocolError, match="slice_metrics"):
        EvalReport("e-1", "v3", 1, {"accuracy": 0.5}, {}, {"north": {"accuracy": math.inf}})


def test_stats_report_roundtrips_dataset_stats() -> None:
    report = StatsReport(task_id="s-1", stats=training_stats(3, n=50))
    doc, _ = encode_message(report)
    again = decode_message(_roundtrip_json(doc))
    assert isinstance(again, StatsReport)
    assert again.stats.to_dict() == report.stats.to_dict()


def test_stats_report_refuses_invalid_statistics() -> None:
    doc = StatsReport(task_id="s-1", stats=training_stats(3, n=50)).to_dict()
    doc["stats"]["num_rows"] = 7
    with pytest.raises(ProtocolError, match="stats: "):
        decode_message(doc)


def test_feature_batch_roundtrips_bit_exactly() -> None:
    rng = np.random.default_rng(0)
    batch = FeatureBatch(
        task_id="f-1",
        embeddings=rng.standard_normal((4, 6)).astype(np.float32),
        labels=np.array([0, 2, 1, 1]),
    )
    doc, _ = encode_message(batch)
    again = decode_message(_roundtrip_json(doc))
    assert isinstance(again, FeatureBatch)
    assert again.embeddings.tobytes() == batch.embeddings.tobytes()
    assert again.labels.tolist() == [0, 2, 1, 1]
    assert not again.embeddings.flags.writeable


@pytest.mark.parametrize(
    ("embeddings", "labels", "phrase"),
    [
        (np.zeros((3, 2), np.float64), [0, 1, 2], "2-D float32"),
        (np.zeros((3,), np.float32), [0, 1, 2], "2-D float32"),
        (np.full((2, 2), np.nan, np.float32), [0, 1], "NaN or Inf"),
        (np.zeros((2, 2), np.float32), [0], "labels must be 2 integer"),
        (np.zeros((2, 2), np.float32), [0, -1], "labels must be >= 0"),
    ],
)
def test_feature_batch_refuses_invalid_arrays(
    embeddings: np.ndarray[Any, Any], labels: list[int], phrase: str
) -> None:
    with pytest.raises(ProtocolError, match=phrase):
        FeatureBatch("f-1", embeddings, np.array(labels))


def test_feature_batch_refuses_data_of_the_wrong_length() -> None:
    doc = FeatureBatch("f-1", np.zeros((2, 2), np.float32), np.array([0, 1])).to_dict()
    doc["embeddings"]["shape"] = [3, 2]
    doc["labels"] = [0, 1, 1]
    with pytest.raises(ProtocolError, match="needs 24"):
        decode_message(doc)


def test_decode_refuses_unknown_type_and_non_objects() -> None:
    with pytest.raises(ProtocolError, match="unknown message type 'raw_examples'"):
        decode_message({"type": "raw_examples", "version": 1})
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        decode_message([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="has no binary body"):
        decode_message(_task().to_dict(), b"xx")


def test_no_message_type_has_a_field_for_raw_examples() -> None:
    """Every field of every message is one of the reviewed, non-raw fields."""
    reviewed = {
        "task_id", "kind", "round_id", "model_version", "config", "deadline",  # Task
        "num_examples", "metrics", "delta",  # ModelUpdate
        "personalized_metrics", "slice_metrics",  # EvalReport
        "prediction_counts", "label_counts",  # EvalReport: per-class counts, never rows
        "stats",  # StatsReport (aggregates)
        "embeddings", "labels",  # FeatureBatch (backbone activations)
        "privacy", "counts",  # how a reply was noised; prototypes' noised support
    }  # fmt: skip
    fields = {f.name for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls)}
    assert fields <= reviewed, f"unreviewed message fields: {sorted(fields - reviewed)}"
    assert set(MESSAGE_TYPES) == {
        "task",
        "model_update",
        "eval_report",
        "stats_report",
        "feature_batch",
    }


def test_messages_are_frozen() -> None:
    task = _task()
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.round_id = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.config.options["mu"] = 1.0  # type: ignore[index]
