"""The gRPC device API (``fedge.v1.Fleet``) on a real coordinator on loopback, called through
a real channel, beside its REST API on the same server: every call answers what the REST
route answers (the same documents, through :mod:`fedge.protocol.codec`), refusals carry
the REST error code and status, and both transports share one state (rounds, rate limits,
tokens)."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from coordinator.cli import main as coordinator_main
from coordinator.limits import GrpcLimits
from coordinator.rest import ApiConfig, create_app
from coordinator.rpc.fleet import peer_address
from coordinator.rpc.server import start_grpc_server
from coordinator.sqlite_store import SQLiteStore
from fedge.messages import EvalReport, FeatureBatch, StatsReport, encode_message
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    admin_call,
    bearer,
    build_service,
    local_training,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    training_stats,
    upload_headers,
    wait_for,
    write_admin_token,
)
from tests.support.secagg_client import HttpTransport, SecureDevice, make_wide_bundle

CHUNK = 100  # --grpc-chunk-bytes: every model file arrives in several chunks
STREAM_SECONDS = 2
MAX_UPLOAD = 1 << 20
RPC_TIMEOUT = 10


class RpcRefused(Exception):
    """A refused call: its status code, details and trailing metadata."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(f"{error.code()}: {error.details()}")
        self.code: grpc.StatusCode = error.code()
        self.details: str = error.details()
        self.metadata = {item.key: item.value for item in error.trailing_metadata() or ()}


class Fleet:
    """Raw calls of the Fleet service over an insecure channel."""

    def __init__(self, url: str) -> None:
        assert url.startswith("grpc://"), url
        self.channel = grpc.insecure_channel(url.removeprefix("grpc://"))

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _metadata(token: str | None) -> list[tuple[str, str]]:
        return [] if token is None else [("authorization", f"Bearer {token}")]

    def call(self, method: str, request: Any, answer: Any, token: str | None = None) -> Any:
        stub = self.channel.unary_unary(
            f"/fedge.v1.Fleet/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=answer.FromString,
        )
        try:
            return stub(request, metadata=self._metadata(token), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            raise RpcRefused(exc) from None

    def register(self, **fields: Any) -> dict[str, Any]:
        answer = self.call("Register", pb.RegisterRequest(**fields), pb.Registration)
        return to_document(answer)

    def next_task(self, token: str | None) -> pb.NextTaskResponse:
        return self.call("NextTask", pb.NextTaskRequest(), pb.NextTaskResponse, token)

    def download(
        self, token: str, version: str, name: str, if_none_match: str = ""
    ) -> tuple[pb.FileHeader, bytes, list[int]]:
        """The header, the file's bytes and the offsets of its chunks."""
        stub = self.channel.unary_stream(
            "/fedge.v1.Fleet/DownloadFile",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=pb.FileChunk.FromString,
        )
        request = pb.DownloadRequest(version=version, name=name, if_none_match=if_none_match)
        messages = stub(request, metadata=self._metadata(token), timeout=RPC_TIMEOUT)
        try:
            first, *rest = list(messages)
        except grpc.RpcError as exc:
            raise RpcRefused(exc) from None
        assert first.WhichOneof("part") == "header"
        assert all(m.WhichOneof("part") == "chunk" for m in rest)
        return first.header, b"".join(m.chunk.data for m in rest), [m.chunk.offset for m in rest]

    def upload(self, token: str, messages: Iterator[pb.UpdateChunk]) -> pb.UpdateReceipt:
        stub = self.channel.stream_unary(
            "/fedge.v1.Fleet/UploadUpdate",
            request_serializer=pb.UpdateChunk.SerializeToString,
            response_deserializer=pb.UpdateReceipt.FromString,
        )
        try:
            return stub(messages, metadata=self._metadata(token), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            raise RpcRefused(exc) from None


def update_stream(
    task: Mapping[str, Any], body: bytes, *, key: str, chunk: int = 1000, size: int | None = None
) -> Iterator[pb.UpdateChunk]:
    header = pb.UpdateHeader(
        round_id=task["round_id"],
        task_id=task["task_id"],
        num_examples=20,
        metrics={"loss": 0.5, "accuracy": 0.75},
        delta_sha256=hashlib.sha256(body).hexdigest(),
        codec="none",
        size=len(body) if size is None else size,
        idempotency_key=key,
    )
    yield pb.UpdateChunk(header=header)
    for offset in range(0, len(body), chunk):
        yield pb.UpdateChunk(chunk=pb.Chunk(offset=offset, data=body[offset : offset + chunk]))


def rest(method: str, url: str, token: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, timeout=HTTP_TIMEOUT, **kwargs)


def production_digest(server: ServerProcess) -> str:
    weights = admin_call(server.url, "GET", "/v1/models/current/weights")
    assert weights.status_code == 200
    return hashlib.sha256(weights.content).hexdigest()


def round_document(server: ServerProcess, round_id: int) -> dict[str, Any]:
    response = admin_call(server.url, "GET", f"/v1/rounds/{round_id}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def rejected_total(server: ServerProcess) -> float:
    text = admin_call(server.url, "GET", "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fedge_updates_rejected_total")
    )


def _serve(tmp_path: Path, *extra: str) -> ServerProcess:
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--grpc-chunk-bytes", str(CHUNK), "--grpc-stream-seconds", str(STREAM_SECONDS),
        "--max-upload-bytes", str(MAX_UPLOAD), *extra,
    )  # fmt: skip
    return start_server(command, tmp_path, grpc=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A coordinator serving REST and gRPC; a round opens once two clients are registered."""
    process = _serve(
        tmp_path,
        "--clients-per-round", "2", "--min-clients", "2", "--deadline-seconds", "60",
        "--retry-after", "1",
    )  # fmt: skip
    try:
        yield process
    finally:
        stop_server(process)


@pytest.fixture
def fleet(server: ServerProcess) -> Iterator[Fleet]:
    assert server.coordinator.grpc_url is not None
    client = Fleet(server.coordinator.grpc_url)
    try:
        yield client
    finally:
        client.close()


def test_registration_and_signing_keys_over_grpc_equal_the_rest_answers(
    server: ServerProcess, fleet: Fleet
) -> None:
    key = uuid.uuid4().hex
    over_grpc = fleet.register(region="north", metadata={"os": "linux"}, registration_key=key)
    again = fleet.register(region="north", metadata={"os": "linux"}, registration_key=key)
    over_rest = rest(
        "POST",
        f"{server.url}/v1/clients",
        json={"region": "north", "metadata": {"os": "linux"}},
        headers={"Idempotency-Key": key},
    )
    assert over_rest.status_code == 200, over_rest.text  # a retry: the same client
    assert over_grpc == again == over_rest.json()
    assert over_grpc["token_type"] == "Bearer"
    keys = fleet.call("GetSigningKeys", pb.SigningKeysRequest(), pb.SigningKeys)
    assert to_document(keys) == rest("GET", f"{server.url}/v1/keys").json()
    assert over_grpc["signing_key"] == to_document(keys)["current"]
    clients = admin_call(server.url, "GET", "/v1/clients").json()["clients"]
    assert [c["client_id"] for c in clients] == [over_grpc["client_id"]]
    log = server.log()
    assert f"gRPC on {server.coordinator.grpc_url}" in log
    assert over_grpc["token"] not in log


def test_each_clients_last_call_is_recorded_with_its_transport(
    tmp_path: Path, server: ServerProcess, fleet: Fleet
) -> None:
    over_grpc = fleet.register(region="north")
    over_rest = rest("POST", f"{server.url}/v1/clients", json={"region": "south"}).json()
    fleet.next_task(over_grpc["token"])  # a task or a retry-after: either is a call
    assert rest("GET", f"{server.url}/v1/tasks/next", over_rest["token"]).status_code in (200, 204)
    store = SQLiteStore(tmp_path / "state.db")
    try:
        seen = store.clients_seen([over_grpc["client_id"], over_rest["client_id"]])
    finally:
        store.close()
    assert seen[over_grpc["client_id"]][1] == "grpc"
    assert seen[over_rest["client_id"]][1] == "rest"


def test_a_round_with_a_grpc_device_and_a_rest_device_commits(
    server: ServerProcess, fleet: Fleet
) -> None:
    device = fleet.register(region="north")["token"]
    waiting = fleet.next_task(device)
    assert not waiting.HasField("task")
    assert waiting.retry_after == 1.0  # --retry-after 1, as REST's Retry-After says
    polled = rest("GET", f"{server.url}/v1/tasks/next", device)
    assert (polled.status_code, polled.headers["Retry-After"]) == (204, "1")
    other = rest("POST", f"{server.url}/v1/clients", json={"region": "south"}).json()["token"]

    answer = wait_for(lambda: (a := fleet.next_task(device)).HasField("task") and a)
    task = to_document(answer.task)
    assert task == rest("GET", f"{server.url}/v1/tasks/next", device).json()
    assert (task["kind"], task["round_id"], task["model_version"]) == ("train", 1, "v1")

    # Downloads: the REST bytes, sha256 and manifest signature, in chunks at exact offsets;
    # each counts as the round's bytes_down, and an unchanged file sends no chunk.
    before = round_document(server, 1)["bytes_down"]
    sizes = 0
    for name, route in (("manifest.json", "manifest"), ("weights.safetensors", "weights")):
        header, data, offsets = fleet.download(device, "v1", name)
        over_rest = rest("GET", f"{server.url}/v1/models/v1/{route}", device)
        assert data == over_rest.content
        assert offsets == list(range(0, len(data), CHUNK))
        assert len(offsets) > 1
        assert (header.name, header.model_version, header.size) == (name, "v1", len(data))
        assert header.sha256 == over_rest.headers["X-Fedge-Sha256"]
        assert header.sha256 == hashlib.sha256(data).hexdigest()
        assert header.signature == over_rest.headers.get("X-Fedge-Signature", "")
        assert bool(header.signature) == (name == "manifest.json")
        sizes += 2 * len(data)
        unchanged, nothing, none = fleet.download(device, "v1", name, if_none_match=header.sha256)
        assert unchanged.not_modified
        assert unchanged.sha256 == header.sha256
        assert (nothing, none) == (b"", [])
    manifest = fleet.download(device, "v1", "manifest.json")[1]
    sizes += len(manifest)
    for name in json.loads(manifest)["files"]:
        header, data, _ = fleet.download(device, "v1", name)
        assert data == rest("GET", f"{server.url}/v1/models/v1/files/{name}", device).content
        assert header.sha256 == hashlib.sha256(data).hexdigest()
        sizes += 2 * len(data)
    assert round_document(server, 1)["bytes_down"] - before == sizes

    # The update: chunked over gRPC; a retry over REST and over gRPC is the same receipt.
    weights = Weights.from_bytes(fleet.download(device, "v1", "weights.safetensors")[1])
    body = local_training(weights, seed=1).delta(weights).to_bytes()
    receipt = to_document(fleet.upload(device, update_stream(task, body, key="grpc-key-1")))
    assert receipt["duplicate"] is False
    assert (receipt["round_id"], receipt["task_id"]) == (1, task["task_id"])
    assert receipt["sha256"] == hashlib.sha256(body).hexdigest()
    retried = rest(
        "POST",
        f"{server.url}/v1/rounds/1/updates",
        data=body,
        headers=upload_headers(device, task["task_id"], num_examples=20, key="grpc-key-1"),
    )
    assert retried.status_code == 200, retried.text
    assert retried.json() == {**receipt, "duplicate": True}
    again = fleet.upload(device, update_stream(task, body, key="grpc-key-1", chunk=333))
    assert to_document(again) == retried.json()

    other_task = wait_for(lambda: rest("GET", f"{server.url}/v1/tasks/next", other).json())
    uploaded = rest(
        "POST",
        f"{server.url}/v1/rounds/1/updates",
        data=local_training(weights, seed=2).delta(weights).to_bytes(),
        headers=upload_headers(other, other_task["task_id"], num_examples=30),
    )
    assert uploaded.status_code == 201, uploaded.text
    committed = wait_for(lambda: (r := round_document(server, 1))["state"] == "committed" and r)
    assert committed["num_updates"] == 2
    assert committed["result_version"] == "v2"
    assert {u["sha256"] for u in committed["updates"]} >= {receipt["sha256"]}


def _refused(call: Any) -> RpcRefused:
    with pytest.raises(RpcRefused) as refused:
        call()
    return refused.value


def test_upload_streams_that_break_the_rules_are_refused_and_recorded(
    server: ServerProcess, fleet: Fleet
) -> None:
    device = fleet.register(region="north")["token"]
    rest("POST", f"{server.url}/v1/clients", json={"region": "south"})
    task = to_document(wait_for(lambda: (a := fleet.next_task(device)).HasField("task") and a).task)
    body = Weights.from_bytes(fleet.download(device, "v1", "weights.safetensors")[1]).to_bytes()
    digest, rejected = production_digest(server), rejected_total(server)

    def header(size: int = len(body)) -> pb.UpdateChunk:
        return next(update_stream(task, body, key=uuid.uuid4().hex, size=size))

    def chunk(offset: int, data: bytes) -> pb.UpdateChunk:
        return pb.UpdateChunk(chunk=pb.Chunk(offset=offset, data=data))

    cases: Sequence[tuple[list[pb.UpdateChunk], grpc.StatusCode, str]] = (
        ([chunk(0, body)], grpc.StatusCode.INVALID_ARGUMENT, "invalid_stream"),
        ([header(), header()], grpc.StatusCode.INVALID_ARGUMENT, "invalid_stream"),
        ([header(), chunk(5, body[5:])], grpc.StatusCode.INVALID_ARGUMENT, "invalid_chunk"),
        (
            [header(), chunk(0, body[:50]), chunk(40, body[40:])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_chunk",
        ),
        ([header(), chunk(0, body[:-1])], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        (
            [header(10), chunk(0, body)],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "payload_too_large",
        ),
        ([header(MAX_UPLOAD + 1)], grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large"),
    )
    for messages, code, error in cases:
        refused = _refused(lambda m=messages: fleet.upload(device, iter(m)))
        assert (refused.code, refused.metadata["fedge-error"]) == (code, error), refused
        status = "413" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else "400"
        assert refused.metadata["fedge-status"] == status

    # A stream that stalls after its header is cut off at --grpc-stream-seconds, and the
    # server goes on answering.
    release = threading.Event()

    def stalled() -> Iterator[pb.UpdateChunk]:
        yield header()
        release.wait(30)

    began = time.monotonic()
    try:
        refused = _refused(lambda: fleet.upload(device, stalled()))
    finally:
        release.set()
    assert (refused.code, refused.metadata["fedge-error"]) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "stream_timeout",
    )
    assert STREAM_SECONDS - 0.5 <= time.monotonic() - began < STREAM_SECONDS + 5
    assert fleet.next_task(device).HasField("task")
    # A device that cancels its upload (a daemon stopping) is no rejected update.
    cancelled = threading.Event()

    def interrupted() -> Iterator[pb.UpdateChunk]:
        yield header()
        yield chunk(0, body[:10])
        cancelled.wait(30)

    stub = fleet.channel.stream_unary(
        "/fedge.v1.Fleet/UploadUpdate",
        request_serializer=pb.UpdateChunk.SerializeToString,
        response_deserializer=pb.UpdateReceipt.FromString,
    )
    call = stub.future(interrupted(), metadata=[("authorization", f"Bearer {device}")])
    time.sleep(0.5)
    assert call.cancel()
    cancelled.set()
    assert call.cancelled()
    assert fleet.next_task(device).HasField("task")
    assert wait_for(lambda: rejected_total(server) - rejected == len(cases) + 1)
    assert production_digest(server) == digest
    assert round_document(server, 1)["num_updates"] == 0


def test_reports_over_grpc_are_stored_and_listed_as_over_rest(
    server: ServerProcess, fleet: Fleet
) -> None:
    registration = fleet.register(region="north")
    device, client_id = registration["token"], registration["client_id"]
    tasks = {}
    for kind in ("stats", "evaluate", "features"):
        created = admin_call(
            server.url, "POST", "/v1/tasks", json={"kind": kind, "client_ids": [client_id]}
        )
        assert created.status_code == 201, created.text
        (tasks[kind],) = created.json()["tasks"]
    stats = StatsReport(tasks["stats"]["task_id"], training_stats(4))
    evaluation = EvalReport(tasks["evaluate"]["task_id"], "v1", 40, {"accuracy": 0.75})
    batch = FeatureBatch(
        tasks["features"]["task_id"], np.ones((3, 5), dtype=np.float32), np.array([0, 1, 0])
    )
    receipts = {}
    for field, report, message_type in (
        ("stats", stats, pb.StatsReport),
        ("evaluation", evaluation, pb.EvalReport),
        ("features", batch, pb.FeatureBatch),
    ):
        request = pb.ReportRequest(idempotency_key=uuid.uuid4().hex)
        getattr(request, field).CopyFrom(to_proto(report.to_dict(), message_type))
        receipt = to_document(fleet.call("SubmitReport", request, pb.ReportReceipt, device))
        assert (receipt["kind"], receipt["client_id"]) == (field, client_id)
        assert receipt["task_id"] == report.task_id
        receipts[field] = receipt
    assert receipts["evaluation"]["model_version"] == "v1"
    listed = admin_call(server.url, "GET", "/v1/reports").json()["reports"]
    by_kind = {entry["kind"]: entry for entry in listed}
    assert set(by_kind) == {"stats", "evaluation", "features"}
    assert by_kind["evaluation"]["document"] == encode_message(evaluation)[0]
    for field, receipt in receipts.items():
        assert by_kind[field]["report_id"] == receipt["report_id"]
        assert by_kind[field]["received_at"] == receipt["received_at"]
    # The same report again over REST is refused as over gRPC: the task is answered.
    again = rest("POST", f"{server.url}/v1/evaluations", device, json=evaluation.to_dict())
    request = pb.ReportRequest(evaluation=to_proto(evaluation.to_dict(), pb.EvalReport))
    refused = _refused(lambda: fleet.call("SubmitReport", request, pb.ReportReceipt, device))
    assert again.status_code >= 400
    assert refused.metadata["fedge-status"] == str(again.status_code)
    assert refused.metadata["fedge-error"] == again.json()["error"]
    assert refused.details == again.json()["detail"]


def test_decline_and_token_rotation_over_grpc_answer_as_rest(
    server: ServerProcess, fleet: Fleet
) -> None:
    registration = fleet.register(region="north")
    device, client_id = registration["token"], registration["client_id"]
    created = admin_call(
        server.url, "POST", "/v1/tasks", json={"kind": "evaluate", "client_ids": [client_id]}
    )
    (task,) = created.json()["tasks"]
    declined = fleet.call(
        "DeclineTask",
        pb.DeclineRequest(task_id=task["task_id"], reason="min_rows"),
        pb.DeclineResponse,
        device,
    )
    assert to_document(declined) == {"task_id": task["task_id"], "status": "declined"}
    again = rest(
        "POST", f"{server.url}/v1/tasks/{task['task_id']}/decline", device, json={"reason": "x"}
    )
    assert again.status_code == 200, again.text
    assert again.json() == to_document(declined)

    rotated = to_document(
        fleet.call("RotateToken", pb.RotateTokenRequest(), pb.TokenRotation, device)
    )
    assert rotated["client_id"] == client_id
    assert rotated["token"] != device
    refused = _refused(lambda: fleet.next_task(device))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.metadata["fedge-status"] == "401"
    assert rest("GET", f"{server.url}/v1/tasks/next", device).status_code == 401
    assert rest("GET", f"{server.url}/v1/tasks/next", rotated["token"]).status_code in (200, 204)
    proposed = "fedge_" + secrets.token_urlsafe(32)
    chosen = fleet.call(
        "RotateToken", pb.RotateTokenRequest(token=proposed), pb.TokenRotation, rotated["token"]
    )
    assert chosen.token == proposed
    assert not fleet.next_task(proposed).HasField("task")


def test_refusals_carry_the_rest_error_code_status_and_detail(
    server: ServerProcess, fleet: Fleet
) -> None:
    device = fleet.register(region="north")["token"]
    pairs: Sequence[tuple[Any, requests.Response, grpc.StatusCode]] = (
        (
            lambda: fleet.next_task(None),
            rest("GET", f"{server.url}/v1/tasks/next"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            lambda: fleet.next_task("fedge_unknown"),
            rest("GET", f"{server.url}/v1/tasks/next", "fedge_unknown"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            lambda: fleet.next_task(ADMIN_TOKEN),
            rest("GET", f"{server.url}/v1/tasks/next", ADMIN_TOKEN),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            lambda: fleet.download(device, "v9", "manifest.json"),
            rest("GET", f"{server.url}/v1/models/v9/manifest", device),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: fleet.call(
                "DeclineTask",
                pb.DeclineRequest(task_id="t-none", reason="x"),
                pb.DeclineResponse,
                device,
            ),
            rest("POST", f"{server.url}/v1/tasks/t-none/decline", device, json={"reason": "x"}),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda: fleet.call(
                "RotateToken", pb.RotateTokenRequest(token="short"), pb.TokenRotation, device
            ),
            rest("POST", f"{server.url}/v1/clients/me/token", device, json={"token": "short"}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    )
    for call, over_rest, code in pairs:
        refused = _refused(call)
        assert refused.code == code, refused
        assert refused.metadata["fedge-status"] == str(over_rest.status_code)
        assert refused.metadata["fedge-error"] == over_rest.json()["error"]
        assert refused.details == over_rest.json()["detail"]
    traversal = _refused(lambda: fleet.download(device, "v1", "../state.db"))
    assert traversal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert traversal.metadata["fedge-error"] == "invalid_file_name"
    garbage = fleet.channel.unary_unary("/fedge.v1.Fleet/NextTask")
    with pytest.raises(grpc.RpcError) as undecodable:
        garbage(b"\xff\xff\xff", metadata=[("authorization", f"Bearer {device}")], timeout=5)
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not fleet.next_task(device).HasField("task")  # the server still answers
    log = server.log()
    assert "gRPC next_task -> PERMISSION_DENIED client_token_required" in log
    assert "gRPC download_file -> INVALID_ARGUMENT invalid_file_name" in log
    assert device not in log


def test_the_registration_rate_limit_is_shared_with_rest(tmp_path: Path) -> None:
    server = _serve(tmp_path, "--registration-burst", "2", "--registration-rate", "0.01")
    assert server.coordinator.grpc_url is not None
    fleet = Fleet(server.coordinator.grpc_url)
    try:
        first = rest("POST", f"{server.url}/v1/clients", json={})
        assert first.status_code == 201
        fleet.register()
        refused = _refused(fleet.register)
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (refused.metadata["fedge-error"], refused.metadata["fedge-status"]) == (
            "rate_limited",
            "429",
        )
        assert int(refused.metadata["retry-after"]) >= 1
        over_rest = rest("POST", f"{server.url}/v1/clients", json={})
        assert over_rest.status_code == 429
        assert int(over_rest.headers["Retry-After"]) >= 1
        assert len(admin_call(server.url, "GET", "/v1/clients").json()["clients"]) == 2
    finally:
        fleet.close()
        stop_server(server)


def test_stalled_upload_streams_free_their_workers(tmp_path: Path) -> None:
    """Two workers, one upload slot, four uploads that stall after their header: one
    holds the slot until the stream limit, the other three are refused at once (the second
    worker stays free), and then the server answers and holds no thread for them."""
    service = build_service(tmp_path)
    app = create_app(service, ApiConfig())
    limits = GrpcLimits(workers=2, max_uploads=1, stream_seconds=1)
    server = start_grpc_server(app.extensions["fedge"], host="127.0.0.1", port=0, limits=limits)
    fleet = Fleet(f"grpc://127.0.0.1:{server.port}")
    release = threading.Event()
    try:
        token = fleet.register()["token"]

        def stalled() -> Iterator[pb.UpdateChunk]:
            yield pb.UpdateChunk(header=pb.UpdateHeader(round_id=1, task_id="t", size=10))
            release.wait(30)

        stub = fleet.channel.stream_unary(
            "/fedge.v1.Fleet/UploadUpdate",
            request_serializer=pb.UpdateChunk.SerializeToString,
            response_deserializer=pb.UpdateReceipt.FromString,
        )
        began = time.monotonic()
        calls = [
            stub.future(stalled(), metadata=[("authorization", f"Bearer {token}")])
            for _ in range(4)
        ]
        errors = [call.exception(timeout=15) for call in calls]
        assert all(isinstance(error, grpc.RpcError) for error in errors)
        outcomes = sorted(
            (error.code().name, dict(error.trailing_metadata())["fedge-error"]) for error in errors
        )
        assert outcomes == [
            ("DEADLINE_EXCEEDED", "stream_timeout"),
            *[("RESOURCE_EXHAUSTED", "too_many_uploads")] * 3,
        ]
        assert time.monotonic() - began < 10
        assert not fleet.next_task(token).HasField("task")
        assert wait_for(
            lambda: not any(t.name == "fedge-grpc-stream" for t in threading.enumerate())
        )
    finally:
        release.set()
        fleet.close()
        server.stop(None)


# Secure aggregation ----------------------------------------------------------------------

SHAPES = {"head/kernel": (16, 8), "head/bias": (8,)}
SECURE_MESSAGES = {
    "advertise": pb.SecAggAdvertiseKeys,
    "share": pb.SecAggShareKeys,
    "unmask": pb.SecAggUnmaskResponse,
}


class GrpcSecAggTransport:
    """The transport of :class:`tests.support.secagg_client.SecureDevice` over gRPC."""

    def __init__(self, fleet: Fleet, token: str) -> None:
        self.fleet = fleet
        self.token = token

    def next_task(self) -> dict[str, Any] | None:
        answer = self.fleet.next_task(self.token)
        return to_document(answer.task) if answer.HasField("task") else None

    def payload(self, round_id: int, stage: str) -> dict[str, Any]:
        request = pb.SecAggPayloadRequest(round_id=round_id, stage=stage)
        answer = self.fleet.call("GetSecAggPayload", request, pb.SecAggPayload, self.token)
        return to_document(getattr(answer, answer.WhichOneof("payload")))

    def post(
        self,
        round_id: int,
        stage: str,
        *,
        task_id: str,
        document: dict[str, Any] | None,
        body: bytes | None,
        metrics: Mapping[str, float] | None,
    ) -> None:
        request = pb.SecAggSubmission(
            round_id=round_id,
            stage=stage,
            task_id=task_id,
            idempotency_key=uuid.uuid4().hex,
            metrics=dict(metrics or {}),
        )
        if body is not None:
            request.masked = body
        else:
            assert document is not None
            getattr(request, stage).CopyFrom(to_proto(document, SECURE_MESSAGES[stage]))
        receipt = self.fleet.call("SubmitSecAgg", request, pb.SecAggReceipt, self.token)
        assert (receipt.round_id, receipt.stage, receipt.duplicate) == (round_id, stage, False)


def test_a_secure_round_runs_its_stages_over_grpc(tmp_path: Path) -> None:
    make_wide_bundle(tmp_path / "bundle", SHAPES)
    settings = tmp_path / "round-config.json"
    settings.write_text(json.dumps({"secagg_clip": 0.05, "secagg_example_cap": 100}))
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--secure-aggregation", "--on-demand", "--clients-per-round", "4", "--min-clients", "3",
        "--round-config", str(settings),
    )  # fmt: skip
    server = start_server(command, tmp_path, grpc=True)
    assert server.coordinator.grpc_url is not None
    fleet = Fleet(server.coordinator.grpc_url)
    try:
        dimension = 16 * 8 + 8
        devices = []
        tokens = []
        for i in range(4):
            token = fleet.register()["token"]
            tokens.append(token)
            transport: Any = (
                GrpcSecAggTransport(fleet, token) if i < 3 else HttpTransport(server.url, token)
            )
            vector = np.random.default_rng(300 + i).normal(0.0, 0.03, dimension)
            devices.append(SecureDevice(transport, vector, 15 + i, seed=i))
        assert admin_call(server.url, "POST", "/v1/rounds", json={}).status_code == 201
        early = _refused(
            lambda: fleet.call(
                "GetSecAggPayload",
                pb.SecAggPayloadRequest(round_id=1, stage="unmask"),
                pb.SecAggPayload,
                tokens[0],
            )
        )
        assert early.code == grpc.StatusCode.FAILED_PRECONDITION
        assert (early.metadata["fedge-error"], early.metadata["fedge-status"]) == (
            "secagg_stage",
            "409",
        )
        assert int(early.metadata["retry-after"]) >= 1
        for device in devices:
            assert wait_for(device.step) == "advertise"
        roster = GrpcSecAggTransport(fleet, tokens[0]).payload(1, "share")
        assert roster == rest("GET", f"{server.url}/v1/rounds/1/secagg/share", tokens[0]).json()
        for stage in ("share", "mask", "unmask"):
            for device in devices:
                assert wait_for(device.step) == stage
        round_ = wait_for(
            lambda: (r := round_document(server, 1))["state"] in ("committed", "failed") and r
        )
        assert round_["state"] == "committed", round_["failure_reason"]
    finally:
        fleet.close()
        stop_server(server)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50123", "127.0.0.1"),
        ("ipv6:[::1]:50123", "::1"),
        ("ipv6:%5B::1%5D:50123", "::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_the_registration_limit_keys_a_grpc_caller_by_its_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


# The serve flags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grpc-port-file", "PORTFILE"], "--grpc-port-file needs --grpc-port"),
        (["--grpc-port", "70000"], "--grpc-port"),
        (["--grpc-port", "0", "--grpc-chunk-bytes", "0"], "chunk_bytes"),
        (["--grpc-port", "0", "--grpc-workers", "0"], "workers"),
        (["--grpc-port", "0", "--grpc-stream-seconds", "-1"], "stream_seconds"),
    ],
)
def test_serve_refuses_bad_grpc_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    make_bundle(tmp_path / "bundle")
    args = serve_command(tmp_path, tmp_path / "bundle", write_admin_token(tmp_path))
    flags = [str(tmp_path / "grpc-port") if f == "PORTFILE" else f for f in flags]
    assert coordinator_main(["serve", *args, *flags]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert not (tmp_path / "state.db").exists()
