"""fedge.protocol.codec: REST JSON documents <-> fleet.proto messages, exactly and safely."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from coordinator.intake import UpdateReceipt
from coordinator.keys import StaticSigner
from coordinator.records import ReportRecord
from coordinator.views import receipt_document, report_document
from fedge.errors import ProtocolError
from fedge.messages import (
    TASK_KINDS,
    EvalReport,
    FeatureBatch,
    PrivacyNote,
    StatsReport,
    Task,
    TaskConfig,
)
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto
from fedge.secagg import ClientState, MaskingConfig, ServerState, encode_secagg
from fedge.signing import SigningKey
from tests.support.coordinator import training_stats


def _task(kind: str, **config: Any) -> Task:
    round_id = 7 if kind in ("train", "secagg_share", "secagg_mask", "secagg_unmask") else None
    options = {"mu": 0.1, "compression": "q8", "compression_block": 64, "proximal": True}
    return Task(
        task_id=f"task-{kind}",
        kind=kind,  # type: ignore[arg-type]
        round_id=round_id,
        model_version="v3",
        config=TaskConfig(epochs=2, batch_size=8, learning_rate=0.05, options=options, **config),
        deadline=1_700_000_600.25,
    )


def _secagg_documents() -> list[tuple[dict[str, Any], type[Any]]]:
    """One document of each secure-aggregation message, from a real run of the protocol."""
    rng = np.random.default_rng(0)
    config = MaskingConfig(dimension=8, clip=1.0, example_cap=10)
    clients = {cid: ClientState.create(cid, config) for cid in range(5)}
    adverts = [client.advertise() for client in clients.values()]
    server, rosters = ServerState(config).collect_keys(adverts, rng=rng)
    shares = []
    for cid, roster in rosters.items():
        clients[cid], share = clients[cid].share_keys(roster)
        shares.append(share)
    server, deliveries = server.collect_shares(shares)
    for cid, delivery in deliveries.items():
        clients[cid], masked = clients[cid].mask(delivery, np.full(8, 0.1), 5, rng=rng)
        if cid != 4:
            server = server.accept_masked(masked)
    server, requests = server.unmask_requests()
    clients[0], response = clients[0].unmask(requests[0])
    assert requests[0].dropped, "the unmask request should name the dropped client"
    messages = [
        (adverts[0], pb.SecAggAdvertiseKeys),
        (rosters[0], pb.SecAggKeyRoster),
        (shares[0], pb.SecAggShareKeys),
        (deliveries[0], pb.SecAggShareDelivery),
        (requests[0], pb.SecAggUnmaskRequest),
        (response, pb.SecAggUnmaskResponse),
    ]
    return [(encode_secagg(message)[0], kind) for message, kind in messages]


def _features(**changes: Any) -> FeatureBatch:
    fields: dict[str, Any] = {
        "task_id": "task-features",
        "embeddings": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "labels": np.array([0, 2]),
    }
    fields.update(changes)
    return FeatureBatch(**fields)


def _documents() -> list[tuple[dict[str, Any], type[Any]]]:
    note = PrivacyNote("gaussian", 0.5, 1e-5, "prototypes")
    signer = StaticSigner(SigningKey.generate())
    receipt = UpdateReceipt(7, "client-1", "task-train", "ab" * 32, 40, 1_700_000_000.5)
    report = ReportRecord(3, "evaluation", "client-1", "task-eval", 1_700_000_001.0, "v3")
    return [
        *((_task(kind).to_dict(), pb.Task) for kind in TASK_KINDS),
        (_task("evaluate", max_examples=100).to_dict(), pb.Task),
        (StatsReport("task-stats", training_stats()).to_dict(), pb.StatsReport),
        (
            StatsReport(
                "task-stats", training_stats(1), PrivacyNote("gaussian", 1.0, 1e-6, "statistics")
            ).to_dict(),
            pb.StatsReport,
        ),
        (
            EvalReport("task-eval", "v3", 40, {"accuracy": 0.9, "loss": 0.3}).to_dict(),
            pb.EvalReport,
        ),
        (
            EvalReport(
                "task-eval",
                "v3",
                0,
                {"accuracy": 0.5},
                personalized_metrics={"accuracy": 0.75},
                slice_metrics={"north": {"accuracy": 0.25}, "south": {}},
            ).to_dict(),
            pb.EvalReport,
        ),
        (_features().to_dict(), pb.FeatureBatch),
        (_features(privacy=note, counts=(12, 30)).to_dict(), pb.FeatureBatch),
        *_secagg_documents(),
        (receipt_document(receipt), pb.UpdateReceipt),
        (receipt_document(UpdateReceipt(7, "c", "t", "0" * 64, 1, 1.0, True)), pb.UpdateReceipt),
        (report_document(report), pb.ReportReceipt),
        (report_document(ReportRecord(4, "stats", "c", "t", 2.0)), pb.ReportReceipt),
        (
            {
                "client_id": "client-1",
                "token": "fedge_" + "x" * 43,
                "token_type": "Bearer",
                "signing_key": signer.document()["current"],
            },
            pb.Registration,
        ),
        ({"client_id": "client-1", "token": "fedge_y", "token_type": "Bearer"}, pb.TokenRotation),
        ({"task_id": "task-eval", "status": "declined"}, pb.DeclineResponse),
        (signer.document(), pb.SigningKeys),
        ({}, pb.RotateTokenRequest),
        ({"token": "fedge_" + "z" * 43}, pb.RotateTokenRequest),
    ]


@pytest.mark.parametrize(
    ("document", "message_type"),
    _documents(),
    ids=[f"{kind.__name__}-{index}" for index, (_, kind) in enumerate(_documents())],
)
def test_documents_round_trip_exactly(document: dict[str, Any], message_type: type[Any]) -> None:
    message = to_proto(document, message_type)
    back = to_document(message)
    assert back == document
    assert json.loads(json.dumps(back)) == document
    wire = message_type.FromString(message.SerializeToString())
    assert to_document(wire) == document


def test_task_round_id_and_max_examples_come_back_as_null_or_int() -> None:
    stats = to_document(to_proto(_task("stats").to_dict(), pb.Task))
    assert stats["round_id"] is None
    assert stats["config"]["max_examples"] is None
    train = to_proto(_task("train", max_examples=50).to_dict(), pb.Task)
    assert train.HasField("round_id")
    back = to_document(train)
    assert (back["round_id"], back["config"]["max_examples"]) == (7, 50)
    assert type(back["round_id"]) is int
    assert Task.from_dict(back) == _task("train", max_examples=50)


def test_task_options_keep_their_scalar_types() -> None:
    message = to_proto(_task("train").to_dict(), pb.Task)
    kinds = {key: value.WhichOneof("value") for key, value in message.config.options.items()}
    assert kinds == {
        "mu": "number",
        "compression": "text",
        "compression_block": "integer",
        "proximal": "flag",
    }
    options = to_document(message)["config"]["options"]
    assert [type(options[k]) for k in ("mu", "compression", "compression_block", "proximal")] == [
        float,
        str,
        int,
        bool,
    ]


def test_messages_rebuilt_from_the_document_equal_the_originals() -> None:
    report = StatsReport("task-stats", training_stats(2))
    assert StatsReport.from_dict(to_document(to_proto(report.to_dict(), pb.StatsReport))) == report
    batch = _features(counts=(1, 2))
    back = FeatureBatch.from_dict(to_document(to_proto(batch.to_dict(), pb.FeatureBatch)))
    np.testing.assert_array_equal(back.embeddings, batch.embeddings)
    assert back.counts == (1, 2)


def test_struct_numbers_come_back_as_int_when_integral() -> None:
    body = {
        "n": 3,
        "x": 2.5,
        "big": 2**53 - 1,
        "edge": 2**53,
        "nested": [1, {"k": -4}, None, True, "s"],
    }
    message = to_proto({"id": "7", "body": body, "query": {"limit": "2"}}, pb.AdminRequest)
    back = to_document(message)
    assert back == {"id": "7", "body": body, "query": {"limit": "2"}}
    kinds = [type(back["body"][k]) for k in ("n", "x", "big", "edge")]
    assert kinds == [int, float, int, float]
    assert type(back["body"]["nested"][1]["k"]) is int


def test_embeddings_data_is_bytes_in_the_message() -> None:
    batch = _features()
    message = to_proto(batch.to_dict(), pb.FeatureBatch)
    assert message.embeddings.data == batch.embeddings.astype("<f4").tobytes()
    assert list(message.embeddings.shape) == [2, 3]


def test_absent_message_field_stays_absent() -> None:
    assert "privacy" not in to_document(to_proto(_features().to_dict(), pb.FeatureBatch))
    message = to_proto({"idempotency_key": "k", "stats": {"task_id": "t"}}, pb.ReportRequest)
    assert message.WhichOneof("report") == "stats"
    assert to_document(message)["stats"]["type"] == "stats_report"
    assert "evaluation" not in to_document(message)
    assert "body" not in to_document(to_proto({"id": "v1"}, pb.AdminRequest))


def test_report_headers_may_be_left_out() -> None:
    document = {"task_id": "t", "model_version": "v1", "num_examples": 1, "metrics": {}}
    back = to_document(to_proto(document, pb.EvalReport))
    assert back == {"type": "eval_report", "version": 1, **document, "slice_metrics": {}}


def _error(document: Any, message_type: type[Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        to_proto(document, message_type)
    return info.value


def test_unknown_key_is_refused_naming_it() -> None:
    document = {**_task("train").to_dict(), "raw_rows": [1, 2]}
    error = _error(document, pb.Task)
    assert error.field == "raw_rows"
    assert "raw_rows" in str(error)
    nested = _task("train").to_dict()
    nested["config"]["momentum"] = 0.9
    assert _error(nested, pb.Task).field == "config.momentum"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("round_id", "7", "must be an integer"),
        ("round_id", 7.5, "must be an integer"),
        ("round_id", True, "must be an integer"),
        ("round_id", 2**64, "must fit in 64 bits"),
        ("deadline", "soon", "must be a number"),
        ("deadline", False, "must be a number"),
        ("task_id", 12, "must be a string"),
        ("config", [1, 2], "must be an object"),
        ("config", "fast", "must be an object"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(field: str, value: Any, expected: str) -> None:
    document = {**_task("train").to_dict(), field: value}
    error = _error(document, pb.Task)
    assert error.field == field
    assert expected in str(error)


def test_integral_float_is_accepted_for_an_int64() -> None:
    document = {**_task("train").to_dict(), "round_id": 7.0}
    assert to_proto(document, pb.Task).round_id == 7


@pytest.mark.parametrize(
    ("document", "message_type", "field", "expected"),
    [
        (
            {"dtype": "float32", "shape": [1, 1], "data": "not base64!"},
            pb.Embeddings,
            "data",
            "base64",
        ),
        ({"task_id": "t", "labels": {"a": 1}}, pb.FeatureBatch, "labels", "must be a list"),
        ({"task_id": "t", "labels": [1, "2"]}, pb.FeatureBatch, "labels[1]", "integer"),
        ({"task_id": "t", "metrics": {"a": "high"}}, pb.EvalReport, "metrics['a']", "number"),
        ({"task_id": "t", "metrics": [0.5]}, pb.EvalReport, "metrics", "must be an object"),
        ({"task_id": "t", "stats": [1]}, pb.StatsReport, "stats", "must be an object"),
        ({"task_id": "t", "stats": {"n": 2**60}}, pb.StatsReport, "stats['n']", "2**53"),
        ({"task_id": "t", "stats": {"n": {1, 2}}}, pb.StatsReport, "stats['n']", "JSON value"),
        ({"config": {"options": {"a": [1]}}}, pb.Task, "config.options['a']", "string, number"),
        ({"config": {"options": {"a": None}}}, pb.Task, "config.options['a']", "string, number"),
        (
            {"neighbours": [{"client_id": "1"}]},
            pb.SecAggKeyRoster,
            "neighbours[0].client_id",
            "integer",
        ),
        ({"neighbours": [3]}, pb.SecAggKeyRoster, "neighbours[0]", "must be an object"),
        ({"task_id": "t", "model_version": None}, pb.Task, "model_version", "must be a string"),
        ({"type": "task", "task_id": "t"}, pb.EvalReport, "type", "'eval_report'"),
        ({"type": "task", "version": 2}, pb.Task, "version", "version 2"),
        ({"type": "task", "version": True}, pb.Task, "version", "version True"),
        ({"type": "secagg_share_keys", "version": 1}, pb.SecAggShareKeys, "version", "unknown key"),
        ({"token": "\ud800"}, pb.RotateTokenRequest, "token", "token"),
        (
            {"stats": {"task_id": "t"}, "evaluation": {"task_id": "t"}},
            pb.ReportRequest,
            "evaluation",
            "alternatives",
        ),
    ],
)
def test_malformed_documents_raise_protocol_errors(
    document: Any, message_type: type[Any], field: str, expected: str
) -> None:
    error = _error(document, message_type)
    assert error.field == field
    assert expected in str(error)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    for value in ([], "task", None, 3):
        assert "must be an object" in str(_error(value, pb.Task))


def test_to_document_refuses_a_scalar_without_a_value() -> None:
    task = to_proto(_task("train").to_dict(), pb.Task)
    task.config.options["empty"].SetInParent()
    with pytest.raises(ProtocolError, match="holds no value") as info:
        to_document(task)
    assert info.value.field == "config.options['empty']"


_HOSTILE: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    float("nan"),
    2**70,
    "",
    "text",
    "\ud800",
    [],
    [1, "a", None],
    {},
    {"k": 1},
    {1: "a"},
    {"k": [{"x": None}]},
    b"bytes",
]


def _message_types() -> list[Any]:
    """Every message of fleet.proto that is a document (a Scalar is a value)."""
    names = sorted(set(pb.DESCRIPTOR.message_types_by_name) - {"Scalar"})
    return [getattr(pb, name) for name in names]


@pytest.mark.parametrize("message_type", _message_types(), ids=lambda kind: kind.__name__)
def test_any_value_in_any_field_gives_a_message_or_a_protocol_error(message_type: Any) -> None:
    """No protobuf, type or value error escapes, whatever a document holds."""
    outcomes = set()
    for name in [*message_type.DESCRIPTOR.fields_by_name, "no_such_field"]:
        for value in _HOSTILE:
            try:
                message = to_proto({name: value}, message_type)
            except ProtocolError as exc:
                outcomes.add("refused" if exc.field else f"refused without a field: {exc}")
                continue
            to_document(message)
            outcomes.add("accepted")
    assert "refused" in outcomes
    assert all(outcome in ("refused", "accepted") for outcome in outcomes), outcomes


def test_a_scalar_is_no_document() -> None:
    with pytest.raises(ProtocolError, match="a Scalar is a value"):
        to_proto({"text": "a"}, pb.Scalar)
    with pytest.raises(ProtocolError, match=r"a fedge\.v1\.Scalar is a value"):
        to_document(pb.Scalar(text="a"))


def test_to_document_refuses_a_struct_value_without_a_kind() -> None:
    request = pb.AdminRequest()
    request.body.fields["empty"].SetInParent()
    with pytest.raises(ProtocolError, match="holds no value") as info:
        to_document(request)
    assert info.value.field == "body['empty']"
