"""The admin surface of quarantined updates: ``GET /v1/quarantine[?client_id=]`` and
``POST /v1/quarantine/<client_id>/release`` on REST, ``ListQuarantine`` and
``ReleaseQuarantine`` on the gRPC Admin service (the same documents), and
``fedge-coordinator quarantine list|release``.

A real coordinator (``serve --grpc-port 0``) over a state whose round 1 (still collecting,
two clients expected) holds one update from ``south``, quarantined for anomalies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from coordinator.auth import hash_token
from coordinator.cli import main
from coordinator.sqlite_store import SQLiteStore
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto
from tests.support.coordinator import (
    ADMIN_TOKEN,
    bearer,
    build_service,
    serve_command,
    start_server,
    stop_server,
    submission,
    write_admin_token,
)

REASON = "anomalies in fare: the mean is 14.2 training standard deviations away"


@dataclasses.dataclass
class World:
    url: str
    channel: grpc.Channel
    token_file: Path
    held: str
    """The client whose update is quarantined."""
    other: str
    """A client with nothing quarantined."""

    def rest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, self.url + path, headers=bearer(ADMIN_TOKEN), timeout=10, **kwargs
        )

    def call(self, rpc: str, *, id: str = "", query: dict[str, str] | None = None) -> Any:
        method = self.channel.unary_unary(
            f"/fedge.v1.Admin/{rpc}",
            request_serializer=pb.AdminRequest.SerializeToString,
            response_deserializer=pb.Document.FromString,
        )
        request = to_proto({"id": id, "query": query or {}}, pb.AdminRequest)
        answer = method(request, metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")], timeout=10)
        return to_document(answer)["document"]

    def target(self) -> list[str]:
        return ["--coordinator", self.url, "--admin-token-file", str(self.token_file)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = SQLiteStore(tmp_path / "state.db")
    service = build_service(
        tmp_path, store=store, continuous=False, clients_per_round=2, min_clients=2
    )
    south = service.register_client(region="south")
    north = service.register_client(region="north")
    round_ = service.open_round()
    client = service.authenticate(south.token)
    service.submit_update(client, submission(round_.round_id, south.client_id))
    (update,) = store.list_updates(round_.round_id)
    store.save_update(dataclasses.replace(update, quarantine=REASON))
    store.close()
    token_file = write_admin_token(tmp_path)
    command = serve_command(tmp_path, tmp_path / "bundle", token_file, "--on-demand")
    server = start_server(command, tmp_path, grpc=True)
    try:
        grpc_url = server.coordinator.grpc_url
        assert grpc_url is not None
        with grpc.insecure_channel(grpc_url.removeprefix("grpc://")) as channel:
            yield World(server.url, channel, token_file, south.client_id, north.client_id)
    finally:
        stop_server(server)


def test_quarantined_updates_are_listed_with_their_reasons_on_both_transports(
    world: World,
) -> None:
    answer = world.rest("GET", "/v1/quarantine")
    assert answer.status_code == 200, answer.text
    (update,) = answer.json()["updates"]
    assert (update["client_id"], update["round_id"]) == (world.held, 1)
    assert update["quarantine"] == REASON
    assert update["released_at"] is None
    assert world.call("ListQuarantine") == answer.json()

    mine = world.rest("GET", "/v1/quarantine", params={"client_id": world.held}).json()
    assert mine == answer.json()
    assert world.call("ListQuarantine", query={"client_id": world.other}) == {"updates": []}

    unknown = world.rest("GET", "/v1/quarantine", params={"client_id": "c-nobody"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "client_not_found"
    with pytest.raises(grpc.RpcError) as info:
        world.call("ListQuarantine", query={"client": world.held})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown query parameters ['client']" in (info.value.details() or "")


def test_releasing_a_client_counts_its_updates_again(world: World) -> None:
    answer = world.rest("POST", f"/v1/quarantine/{world.held}/release")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["client_id"] == world.held
    (released,) = document["released"]
    assert released["quarantine"] == REASON  # the reason stays on the record
    assert released["released_at"] is not None
    assert world.rest("GET", "/v1/quarantine").json() == {"updates": []}
    shown = world.rest("GET", "/v1/rounds/1").json()
    assert [u["client_id"] for u in shown["updates"]] == [world.held]
    assert shown["updates"][0]["released_at"] == released["released_at"]

    # Nothing is held any more: a second release (over gRPC) releases nothing.
    assert world.call("ReleaseQuarantine", id=world.held) == {
        "client_id": world.held,
        "released": [],
    }
    with pytest.raises(grpc.RpcError) as info:
        world.call("ReleaseQuarantine", id="c-nobody")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    missing = world.rest("POST", "/v1/quarantine/c-nobody/release")
    assert missing.status_code == 404


def test_releases_and_revocations_are_history_entries_with_the_operator(
    world: World, tmp_path: Path
) -> None:
    assert len(world.rest("POST", f"/v1/quarantine/{world.held}/release").json()["released"]) == 1
    assert world.call("RevokeClient", id=world.other)["revoked_at"] is not None
    assert world.rest("POST", f"/v1/clients/{world.held}/revoke").status_code == 200
    store = SQLiteStore(tmp_path / "state.db")
    try:
        events = store.list_model_events("")
    finally:
        store.close()
    actor = "admin:" + hash_token(ADMIN_TOKEN)[:12]
    assert [(e.kind, e.detail.split(":")[0], e.actor) for e in events] == [
        ("quarantine_released", f"client {world.held}", actor),
        ("client_revoked", f"client {world.other}", actor),
        ("client_revoked", f"client {world.held}", actor),
    ]


def test_quarantine_list_and_release_on_the_command_line(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quarantine", "list", *world.target()]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["round_id", "client_id", "task_id"]
    assert world.held in table[1]
    assert REASON in table[1]

    assert main(["quarantine", "list", "--client", world.other, *world.target(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["quarantine", "release", world.held, *world.target()]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"released 1 update(s) of client {world.held}\n")
    assert world.rest("GET", "/v1/quarantine").json() == {"updates": []}

    assert main(["quarantine", "release", "c-nobody", *world.target()]) == 1
    assert "client_not_found" in capsys.readouterr().err


def test_quarantine_commands_work_on_the_database_directly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    service = build_service(
        tmp_path, store=store, continuous=False, clients_per_round=2, min_clients=2
    )
    south = service.register_client(region="south")
    service.register_client(region="north")
    round_ = service.open_round()
    service.submit_update(
        service.authenticate(south.token), submission(round_.round_id, south.client_id)
    )
    (update,) = store.list_updates(round_.round_id)
    store.save_update(dataclasses.replace(update, quarantine=REASON))
    store.close()
    target = ["--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")]
    assert main(["quarantine", "list", *target, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["client_id"], listed["quarantine"]) == (south.client_id, REASON)
    assert main(["quarantine", "release", south.client_id, *target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["released"][0]["client_id"] == south.client_id
    assert main(["quarantine", "list", *target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
