"""Signed models against a man in the middle over gRPC: the attack of
``test_signed_models`` on a ``grpc://`` device.

A real coordinator on loopback serves REST and gRPC; the real daemon reaches it over gRPC
through a channel interceptor that, once armed, rewrites model v2's streamed manifest and
weights (``DownloadFile``) to all-zero weights and makes every sha256 field of the stream
header and the manifest match the forgery (the REST test also covers the unfixed case,
which the sha256 checks catch alone). Only the coordinator's Ed25519 signature stops it:
the pinned device refuses v2 and keeps serving v1; a device whose signature check is off
takes the all-zero model, which shows the forgery would otherwise get through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edge_client.backoff import BackoffPolicy
from edge_client.cli import main as edge_main
from edge_client.daemon import Daemon, DaemonConfig
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE
from fedge.protocol import fleet_pb2 as pb
from fedge.weights import Weights
from tests.support.edge import admin, coordinator, taxi_rows, wait_committed, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)


class _Replay:
    """A forged download stream: the messages, and ``cancel`` as a real call has."""

    def __init__(self, messages: list[Any]) -> None:
        self._messages = iter(messages)

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> Any:
        return next(self._messages)

    def cancel(self) -> bool:
        return True


class GrpcManInTheMiddle(grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """While ``version`` is set, rewrites that version's streamed manifest and weights to
    all-zero weights; with ``fix_sha256`` the header's sha256 and the manifest's weights
    entry match the forgery (the manifest's signature is passed on unchanged)."""

    def __init__(self, *, fix_sha256: bool) -> None:
        self.fix_sha256 = fix_sha256
        self.version: str | None = None
        self.rewritten: list[str] = []

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        response = continuation(details, request)
        if (
            self.version is None
            or not str(details.method).endswith("/DownloadFile")
            or request.version != self.version
            or request.name not in (MANIFEST_NAME, WEIGHTS_FILE)
        ):
            return response
        header, body = _read(response)
        if header.not_modified:
            return _Replay([pb.FileChunk(header=header)])
        if request.name == WEIGHTS_FILE:
            self.rewritten.append("weights")
            return self._forged(header, _zeros(body))
        weights_request = pb.DownloadRequest(version=request.version, name=WEIGHTS_FILE)
        _, weights = _read(continuation(details, weights_request))
        zeros = _zeros(weights)
        manifest = json.loads(body)
        if self.fix_sha256:
            entry = {"sha256": hashlib.sha256(zeros).hexdigest(), "size": len(zeros)}
            manifest["files"][WEIGHTS_FILE] = entry
        self.rewritten.append("manifest")
        return self._forged(header, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def _forged(self, header: Any, body: bytes) -> _Replay:
        forged = pb.FileHeader()
        forged.CopyFrom(header)
        forged.size = len(body)
        if self.fix_sha256:
            forged.sha256 = hashlib.sha256(body).hexdigest()
        return _Replay(
            [pb.FileChunk(header=forged), pb.FileChunk(chunk=pb.Chunk(offset=0, data=body))]
        )


def _read(stream: Iterator[Any]) -> tuple[Any, bytes]:
    messages = list(stream)
    return messages[0].header, b"".join(m.chunk.data for m in messages[1:])


def _zeros(safetensors: bytes) -> bytes:
    weights = Weights.from_bytes(safetensors)
    return Weights({name: np.zeros_like(weights[name]) for name in weights.names}).to_bytes()


def _device(
    tmp_path: Path, name: str, url: str, mitm: GrpcManInTheMiddle, *, verify: bool = True
) -> Daemon:
    data, state, token = tmp_path / f"{name}-data", tmp_path / f"{name}-state", tmp_path / name
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 200))
    args = ["register", "--coordinator", url, "--token-file", str(token), "--state", str(state)]
    assert edge_main(args) == 0
    config = DaemonConfig(
        coordinator=url,
        token_file=token,
        data_dir=data,
        state_dir=state,
        backoff=BackoffPolicy(base=0.05, cap=0.2),
        settle_seconds=0,
        verify_signatures=verify,
    )
    return Daemon(config, grpc_interceptors=[mitm], rng=np.random.default_rng(0))


def _step_until(daemon: Daemon, wanted: str, *, limit: int = 20) -> list[str]:
    outcomes = []
    for _ in range(limit):
        outcomes.append(daemon.step())
        if outcomes[-1] == wanted:
            return outcomes
    raise AssertionError(f"no {wanted!r} step in {outcomes}")


def _serving_weights(daemon: Daemon) -> Weights:
    bundle = daemon.state.current_bundle()
    assert bundle is not None
    return Weights.from_bytes((bundle / WEIGHTS_FILE).read_bytes())


def test_a_model_rewritten_in_the_grpc_stream_is_refused_and_v1_keeps_serving(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    mitm = GrpcManInTheMiddle(fix_sha256=True)
    with coordinator(tmp_path, edge_taxi_bundle, "taxi", grpc=True) as server:
        url = server.coordinator.grpc_url
        assert url is not None
        assert url.startswith("grpc://127.0.0.1:")
        pinned = _device(tmp_path, "pinned", url, mitm)
        assert pinned.state.trust()["how"] == "enrollment"
        admin(server.url, "POST", "/v1/rounds", {})
        assert _step_until(pinned, "handled")[-1] == "handled"
        pinned.step()  # delivers the update
        wait_committed(server.url, 1)
        assert pinned.state.current_version == "v1"
        v1 = _serving_weights(pinned)

        unprotected = _device(tmp_path, "unprotected", url, mitm, verify=False)
        admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate"})
        mitm.version = "v2"

        assert _step_until(pinned, "model_rejected")[-1] == "model_rejected"
        assert "manifest" in mitm.rewritten
        assert pinned.state.current_version == "v1"
        assert pinned.state.bundles.versions() == ["v1"]
        status = json.loads((pinned.state.directory / "status.json").read_text())
        assert "signature does not verify" in status["rejected_models"]["v2"]["reason"]
        served = _serving_weights(pinned)
        assert all(np.array_equal(served[n], v1[n]) for n in v1.names)

        # Without the signature check the forgery gets through every sha256 check.
        outcomes = [unprotected.step() for _ in range(6)]
        assert "handled" in outcomes, outcomes
        assert unprotected.state.current_version == "v2"
        taken = _serving_weights(unprotected)
        assert all(not np.any(taken[name]) for name in taken.names)
        pinned.client.close()
        unprotected.client.close()
