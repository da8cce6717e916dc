"""The device's update codecs: what a compressed round's train task asks for, round-tripped
through the coordinator's decoder, and top-k's error-feedback residual kept in the state
directory across a daemon restart (the daemon in-process against a real coordinator)."""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator import codecs
from coordinator.codecs import decode_update
from edge_client.backoff import BackoffPolicy
from edge_client.compress import (
    CODEC_HEADER,
    COMPRESSED_MEDIA_TYPE,
    CompressedUpdate,
    FileFeedbackStore,
    MemoryFeedbackStore,
    compress_update,
)
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.state import ClientState, write_token
from edge_client.transport import (
    DEFAULT_TIMEOUT,
    CoordinatorClient,
    HttpResponse,
    HttpTransport,
    reply_request,
)
from fedge.compression import ErrorFeedback, TopK, decode_into
from fedge.errors import ConfigError
from fedge.messages import ModelUpdate, Task, TaskConfig, decode_message, encode_message
from fedge.weights import Weights
from tests.support.edge import admin, coordinator, taxi_rows, wait_committed, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

SHAPES = {"head/kernel": (40, 25), "head/bias": (25,)}


def _delta(seed: int, scale: float = 0.01) -> Weights:
    rng = np.random.default_rng(seed)
    return Weights(
        {n: (rng.standard_normal(s) * scale).astype(np.float32) for n, s in SHAPES.items()}
    )


def _task(**options: Any) -> Task:
    return Task(
        task_id="r3-c-1",
        kind="train",
        round_id=3,
        model_version="v2",
        config=TaskConfig(options=options),
        deadline=1e12,
    )


def _update(delta: Weights) -> ModelUpdate:
    return ModelUpdate(
        task_id="r3-c-1", round_id=3, num_examples=12, metrics={"loss": 0.4}, delta=delta
    )


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "q8"},
        {"compression": "q8", "compression_block": 16},
        {"compression": "topk", "compression_fraction": 0.1},
    ],
)
def test_encoded_update_decodes_on_the_coordinator_to_what_the_device_says_it_sent(
    options: Mapping[str, Any],
) -> None:
    original = _delta(1)
    update = compress_update(
        _task(**options), _update(original), MemoryFeedbackStore(), np.random.default_rng(0)
    )
    assert isinstance(update, CompressedUpdate)
    assert update.codec == options["compression"]
    decoded = decode_update(update.payload, update.codec, original, max_bytes=len(update.payload))
    for name in original.names:
        np.testing.assert_array_equal(decoded[name], update.delta[name])
    assert len(update.payload) < len(original.to_bytes()) / 2
    error = max(float(np.abs(decoded[n] - original[n]).max()) for n in original.names)
    if update.codec == "q8":  # less than one quantization step per value
        span = max(float(original[n].max() - original[n].min()) for n in original.names)
        assert error <= span / 255 * 1.0001
    else:  # top-k keeps 10% of the values exactly (as float32)
        kept = sum(int(np.count_nonzero(decoded[n])) for n in original.names)
        assert kept == int(np.ceil(0.1 * original.num_parameters))


def test_compressed_update_goes_out_with_its_codec_and_the_payload_as_body() -> None:
    update = compress_update(
        _task(compression="topk", compression_fraction=0.05),
        _update(_delta(2)),
        MemoryFeedbackStore(),
        np.random.default_rng(0),
    )
    assert isinstance(update, CompressedUpdate)
    request = reply_request(update, "key-00000001")
    assert request.path == "/v1/rounds/3/updates"
    assert request.headers["Content-Type"] == COMPRESSED_MEDIA_TYPE == codecs.COMPRESSED_MEDIA_TYPE
    assert request.headers[CODEC_HEADER] == "topk"
    assert CODEC_HEADER == codecs.CODEC_HEADER
    assert request.body == update.payload
    document, body = encode_message(update)
    assert (document["codec"], body) == ("topk", update.payload)
    plain = reply_request(_update(_delta(2)), "key-00000002")
    assert plain.headers["Content-Type"] == "application/octet-stream"
    assert CODEC_HEADER not in plain.headers


@pytest.mark.parametrize("options", [{}, {"compression": "q8", "secagg": True}])
def test_task_without_compression_keeps_the_plain_update(options: dict[str, Any]) -> None:
    update = _update(_delta(3))
    kept = compress_update(
        _task(**options), update, MemoryFeedbackStore(), np.random.default_rng(0)
    )
    assert kept is update
    assert isinstance(decode_message(*encode_message(kept)), ModelUpdate)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compression": "zip"}, "asks for the update codec 'zip'"),
        ({"compression": "topk", "compression_fraction": 0}, "must be > 0"),
        (
            {"compression": "q8", "compression_block": 0},
            "compression_block must be an integer >= 1, got 0",
        ),
    ],
)
def test_unknown_codec_or_bad_option_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compress_update(
            _task(**options), _update(_delta(4)), MemoryFeedbackStore(), np.random.default_rng(0)
        )


def test_topk_carries_what_it_did_not_send_into_the_next_round(tmp_path: Path) -> None:
    store = FileFeedbackStore(tmp_path / "compression")
    task = _task(compression="topk", compression_fraction=0.02)
    first, second = _delta(5), _delta(6)
    sent = compress_update(task, _update(first), store, np.random.default_rng(0))
    residual = store.load()
    assert residual is not None
    for name in first.names:  # nothing is lost: sent + kept == the delta
        np.testing.assert_allclose(
            sent.delta[name] + residual.residual[name], first[name], rtol=0, atol=1e-7
        )
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    restarted = FileFeedbackStore(store.directory)  # what a restarted daemon opens
    again = compress_update(task, _update(second), restarted, np.random.default_rng(0))
    expected, _ = TopK(0.02).step(residual, second)
    assert isinstance(again, CompressedUpdate)
    assert again.payload == expected.payload


def test_residual_starts_afresh_when_the_model_changes_or_the_file_is_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = FileFeedbackStore(tmp_path)
    other = Weights({"head/kernel": np.ones((3, 3), np.float32)})
    store.save(ErrorFeedback.zeros(other))
    task = _task(compression="topk", compression_fraction=0.1)
    update = compress_update(task, _update(_delta(7)), store, np.random.default_rng(0))
    fresh, _ = TopK(0.1).step(ErrorFeedback.zeros(_delta(7)), _delta(7))
    assert isinstance(update, CompressedUpdate)
    assert update.payload == fresh.payload
    assert "starts afresh" in caplog.text
    store.path.write_bytes(b"not safetensors")
    assert store.load() is None
    assert "corrupt error-feedback state" in caplog.text


class CapturingTransport:
    """HttpTransport that keeps every update upload: (headers, body)."""

    def __init__(self) -> None:
        self.inner = HttpTransport()
        self.uploads: list[tuple[dict[str, str], bytes]] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        if url.endswith("/updates"):
            self.uploads.append((dict(headers), body or b""))
        return self.inner.request(method, url, headers=headers, body=body, timeout=timeout)

    def close(self) -> None:
        self.inner.close()


def _round(server_url: str, daemon: Daemon, round_id: int) -> dict[str, Any]:
    admin(
        server_url,
        "POST",
        "/v1/rounds",
        {"compression": "topk", "compression_options": {"fraction": 0.05}},
    )
    outcomes = [daemon.step() for _ in range(6)]
    assert "handled" in outcomes, outcomes
    while len(daemon.state.outbox):
        daemon.step()
    return wait_committed(server_url, round_id)


def test_error_feedback_survives_a_daemon_restart(edge_taxi_bundle: Path, tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 200))
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        registration = CoordinatorClient(server.url, HttpTransport()).register(region="north")
        write_token(tmp_path / "token", registration.token)
        config = DaemonConfig(
            coordinator=server.url,
            token_file=tmp_path / "token",
            data_dir=data,
            state_dir=state,
            backoff=BackoffPolicy(base=0.05, cap=0.2),
            settle_seconds=0,
        )
        transport = CapturingTransport()
        daemon = Daemon(config, transport=transport, rng=np.random.default_rng(0))
        first = _round(server.url, daemon, 1)
        assert first["bytes_up"] == len(transport.uploads[0][1])
        assert first["bytes_down"] > 0
        headers, body = transport.uploads[0]
        assert (headers["Content-Type"], headers[CODEC_HEADER]) == (COMPRESSED_MEDIA_TYPE, "topk")
        base = Weights.from_bytes((edge_taxi_bundle / "weights.safetensors").read_bytes())
        decode_update(body, "topk", base, max_bytes=len(body))  # what the coordinator took
        kept = ClientState(state).feedback.load()
        assert kept is not None
        assert sum(int(np.count_nonzero(a)) for a in kept.residual.values()) > 0
        daemon.client.close()

        # A marker in the kept residual, far above any one round's training: the restarted
        # daemon must send it, which it can only know from its state directory.
        name = base.names[0]
        marked = {n: np.array(a) for n, a in kept.residual.items()}
        marked[name].flat[0] += 5.0
        ClientState(state).feedback.save(ErrorFeedback(marked))

        restarted = Daemon(config, transport=transport, rng=np.random.default_rng(1))
        _round(server.url, restarted, 2)
        assert len(transport.uploads) == 2
        decoded = decode_into(transport.uploads[-1][1], base)
        assert float(decoded[name].flat[0]) > 4.5
        after = ClientState(state).feedback.load()
        assert after is not None
        assert abs(float(after.residual[name].flat[0])) < 1.0  # sent, so no longer kept
        restarted.client.close()
