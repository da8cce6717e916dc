"""The gRPC API against a hostile caller, on ONE real ``fedge-coordinator serve --grpc-port
0`` on loopback, with raw channel calls (``fedge.protocol.fleet_pb2``, no edge client):
oversized and undecodable messages, upload streams that lie about their size, skip, overlap
or never end, update metrics JSON could not carry (NaN, infinities), hostile registrations,
tokens that are missing, malformed, unknown, revoked, of the wrong kind or sent twice, an
expired enrollment token, secure-aggregation stages out of order, unknown model versions,
path traversal in a file name and a method that does not exist.

Every case checks the status code and the ``fedge-error`` trailing metadata (a refusal of
the gRPC runtime itself, before any handler runs - a message over the receive limit, an
unknown method - carries none, and the case says so), that the production model's weights
are unchanged and that the server still answers at once. The module's server holds round 2
collecting with two of three devices selected, and needs both of their updates, so no case
here can commit it; round 1 was cancelled.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf.message import Message

from fedge.protocol import fleet_pb2 as pb
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    ServerProcess,
    admin_call,
    delta,
    make_bundle,
    production_digest,
    serve_command,
    start_server,
    stop_server,
    wait_for,
    write_admin_token,
)

pytestmark = pytest.mark.timeout(120)

StartServer = Callable[..., ServerProcess]
ENROLLMENT_TOKEN = "enroll-" + "fedcba9876543210" * 2
STREAM_SECONDS = 2.0
CHUNK_SECONDS = 1.0
GRPC_WORKERS = 4
MAX_UPLOADS = 3  # below the workers: one stays free for other calls
MAX_UPLOAD_BYTES = 4096
CHUNK = 32
CALL_TIMEOUT = 10.0


@dataclass
class Device:
    client_id: str
    token: str


@dataclass
class World:
    server: ServerProcess
    channel: grpc.Channel
    digest: str
    version: str
    selected: list[Device]
    outsider: Device
    revoked: Device
    tasks: dict[str, pb.Task]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def attacker(self) -> Device:
        """A selected device whose task the upload cases abuse."""
        return self.selected[0]

    @property
    def task(self) -> pb.Task:
        return self.tasks[self.attacker.client_id]


# Raw calls ------------------------------------------------------------------------------


def _serialize(message: Message | bytes) -> bytes:
    if isinstance(message, bytes):
        return message
    serialized: bytes = message.SerializeToString()
    return serialized


def _metadata(token: str | None, authorization: str | None = None) -> list[tuple[str, str]]:
    if authorization is not None:
        return [("authorization", authorization)]
    return [] if token is None else [("authorization", f"Bearer {token}")]


def unary(
    channel: grpc.Channel,
    method: str,
    request: Any,
    response_type: Any,
    *,
    token: str | None = None,
    authorization: str | None = None,
    service: str = "Fleet",
    timeout: float = CALL_TIMEOUT,
) -> Any:
    call = channel.unary_unary(
        f"/fedge.v1.{service}/{method}",
        request_serializer=_serialize,
        response_deserializer=response_type.FromString,
    )
    return call(request, metadata=_metadata(token, authorization), timeout=timeout)


def download(
    channel: grpc.Channel, request: pb.DownloadRequest, token: str | None
) -> list[pb.FileChunk]:
    call = channel.unary_stream(
        "/fedge.v1.Fleet/DownloadFile",
        request_serializer=_serialize,
        response_deserializer=pb.FileChunk.FromString,
    )
    return list(call(request, metadata=_metadata(token), timeout=CALL_TIMEOUT))


def upload(
    channel: grpc.Channel,
    token: str | None,
    messages: Iterable[Any],
    *,
    timeout: float = CALL_TIMEOUT,
) -> pb.UpdateReceipt:
    call = channel.stream_unary(
        "/fedge.v1.Fleet/UploadUpdate",
        request_serializer=_serialize,
        response_deserializer=pb.UpdateReceipt.FromString,
    )
    receipt: pb.UpdateReceipt = call(iter(messages), metadata=_metadata(token), timeout=timeout)
    return receipt


def refused(action: Callable[[], Any]) -> grpc.RpcError:
    """The error ``action`` ends with (a test failure if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        action()
    return info.value


def trailers(error: grpc.RpcError) -> dict[str, str]:
    return {key: value for key, value in error.trailing_metadata() or ()}


def assert_refused(
    error: grpc.RpcError, code: grpc.StatusCode, fedge_error: str | None, phrase: str = ""
) -> dict[str, str]:
    """The status ``code``, the ``fedge-error`` trailer (None: a refusal of the gRPC runtime,
    which carries none) and ``phrase`` in the details; the trailers."""
    metadata = trailers(error)
    assert error.code() == code, (error.code(), error.details(), metadata)
    assert metadata.get("fedge-error") == fedge_error, metadata
    if fedge_error is not None:
        assert metadata.get("fedge-status", "").isdigit(), metadata
    assert phrase in (error.details() or ""), error.details()
    return metadata


def assert_unharmed(world: World) -> None:
    """The production model is what it was, round 2 still collects, and both transports
    answer at once."""
    started = time.monotonic()
    answer = unary(
        world.channel,
        "NextTask",
        pb.NextTaskRequest(),
        pb.NextTaskResponse,
        token=world.outsider.token,
        timeout=5.0,
    )
    assert time.monotonic() - started < 2.0
    assert not answer.HasField("task")
    assert answer.retry_after >= 1
    health = requests.get(f"{world.url}/healthz", timeout=HTTP_TIMEOUT)
    assert health.status_code == 200, health.text
    assert production_digest(world.url) == world.digest
    round_ = admin_call(world.url, "GET", "/v1/rounds/2")
    assert round_.status_code == 200, round_.text
    assert round_.json()["state"] == "collecting"


def _register(channel: grpc.Channel, token: str | None, region: str = "north") -> Device:
    answer = unary(
        channel,
        "Register",
        pb.RegisterRequest(region=region, registration_key=uuid.uuid4().hex),
        pb.Registration,
        token=token,
    )
    assert answer.token_type == "Bearer"
    return Device(answer.client_id, answer.token)


def _next_task(channel: grpc.Channel, device: Device) -> pb.Task | None:
    answer = unary(
        channel, "NextTask", pb.NextTaskRequest(), pb.NextTaskResponse, token=device.token
    )
    return answer.task if answer.HasField("task") else None


def _grpc_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def grpc_channel(port_file: Path) -> grpc.Channel:
    port = wait_for(lambda: _grpc_port(port_file), timeout=10.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10.0)
    return channel


def grpc_flags(port_file: Path) -> tuple[str, ...]:
    return ("--grpc-port", "0", "--grpc-port-file", str(port_file))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("grpc-inputs")
    bundle = workdir / "bundle"
    make_bundle(bundle)
    (workdir / "enrollment-token").write_text(ENROLLMENT_TOKEN + "\n")
    port_file = workdir / "grpc-port"
    command = serve_command(
        workdir, bundle, write_admin_token(workdir),
        "--on-demand", "--retry-after", "1",
        "--enrollment-token-file", str(workdir / "enrollment-token"),
        "--max-upload-bytes", str(MAX_UPLOAD_BYTES),
        "--grpc-stream-seconds", str(STREAM_SECONDS),
        "--grpc-workers", str(GRPC_WORKERS),
        "--grpc-max-uploads", str(MAX_UPLOADS),
        "--grpc-chunk-seconds", str(CHUNK_SECONDS),
        *grpc_flags(port_file),
    )  # fmt: skip
    server = start_server(command, workdir)
    channel: grpc.Channel | None = None
    try:
        channel = grpc_channel(port_file)
        devices = [_register(channel, ENROLLMENT_TOKEN, r) for r in ("north", "south", "east")]
        revoked = _register(channel, ENROLLMENT_TOKEN, "west")
        gone = admin_call(server.url, "POST", f"/v1/clients/{revoked.client_id}/revoke")
        assert gone.status_code == 200, gone.text
        first = admin_call(
            server.url,
            "POST",
            "/v1/rounds",
            json={"clients_per_round": 3, "min_clients": 3, "deadline_seconds": 3600},
        )
        assert first.status_code == 201, first.text
        assert admin_call(server.url, "POST", "/v1/rounds/1/cancel").status_code == 200
        second = admin_call(
            server.url,
            "POST",
            "/v1/rounds",
            json={"clients_per_round": 2, "min_clients": 2, "deadline_seconds": 3600},
        )
        assert second.status_code == 201, second.text
        chosen = set(second.json()["selected"])
        selected = [d for d in devices if d.client_id in chosen]
        outsider = next(d for d in devices if d.client_id not in chosen)
        tasks = {d.client_id: wait_for(lambda d=d: _next_task(channel, d)) for d in selected}
        assert {t.round_id for t in tasks.values()} == {2}
        version = requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).json()[
            "model_version"
        ]
        yield World(
            server=server,
            channel=channel,
            digest=production_digest(server.url),
            version=version,
            selected=selected,
            outsider=outsider,
            revoked=revoked,
            tasks=tasks,
        )
    finally:
        if channel is not None:
            channel.close()
        stop_server(server)


# Update streams -------------------------------------------------------------------------


def _body(seed: int = 3) -> bytes:
    return delta(seed).to_bytes()


def _header(task: pb.Task, body: bytes, **fields: Any) -> pb.UpdateChunk:
    header = pb.UpdateHeader(
        round_id=task.round_id,
        task_id=task.task_id,
        num_examples=10,
        metrics={"loss": 0.5, "accuracy": 0.75},
        delta_sha256=hashlib.sha256(body).hexdigest(),
        codec="none",
        size=len(body),
        idempotency_key=uuid.uuid4().hex,
    )
    for name, value in fields.items():
        setattr(header, name, value)
    return pb.UpdateChunk(header=header)


def _chunk(offset: int, data: bytes) -> pb.UpdateChunk:
    return pb.UpdateChunk(chunk=pb.Chunk(offset=offset, data=data))


def _chunks(body: bytes, size: int = CHUNK) -> list[pb.UpdateChunk]:
    return [_chunk(i, body[i : i + size]) for i in range(0, len(body), size)]


def _stalled(first: list[pb.UpdateChunk], release: threading.Event) -> Iterator[pb.UpdateChunk]:
    """``first``, then nothing until ``release`` (a stream that never ends)."""
    yield from first
    release.wait(60)


@pytest.mark.parametrize("shape", ["chunks_only", "empty", "negative_size"])
def test_an_upload_stream_without_a_valid_header_is_refused(world: World, shape: str) -> None:
    body = _body()
    messages = {
        "chunks_only": _chunks(body),
        "empty": [],
        "negative_size": [_header(world.task, body, size=-1), *_chunks(body)],
    }[shape]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_stream")
    assert_unharmed(world)


def test_an_upload_stream_with_its_header_twice_is_refused(world: World) -> None:
    body = _body()
    header = _header(world.task, body)
    messages = [header, *_chunks(body)[:1], header, *_chunks(body)[1:]]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_stream")
    assert_unharmed(world)


@pytest.mark.parametrize(
    "arrangement",
    ["gap", "overlap", "out_of_order", "repeated", "negative_offset"],
)
def test_chunks_that_skip_overlap_or_come_out_of_order_are_refused(
    world: World, arrangement: str
) -> None:
    body = _body()
    chunks = _chunks(body)
    assert len(chunks) >= 3
    wrong = {
        "gap": [chunks[0], chunks[2]],
        "overlap": [chunks[0], _chunk(CHUNK - 8, body[CHUNK - 8 :])],
        "out_of_order": [chunks[1], chunks[0], *chunks[2:]],
        "repeated": [chunks[0], chunks[0], *chunks[1:]],
        "negative_offset": [_chunk(-CHUNK, body[:CHUNK]), *chunks],
    }[arrangement]
    messages = [_header(world.task, body), *wrong]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_chunk")
    assert_unharmed(world)


def test_a_stream_shorter_than_its_header_says_is_truncated(world: World) -> None:
    body = _body()
    messages = [_header(world.task, body), *_chunks(body)[:-1]]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "truncated")
    assert_unharmed(world)


def test_a_stream_longer_than_its_header_says_is_refused(world: World) -> None:
    body = _body()
    longer = body + b"\0" * CHUNK
    messages = [_header(world.task, body), *_chunks(longer)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large")
    assert_unharmed(world)


def test_a_header_announcing_more_than_the_upload_limit_is_refused_before_any_chunk(
    world: World,
) -> None:
    body = _body()
    release = threading.Event()
    header = _header(world.task, body, size=MAX_UPLOAD_BYTES + 1)
    started = time.monotonic()
    try:
        error = refused(
            lambda: upload(world.channel, world.attacker.token, _stalled([header], release))
        )
    finally:
        release.set()
    assert time.monotonic() - started < STREAM_SECONDS  # refused on the header alone
    assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large")
    assert_unharmed(world)


def test_chunks_past_the_upload_limit_are_refused_while_they_stream(world: World) -> None:
    body = b"\0" * (4 * MAX_UPLOAD_BYTES)
    messages = [_header(world.task, body, size=MAX_UPLOAD_BYTES), *_chunks(body, 1024)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large")
    assert_unharmed(world)


def test_a_chunk_over_the_message_size_limit_is_refused_by_the_runtime(world: World) -> None:
    """9 MiB in one message, over the 8 MiB receive limit: gRPC refuses it before the
    handler reads it, so no fedge trailer."""
    body = _body()
    messages = [_header(world.task, body), _chunk(0, b"\0" * (9 << 20))]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert_unharmed(world)


def test_upload_streams_that_never_end_are_cut_at_the_deadline_and_free_their_workers(
    world: World,
) -> None:
    """Stalled streams from every device at once: at most ``--grpc-max-uploads`` hold a
    worker (two per device), each cut DEADLINE_EXCEEDED ``stream_timeout`` when it has sent
    nothing for ``--grpc-chunk-seconds``; the others are refused at once
    RESOURCE_EXHAUSTED ``too_many_uploads`` with a retry-after; a poll answers meanwhile."""
    body = _body()
    release = threading.Event()
    devices = [*world.selected, world.outsider]
    tokens = [device.token for device in devices for _ in range(2)]

    def stall(token: str) -> tuple[grpc.RpcError, float]:
        messages = _stalled([_header(world.task, body), *_chunks(body)[:1]], release)
        started = time.monotonic()
        error = refused(lambda: upload(world.channel, token, messages, timeout=60))
        return error, time.monotonic() - started

    try:
        with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
            running = [pool.submit(stall, token) for token in tokens]
            time.sleep(CHUNK_SECONDS / 2)
            started = time.monotonic()
            unary(
                world.channel,
                "NextTask",
                pb.NextTaskRequest(),
                pb.NextTaskResponse,
                token=world.outsider.token,
            )
            poll_seconds = time.monotonic() - started
            outcomes = [future.result() for future in running]
    finally:
        release.set()
    assert poll_seconds < CHUNK_SECONDS, poll_seconds
    cut = [(e, s) for e, s in outcomes if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED]
    turned_away = [e for e, _ in outcomes if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED]
    assert 1 <= len(cut) <= MAX_UPLOADS, [e.code() for e, _ in outcomes]
    for error, seconds in cut:
        assert_refused(error, grpc.StatusCode.DEADLINE_EXCEEDED, "stream_timeout", "nothing")
        assert CHUNK_SECONDS * 0.9 <= seconds < STREAM_SECONDS + 5.0, seconds
    assert len(turned_away) == len(tokens) - len(cut)
    for error in turned_away:
        metadata = assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_uploads")
        assert float(metadata["retry-after"]) > 0
    assert_unharmed(world)


def test_one_device_holds_at_most_two_upload_streams(world: World) -> None:
    """A third stream from a device with two streaming is refused at once."""
    body = _body()
    release = threading.Event()
    messages = [_header(world.task, body), *_chunks(body)[:1]]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            holding = [
                pool.submit(
                    refused,
                    lambda: upload(
                        world.channel, world.attacker.token, _stalled(messages, release)
                    ),
                )
                for _ in range(2)
            ]
            time.sleep(CHUNK_SECONDS / 2)
            third = refused(
                lambda: upload(world.channel, world.attacker.token, _stalled(messages, release))
            )
            release.set()
            for future in holding:
                future.result()
    finally:
        release.set()
    assert_refused(third, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_uploads", "2 upload")
    assert_unharmed(world)


def test_an_upload_whose_digest_does_not_match_is_refused(world: World) -> None:
    body = _body()
    messages = [_header(world.task, body, delta_sha256="0" * 64), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "digest_mismatch")
    assert_unharmed(world)


def test_undecodable_weights_in_a_well_framed_stream_are_refused(world: World) -> None:
    body = b"\xff" * 100
    messages = [_header(world.task, body), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "malformed_weights")
    assert_unharmed(world)


@pytest.mark.parametrize(
    ("fields", "code", "fedge_error"),
    [
        ({"codec": "zip"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_header"),
        ({"num_examples": -5}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_num_examples"),
    ],
)
def test_an_update_header_with_wrong_values_is_refused(
    world: World, fields: dict[str, Any], code: grpc.StatusCode, fedge_error: str
) -> None:
    body = _body()
    messages = [_header(world.task, body, **fields), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, code, fedge_error)
    assert_unharmed(world)


def _with_metrics(task: pb.Task, body: bytes, metrics: dict[str, float]) -> pb.UpdateChunk:
    message = _header(task, body)
    message.header.metrics.clear()
    message.header.metrics.update(metrics)
    return message


@pytest.mark.parametrize(
    ("metrics", "fedge_error", "phrase"),
    [
        ({"loss": math.nan}, "bad_message", "must be finite"),
        ({"loss": -math.inf}, "bad_message", "must be finite"),
        ({"loss": 1e300}, "invalid_metrics", "magnitude at most"),
        ({"accuracy": 7.0}, "invalid_metrics", "must be in [0, 1]"),
        ({f"m{i}": 1.0 for i in range(5000)}, "invalid_header", "at most 16384 bytes"),
    ],
)
def test_update_metrics_json_could_not_carry_are_refused(
    world: World, metrics: dict[str, float], fedge_error: str, phrase: str
) -> None:
    """A protobuf double holds NaN and infinities, which the REST header's JSON cannot:
    the same checks refuse them."""
    body = _body()
    messages = [_with_metrics(world.task, body, metrics), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, fedge_error, phrase)
    assert_unharmed(world)


@pytest.mark.parametrize(
    ("fields", "code", "fedge_error"),
    [
        ({"round_id": 1}, grpc.StatusCode.FAILED_PRECONDITION, "round_closed"),
        ({"round_id": 0}, grpc.StatusCode.NOT_FOUND, "round_not_found"),
        ({"round_id": 2**62}, grpc.StatusCode.NOT_FOUND, "round_not_found"),
        ({"idempotency_key": "k"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_idempotency_key"),
        ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT, "missing_idempotency_key"),
        ({"task_id": "t" * 300}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_header"),
    ],
)
def test_an_update_for_a_closed_unknown_or_malformed_target_is_refused(
    world: World, fields: dict[str, Any], code: grpc.StatusCode, fedge_error: str
) -> None:
    body = _body()
    messages = [_header(world.task, body, **fields), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.attacker.token, messages))
    assert_refused(error, code, fedge_error)
    assert_unharmed(world)


def test_an_upload_by_a_device_not_selected_is_refused(world: World) -> None:
    body = _body()
    messages = [_header(world.task, body), *_chunks(body)]
    error = refused(lambda: upload(world.channel, world.outsider.token, messages))
    assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, "not_assigned")
    assert_unharmed(world)


# Undecodable and wrongly typed messages -----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xff\xff\xff",  # not a protobuf message at all
        b"\x0a\x02\xff\xfe",  # field 1 (region, a string) holding invalid UTF-8
        b"\x0a\x64abc",  # a length prefix past the end of the message
    ],
)
def test_undecodable_bytes_are_an_invalid_argument(world: World, raw: bytes) -> None:
    error = refused(
        lambda: unary(world.channel, "Register", raw, pb.Registration, token=ENROLLMENT_TOKEN)
    )
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "bad_message")
    assert_unharmed(world)


def test_a_register_message_over_the_receive_limit_is_refused_by_the_runtime(
    world: World,
) -> None:
    request = pb.RegisterRequest(region="north", metadata={"blob": "x" * (9 << 20)})
    error = refused(
        lambda: unary(world.channel, "Register", request, pb.Registration, token=ENROLLMENT_TOKEN)
    )
    assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert_unharmed(world)


def test_statistics_of_the_wrong_types_are_an_invalid_argument(world: World) -> None:
    report = pb.ReportRequest(idempotency_key=uuid.uuid4().hex)
    report.stats.task_id = world.task.task_id
    report.stats.stats.update({"num_rows": "many", "numeric": ["not", "a", "map"]})
    error = refused(
        lambda: unary(
            world.channel, "SubmitReport", report, pb.ReportReceipt, token=world.attacker.token
        )
    )
    metadata = assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "bad_message")
    assert metadata["fedge-status"] == "400"
    assert_unharmed(world)


def test_a_report_without_a_report_is_an_invalid_argument(world: World) -> None:
    error = refused(
        lambda: unary(
            world.channel,
            "SubmitReport",
            pb.ReportRequest(idempotency_key=uuid.uuid4().hex),
            pb.ReportReceipt,
            token=world.attacker.token,
        )
    )
    metadata = assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")
    assert metadata["fedge-status"] == "400"
    assert_unharmed(world)


def test_a_decline_reason_over_500_characters_is_refused(world: World) -> None:
    request = pb.DeclineRequest(task_id=world.task.task_id, reason="x" * 501)
    error = refused(
        lambda: unary(
            world.channel, "DeclineTask", request, pb.DeclineResponse, token=world.attacker.token
        )
    )
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_reason")
    assert_unharmed(world)


def test_declining_a_task_of_another_device_is_not_found(world: World) -> None:
    request = pb.DeclineRequest(task_id=world.task.task_id, reason="policy")
    error = refused(
        lambda: unary(
            world.channel, "DeclineTask", request, pb.DeclineResponse, token=world.outsider.token
        )
    )
    assert_refused(error, grpc.StatusCode.NOT_FOUND, "task_not_found")
    assert_unharmed(world)


# Tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "fedge_error"),
    [
        (None, "missing_token"),
        ("Basic dXNlcjpwYXNz", "invalid_token"),
        ("Bearer", "invalid_token"),
        ("Bearer two words", "invalid_token"),
        ("Bearer " + "t" * 4000, "invalid_token"),
        ("Bearer fedge_" + "0" * 43, "invalid_token"),
    ],
)
def test_missing_malformed_and_unknown_tokens_are_unauthenticated(
    world: World, authorization: str | None, fedge_error: str
) -> None:
    error = refused(
        lambda: unary(
            world.channel,
            "NextTask",
            pb.NextTaskRequest(),
            pb.NextTaskResponse,
            authorization=authorization,
        )
    )
    metadata = assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, fedge_error)
    assert metadata["fedge-status"] == "401"
    assert "t" * 100 not in (error.details() or "")  # a token is never echoed
    assert_unharmed(world)


def test_an_upload_without_a_token_is_refused_before_its_chunks(world: World) -> None:
    body = _body()
    release = threading.Event()
    try:
        error = refused(
            lambda: upload(world.channel, None, _stalled([_header(world.task, body)], release))
        )
    finally:
        release.set()
    assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, "missing_token")
    assert_unharmed(world)


def test_the_admin_token_on_a_device_call_is_permission_denied(world: World) -> None:
    error = refused(
        lambda: unary(
            world.channel, "NextTask", pb.NextTaskRequest(), pb.NextTaskResponse, token=ADMIN_TOKEN
        )
    )
    assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, "client_token_required")
    assert_unharmed(world)


def test_a_device_token_on_an_admin_call_is_permission_denied(world: World) -> None:
    error = refused(
        lambda: unary(
            world.channel,
            "ListClients",
            pb.AdminRequest(),
            pb.Document,
            token=world.outsider.token,
            service="Admin",
        )
    )
    assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, "admin_required")
    assert_unharmed(world)


def test_a_revoked_client_is_unauthenticated_on_every_call(world: World) -> None:
    for method, request, answer in (
        ("NextTask", pb.NextTaskRequest(), pb.NextTaskResponse),
        ("RotateToken", pb.RotateTokenRequest(), pb.TokenRotation),
    ):
        call = functools.partial(unary, world.channel, method, request, answer)
        error = refused(functools.partial(call, token=world.revoked.token))
        assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, "client_revoked")
    assert_unharmed(world)


@pytest.mark.parametrize(
    ("request_fields", "fedge_error"),
    [
        ({"region": "north\n2026-01-01 INFO forged"}, "invalid_region"),
        ({"region": "r" * 5000}, "invalid_region"),
        ({"metadata": {f"k{i}": "v" for i in range(5000)}}, "invalid_metadata"),
        ({"registration_key": "../../etc"}, "invalid_registration_key"),
    ],
)
def test_a_hostile_registration_is_refused_and_creates_nobody(
    world: World, request_fields: dict[str, Any], fedge_error: str
) -> None:
    fields = {"region": "north", "registration_key": uuid.uuid4().hex, **request_fields}
    clients = len(admin_call(world.url, "GET", "/v1/clients").json()["clients"])
    error = refused(
        lambda: unary(
            world.channel,
            "Register",
            pb.RegisterRequest(**fields),
            pb.Registration,
            token=ENROLLMENT_TOKEN,
        )
    )
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, fedge_error)
    assert len(admin_call(world.url, "GET", "/v1/clients").json()["clients"]) == clients
    assert_unharmed(world)


def test_a_second_authorization_entry_cannot_smuggle_in_another_token(world: World) -> None:
    """The admin token first and a client's second: the call is judged on the first."""
    call = world.channel.unary_unary(
        "/fedge.v1.Fleet/NextTask",
        request_serializer=_serialize,
        response_deserializer=pb.NextTaskResponse.FromString,
    )
    metadata = [
        ("authorization", f"Bearer {ADMIN_TOKEN}"),
        ("authorization", f"Bearer {world.outsider.token}"),
    ]
    error = refused(lambda: call(pb.NextTaskRequest(), metadata=metadata, timeout=CALL_TIMEOUT))
    assert_refused(error, grpc.StatusCode.PERMISSION_DENIED, "client_token_required")
    assert_unharmed(world)


def test_an_expired_enrollment_token_registers_nobody(world: World) -> None:
    created = admin_call(world.url, "POST", "/v1/enrollment-tokens", json={"expires_in": 1})
    assert created.status_code == 201, created.text
    clients = len(admin_call(world.url, "GET", "/v1/clients").json()["clients"])
    time.sleep(1.2)
    error = refused(lambda: _register(world.channel, created.json()["token"]))
    assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, "enrollment_token_expired")
    assert len(admin_call(world.url, "GET", "/v1/clients").json()["clients"]) == clients
    assert_unharmed(world)


# Downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../state.db", "../../etc/passwd", "/etc/passwd", "a/../../x", "manifest.json\0x"]
)
def test_path_traversal_in_a_file_name_is_an_invalid_argument(world: World, name: str) -> None:
    request = pb.DownloadRequest(version=world.version, name=name)
    error = refused(lambda: download(world.channel, request, world.outsider.token))
    assert_refused(error, grpc.StatusCode.INVALID_ARGUMENT, "invalid_file_name")
    assert_unharmed(world)


@pytest.mark.parametrize("version", ["v999", "../" + "x", "taxi-20240501/../.."])
def test_an_unknown_model_version_is_not_found(world: World, version: str) -> None:
    request = pb.DownloadRequest(version=version, name="manifest.json")
    error = refused(lambda: download(world.channel, request, world.outsider.token))
    assert_refused(error, grpc.StatusCode.NOT_FOUND, "model_not_found")
    assert_unharmed(world)


def test_a_download_without_a_token_is_unauthenticated(world: World) -> None:
    request = pb.DownloadRequest(version=world.version, name="weights.safetensors")
    error = refused(lambda: download(world.channel, request, None))
    assert_refused(error, grpc.StatusCode.UNAUTHENTICATED, "missing_token")
    assert_unharmed(world)


# Secure aggregation in a plain round, and an unknown method ---------------------------


def test_a_secure_aggregation_message_for_a_plain_round_is_a_failed_precondition(
    world: World,
) -> None:
    request = pb.SecAggPayloadRequest(round_id=2, stage="share")
    error = refused(
        lambda: unary(
            world.channel,
            "GetSecAggPayload",
            request,
            pb.SecAggPayload,
            token=world.attacker.token,
        )
    )
    assert_refused(error, grpc.StatusCode.FAILED_PRECONDITION, "round_not_secure")
    assert_unharmed(world)


@pytest.mark.parametrize("method", ["/fedge.v1.Fleet/Shutdown", "/fedge.v2.Fleet/NextTask"])
def test_an_unknown_method_is_unimplemented(world: World, method: str) -> None:
    call = world.channel.unary_unary(method, request_serializer=_serialize)
    error = refused(
        lambda: call(b"", metadata=_metadata(world.outsider.token), timeout=CALL_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error.details()
    assert "fedge-error" not in trailers(error)  # the runtime answers: no handler ran
    assert_unharmed(world)


def test_a_well_formed_upload_after_the_attacks_is_acknowledged(world: World) -> None:
    """The control: the other selected device's honest stream is taken (round 2 still
    needs the attacker's update, so it keeps collecting)."""
    honest = world.selected[1]
    task = world.tasks[honest.client_id]
    body = _body(seed=9)
    receipt = upload(world.channel, honest.token, [_header(task, body), *_chunks(body)])
    assert (receipt.round_id, receipt.task_id, receipt.client_id) == (
        2,
        task.task_id,
        honest.client_id,
    )
    assert receipt.sha256 == hashlib.sha256(body).hexdigest()
    assert not receipt.duplicate
    assert_unharmed(world)


# Servers of their own -----------------------------------------------------------------


def test_registrations_over_the_rate_limit_are_resource_exhausted_with_retry_after(
    serve: StartServer, tmp_path: Path
) -> None:
    """REST and gRPC share one limiter: a REST registration uses the burst too."""
    port_file = tmp_path / "grpc-port"
    server = serve(
        "--registration-rate", "0.01", "--registration-burst", "2", *grpc_flags(port_file)
    )
    digest = production_digest(server.url)
    channel = grpc_channel(port_file)
    try:
        rest = requests.post(f"{server.url}/v1/clients", json={}, timeout=HTTP_TIMEOUT)
        assert rest.status_code == 201, rest.text
        _register(channel, None)
        error = refused(lambda: _register(channel, None))
        metadata = assert_refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
        assert metadata["fedge-status"] == "429"
        assert int(metadata["retry-after"]) >= 1
        assert production_digest(server.url) == digest
        assert len(admin_call(server.url, "GET", "/v1/clients").json()["clients"]) == 2
    finally:
        channel.close()


def test_secure_aggregation_stages_out_of_order_are_a_failed_precondition_with_retry_after(
    serve: StartServer, tmp_path: Path
) -> None:
    port_file = tmp_path / "grpc-port"
    server = serve(
        "--secure-aggregation", "--on-demand", "--no-auto-promote", "--retry-after", "1",
        "--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "120",
        *grpc_flags(port_file),
    )  # fmt: skip
    digest = production_digest(server.url)
    channel = grpc_channel(port_file)
    try:
        devices = [_register(channel, None, region) for region in ("north", "south", "east")]
        assert admin_call(server.url, "POST", "/v1/rounds", json={}).status_code == 201
        task = wait_for(lambda: _next_task(channel, devices[0]))
        assert "secagg_id" in task.config.options  # the advertise stage's task
        early: list[Callable[[], Any]] = [
            lambda: unary(
                channel,
                "GetSecAggPayload",
                pb.SecAggPayloadRequest(round_id=1, stage="share"),
                pb.SecAggPayload,
                token=devices[0].token,
            ),
            lambda: unary(
                channel,
                "SubmitSecAgg",
                pb.SecAggSubmission(
                    round_id=1,
                    stage="mask",
                    task_id=task.task_id,
                    idempotency_key=uuid.uuid4().hex,
                    masked=b"\0" * 64,
                ),
                pb.SecAggReceipt,
                token=devices[0].token,
            ),
        ]
        for action in early:
            error = refused(action)
            metadata = assert_refused(error, grpc.StatusCode.FAILED_PRECONDITION, "secagg_stage")
            assert metadata["fedge-status"] == "409"
            assert int(metadata["retry-after"]) >= 1
        round_ = admin_call(server.url, "GET", "/v1/rounds/1").json()
        assert round_["state"] == "collecting"
        assert round_["secagg"]["stage"] == "advertise"
        assert production_digest(server.url) == digest
    finally:
        channel.close()
