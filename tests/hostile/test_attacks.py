"""Attacks of a hostile device, operator script or network peer against ONE real
``fedge-coordinator serve`` on loopback: path traversal on downloads, tokens of the wrong
kind or in the wrong place, malformed and hostile update uploads, hostile JSON, round and
model routes misused, and HTTP-level tricks (method override, smuggling, pipelining).

Every case checks the exact status, the error code and its detail, that the production
model's weights are unchanged and that the server still answers. The server and its
devices are shared by the module: round 1 was cancelled, round 2 is collecting with two of
three devices selected and needs both of their updates, so no case here can commit it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HTTP_TIMEOUT,
    EdgeClient,
    ServerProcess,
    admin_call,
    bearer,
    delta,
    make_bundle,
    production_digest,
    serve_command,
    start_server,
    stop_server,
    upload_headers,
    wait_for,
    write_admin_token,
)

pytestmark = pytest.mark.timeout(60)

NORM_BOUND = 1.0


@dataclass
class World:
    server: ServerProcess
    digest: str
    version: str
    selected: list[EdgeClient]
    outsider: EdgeClient
    tasks: dict[str, dict[str, Any]]
    closed_task: dict[str, Any]
    closed_client: EdgeClient

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        assert parts.port is not None
        return parts.hostname, parts.port

    def task(self, client: EdgeClient) -> dict[str, Any]:
        return self.tasks[client.client_id]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("attacks")
    bundle = workdir / "bundle"
    make_bundle(bundle)
    command = serve_command(
        workdir, bundle, write_admin_token(workdir), "--on-demand", "--retry-after", "1"
    )
    server = start_server(command, workdir)
    try:
        clients = [EdgeClient(server.url, region) for region in ("north", "south", "east")]
        first = admin_call(
            server.url,
            "POST",
            "/v1/rounds",
            json={"clients_per_round": 3, "min_clients": 3, "deadline_seconds": 3600},
        )
        assert first.status_code == 201, first.text
        closed_task = wait_for(clients[0].poll)
        assert admin_call(server.url, "POST", "/v1/rounds/1/cancel").status_code == 200
        second = admin_call(
            server.url,
            "POST",
            "/v1/rounds",
            json={
                "clients_per_round": 2,
                "min_clients": 2,
                "deadline_seconds": 3600,
                "norm_bound": NORM_BOUND,
            },
        )
        assert second.status_code == 201, second.text
        chosen = set(second.json()["selected"])
        selected = [c for c in clients if c.client_id in chosen]
        outsider = next(c for c in clients if c.client_id not in chosen)
        tasks = {c.client_id: wait_for(c.poll) for c in selected}
        assert {t["round_id"] for t in tasks.values()} == {2}
        version = requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).json()[
            "model_version"
        ]
        yield World(
            server=server,
            digest=production_digest(server.url),
            version=version,
            selected=selected,
            outsider=outsider,
            tasks=tasks,
            closed_task=closed_task,
            closed_client=clients[0],
        )
    finally:
        stop_server(server)


def assert_unharmed(world: World) -> None:
    """The global model is what it was and the server answers; round 2 still collects."""
    health = requests.get(f"{world.url}/healthz", timeout=HTTP_TIMEOUT)
    assert health.status_code == 200, health.text
    assert production_digest(world.url) == world.digest
    round_ = admin_call(world.url, "GET", "/v1/rounds/2")
    assert round_.status_code == 200, round_.text
    assert round_.json()["state"] == "collecting"


def assert_refused(response: requests.Response, status: int, error: str, phrase: str) -> None:
    assert response.status_code == status, response.text
    document = response.json()
    assert document["error"] == error, document
    assert phrase in document["detail"], document


def _upload(
    world: World,
    client: EdgeClient,
    body: bytes,
    *,
    task: dict[str, Any] | None = None,
    round_id: int | None = None,
    **header_options: Any,
) -> requests.Response:
    task = task or world.task(client)
    header_options.setdefault("key", str(uuid.uuid4()))
    return requests.post(
        f"{world.url}/v1/rounds/{round_id or task['round_id']}/updates",
        data=body,
        headers=upload_headers(client.token, task["task_id"], **header_options),
        timeout=HTTP_TIMEOUT,
    )


def _safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _raw_exchange(world: World, request: bytes, *, read_seconds: float = 3.0) -> bytes:
    """Send ``request`` bytes on a fresh connection and read until the server closes it or
    goes quiet."""
    received = b""
    with socket.create_connection(world.address, timeout=read_seconds) as sock:
        sock.sendall(request)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each response in ``raw`` (Content-Length framed)."""
    answers: list[tuple[int, bytes]] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answers.append((status, rest[:length]))
        raw = rest[length:]
    return answers


# Downloads: path traversal -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [".%2e", "..%5c..%5cstate.db", "manifest.json%00.txt", "~root", "%2e%2e%5cx"],
)
def test_traversal_in_a_bundle_file_name_is_refused(world: World, name: str) -> None:
    response = requests.get(
        f"{world.url}/v1/models/{world.version}/files/{name}",
        headers=bearer(world.outsider.token),
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_file_name", "unsafe bundle file name")
    assert_unharmed(world)


def test_a_bundle_file_the_manifest_does_not_list_is_404(world: World) -> None:
    response = requests.get(
        f"{world.url}/v1/models/{world.version}/files/state.db",
        headers=bearer(world.outsider.token),
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 404, "file_not_found", "state.db")
    assert_unharmed(world)


@pytest.mark.parametrize("version", ["..%5c..%5cstate.db", "%2e%2e", "current%00"])
def test_traversal_in_a_model_version_is_404(world: World, version: str) -> None:
    response = requests.get(
        f"{world.url}/v1/models/{version}/weights",
        headers=bearer(world.outsider.token),
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 404, "model_not_found", "no model version")
    assert_unharmed(world)


@pytest.mark.parametrize("path", ["..%2f..%2fstate.db", "%2e%2e%2f%2e%2e%2fstate.db"])
def test_a_slash_smuggled_into_a_download_path_matches_no_route(world: World, path: str) -> None:
    response = requests.get(
        f"{world.url}/v1/models/{world.version}/files/{path}",
        headers=bearer(world.outsider.token),
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_file_name", "unsafe bundle file name '../../state.db'")
    assert_unharmed(world)


# Tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/tasks/next"),
        ("POST", "/v1/rounds/2/updates"),
        ("POST", "/v1/stats"),
        ("POST", "/v1/evaluations"),
        ("POST", "/v1/features"),
    ],
)
def test_the_admin_token_on_a_device_route_is_403(world: World, method: str, path: str) -> None:
    response = requests.request(
        method, f"{world.url}{path}", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 403, "client_token_required", "not the admin token")
    assert_unharmed(world)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/clients"),
        ("POST", "/v1/rounds"),
        ("POST", "/v1/rounds/2/cancel"),
        ("POST", "/v1/models/rollback"),
        ("GET", "/metrics"),
    ],
)
def test_a_device_token_on_an_admin_route_is_403(world: World, method: str, path: str) -> None:
    response = requests.request(
        method, f"{world.url}{path}", headers=bearer(world.outsider.token), timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 403, "admin_required", "needs the admin token")
    assert_unharmed(world)


def test_a_token_in_the_query_string_is_not_accepted(world: World) -> None:
    client = world.outsider
    for name in ("token", "access_token"):
        response = requests.get(
            f"{world.url}/v1/tasks/next", params={name: client.token}, timeout=HTTP_TIMEOUT
        )
        assert_refused(response, 401, "missing_token", "Authorization")
    assert_unharmed(world)


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "Token {token}", "bearer\t{token}", "Bearer a b"],
)
def test_an_authorization_header_of_another_shape_is_401(world: World, authorization: str) -> None:
    value = authorization.format(token=world.outsider.token)
    response = requests.get(
        f"{world.url}/v1/tasks/next", headers={"Authorization": value}, timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 401, "invalid_token", "malformed Authorization header")
    assert_unharmed(world)


def test_a_very_long_bearer_token_is_401_without_echo(world: World) -> None:
    token = "fedge_" + "A" * 7000
    response = requests.get(
        f"{world.url}/v1/tasks/next", headers=bearer(token), timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 401, "invalid_token", "token")
    assert "A" * 100 not in response.text
    assert_unharmed(world)


# Uploads -----------------------------------------------------------------------------------


def test_an_upload_with_the_wrong_tensor_names_is_422(world: World) -> None:
    renamed = Weights({f"evil/{name}": array for name, array in delta(5).items()})
    response = _upload(world, world.selected[1], renamed.to_bytes())
    assert_refused(response, 422, "unknown_tensor", "evil/head")
    assert_unharmed(world)


def test_an_upload_with_an_extra_tensor_is_422(world: World) -> None:
    extra = Weights({**dict(delta(5).items()), "backdoor": np.ones((2,), np.float32)})
    response = _upload(world, world.selected[1], extra.to_bytes())
    assert_refused(response, 422, "unknown_tensor", "backdoor")
    assert_unharmed(world)


def test_an_upload_with_the_wrong_shapes_is_422(world: World) -> None:
    reshaped = Weights({n: np.zeros((7, *a.shape), np.float32) for n, a in delta(5).items()})
    response = _upload(world, world.selected[1], reshaped.to_bytes())
    assert_refused(response, 422, "shape_mismatch", "expected shape")
    assert_unharmed(world)


def test_an_upload_with_the_wrong_dtype_is_422(world: World) -> None:
    body = delta(5).to_bytes()
    (length,) = struct.unpack("<Q", body[:8])
    header: dict[str, Any] = json.loads(body[8 : 8 + length])
    data = b""
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        raw = np.frombuffer(body[8 + length + start : 8 + length + end], np.float32)
        wide = raw.astype(np.float64).tobytes()
        entry.update(dtype="F64", data_offsets=[len(data), len(data) + len(wide)])
        data += wide
    response = _upload(world, world.selected[1], _safetensors(header, data))
    assert_refused(response, 422, "dtype_mismatch", "expected dtype F32 (float32), got 'F64'")
    assert_unharmed(world)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_an_upload_with_non_finite_values_is_422(world: World, value: float) -> None:
    arrays = {n: a.copy() for n, a in delta(5).items()}
    arrays["head/bias"][0] = value
    response = _upload(world, world.selected[1], Weights(arrays).to_bytes())
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "non_finite"
    assert "head/bias" in response.json()["detail"]
    assert_unharmed(world)


def test_a_truncated_safetensors_upload_is_400(world: World) -> None:
    body = delta(5).to_bytes()
    response = _upload(world, world.selected[1], body[: len(body) - 9])
    assert_refused(response, 400, "malformed_weights", "truncated weights")
    assert_unharmed(world)


def test_a_safetensors_header_claiming_huge_offsets_is_400(world: World) -> None:
    body = delta(5).to_bytes()
    (length,) = struct.unpack("<Q", body[:8])
    header: dict[str, Any] = json.loads(body[8 : 8 + length])
    assert "__metadata__" in header
    header["head/bias"]["data_offsets"] = [0, 2**62]
    response = _upload(world, world.selected[1], _safetensors(header, body[8 + length :]))
    assert_refused(response, 400, "malformed_weights", "runs past the")
    assert_unharmed(world)


def test_a_safetensors_header_length_beyond_the_body_is_400(world: World) -> None:
    body = struct.pack("<Q", 2**63) + b"{}"
    response = _upload(world, world.selected[1], body)
    assert_refused(
        response, 400, "malformed_weights", "the header claims 9223372036854775808 bytes"
    )
    assert_unharmed(world)


def test_an_update_above_the_norm_bound_is_refused(world: World) -> None:
    huge = delta(5, scale=100.0)
    assert huge.l2_norm() > NORM_BOUND
    response = _upload(world, world.selected[1], huge.to_bytes())
    assert_refused(response, 422, "norm_exceeded", "exceeds the bound 1")
    assert_unharmed(world)


@pytest.mark.parametrize("num_examples", ["1.5", "ten", "1e3", "0x10", "", "7;drop"])
def test_a_non_integer_example_count_is_400(world: World, num_examples: str) -> None:
    response = _upload(world, world.selected[1], delta(5).to_bytes(), num_examples=num_examples)
    phrase = "missing header" if not num_examples else "must be an integer"
    assert_refused(
        response, 400, "missing_header" if not num_examples else "invalid_header", phrase
    )
    assert_unharmed(world)


@pytest.mark.parametrize("num_examples", ["0", "-5", "1000001", "9" * 40])
def test_an_example_count_out_of_range_is_422(world: World, num_examples: str) -> None:
    response = _upload(world, world.selected[1], delta(5).to_bytes(), num_examples=num_examples)
    assert_refused(response, 422, "invalid_num_examples", "must be an integer in 1..1000000")
    assert_unharmed(world)


def test_an_upload_from_a_client_not_selected_is_403(world: World) -> None:
    stolen = world.task(world.selected[0])
    response = _upload(world, world.outsider, delta(5).to_bytes(), task=stolen)
    assert_refused(response, 403, "not_assigned", f"{world.outsider.client_id} was not selected")
    assert_unharmed(world)


def test_an_upload_under_another_clients_task_id_is_refused(world: World) -> None:
    first, second = world.selected
    response = _upload(world, second, delta(5).to_bytes(), task=world.task(first))
    assert_refused(response, 403, "task_not_assigned", "is assigned to another client")
    assert_unharmed(world)


def test_an_upload_to_a_cancelled_round_is_409(world: World) -> None:
    response = _upload(
        world, world.closed_client, delta(5).to_bytes(), task=world.closed_task, round_id=1
    )
    assert_refused(response, 409, "round_closed", "round 1")
    assert_unharmed(world)


def test_a_task_id_of_round_2_sent_to_round_1_is_refused(world: World) -> None:
    client = world.selected[1]
    response = _upload(world, client, delta(5).to_bytes(), round_id=1)
    assert_refused(response, 409, "round_closed", "round 1 is closed")
    assert_unharmed(world)


def test_a_replayed_key_with_other_bytes_is_409_and_the_first_update_stands(
    world: World,
) -> None:
    client = world.selected[0]
    key = "replay-" + uuid.uuid4().hex
    first = _upload(world, client, delta(11).to_bytes(), key=key)
    assert first.status_code == 201, first.text
    again = _upload(world, client, delta(11).to_bytes(), key=key)
    assert again.status_code == 200, again.text
    assert {**again.json(), "duplicate": False} == first.json()
    forged = _upload(world, client, delta(12).to_bytes(), key=key)
    assert_refused(forged, 409, "idempotency_conflict", "already used for a different update")
    other_key = _upload(world, client, delta(12).to_bytes())
    assert_refused(other_key, 409, "duplicate_update", "already")
    assert admin_call(world.url, "GET", "/v1/rounds/2").json()["num_updates"] == 1
    assert_unharmed(world)


def test_an_upload_with_a_json_content_type_is_415(world: World) -> None:
    client = world.selected[1]
    headers = upload_headers(client.token, world.task(client)["task_id"], key="ctype-0001")
    headers["Content-Type"] = "application/json"
    response = requests.post(
        f"{world.url}/v1/rounds/2/updates", data=b"{}", headers=headers, timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 415, "unsupported_media_type", "application/octet-stream")
    assert_unharmed(world)


# JSON bodies -----------------------------------------------------------------------------


def test_a_json_route_with_a_form_content_type_is_415(world: World) -> None:
    response = requests.post(
        f"{world.url}/v1/clients",
        data="region=north",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 415, "unsupported_media_type", "application/json")
    assert_unharmed(world)


@pytest.mark.parametrize("document", ["[]", '["region"]', "42", '"north"', "null", "true"])
def test_a_json_body_that_is_not_an_object_is_400(world: World, document: str) -> None:
    response = admin_call(
        world.url,
        "POST",
        "/v1/rounds",
        data=document,
        headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"},
    )
    assert_refused(response, 400, "invalid_json", "must be a JSON object")
    assert_unharmed(world)


def test_non_utf8_bytes_in_a_json_body_are_400(world: World) -> None:
    response = requests.post(
        f"{world.url}/v1/clients",
        data=b'{"region": "\xff\xfe\xc0"}',
        headers={"Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_json", "not valid JSON")
    assert_unharmed(world)


def test_nan_and_infinity_literals_in_json_are_400(world: World) -> None:
    response = admin_call(
        world.url,
        "POST",
        "/v1/rounds",
        data='{"learning_rate": NaN, "deadline_seconds": Infinity}',
        headers={**bearer(ADMIN_TOKEN), "Content-Type": "application/json"},
    )
    assert_refused(response, 400, "invalid_json", "NaN is not valid JSON")
    assert_unharmed(world)


def test_duplicate_json_keys_cannot_smuggle_an_unchecked_region(world: World) -> None:
    before = len(admin_call(world.url, "GET", "/v1/clients").json()["clients"])
    response = requests.post(
        f"{world.url}/v1/clients",
        data='{"region": "north", "region": "' + "x" * 5000 + '"}',
        headers={"Content-Type": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_region", "region")
    assert len(admin_call(world.url, "GET", "/v1/clients").json()["clients"]) == before
    assert_unharmed(world)


@pytest.mark.parametrize(
    "region", ["x" * 5000, "north\r\nX-Injected: 1", "\u202enorth", "no\x00rth", ""]
)
def test_a_hostile_region_is_refused(world: World, region: str) -> None:
    before = len(admin_call(world.url, "GET", "/v1/clients").json()["clients"])
    response = requests.post(
        f"{world.url}/v1/clients", json={"region": region}, timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 400, "invalid_region", "region")
    assert len(admin_call(world.url, "GET", "/v1/clients").json()["clients"]) == before
    assert_unharmed(world)


def test_metadata_with_thousands_of_keys_is_refused(world: World) -> None:
    metadata = {f"k{i}": i for i in range(3000)}
    response = requests.post(
        f"{world.url}/v1/clients",
        json={"region": "north", "metadata": metadata},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_metadata", "at most 32 names")
    assert_unharmed(world)


def test_unknown_fields_in_a_registration_are_400(world: World) -> None:
    response = requests.post(
        f"{world.url}/v1/clients",
        json={"region": "north", "client_id": "admin", "token": "mine"},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "invalid_request", "client_id")
    assert_unharmed(world)


# Rounds and models -------------------------------------------------------------------------


def test_unknown_fields_in_a_task_request_are_400(world: World) -> None:
    response = admin_call(
        world.url,
        "POST",
        "/v1/tasks",
        json={"kind": "evaluation", "client_ids": [world.outsider.client_id], "skip_checks": 1},
    )
    assert_refused(response, 400, "invalid_request", "skip_checks")
    assert_unharmed(world)


def test_opening_a_round_while_one_collects_is_409(world: World) -> None:
    response = admin_call(world.url, "POST", "/v1/rounds", json={})
    assert_refused(response, 409, "round_active", "round 2")
    assert_unharmed(world)


def test_promoting_a_version_that_does_not_exist_is_404(world: World) -> None:
    response = admin_call(world.url, "POST", "/v1/models/taxi-19700101/promote")
    assert_refused(response, 404, "model_not_found", "taxi-19700101")
    assert_unharmed(world)


def test_rolling_back_past_the_first_version_is_409(world: World) -> None:
    response = admin_call(world.url, "POST", "/v1/models/rollback")
    assert_refused(response, 409, "no_previous_version", "no previous production version")
    assert_unharmed(world)


def test_revoking_a_client_that_does_not_exist_is_404(world: World) -> None:
    response = admin_call(world.url, "POST", "/v1/clients/c-000000000000/revoke")
    assert_refused(response, 404, "client_not_found", "c-000000000000")
    smuggled = admin_call(world.url, "POST", "/v1/clients/..%2f..%2fv1%2frounds/revoke")
    assert_refused(smuggled, 404, "not_found", "not found")
    assert_unharmed(world)


# HTTP tricks -------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_method_override_header_is_ignored(world: World, header: str) -> None:
    response = requests.get(
        f"{world.url}/v1/rounds/2/cancel",
        headers={**bearer(ADMIN_TOKEN), header: "POST"},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 405, "method_not_allowed", "not allowed")
    assert_unharmed(world)


def test_a_very_long_url_is_refused(world: World) -> None:
    response = requests.get(
        f"{world.url}/v1/models/{'a' * 20000}/weights",
        headers=bearer(world.outsider.token),
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 404, "model_not_found", "no model version")
    assert_unharmed(world)


def test_headers_over_the_size_limit_are_refused(world: World) -> None:
    padding = "".join(f"X-Pad-{i}: {'p' * 8000}\r\n" for i in range(40))
    request = (
        "POST /v1/rounds/2/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\n{padding}Connection: close\r\n\r\n"
    ).encode()
    answers = _responses(_raw_exchange(world, request))
    assert [status for status, _ in answers] == [431], answers
    assert b"Request Header Fields Too Large" in answers[0][1]
    assert_unharmed(world)


def test_content_length_with_transfer_encoding_cannot_smuggle_a_request(world: World) -> None:
    smuggled = (
        b"POST /v1/rounds/2/cancel HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    body = b"0\r\n\r\n" + smuggled
    request = (
        b"POST /v1/clients HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + body
    )
    # Transfer-Encoding wins, the bytes after the last chunk are not a second request and
    # the connection closes: only the registration is answered, the round is not cancelled.
    answers = _responses(_raw_exchange(world, request))
    assert [status for status, _ in answers] == [201], answers
    assert json.loads(answers[0][1])["token_type"] == "Bearer"
    assert_unharmed(world)


def test_a_request_pipelined_after_a_refused_one_is_answered_on_its_own(world: World) -> None:
    refused = (
        b"GET /v1/tasks/next HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer fedge_forged\r\n\r\n"
    )
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answers = _responses(_raw_exchange(world, refused + health))
    assert [status for status, _ in answers] == [401, 200], answers
    assert json.loads(answers[0][1])["error"] == "invalid_token"
    assert json.loads(answers[1][1])["model_version"] == world.version
    assert_unharmed(world)


def test_a_request_line_with_a_bare_lf_and_absolute_uri_is_harmless(world: World) -> None:
    request = (
        f"GET {world.url}/v1/rounds/2/cancel HTTP/1.1\nHost: evil\n"
        f"Authorization: Bearer {world.outsider.token}\nConnection: close\n\n"
    ).encode()
    answers = _responses(_raw_exchange(world, request, read_seconds=1.5))
    # Bare LF never ends the header block for the server: nothing is answered or done.
    assert answers == [], answers
    assert_unharmed(world)


# More uploads --------------------------------------------------------------------------


def test_a_body_that_does_not_match_its_declared_digest_is_400(world: World) -> None:
    client = world.selected[1]
    headers = upload_headers(client.token, world.task(client)["task_id"], key="digest-0001")
    headers["X-Fedge-Delta-Sha256"] = hashlib.sha256(delta(6).to_bytes()).hexdigest()
    response = requests.post(
        f"{world.url}/v1/rounds/2/updates",
        data=delta(5).to_bytes(),
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "digest_mismatch", "does not match X-Fedge-Delta-Sha256")
    assert_unharmed(world)


@pytest.mark.parametrize("key", ["short", "k" * 129, "key with spaces", "key/../../etc"])
def test_a_malformed_idempotency_key_is_400(world: World, key: str) -> None:
    response = _upload(world, world.selected[1], delta(5).to_bytes(), key=key)
    assert_refused(response, 400, "invalid_idempotency_key", "8-128 characters")
    assert_unharmed(world)


@pytest.mark.parametrize(
    ("metrics", "phrase"),
    [
        ('{"loss": NaN}', "must be a JSON object"),
        ('[{"loss": 0.5}]', "must be a JSON object"),
        ('{"loss": 0.5', "must be a JSON object"),
    ],
)
def test_a_hostile_metrics_header_is_400(world: World, metrics: str, phrase: str) -> None:
    response = _upload(world, world.selected[1], delta(5).to_bytes(), metrics=metrics)
    assert_refused(response, 400, "invalid_header", phrase)
    assert_unharmed(world)


def test_an_empty_upload_body_is_400(world: World) -> None:
    response = _upload(world, world.selected[1], b"")
    assert_refused(response, 400, "malformed_weights", "empty")
    assert_unharmed(world)


def test_a_gzip_encoded_upload_is_not_inflated(world: World) -> None:
    import gzip

    client = world.selected[1]
    headers = upload_headers(client.token, world.task(client)["task_id"], key="gzip-000001")
    headers["Content-Encoding"] = "gzip"
    response = requests.post(
        f"{world.url}/v1/rounds/2/updates",
        data=gzip.compress(b"\0" * (8 << 20)),
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 400, "malformed_weights", "truncated or corrupt weights")
    assert_unharmed(world)


def test_a_huge_task_id_is_refused_without_being_echoed_or_stored(world: World) -> None:
    client = world.selected[1]
    task = {**world.task(client), "task_id": "r2-" + "t" * 60_000}
    response = _upload(world, client, delta(5).to_bytes(), task=task)
    assert_refused(
        response, 400, "invalid_header", "60003 characters, over the 256-character limit"
    )
    assert len(response.content) < 1000
    assert "t" * 300 not in world.server.log()
    assert_unharmed(world)


# More HTTP -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_an_undocumented_method_is_405(world: World, method: str) -> None:
    response = requests.request(
        method, f"{world.url}/v1/rounds/2", headers=bearer(ADMIN_TOKEN), timeout=HTTP_TIMEOUT
    )
    assert_refused(response, 405, "method_not_allowed", "not allowed")
    assert ADMIN_TOKEN not in response.text
    assert_unharmed(world)


def test_a_latin1_token_is_401(world: World) -> None:
    response = requests.get(
        f"{world.url}/v1/tasks/next",
        headers={"Authorization": "Bearer fedge_\u00e9\u00ff\u00a0token".encode("latin-1")},
        timeout=HTTP_TIMEOUT,
    )
    assert_refused(response, 401, "invalid_token", "unknown client token")
    assert_unharmed(world)


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e999", "yesterday"])
def test_a_non_finite_query_number_is_400(world: World, since: str) -> None:
    response = admin_call(world.url, "GET", "/v1/alerts", params={"since": since})
    assert_refused(response, 400, "invalid_query", "since must be a number")
    assert_unharmed(world)


def test_a_negative_round_id_matches_no_route(world: World) -> None:
    response = admin_call(world.url, "GET", "/v1/rounds/-1")
    assert_refused(response, 404, "not_found", "not found")
    assert_unharmed(world)


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /v1/clients HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/clients HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64 + b"\r\n\r\n",
    ],
)
def test_malformed_http_framing_is_refused_and_the_server_answers(
    world: World, request_head: bytes
) -> None:
    answers = _responses(_raw_exchange(world, request_head, read_seconds=1.5))
    assert [status for status, _ in answers] == [400], answers
    assert_unharmed(world)
