"""Roll back to before a time (``POST /v1/models/rollback {"before": TIME}``, the gRPC Admin
``Rollback`` with that body, ``fedge-coordinator models rollback --before TIME``): the version
that was production then becomes production again, with a ``rolled_back`` event.

A real coordinator (``serve --grpc-port 0``) over a state where v1 was production from T0,
v2 from T0 + 100 s and v3 (production now) from T0 + 200 s."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from coordinator.cli import main
from coordinator.sqlite_store import SQLiteStore
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto
from tests.support.coordinator import (
    ADMIN_TOKEN,
    FakeClock,
    bearer,
    build_service,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    write_admin_token,
)

T0 = 1_700_000_000.0


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class Coordinator:
    """One served state: REST, a gRPC channel, and the admin token file."""

    def __init__(self, url: str, channel: grpc.Channel, token_file: Path) -> None:
        self.url = url
        self.channel = channel
        self.token_file = token_file

    def rollback(self, body: Any = None, **kwargs: Any) -> requests.Response:
        return requests.post(
            self.url + "/v1/models/rollback",
            headers=bearer(ADMIN_TOKEN),
            json=body,
            timeout=10,
            **kwargs,
        )

    def grpc_rollback(self, body: dict[str, Any]) -> dict[str, Any]:
        method = self.channel.unary_unary(
            "/fedge.v1.Admin/Rollback",
            request_serializer=pb.AdminRequest.SerializeToString,
            response_deserializer=pb.Document.FromString,
        )
        request = to_proto({"id": "", "query": {}, "body": body}, pb.AdminRequest)
        metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
        document: dict[str, Any] = to_document(method(request, metadata=metadata, timeout=10))[
            "document"
        ]
        return document

    def production(self) -> str:
        answer = requests.get(
            self.url + "/v1/models/current", headers=bearer(ADMIN_TOKEN), timeout=10
        )
        assert answer.status_code == 200, answer.text
        version: str = answer.json()["version"]
        return version


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    clock = FakeClock(T0)
    store = SQLiteStore(tmp_path / "state.db")
    service = build_service(tmp_path, store=store, clock=clock)
    for seed, version in ((1, "v2"), (2, "v3")):
        clock.advance(100)
        bundle = tmp_path / f"bundle{seed}"
        make_bundle(bundle, seed=seed, model_version=f"taxi-{seed}")
        assert service.import_bundle(bundle).version == version
        assert service.promote(version).stage == "production"
    store.close()
    token_file = write_admin_token(tmp_path)
    command = serve_command(tmp_path, tmp_path / "bundle", token_file, "--on-demand")
    server = start_server(command, tmp_path, grpc=True)
    try:
        grpc_url = server.coordinator.grpc_url
        assert grpc_url is not None
        with grpc.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
            yield Coordinator(server.url, channel, token_file)
    finally:
        stop_server(server)


def test_rollback_before_a_time_restores_the_version_production_then_over_rest_and_grpc(
    coordinator: Coordinator,
) -> None:
    assert coordinator.production() == "v3"
    answer = coordinator.rollback({"before": _iso(T0 + 150)})
    assert answer.status_code == 200, answer.text
    restored = answer.json()
    assert (restored["version"], restored["stage"]) == ("v2", "production")
    event = restored["events"][-1]
    assert event["kind"] == "rolled_back"
    assert event["previous"] == "v3"
    assert (
        "rolled back from v3 to the production version of 2023-11-14T22:15:50" in (event["detail"])
    )
    assert coordinator.production() == "v2"

    # gRPC, with an offset instead of Z: T0 + 50 is v1's time.
    document = coordinator.grpc_rollback({"before": "2023-11-14T23:14:10+01:00"})
    assert (document["version"], document["stage"]) == ("v1", "production")
    assert coordinator.production() == "v1"

    # Already production at that time: unchanged, no new event.
    again = coordinator.rollback({"before": _iso(T0 + 50)})
    assert again.status_code == 200
    assert again.json()["events"] == document["events"]


def test_rollback_before_the_first_production_is_refused_and_changes_nothing(
    coordinator: Coordinator,
) -> None:
    answer = coordinator.rollback({"before": _iso(T0 - 1)})
    assert answer.status_code == 409
    assert answer.json()["error"] == "no_version_before"
    assert "no version was production before 2023-11-14T22:13:19" in answer.json()["detail"]
    with pytest.raises(grpc.RpcError) as info:
        coordinator.grpc_rollback({"before": _iso(T0)})  # v1's own promotion is not before
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata() or ())["fedge-error"] == "no_version_before"
    assert coordinator.production() == "v3"


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        ({"before": "yesterday"}, "invalid_time", "before must be an ISO 8601 time"),
        ({"before": 1700000000}, "invalid_time", "got 1700000000"),
        ({"after": _iso(T0)}, "invalid_request", "unknown fields ['after']"),
    ],
)
def test_a_malformed_rollback_body_is_refused_on_both_transports(
    coordinator: Coordinator, body: dict[str, Any], code: str, detail: str
) -> None:
    answer = coordinator.rollback(body)
    assert answer.status_code == 400
    assert answer.json()["error"] == code
    assert detail in answer.json()["detail"]
    with pytest.raises(grpc.RpcError) as info:
        coordinator.grpc_rollback(body)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata() or ())["fedge-error"] == code
    assert coordinator.production() == "v3"


def test_rollback_without_a_body_still_restores_the_previous_version(
    coordinator: Coordinator,
) -> None:
    answer = coordinator.rollback()
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == "v2"


def test_models_rollback_before_on_the_command_line(
    coordinator: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--coordinator", coordinator.url, "--admin-token-file", str(coordinator.token_file)]
    assert main(["models", "rollback", "--before", _iso(T0 + 120), *target, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"version": "v2"' in out
    assert coordinator.production() == "v2"

    assert main(["models", "rollback", "--before", "soon", *target]) == 2
    err = capsys.readouterr().err
    assert "fedge-coordinator: error: --before: before must be an ISO 8601 time" in err
    assert main(["models", "rollback", "--before", _iso(T0 - 5), *target]) == 1
    assert "no_version_before" in capsys.readouterr().err
    assert coordinator.production() == "v2"
