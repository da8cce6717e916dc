"""Compressed updates negotiated per round (q8, topk) and the bytes each round moved: the
service on a fake clock, then the real server on loopback."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.cli import main
from coordinator.client import AdminClient
from coordinator.codecs import CODEC_HEADER, COMPRESSED_MEDIA_TYPE, decode_update
from coordinator.config import RoundConfig
from coordinator.errors import CoordinatorError
from coordinator.intake import UpdateSubmission
from coordinator.records import ClientRecord, RoundRecord
from coordinator.service import CoordinatorService, document_bytes
from fedge.bundle import write_manifest
from fedge.compression import Quantizer8Bit, TopK, decode_into
from fedge.errors import ConfigError, ShapeMismatchError, WeightsFormatError
from fedge.weights import Weights
from tests.support.coordinator import (
    CREATED_AT,
    FEATURE_SPEC,
    HTTP_TIMEOUT,
    SCHEMA,
    EdgeClient,
    ServerProcess,
    admin_client,
    build_service,
    delta,
    make_bundle,
    production_digest,
    running_server,
    serve_command,
    upload_headers,
    wait_for,
    write_admin_token,
)


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


def test_secure_q8_round_quantizes_in_the_field_and_runs_no_second_codec(
    tmp_path: Path,
) -> None:
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=3, compression="q8", secure_aggregation=True
    )
    client = _clients(service, 3)[0]
    task = service.next_task(client)
    assert task is not None
    assert "compression" not in task.config.options
    assert task.config.options["secagg_quantization_bits"] == 8


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


# Byte counts (service) ----------------------------------------------------------------------


def test_task_documents_count_as_bytes_down_of_their_round(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2)
    clients = _clients(service, 3)
    selected = [c for c in clients if c.client_id in service.get_round(1).selected]
    outsider = next(c for c in clients if c.client_id not in service.get_round(1).selected)
    assert service.next_task(outsider) is None
    assert service.get_round(1).bytes_down == 0
    task = service.next_task(selected[0])
    assert task is not None
    size = document_bytes(task.to_dict())
    assert size > 100
    assert service.get_round(1).bytes_down == size
    service.next_task(selected[0])  # polled again: served again
    assert (service.get_round(1).bytes_down, service.get_round(1).bytes_up) == (2 * size, 0)


def test_update_bodies_count_as_bytes_up_accepted_or_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, compression="q8")
    clients = _clients(service, 3)
    selected = [c for c in clients if c.client_id in service.get_round(1).selected]
    outsider = next(c for c in clients if c.client_id not in service.get_round(1).selected)
    refused = delta(1).to_bytes()
    with pytest.raises(CoordinatorError, match="this round takes 'q8' updates"):
        service.submit_update(selected[0], _upload(1, selected[0], refused, "none"))
    with pytest.raises(CoordinatorError, match="not selected"):
        service.submit_update(outsider, _upload(1, outsider, _payload("q8", 2), "q8"))
    accepted = _payload("q8", 1)
    service.submit_update(selected[0], _upload(1, selected[0], accepted, "q8"))
    assert service.get_round(1).bytes_up == len(refused) + len(accepted)


def test_count_traffic_adds_to_the_round_record_and_refuses_bad_counts(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2)
    _clients(service, 2)
    assert service.count_traffic(1, up=7, down=11).bytes_up == 7
    service.count_traffic(1, down=4)
    round_ = service.get_round(1)
    assert (round_.bytes_up, round_.bytes_down) == (7, 15)
    assert RoundRecord.from_dict(round_.to_dict()) == round_
    with pytest.raises(CoordinatorError, match="up must be a byte count >= 0, got -1"):
        service.count_traffic(1, up=-1)
    with pytest.raises(CoordinatorError, match="no round 9"):
        service.count_traffic(9, up=1)
    assert service.get_round(1).bytes_up == 7


# The real server ----------------------------------------------------------------------------

_BIG = {"head/kernel": (5, 3), "head/bias": (3,), "head/extra": (100, 100)}


def _big_bundle(directory: Path) -> Weights:
    """The fake bundle with 10,018 trainable values, so payload sizes dwarf headers."""
    manifest = make_bundle(directory)
    rng = np.random.default_rng(5)
    weights = Weights(
        {n: (rng.standard_normal(s) * 0.1).astype(np.float32) for n, s in _BIG.items()}
    )
    (directory / "weights.safetensors").write_bytes(weights.to_bytes())
    write_manifest(
        directory, model_version=manifest.model_version, task="taxi", schema=SCHEMA,
        feature_spec=FEATURE_SPEC.to_dict(), train_batch_size=8, created_at=CREATED_AT,
        metadata=manifest.metadata,
    )  # fmt: skip
    return weights


def _client_delta(index: int) -> Weights:
    rng = np.random.default_rng(100 + index)
    return Weights({n: (rng.standard_normal(s) * 0.01).astype(np.float32) for n, s in _BIG.items()})


def _post(client: EdgeClient, task: dict[str, Any], body: bytes, codec: str) -> Any:
    headers = upload_headers(client.token, task["task_id"], num_examples=20, key=uuid.uuid4().hex)
    if codec != "none":
        headers.update({"Content-Type": COMPRESSED_MEDIA_TYPE, CODEC_HEADER: codec})
    return client.session.post(
        f"{client.url}/v1/rounds/{task['round_id']}/updates",
        data=body,
        headers=headers,
        timeout=HTTP_TIMEOUT,
    )


def _encode(codec: str, update: Weights, seed: int) -> bytes:
    if codec == "none":
        return update.to_bytes()
    if codec == "q8":
        return Quantizer8Bit().encode(update, rng=np.random.default_rng(seed)).payload
    return TopK(fraction=0.01).encode(update).payload


def _run_round(
    server: ServerProcess,
    admin: AdminClient,
    clients: list[EdgeClient],
    codec: str,
    options: dict[str, float],
    *,
    refuse_first: bool = False,
) -> tuple[dict[str, Any], list[bytes]]:
    """One on-demand round with ``codec``: every client polls, downloads and uploads."""
    round_id = admin.open_round({"compression": codec, "compression_options": options})["round_id"]
    tasks = [wait_for(client.poll) for client in clients]
    assert {t["round_id"] for t in tasks} == {round_id}
    assert tasks[0]["config"]["options"].get("compression") == (None if codec == "none" else codec)
    sent = []
    for i, (client, task) in enumerate(zip(clients, tasks, strict=True)):
        client.download(task["model_version"])
        body = _encode(codec, _client_delta(i), seed=i)
        if refuse_first and i == 0:
            digest = production_digest(server.url)
            wrong = _post(client, task, _client_delta(i).to_bytes(), "none")
            assert (wrong.status_code, wrong.json()["error"]) == (400, "codec_mismatch")
            short = _post(client, task, body[:-5], codec)
            assert (short.status_code, short.json()["error"]) == (400, "malformed_weights")
            assert "truncated" in short.json()["detail"]
            shown = admin.show_round(round_id)
            assert (shown["state"], shown["num_updates"]) == ("collecting", 0)
            assert production_digest(server.url) == digest
        response = _post(client, task, body, codec)
        assert response.status_code == 201, response.text
        sent.append(body)
    done = wait_for(lambda: (r := admin.show_round(round_id))["state"] != "collecting" and r)
    assert done["state"] == "committed", done["failure_reason"]
    return done, sent


def test_compressed_rounds_on_the_real_server_commit_and_count_their_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _big_bundle(tmp_path / "bundle")
    token_file = write_admin_token(tmp_path)
    command = serve_command(
        tmp_path, tmp_path / "bundle", token_file,
        "--clients-per-round", "3", "--min-clients", "3", "--deadline-seconds", "60",
        "--retry-after", "1", "--on-demand",
    )  # fmt: skip
    with running_server(command, tmp_path) as server, admin_client(server.url) as admin:
        clients = [EdgeClient(server.url, "north") for _ in range(3)]
        plain, _ = _run_round(server, admin, clients, "none", {})
        q8, q8_sent = _run_round(server, admin, clients, "q8", {})
        topk, topk_sent = _run_round(server, admin, clients, "topk", {"fraction": 0.01})
        for done, sent in ((q8, q8_sent), (topk, topk_sent)):
            response = clients[0].session.get(
                f"{server.url}/v1/models/{done['result_version']}/weights", timeout=HTTP_TIMEOUT
            )
            new = Weights.from_bytes(response.content)
            for name in base.names:
                mean = sum(decode_into(b, base)[name].astype(np.float64) for b in sent) / 3
                np.testing.assert_allclose(new[name], base[name] + mean, rtol=0, atol=1e-6)
        refusals, _ = _run_round(server, admin, clients, "q8", {}, refuse_first=True)
        assert (
            main(
                [
                    "rounds",
                    "list",
                    "--coordinator",
                    server.url,
                    "--admin-token-file",
                    str(token_file),
                ]
            )
            == 0
        )
        listing = capsys.readouterr().out
    assert plain["bytes_up"] == sum(len(_client_delta(i).to_bytes()) for i in range(3))
    assert q8["bytes_up"] == sum(map(len, q8_sent))
    assert q8["bytes_up"] < 0.3 * plain["bytes_up"]
    assert topk["bytes_up"] < 0.05 * plain["bytes_up"]
    refused = len(_client_delta(0).to_bytes()) + len(q8_sent[0]) - 5
    assert refusals["bytes_up"] > q8["bytes_up"] + refused - 100  # the refused bodies count
    weights_size = len(base.to_bytes())
    for done in (plain, q8, topk, refusals):
        assert done["bytes_down"] > 3 * weights_size  # three base downloads and the tasks
    header, *rows = listing.splitlines()
    assert {"bytes_up", "bytes_down"} <= set(header.split())
    assert str(topk["bytes_up"]) in rows[2].split()
