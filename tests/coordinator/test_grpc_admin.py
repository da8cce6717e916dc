"""The gRPC Admin service answers each RPC with the REST route's document, refuses what the
REST route refuses with the same code and detail, and needs the admin token.

A real coordinator (``fedge-coordinator serve --grpc-port 0``) serves both transports over
one state on loopback; its state holds v1 (production) and v2 (a candidate) from the start."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from coordinator.auth import hash_token
from coordinator.limits import MAX_JSON_BYTES
from coordinator.rpc.admin import ADMIN_METHODS
from coordinator.sqlite_store import SQLiteStore
from fedge.messages import EvalReport
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto
from tests.support.coordinator import (
    ADMIN_TOKEN,
    bearer,
    build_service,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    write_admin_token,
)


class Servers:
    """The REST URL and a gRPC channel of one coordinator."""

    def __init__(self, url: str, channel: grpc.Channel) -> None:
        self.url = url
        self.channel = channel

    def rest(
        self, method: str, path: str, *, token: str = ADMIN_TOKEN, **kwargs: Any
    ) -> requests.Response:
        return requests.request(
            method, self.url + path, headers=bearer(token), timeout=10, **kwargs
        )

    def call(
        self,
        rpc: str,
        *,
        token: str | None = ADMIN_TOKEN,
        id: str = "",
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"id": id, "query": query or {}}
        if body is not None:
            request["body"] = body
        method = self.channel.unary_unary(
            f"/fedge.v1.Admin/{rpc}",
            request_serializer=pb.AdminRequest.SerializeToString,
            response_deserializer=pb.Document.FromString,
        )
        metadata = [] if token is None else [("authorization", f"Bearer {token}")]
        answer = method(to_proto(request, pb.AdminRequest), metadata=metadata, timeout=10)
        document: dict[str, Any] = to_document(answer)["document"]
        return document


CANDIDATE = "v2"


@contextmanager
def _coordinator(workdir: Path) -> Iterator[Servers]:
    """A coordinator over a state that already holds v1 and the candidate v2; rounds open
    only on request."""
    store = SQLiteStore(workdir / "state.db")
    service = build_service(workdir, store=store)
    make_bundle(workdir / "bundle2", seed=1, model_version="taxi-20240601")
    assert service.import_bundle(workdir / "bundle2").version == CANDIDATE
    store.close()
    command = serve_command(workdir, workdir / "bundle", write_admin_token(workdir), "--on-demand")
    server = start_server(command, workdir, grpc=True)
    try:
        grpc_url = server.coordinator.grpc_url
        assert grpc_url is not None
        with grpc.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
            yield Servers(server.url, channel)
    finally:
        stop_server(server)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with _coordinator(tmp_path) as coordinator:
        yield coordinator


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One coordinator for the tests that change nothing but add clients."""
    with _coordinator(tmp_path_factory.mktemp("shared")) as coordinator:
        yield coordinator


def _register(servers: Servers, region: str) -> dict[str, Any]:
    answer = servers.rest("POST", "/v1/clients", json={"region": region})
    assert answer.status_code == 201, answer.text
    document: dict[str, Any] = answer.json()
    return document


def _failure(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _trailing(error: grpc.RpcError) -> dict[str, str]:
    return dict(error.trailing_metadata() or ())


def _timeless(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Task documents without what differs between two calls: the id and the times."""
    return [
        {k: v for k, v in t.items() if k not in ("task_id", "created_at", "deadline")}
        for t in tasks
    ]


def test_every_admin_rpc_answers_the_rest_document(servers: Servers) -> None:
    north, south = _register(servers, "north"), _register(servers, "south")
    checked: set[str] = set()

    def same(rpc: str, method: str, path: str, **call: Any) -> dict[str, Any]:
        document = servers.call(rpc, **call)
        answer = servers.rest(method, path)
        assert answer.status_code == 200, answer.text
        assert document == answer.json(), rpc
        checked.add(rpc)
        return document

    # Tasks: the same body over both transports makes the same tasks (ids aside).
    body = {"kind": "evaluate", "client_ids": [north["client_id"]], "deadline_seconds": 600}
    over_grpc = servers.call("CreateTasks", body=body)["tasks"]
    over_rest = servers.rest("POST", "/v1/tasks", json=body)
    assert over_rest.status_code == 201
    rest_tasks = over_rest.json()["tasks"]
    assert _timeless(over_grpc) == _timeless(rest_tasks)
    checked.add("CreateTasks")
    # A poor evaluation in region north: a report, and an accuracy_drop alert.
    report = EvalReport(over_grpc[0]["task_id"], "v1", 12, {"accuracy": 0.25})
    posted = servers.rest("POST", "/v1/evaluations", token=north["token"], json=report.to_dict())
    assert posted.status_code == 201, posted.text

    # Enrollment tokens.
    issued = servers.call("CreateEnrollmentToken", body={"label": "lab", "max_uses": 3})
    assert issued["token"]
    assert issued["max_uses"] == 3
    listed = same("ListEnrollmentTokens", "GET", "/v1/enrollment-tokens")
    assert listed["enrollment_tokens"] == [{k: v for k, v in issued.items() if k != "token"}]
    checked.add("CreateEnrollmentToken")
    token_id = issued["token_id"]
    revoked = same(
        "RevokeEnrollmentToken", "POST", f"/v1/enrollment-tokens/{token_id}/revoke", id=token_id
    )
    assert revoked["revoked_at"] is not None

    # Rounds.
    opened = servers.call("StartRound", body={"clients_per_round": 2, "deadline_seconds": 60})
    round_id = str(opened["round_id"])
    assert opened == servers.rest("GET", f"/v1/rounds/{round_id}").json()
    checked.add("StartRound")
    same("GetRound", "GET", f"/v1/rounds/{round_id}", id=round_id)
    same("ListRounds", "GET", "/v1/rounds")
    cancelled = same("CancelRound", "GET", f"/v1/rounds/{round_id}", id=round_id)
    assert cancelled["state"] == "failed"

    # Models.
    same("ListModels", "GET", "/v1/models")
    same("GetModel", "GET", "/v1/models/v1", id="v1")
    promoted = same("PromoteModel", "GET", f"/v1/models/{CANDIDATE}", id=CANDIDATE)
    assert promoted["stage"] == "production"
    rolled_back = same("Rollback", "GET", "/v1/models/v1")
    assert rolled_back["version"] == "v1"
    assert rolled_back["stage"] == "production"
    # Both record the admin token's id as the actor of the registry event.
    actor = "admin:" + hash_token(ADMIN_TOKEN)[:12]
    assert promoted["events"][-1]["actor"] == actor
    assert rolled_back["events"][-1]["actor"] == actor

    # Reports, alerts, clients.
    reports = same("ListReports", "GET", "/v1/reports?kind=evaluate", query={"kind": "evaluate"})
    assert len(reports["reports"]) == 1
    alerts = same(
        "ListAlerts", "GET", "/v1/alerts?kind=accuracy_drop", query={"kind": "accuracy_drop"}
    )
    assert len(alerts["alerts"]) == 1
    same("ListAlerts", "GET", "/v1/alerts?since=0", query={"since": "0"})
    # Quarantine: nothing is held in this state.
    assert same("ListQuarantine", "GET", "/v1/quarantine") == {"updates": []}
    north_id = north["client_id"]
    released = same("ReleaseQuarantine", "POST", f"/v1/quarantine/{north_id}/release", id=north_id)
    assert released == {"client_id": north_id, "released": []}
    client_id = south["client_id"]
    revoked_client = same("RevokeClient", "POST", f"/v1/clients/{client_id}/revoke", id=client_id)
    assert revoked_client["revoked_at"] is not None
    clients = same("ListClients", "GET", "/v1/clients")
    assert len(clients["clients"]) == 2

    assert checked == set(ADMIN_METHODS)


@pytest.mark.parametrize(
    ("rpc", "call", "method", "path", "body"),
    [
        ("GetModel", {"id": "v9"}, "GET", "/v1/models/v9", None),
        ("RevokeClient", {"id": "nobody"}, "POST", "/v1/clients/nobody/revoke", None),
        ("GetRound", {"id": "41"}, "GET", "/v1/rounds/41", None),
        ("PromoteModel", {"id": "v7"}, "POST", "/v1/models/v7/promote", None),
        ("Rollback", {}, "POST", "/v1/models/rollback", None),
        ("ListAlerts", {"query": {"since": "soon"}}, "GET", "/v1/alerts?since=soon", None),
        (
            "CreateEnrollmentToken",
            {"body": {"label": "x", "uses": 2}},
            "POST",
            "/v1/enrollment-tokens",
            {"label": "x", "uses": 2},
        ),
        (
            "CreateTasks",
            {"body": {"kind": "evaluate", "client_ids": "all"}},
            "POST",
            "/v1/tasks",
            {"kind": "evaluate", "client_ids": "all"},
        ),
        (
            "StartRound",
            {"body": {"clients_per_round": 0}},
            "POST",
            "/v1/rounds",
            {"clients_per_round": 0},
        ),
    ],
)
def test_refusals_carry_the_rest_code_status_and_detail(
    shared: Servers,
    rpc: str,
    call: dict[str, Any],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    answer = shared.rest(method, path, json=body)
    assert answer.status_code >= 400
    error = _failure(lambda: shared.call(rpc, **call))
    trailing = _trailing(error)
    assert trailing["fedge-error"] == answer.json()["error"]
    assert trailing["fedge-status"] == str(answer.status_code)
    assert error.details() == answer.json()["detail"]
    expected = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}
    assert error.code() == expected.get(answer.status_code, grpc.StatusCode.FAILED_PRECONDITION)
    models = shared.call("ListModels")["models"]
    assert [m["version"] for m in models if m["stage"] == "production"] == ["v1"]


def test_admin_rpcs_need_the_admin_token(shared: Servers) -> None:
    device = _register(shared, "north")
    refused = _failure(lambda: shared.call("ListClients", token=device["token"]))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _trailing(refused)["fedge-error"] == "admin_required"
    for token in (None, "not-a-token"):
        unknown = _failure(
            lambda token=token: shared.call("RevokeClient", token=token, id=device["client_id"])
        )
        assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _trailing(unknown)["fedge-status"] == "401"
    clients = {c["client_id"]: c for c in shared.call("ListClients")["clients"]}
    assert clients[device["client_id"]]["revoked_at"] is None


@pytest.mark.parametrize(
    ("rpc", "call", "expected"),
    [
        ("ListClients", {"id": "c1"}, "ListClients takes no id"),
        ("RevokeClient", {}, "RevokeClient needs id: a client id"),
        ("ListModels", {"body": {}}, "ListModels takes no body"),
        ("ListReports", {"query": {"limit": "3"}}, "unknown query parameters ['limit']"),
    ],
)
def test_a_request_field_the_rpc_does_not_take_is_refused(
    shared: Servers, rpc: str, call: dict[str, Any], expected: str
) -> None:
    error = _failure(lambda: shared.call(rpc, **call))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _trailing(error)["fedge-error"] == "invalid_request"
    assert expected in error.details()


def test_a_round_id_that_is_no_number_is_not_found(shared: Servers) -> None:
    error = _failure(lambda: shared.call("GetRound", id="latest"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert shared.rest("GET", "/v1/rounds/latest").status_code == 404


def test_bytes_that_are_no_request_and_oversized_requests_are_refused(shared: Servers) -> None:
    tokens = shared.call("ListEnrollmentTokens")
    raw = shared.channel.unary_unary("/fedge.v1.Admin/ListClients")
    metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    garbage = _failure(lambda: raw(b"\xff\xff\xff", metadata=metadata, timeout=10))
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _trailing(garbage)["fedge-error"] == "bad_message"
    big = {"label": "x" * (MAX_JSON_BYTES + 1)}
    error = _failure(lambda: shared.call("CreateEnrollmentToken", body=big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _trailing(error)["fedge-error"] == "payload_too_large"
    assert shared.call("ListEnrollmentTokens") == tokens
