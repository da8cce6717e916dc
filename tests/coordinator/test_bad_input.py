"""Hostile and malformed requests against the real server: each gets the right 4xx with a
JSON {error, detail} that names the failed check, and the global model never changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests
import safetensors.numpy

from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    HEAD_SHAPES,
    EdgeClient,
    ServerProcess,
    admin_request,
    bearer,
    make_bundle,
    production_digest,
    serve_command,
    start_server,
    stop_server,
    upload_headers,
    wait_for,
    write_admin_token,
)

MAX_UPLOAD = 4096


@dataclass
class World:
    """The server after round 1 committed (v2) and with round 2 collecting, where ``alice``
    has one accepted update (key ``alice_key``), ``bob`` none, and ``outsider`` was not
    selected."""

    server: ServerProcess
    alice: EdgeClient
    bob: EdgeClient
    outsider: EdgeClient
    tasks: dict[str, str]
    alice_key: str
    digest_before: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


def _zeros() -> dict[str, np.ndarray[Any, Any]]:
    return {n: np.zeros(s, np.float32) for n, s in HEAD_SHAPES.items()}


def _body(**changes: Any) -> bytes:
    tensors: dict[str, Any] = {**_zeros(), **changes}
    return Weights({k: v for k, v in tensors.items() if v is not None}).to_bytes()


def _float64_body() -> bytes:
    tensors = {n: np.zeros(s, np.float64) for n, s in HEAD_SHAPES.items()}
    header = {"format": "fedge.weights", "metadata": {}, "order": list(tensors), "version": 1}
    return bytes(safetensors.numpy.save(tensors, metadata={"fedge": json.dumps(header)}))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bad-input")
    make_bundle(tmp / "bundle")
    command = serve_command(
        tmp, tmp / "bundle", write_admin_token(tmp),
        "--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "300",
        "--norm-bound", "5", "--max-examples", "1000", "--max-upload-bytes", str(MAX_UPLOAD),
        "--retry-after", "1", "--seed", "3",
    )  # fmt: skip
    server = start_server(command, tmp)
    try:
        first = [EdgeClient(server.url, "north") for _ in range(3)]
        for i, client in enumerate(first):
            task = wait_for(client.poll)
            body = Weights(
                {n: np.full(s, 0.01 * (i + 1), np.float32) for n, s in HEAD_SHAPES.items()}
            )
            assert client.upload(task, body, 10).status_code == 201
        wait_for(lambda: admin_request(server.url, "/v1/rounds/1")["state"] == "committed")
        late_comer = EdgeClient(server.url, "south")
        everyone = {c.client_id: c for c in [*first, late_comer]}
        selected = wait_for(lambda: admin_request(server.url, "/v1/rounds/2")["selected"])
        chosen = [everyone[c] for c in selected]
        (outsider,) = [c for c in everyone.values() if c.client_id not in selected]
        tasks = {c.client_id: wait_for(c.poll)["task_id"] for c in chosen}
        alice, bob = chosen[0], chosen[1]
        key = "alice-key-0001"
        accepted = requests.post(
            f"{server.url}/v1/rounds/2/updates",
            data=_body(),
            headers=upload_headers(alice.token, tasks[alice.client_id], key=key),
            timeout=10,
        )
        assert accepted.status_code == 201, accepted.text
        yield World(server, alice, bob, outsider, tasks, key, production_digest(server.url),
                    {"first": first})  # fmt: skip
    finally:
        stop_server(server)


Request = tuple[str, str, dict[str, str], bytes | None]


def _upload(
    w: World,
    client: EdgeClient | None = None,
    round_id: int = 2,
    body: bytes | None = None,
    **header_changes: Any,
) -> Request:
    client = client or w.bob
    headers = upload_headers(client.token, w.tasks.get(client.client_id, "r2-unknown"),
                             key=header_changes.pop("key", "bob-key-0001"))  # fmt: skip
    for name, value in header_changes.items():
        header = name.replace("_", "-")
        if value is None:
            headers.pop(header, None)
        else:
            headers[header] = value
    return ("POST", f"/v1/rounds/{round_id}/updates", headers, _body() if body is None else body)


def _json_post(path: str, token: str, text: str, content_type: str = "application/json") -> Request:
    return ("POST", path, {**bearer(token), "Content-Type": content_type}, text.encode())


def _get(path: str, token: str) -> Request:
    return ("GET", path, bearer(token), None)


# name -> (request builder, status, error code, phrase in detail)
CASES: dict[str, tuple[Callable[[World], Request], int, str, str]] = {
    "no token": (lambda w: _upload(w, Authorization=None), 401, "missing_token", "Authorization"),
    "invalid token": (lambda w: _upload(w, Authorization="Bearer fedge_notarealtoken0000000000"),
                      401, "invalid_token", "unknown client token"),
    "malformed auth": (lambda w: _upload(w, Authorization="Basic dXNlcjpwYXNz"), 401,
                       "invalid_token", "Bearer"),
    "admin token as client": (lambda w: _upload(w, Authorization=f"Bearer {ADMIN_TOKEN}"), 403,
                              "client_token_required", "client token"),
    "other client's task": (lambda w: _upload(w, X_Fedge_Task_Id=w.tasks[w.alice.client_id]),
                            403, "task_not_assigned", "another client"),
    "client not selected": (lambda w: _upload(w, w.outsider, X_Fedge_Task_Id="r2-x"), 403,
                            "not_assigned", "not selected for round 2"),
    "client token on admin route": (lambda w: ("POST", "/v1/models/v1/promote",
                                               bearer(w.bob.token), None),
                                    403, "admin_required", "admin token"),
    "wrong content type": (lambda w: _upload(w, Content_Type="application/json"), 415,
                           "unsupported_media_type", "application/octet-stream"),
    "truncated body": (lambda w: _upload(w, body=_body()[:-9]), 400, "malformed_weights",
                       "truncated"),
    "garbage body": (lambda w: _upload(w, body=b"\xff" * 64), 400, "malformed_weights", ""),
    "empty body": (lambda w: _upload(w, body=b""), 400, "malformed_weights", "empty"),
    "oversized body": (lambda w: _upload(w, body=b"\0" * (MAX_UPLOAD + 1)), 413,
                       "payload_too_large", "limit"),
    "nan values": (lambda w: _upload(w, body=_body(**{"head/bias": np.array([np.nan, 0, 0])})),
                   422, "non_finite", "NaN"),
    "inf values": (lambda w: _upload(w, body=_body(**{"head/bias": np.array([np.inf, 0, 0])})),
                   422, "non_finite", "Inf"),
    "wrong shape": (lambda w: _upload(w, body=_body(**{"head/kernel": np.zeros((3, 5))})), 422,
                    "shape_mismatch", "expected shape (5, 3)"),
    "wrong dtype": (lambda w: _upload(w, body=_float64_body()), 422, "dtype_mismatch", "F32"),
    "unknown tensor": (lambda w: _upload(w, body=_body(extra=np.zeros(2))), 422,
                       "unknown_tensor", "'extra'"),
    "missing tensor": (lambda w: _upload(w, body=_body(**{"head/bias": None})), 422,
                       "missing_tensor", "'head/bias'"),
    "norm over bound": (lambda w: _upload(w, body=_body(**{"head/bias": np.full(3, 9.0)})), 422,
                        "norm_exceeded", "exceeds the bound 5"),
    "zero examples": (lambda w: _upload(w, X_Fedge_Num_Examples="0"), 422,
                      "invalid_num_examples", "1..1000"),
    "huge examples": (lambda w: _upload(w, X_Fedge_Num_Examples="10000000000"), 422,
                      "invalid_num_examples", "1..1000"),
    "non-integer examples": (lambda w: _upload(w, X_Fedge_Num_Examples="12abc"), 400,
                             "invalid_header", "X-Fedge-Num-Examples"),
    "missing example count": (lambda w: _upload(w, X_Fedge_Num_Examples=None), 400,
                              "missing_header", "X-Fedge-Num-Examples"),
    "missing idempotency key": (lambda w: _upload(w, Idempotency_Key=None), 400,
                                "missing_idempotency_key", "Idempotency-Key"),
    "invalid idempotency key": (lambda w: _upload(w, key="../../etc"), 400,
                                "invalid_idempotency_key", "Idempotency-Key"),
    "garbage metrics": (lambda w: _upload(w, X_Fedge_Metrics="{loss:"), 400, "invalid_header",
                        "X-Fedge-Metrics"),
    "nan metric": (lambda w: _upload(w, X_Fedge_Metrics='{"loss": NaN}'), 400, "invalid_header",
                   "NaN"),
    "digest mismatch": (lambda w: _upload(w, X_Fedge_Delta_Sha256="0" * 64), 400,
                        "digest_mismatch", "X-Fedge-Delta-Sha256"),
    "unknown round": (lambda w: _upload(w, round_id=999), 404, "round_not_found", "no round 999"),
    "closed round": (lambda w: _upload(w, round_id=1, key="bob-late-key-1"), 409, "round_closed",
                     "round 1 is closed"),
    "unknown task": (lambda w: _upload(w, X_Fedge_Task_Id="r2-nobody"), 404, "task_not_found",
                     "r2-nobody"),
    "replayed key, other body": (lambda w: _upload(w, w.alice, key=w.alice_key,
                                                   body=_body(**{"head/bias": np.ones(3)})),
                                 409, "idempotency_conflict", "already used"),
    "second update, new key": (lambda w: _upload(w, w.alice, key="alice-key-0002"), 409,
                               "duplicate_update", "already submitted"),
    "garbage json": (lambda w: _json_post("/v1/stats", w.bob.token, "{not json"), 400,
                     "invalid_json", "not valid JSON"),
    "json array": (lambda w: _json_post("/v1/clients", w.bob.token, "[1, 2]"), 400,
                   "invalid_json", "JSON object"),
    "stats as text/plain": (lambda w: _json_post("/v1/stats", w.bob.token, "{}", "text/plain"),
                            415, "unsupported_media_type", "application/json"),
    "invalid stats document": (lambda w: _json_post(
        "/v1/stats", w.bob.token, '{"task_id": "t-1", "stats": {"num_rows": -1}}'),
        400, "bad_message", "stats"),
    "eval for unknown task": (lambda w: _json_post(
        "/v1/evaluations", w.bob.token,
        '{"task_id": "e-1", "model_version": "v1", "num_examples": 1, "metrics": {}}'),
        404, "task_not_found", "e-1"),
    "path traversal": (lambda w: _get("/v1/models/v1/files/..%2Fmanifest.json", w.bob.token),
                       400, "invalid_file_name", "unsafe bundle file name"),
    "deep path traversal": (lambda w: _get("/v1/models/v1/files/..%2F..%2F..%2Fstate.db",
                                           w.bob.token), 400, "invalid_file_name", ".."),
    "unknown bundle file": (lambda w: _get("/v1/models/v1/files/secret.txt", w.bob.token), 404,
                            "file_not_found", "secret.txt"),
    "unknown model": (lambda w: _get("/v1/models/v99/manifest", w.bob.token), 404,
                      "model_not_found", "v99"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_gets_a_precise_4xx(world: World, name: str) -> None:
    build, status, code, phrase = CASES[name]
    method, path, headers, body = build(world)
    response = requests.request(method, world.url + path, headers=headers, data=body, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert set(document) == {"error", "detail"}
    assert document["error"] == code, document
    assert phrase in document["detail"], document
    assert document["detail"].strip()


def test_an_exact_retry_is_acknowledged_and_counted_once(world: World) -> None:
    method, path, headers, body = _upload(world, world.alice, key=world.alice_key)
    response = requests.request(method, world.url + path, headers=headers, data=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is True
    assert response.json()["sha256"] == hashlib.sha256(_body()).hexdigest()
    assert admin_request(world.url, "/v1/rounds/2")["num_updates"] == 1


def test_no_rejected_request_touched_the_global_model(world: World) -> None:
    """Runs after the hostile requests (file order): the model and round 2 are unchanged."""
    assert len(CASES) >= 25
    assert production_digest(world.url) == world.digest_before
    assert admin_request(world.url, "/v1/models/current")["version"] == "v2"
    assert [m["version"] for m in admin_request(world.url, "/v1/models")["models"]] == ["v1", "v2"]
    round_ = admin_request(world.url, "/v1/rounds/2")
    assert round_["state"] == "collecting"
    assert [u["client_id"] for u in round_["updates"]] == [world.alice.client_id]
    metrics = requests.get(f"{world.url}/metrics", headers=bearer(ADMIN_TOKEN), timeout=10).text
    for reason in ("non_finite", "norm_exceeded", "idempotency_conflict", "payload_too_large"):
        assert f'fedge_updates_rejected_total{{reason="{reason}"}}' in metrics
