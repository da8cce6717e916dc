"""Compressed updates negotiated per round (q8, topk) and the bytes each round moved: the
service on a fake clock, then the real server on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.codecs import decode_update
from coordinator.config import RoundConfig
from coordinator.errors import CoordinatorError
from coordinator.intake import UpdateSubmission
from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from fedge.compression import Quantizer8Bit, TopK, decode_into
from fedge.errors import ConfigError, ShapeMismatchError, WeightsFormatError
from fedge.weights import Weights
from tests.support.coordinator import build_service, delta


def _clients(service: CoordinatorService, n: int) -> list[ClientRecord]:
    return [service.authenticate(service.register_client().token) for _ in range(n)]


def _base(service: CoordinatorService) -> Weights:
    return service.registry.weights(service.get_model("v1"))


def _production_digest(service: CoordinatorService) -> str:
    return hashlib.sha256(
        service.registry.weights(service.get_model("current")).to_bytes()
    ).hexdigest()


def _payload(codec: str, seed: int, **options: Any) -> bytes:
    update = delta(seed)
    if codec == "q8":
        return Quantizer8Bit(**options).encode(update, rng=np.random.default_rng(seed)).payload
    return TopK(**options).encode(update).payload


def _upload(
    round_id: int, client: ClientRecord, body: bytes, codec: str, *, num_examples: int = 10
) -> UpdateSubmission:
    return UpdateSubmission(
        round_id=round_id,
        task_id=f"r{round_id}-{client.client_id}",
        num_examples=num_examples,
        idempotency_key=f"key-{round_id}-{client.client_id}-{codec}",
        body=body,
        metrics={"loss": 0.5},
        codec=codec,
    )


def _expected_fedavg(base: Weights, sent: list[tuple[bytes, int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in sent)
    out = {}
    for name in base.names:
        mean = sum(decode_into(body, base)[name].astype(np.float64) * n for body, n in sent)
        out[name] = base[name].astype(np.float64) + mean / total
    return out


# Config and tasks ---------------------------------------------------------------------------


def test_round_config_refuses_an_unknown_codec_and_foreign_options() -> None:
    with pytest.raises(ConfigError, match="compression must be one of"):
        RoundConfig(compression="zip")
    with pytest.raises(ConfigError, match=r"\['fraction'\] do not apply to compression 'q8'"):
        RoundConfig(compression="q8", compression_options={"fraction": 0.1})
    with pytest.raises(ConfigError, match="must be > 0"):
        RoundConfig(compression="topk", compression_options={"fraction": 0})
    with pytest.raises(ConfigError, match="reserved"):
        RoundConfig(task_options={"compression": "q8"})
    config = RoundConfig(compression="topk", compression_options={"fraction": 0.05})
    assert RoundConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("codec", "options", "expected"),
    [
        ("q8", {"block": 4}, {"compression": "q8", "compression_block": 4}),
        ("topk", {}, {"compression": "topk", "compression_fraction": 0.01}),
        ("none", {}, {}),
    ],
)
def test_train_task_carries_the_round_codec(
    tmp_path: Path, codec: str, options: dict[str, float], expected: dict[str, Any]
) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, compression=codec,
        compression_options=options, task_options={"shuffle_seed": 3},
    )  # fmt: skip
    client = _clients(service, 2)[0]
    task = service.next_task(client)
    assert task is not None
    assert dict(task.config.options) == {"shuffle_seed": 3, **expected}


# Rounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "options", "encoder"),
    [
        ("q8", {"block": 4}, {"block_size": 4}),
        ("topk", {"fraction": 0.3}, {"fraction": 0.3}),
    ],
)
def test_compressed_round_commits_the_fedavg_of_the_decoded_updates(
    tmp_path: Path, codec: str, options: dict[str, float], encoder: dict[str, Any]
) -> None:
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=3, compression=codec,
        compression_options=options,
    )  # fmt: skip
    clients = _clients(service, 3)
    base = _base(service)
    sent = []
    for i, client in enumerate(clients):
        body = _payload(codec, seed=i + 1, **encoder)
        receipt = service.submit_update(
            client, _upload(1, client, body, codec, num_examples=10 * (i + 1))
        )
        assert receipt.sha256 == hashlib.sha256(body).hexdigest()  # stored as received
        sent.append((body, 10 * (i + 1)))
    round_ = service.get_round(1)
    assert round_.state == "committed", round_.failure_reason
    new = service.registry.weights(service.get_model(str(round_.result_version)))
    expected = _expected_fedavg(base, sent)
    for name in base.names:
        np.testing.assert_allclose(new[name], expected[name], rtol=0, atol=1e-6)
    # The decoded deltas, not the originals: the codec's error shows in the result.
    plain = {
        n: base[n] + sum(delta(i + 1)[n] * 10 * (i + 1) for i in range(3)) / 60 for n in base.names
    }
    assert any(not np.allclose(new[n], plain[n], rtol=0, atol=1e-7) for n in base.names)


# Intake refusals ----------------------------------------------------------------------------


def _refused(service: CoordinatorService, client: ClientRecord, upload: UpdateSubmission) -> Any:
    digest = _production_digest(service)
    with pytest.raises((CoordinatorError, WeightsFormatError)) as caught:
        service.submit_update(client, upload)
    assert service.store.count_updates(upload.round_id) == 0  # nothing stored
    assert service.get_round(upload.round_id).state == "collecting"
    assert _production_digest(service) == digest
    return caught.value


def test_upload_with_another_codec_than_the_round_is_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, compression="q8")
    client = _clients(service, 2)[0]
    plain = _refused(service, client, _upload(1, client, delta(1).to_bytes(), "none"))
    assert plain.code == "codec_mismatch"
    assert "this round takes 'q8' updates, the upload is 'none'" in str(plain)
    topk = _refused(service, client, _upload(1, client, _payload("topk", 1, fraction=0.5), "topk"))
    assert topk.code == "codec_mismatch"
    # The declared codec matches the round, the payload inside does not.
    inside = _refused(service, client, _upload(1, client, _payload("topk", 1, fraction=0.5), "q8"))
    assert str(inside) == "the upload says codec 'q8' but its payload is 'topk'"
    assert service.store.rejection_counts()["codec_mismatch"] == 3


def test_compressed_upload_to_a_plain_round_is_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2)
    client = _clients(service, 2)[0]
    error = _refused(service, client, _upload(1, client, _payload("q8", 1), "q8"))
    assert error.code == "codec_mismatch"


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_truncated_compressed_payload_is_refused(tmp_path: Path, cut: int) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, compression="q8")
    client = _clients(service, 2)[0]
    body = _payload("q8", 1)
    error = _refused(service, client, _upload(1, client, body[:-cut], "q8"))
    assert isinstance(error, WeightsFormatError)
    assert "truncated" in str(error) or "corrupt" in str(error)
    # The whole payload is then accepted: the refusal changed nothing.
    service.submit_update(client, _upload(1, client, body, "q8"))
    assert service.store.count_updates(1) == 1


def test_norm_bound_applies_to_the_decoded_delta(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, compression="topk", norm_bound=0.05
    )
    client = _clients(service, 2)[0]
    big = delta(1, scale=1.0)
    body = TopK(fraction=0.5).encode(big).payload
    error = _refused(service, client, _upload(1, client, body, "topk"))
    assert error.code == "norm_exceeded"


def test_decode_update_checks_the_reference_shapes(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    base = _base(service)
    other = Weights(
        {"head/kernel": np.zeros((4, 3), np.float32), "head/bias": np.zeros(3, np.float32)}
    )
    body = Quantizer8Bit().encode(other, rng=np.random.default_rng(0)).payload
    with pytest.raises(ShapeMismatchError, match="expected shape"):
        decode_update(body, "q8", base, max_bytes=len(body))
