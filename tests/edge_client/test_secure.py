"""The device side of secure aggregation (edge_client.secure) against the core's server
state machine, every message through the JSON codec as the coordinator would serve it.

A fleet of six devices, each with its own on-disk secret store, is driven through
begin/step; the server is :class:`fedge.secagg.ServerState` in process. The unmasked sum
must be the example-weighted mean of the devices' deltas within the stated bound; the
refusals (both shares of one peer, a contradicting second request, too few survivors, a
bundle that does not authenticate, a minority threshold) must hold, also across a restart.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_client.backoff import BackoffPolicy
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.outbox import Outbox
from edge_client.secure import (
    FileSecretStore,
    MemorySecretStore,
    SecureReply,
    begin,
    masking_config,
    step,
)
from edge_client.state import write_token
from edge_client.transport import FunctionTransport, HttpResponse, secure_request
from fedge.errors import SecAggError
from fedge.messages import ModelUpdate, Task, TaskConfig
from fedge.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SecureSum,
    ServerState,
    ShareKeys,
    UnmaskResponse,
    decode_secagg,
    encode_secagg,
)
from fedge.weights import Weights

ROUND = 7
SHAPES = {"head/bias": (3,), "head/kernel": (5, 3)}
DIMENSION = 18
CLIP, CAP, MODULUS_BITS, QUANTIZATION_BITS = 1.0, 1000, 32, 16
KIND = {"share": "secagg_share", "mask": "secagg_mask", "unmask": "secagg_unmask"}


def _options(cid: int, **changes: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "secagg": True,
        "secagg_id": cid,
        "secagg_clip": CLIP,
        "secagg_quantization_bits": QUANTIZATION_BITS,
        "secagg_modulus_bits": MODULUS_BITS,
        "secagg_example_cap": CAP,
        "secagg_dimension": DIMENSION,
    }
    options.update(changes)
    return options


def _task(kind: str, cid: int, *, round_id: int = ROUND, **changes: Any) -> Task:
    task_id = f"r{round_id}-c{cid}" + ("" if kind == "train" else f"-{kind}")
    return Task(
        task_id=task_id,
        kind=kind,  # type: ignore[arg-type]
        round_id=round_id,
        model_version="v1",
        config=TaskConfig(options=_options(cid, **changes)),
        deadline=2e9,
    )


def _stage_task(stage: str, cid: int, *, round_id: int = ROUND) -> Task:
    return _task(KIND[stage], cid, round_id=round_id)


def _update(cid: int, *, round_id: int = ROUND, seed: int | None = None) -> ModelUpdate:
    rng = np.random.default_rng(100 + (cid if seed is None else seed))
    delta = Weights.from_pairs(
        (name, (rng.standard_normal(shape) * 0.2).astype(np.float32))
        for name, shape in SHAPES.items()
    )
    return ModelUpdate(
        task_id=_task("train", cid, round_id=round_id).task_id,
        round_id=round_id,
        num_examples=20 + 7 * cid,
        metrics={"loss": 0.5 + cid / 10, "accuracy": 0.7},
        delta=delta,
    )


def _wire(reply: SecureReply) -> tuple[dict[str, Any], bytes | None]:
    """What the coordinator receives: the POST body, parsed back as the route would."""
    request = secure_request(reply, "key")
    if request.headers["Content-Type"] == "application/octet-stream":
        return {}, request.body
    document: dict[str, Any] = json.loads(request.body)
    return document, None


def _advert(reply: SecureReply) -> AdvertiseKeys:
    assert reply.stage == "advertise"
    message = decode_secagg(_wire(reply)[0])
    assert isinstance(message, AdvertiseKeys)
    return message


def _served(message: Any) -> dict[str, Any]:
    """A server message as the device GETs it (JSON text, parsed)."""
    document: dict[str, Any] = json.loads(json.dumps(encode_secagg(message)[0]))
    return document


@dataclass
class Fleet:
    stores: dict[int, FileSecretStore]
    updates: dict[int, ModelUpdate]

    def expected_mean(self, ids: set[int]) -> npt.NDArray[np.float64]:
        counts = np.array([self.updates[c].num_examples for c in sorted(ids)], np.float64)
        vectors = np.stack(
            [np.clip(self.updates[c].delta.flatten(), -CLIP, CLIP) for c in sorted(ids)]
        )
        mean: npt.NDArray[np.float64] = (counts[:, None] * vectors).sum(0) / counts.sum()
        return mean


def _fleet(tmp_path: Path, n: int = 6) -> Fleet:
    return Fleet(
        stores={cid: FileSecretStore(tmp_path / f"device-{cid}" / "secagg") for cid in range(n)},
        updates={cid: _update(cid) for cid in range(n)},
    )


def _to_masked(
    fleet: Fleet, *, drop_after_sharing: frozenset[int] = frozenset(), seed: int = 0
) -> tuple[ServerState, dict[int, Any]]:
    """Stages 1-3 through begin/step; returns the server and its unmask requests."""
    rng = np.random.default_rng(seed)
    config = masking_config(_task("train", 0))
    adverts = [
        _advert(begin(_task("train", cid), fleet.updates[cid], store))
        for cid, store in fleet.stores.items()
    ]
    server, rosters = ServerState(config).collect_keys(adverts, rng=rng)
    shares = []
    for cid, roster in rosters.items():
        reply = step(_stage_task("share", cid), _served(roster), fleet.stores[cid])
        message = decode_secagg(_wire(reply)[0])
        assert isinstance(message, ShareKeys)
        shares.append(message)
    server, deliveries = server.collect_shares(shares)
    for cid, delivery in deliveries.items():
        reply = step(_stage_task("mask", cid), _served(delivery), fleet.stores[cid], rng=rng)
        _, body = _wire(reply)
        assert body is not None
        assert reply.metrics == fleet.updates[cid].metrics
        if cid not in drop_after_sharing:
            server = server.accept_masked(MaskedInput(cid, body))
    server, requests = server.unmask_requests()
    return server, requests


def _unmask(fleet: Fleet, server: ServerState, requests: Mapping[int, Any]) -> SecureSum:
    responses = []
    for cid, request in requests.items():
        reply = step(_stage_task("unmask", cid), _served(request), fleet.stores[cid])
        message = decode_secagg(_wire(reply)[0])
        assert isinstance(message, UnmaskResponse)
        responses.append(message)
    return server.unmask(responses)


def _assert_fedavg(result: SecureSum, fleet: Fleet, ids: set[int]) -> None:
    config = masking_config(_task("train", 0))
    assert result.num_clients == len(ids)
    assert result.num_examples == sum(fleet.updates[c].num_examples for c in ids)
    bound = CAP * config.error_bound(len(ids)) / result.num_examples
    error = np.abs(result.mean - fleet.expected_mean(ids))
    assert error.max() <= bound


def test_six_devices_through_begin_and_step_reproduce_the_weighted_mean(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    server, requests = _to_masked(fleet)
    result = _unmask(fleet, server, requests)
    _assert_fedavg(result, fleet, set(fleet.stores))


def test_a_device_dropping_after_sharing_keys_is_recovered(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    server, requests = _to_masked(fleet, drop_after_sharing=frozenset({2}))
    assert 2 not in requests
    result = _unmask(fleet, server, requests)
    _assert_fedavg(result, fleet, set(fleet.stores) - {2})


def test_secret_files_are_owner_only_and_drop_the_delta_once_masked(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, n=3)
    store = fleet.stores[0]
    begin(_task("train", 0), fleet.updates[0], store)
    path = store.path(ROUND)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["vector"] is not None
    assert [p.name for p in store.directory.iterdir()] == [path.name]  # no temporary left

    fleet = _fleet(tmp_path / "full", n=4)
    _to_masked(fleet)
    for store in fleet.stores.values():
        record = json.loads(store.path(ROUND).read_text())
        assert record["vector"] is None
        assert record["stage"] == "masked"
        assert stat.S_IMODE(store.path(ROUND).stat().st_mode) == 0o600


def test_begin_deletes_the_secrets_of_earlier_rounds(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path / "secagg")
    begin(_task("train", 0, round_id=3), _update(0, round_id=3), store)
    begin(_task("train", 0, round_id=5), _update(0, round_id=5), store)
    assert store.round_ids() == [5]
    assert not store.path(3).exists()


def test_begin_refuses_an_update_of_another_dimension(tmp_path: Path) -> None:
    store = MemorySecretStore()
    with pytest.raises(SecAggError, match="expects secagg_dimension 19"):
        begin(_task("train", 0, secagg_dimension=19), _update(0), store)
    with pytest.raises(SecAggError, match="secagg_clip must be a number"):
        begin(_task("train", 0, secagg_clip="wide"), _update(0), store)
    assert store.round_ids() == []


def test_the_device_refuses_both_shares_of_one_peer_in_one_request(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    _, requests = _to_masked(fleet)
    victim_holder = 0
    request = requests[victim_holder]
    peer = min(request.survivors)
    hostile = {**_served(request), "dropped": sorted(request.dropped | {peer})}
    with pytest.raises(
        SecAggError, match=rf"both the self-seed and the mask-key shares of \[{peer}\]"
    ):
        step(_stage_task("unmask", victim_holder), hostile, fleet.stores[victim_holder])
    record = json.loads(fleet.stores[victim_holder].path(ROUND).read_text())
    assert record["revealed_seeds"] == []
    assert record["revealed_keys"] == []


def test_a_contradicting_second_request_is_refused_after_a_restart(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    _, requests = _to_masked(fleet)
    request = requests[1]
    peer = min(request.survivors)
    step(_stage_task("unmask", 1), _served(request), fleet.stores[1])
    restarted = FileSecretStore(fleet.stores[1].directory)  # a fresh process reads the file
    contradicting = {
        "type": "secagg_unmask_request",
        "client_id": 1,
        "survivors": [],
        "dropped": [peer],
    }
    with pytest.raises(SecAggError, match="already revealed"):
        step(_stage_task("unmask", 1), contradicting, restarted)
    assert json.loads(restarted.path(ROUND).read_text())["revealed_keys"] == []


def test_the_device_refuses_to_unmask_with_fewer_than_threshold_survivors(
    tmp_path: Path,
) -> None:
    fleet = _fleet(tmp_path)
    _, requests = _to_masked(fleet)
    request = requests[0]
    record = json.loads(fleet.stores[0].path(ROUND).read_text())
    threshold = record["threshold"]
    neighbours = sorted(request.survivors | request.dropped)
    thin = {
        "type": "secagg_unmask_request",
        "client_id": 0,
        "survivors": neighbours[: threshold - 1],
        "dropped": neighbours[threshold - 1 :],
    }
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        step(_stage_task("unmask", 0), thin, fleet.stores[0])


def test_a_tampered_bundle_and_a_minority_threshold_are_refused(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, n=5)
    config = masking_config(_task("train", 0))
    adverts = [
        _advert(begin(_task("train", c), fleet.updates[c], s)) for c, s in fleet.stores.items()
    ]
    server, rosters = ServerState(config).collect_keys(adverts, rng=np.random.default_rng(0))
    minority = {**_served(rosters[0]), "threshold": 1}
    with pytest.raises(SecAggError, match="strict majority"):
        step(_stage_task("share", 0), minority, fleet.stores[0])
    shares = []
    for cid, roster in rosters.items():
        reply = step(_stage_task("share", cid), _served(roster), fleet.stores[cid])
        message = decode_secagg(_wire(reply)[0])
        assert isinstance(message, ShareKeys)
        shares.append(message)
    _, deliveries = server.collect_shares(shares)
    document = _served(deliveries[0])
    sender = next(iter(document["bundles"]))
    blob = bytearray(base64.b64decode(document["bundles"][sender]))
    blob[-1] ^= 1
    document["bundles"][sender] = base64.b64encode(bytes(blob)).decode()
    with pytest.raises(SecAggError, match="failed authentication"):
        step(_stage_task("mask", 0), document, fleet.stores[0])
    assert json.loads(fleet.stores[0].path(ROUND).read_text())["vector"] is not None


def test_step_refuses_without_secrets_or_with_the_wrong_payload(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path / "secagg")
    request = {"type": "secagg_unmask_request", "client_id": 0, "survivors": [], "dropped": []}
    with pytest.raises(SecAggError, match="no secure-aggregation secrets for round 7"):
        step(_stage_task("unmask", 0), request, store)
    begin(_task("train", 0), _update(0), store)
    with pytest.raises(SecAggError, match="expected a KeyRoster"):
        step(_stage_task("share", 0), request, store)
    with pytest.raises(SecAggError, match="payload is malformed"):
        step(_stage_task("share", 0), {"type": "secagg_key_roster"}, store)


def test_secure_replies_become_durable_posts_of_the_secagg_routes(tmp_path: Path) -> None:
    store = MemorySecretStore()
    reply = begin(_task("train", 4), _update(4), store)
    request = secure_request(reply, "k-1")
    assert request.path == f"/v1/rounds/{ROUND}/secagg/advertise"
    assert request.headers["X-Fedge-Task-Id"] == _task("train", 4).task_id
    assert request.headers["Idempotency-Key"] == "k-1"
    assert json.loads(request.body) == reply.document
    masked = SecureReply(ROUND, "r7-c4-secagg_mask", "mask", None, b"\x01\x02", {"loss": 0.5})
    request = secure_request(masked, "k-2")
    assert request.path == f"/v1/rounds/{ROUND}/secagg/mask"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert json.loads(request.headers["X-Fedge-Metrics"]) == {"loss": 0.5}
    assert request.body == b"\x01\x02"
    assert request.kind == "secagg_mask"
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(reply)
    outbox.put(masked)
    stored = [entry.request for entry in outbox.entries()]
    assert [r.path for r in stored] == [
        f"/v1/rounds/{ROUND}/secagg/advertise",
        f"/v1/rounds/{ROUND}/secagg/mask",
    ]
    assert stored[1].body == b"\x01\x02"
    assert repr(reply).count("encryption_key") == 0  # no key material in the repr


def test_a_later_rounds_train_task_deletes_the_earlier_rounds_secrets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = FileSecretStore(state / "secagg")
    begin(_task("train", 0, round_id=3), _update(0, round_id=3), store)
    later = Task("r4-c0", "train", 4, "v9", TaskConfig(), 2e9)  # a plain round

    def coordinator(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        if url.endswith("/v1/tasks/next"):
            return HttpResponse(200, {}, json.dumps(later.to_dict()).encode())
        return HttpResponse(404, {}, b'{"error": "not_found", "detail": "no such model"}')

    token = tmp_path / "token"
    write_token(token, "tok")
    config = DaemonConfig(
        coordinator="http://127.0.0.1:9",
        token_file=token,
        data_dir=tmp_path,
        state_dir=state,
        backoff=BackoffPolicy(base=0.01, cap=0.01),
    )
    daemon = Daemon(config, transport=FunctionTransport(coordinator), sleep=lambda s: None)
    assert daemon.step() == "model_rejected"  # the training itself could not start ...
    assert store.round_ids() == []  # ... but round 3's secrets are gone
