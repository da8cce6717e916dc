"""An EvalReport's per-class counts of predictions and labels: validated when built, the same
through the JSON codec and the protobuf codec, optional so that older reports stay valid."""

from __future__ import annotations

from typing import Any

import pytest

from fedge.errors import ProtocolError
from fedge.messages import EvalReport, PrivacyNote, decode_message
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto

NOTE = PrivacyNote("gaussian", 0.5, 1e-6, "statistics")


def _report(**fields: Any) -> EvalReport:
    return EvalReport("task-eval", "v3", 40, {"accuracy": 0.9}, **fields)


def test_counts_and_privacy_round_trip_through_both_codecs() -> None:
    report = _report(prediction_counts=(30, 0, 10), label_counts=[25, 5, 10], privacy=NOTE)
    assert report.label_counts == (25, 5, 10)  # a list is kept as a tuple
    document = report.to_dict()
    assert document["prediction_counts"] == [30, 0, 10]
    assert document["privacy"] == NOTE.to_dict()
    assert decode_message(document) == report
    message = to_proto(document, pb.EvalReport)
    assert list(message.prediction_counts) == [30, 0, 10]
    assert message.privacy.epsilon == 0.5
    assert to_document(message) == document
    request = pb.ReportRequest(evaluation=message)
    assert (
        to_document(pb.ReportRequest.FromString(request.SerializeToString()))["evaluation"]
        == document
    )


def test_a_report_without_counts_is_the_old_document() -> None:
    old = {
        "type": "eval_report", "version": 1, "task_id": "task-eval", "model_version": "v3",
        "num_examples": 40, "metrics": {"accuracy": 0.9}, "personalized_metrics": {},
        "slice_metrics": {},
    }  # fmt: skip
    report = decode_message(old)
    assert isinstance(report, EvalReport)
    assert (report.prediction_counts, report.label_counts, report.privacy) == (None, None, None)
    assert report.to_dict() == old
    assert to_document(to_proto(old, pb.EvalReport)) == old
    only_predictions = _report(prediction_counts=(1, 2)).to_dict()
    assert "label_counts" not in only_predictions
    assert to_document(to_proto(only_predictions, pb.EvalReport)) == only_predictions


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prediction_counts": (3, -1)}, "a count of prediction_counts must be an integer >= 0"),
        ({"label_counts": ()}, "label_counts must be a list of 1-65536 counts"),
        ({"label_counts": (1.5, 2)}, "a count of label_counts"),
        ({"prediction_counts": "12"}, "prediction_counts must be a list"),
        ({"prediction_counts": (1, 2), "label_counts": (1, 2, 3)}, "one count per class in both"),
        ({"privacy": {"epsilon": 1}}, "privacy must be a PrivacyNote"),
    ],
)
def test_bad_counts_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        _report(**fields)


def test_a_document_with_bad_counts_is_refused() -> None:
    document = {**_report().to_dict(), "prediction_counts": [1, True]}
    with pytest.raises(ProtocolError, match="prediction_counts"):
        decode_message(document)
