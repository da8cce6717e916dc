"""The four SecAgg+ stages end to end in memory: the server recovers only the sum."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
import numpy.typing as npt
import pytest

from fedge.errors import ProtocolError, SecAggError
from fedge.secagg import (
    ClientState,
    MaskedInput,
    MaskingConfig,
    SecAggMessage,
    SecureSum,
    ServerState,
    UnmaskRequest,
    UnmaskResponse,
    decode_secagg,
    encode_secagg,
    masked_input_bytes,
    server_state_from_dict,
    server_state_to_dict,
)

NUM_CLIENTS, DIMENSION, CLIP, CAP = 20, 1_000, 1.0, 200


@dataclass
class Fleet:
    """Plain vectors, example counts and the bytes the server received, for one round."""

    vectors: dict[int, npt.NDArray[np.float64]]
    counts: dict[int, int]
    server_view: list[bytes] = field(default_factory=list)


def _config() -> MaskingConfig:
    return MaskingConfig(dimension=DIMENSION, clip=CLIP, example_cap=CAP)


def _fleet(seed: int) -> Fleet:
    rng = np.random.default_rng(seed)
    return Fleet(
        vectors={cid: rng.uniform(-CLIP, CLIP, DIMENSION) for cid in range(NUM_CLIENTS)},
        counts={cid: int(rng.integers(10, CAP + 1)) for cid in range(NUM_CLIENTS)},
    )


_Message = TypeVar("_Message", bound=SecAggMessage)


def _wire(message: _Message, fleet: Fleet | None = None) -> _Message:
    """``message`` after a trip through the JSON codec; to the server if ``fleet`` is given,
    which records every byte of it (the JSON text, the body, and the decoded blobs)."""
    doc, body = encode_secagg(message)
    text = json.dumps(doc).encode()
    decoded = decode_secagg(json.loads(text), body)
    assert decoded == message
    if fleet is not None:
        fleet.server_view += [text, body or b""]
        fleet.server_view += [
            v for value in vars(decoded).values() if isinstance(value, dict) for v in value.values()
        ]
    return cast(_Message, decoded)


def _persist(server: ServerState, fleet: Fleet) -> ServerState:
    """The server's state after a trip through JSON, as a stateless coordinator stores it
    between requests; the stored bytes count as the server's view."""
    text = json.dumps(server_state_to_dict(server)).encode()
    fleet.server_view.append(text)
    return server_state_from_dict(json.loads(text))


def _run_to_masked(
    fleet: Fleet,
    *,
    drop_after_advertising: frozenset[int] = frozenset(),
    drop_after_masking: frozenset[int] = frozenset(),
    seed: int = 0,
) -> tuple[ServerState, dict[int, ClientState], dict[int, UnmaskRequest]]:
    """Stages 1-3; clients in ``drop_after_advertising`` never share keys, clients in
    ``drop_after_masking`` share keys but send no masked input."""
    rng = np.random.default_rng(seed)
    config = _config()
    clients = {cid: ClientState.create(cid, config) for cid in fleet.vectors}
    adverts = [_wire(c.advertise(), fleet) for c in clients.values()]
    server, rosters = ServerState(config).collect_keys(adverts, rng=rng)
    server = _persist(server, fleet)
    shares = []
    for cid, roster in rosters.items():
        if cid in drop_after_advertising:
            continue
        clients[cid], message = clients[cid].share_keys(_wire(roster))
        shares.append(_wire(message, fleet))
    server, deliveries = server.collect_shares(shares)
    server = _persist(server, fleet)
    for cid, delivery in deliveries.items():
        clients[cid], masked = clients[cid].mask(
            _wire(delivery), fleet.vectors[cid], fleet.counts[cid], rng=rng
        )
        if cid not in drop_after_masking:
            server = _persist(server.accept_masked(_wire(masked, fleet)), fleet)
    server, requests = server.unmask_requests()
    server = _persist(server, fleet)
    return server, clients, {cid: _wire(r) for cid, r in requests.items()}


def _unmask(
    fleet: Fleet,
    server: ServerState,
    clients: dict[int, ClientState],
    requests: dict[int, UnmaskRequest],
) -> SecureSum:
    responses = []
    for cid, request in requests.items():
        clients[cid], response = clients[cid].unmask(request)
        responses.append(_wire(response, fleet))
    return server.unmask(responses)


def _plain_fedavg(fleet: Fleet, ids: set[int]) -> npt.NDArray[np.float64]:
    weights = np.array([fleet.counts[c] for c in sorted(ids)], dtype=np.float64)
    stacked = np.stack([fleet.vectors[c] for c in sorted(ids)])
    mean: npt.NDArray[np.float64] = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
    return mean


def _assert_within_bound(result: SecureSum, fleet: Fleet, ids: set[int]) -> None:
    config = _config()
    assert result.num_clients == len(ids)
    assert result.num_examples == sum(fleet.counts[c] for c in ids)
    bound = CAP * config.error_bound(len(ids)) / result.num_examples
    error = np.abs(result.mean - _plain_fedavg(fleet, ids))
    assert error.max() <= bound
    assert error.max() > 0  # quantized, so not bit-exact: the bound is what is promised


def test_secure_round_equals_plain_fedavg_within_the_bound() -> None:
    fleet = _fleet(1)
    server, clients, requests = _run_to_masked(fleet)
    assert all(not r.dropped for r in requests.values())
    _assert_within_bound(_unmask(fleet, server, clients, requests), fleet, set(fleet.vectors))


def test_secure_round_with_30_percent_dropping_after_masking() -> None:
    fleet = _fleet(2)
    dropped = frozenset(np.random.default_rng(7).choice(NUM_CLIENTS, 6, replace=False).tolist())
    server, clients, requests = _run_to_masked(fleet, drop_after_masking=dropped)
    assert set(requests) == set(fleet.vectors) - dropped
    assert any(r.dropped for r in requests.values())
    result = _unmask(fleet, server, clients, requests)
    _assert_within_bound(result, fleet, set(fleet.vectors) - dropped)


def test_secure_round_with_clients_dropping_before_sharing_keys() -> None:
    fleet = _fleet(8)
    early, late = frozenset({2, 13}), frozenset({5})
    server, clients, requests = _run_to_masked(
        fleet, drop_after_advertising=early, drop_after_masking=late
    )
    assert not any(r.dropped & early for r in requests.values())
    result = _unmask(fleet, server, clients, requests)
    _assert_within_bound(result, fleet, set(fleet.vectors) - early - late)


def test_server_view_holds_no_plain_vector_nor_any_window_of_it() -> None:
    fleet = _fleet(3)
    dropped = frozenset({4, 11})
    server, clients, requests = _run_to_masked(fleet, drop_after_masking=dropped)
    _unmask(fleet, server, clients, requests)
    view = b"".join(fleet.server_view)
    assert len(view) > NUM_CLIENTS * DIMENSION * 8
    for vector in fleet.vectors.values():
        encodings = [
            vector.astype(np.float64).tobytes(),
            vector.astype(np.float32).tobytes(),
            vector.astype(np.float16).tobytes(),
            np.round(vector * 127).astype(np.int8).tobytes(),
        ]
        for encoded in encodings:
            # Every 64-value window contains a whole 16-value block starting at a multiple
            # of 16, so no such block in the view means no 64-value window either.
            size = len(encoded) // DIMENSION
            for start in range(0, len(encoded) - 16 * size + 1, 16 * size):
                assert encoded[start : start + 16 * size] not in view


def test_fewer_than_threshold_shares_fail_with_a_clear_error() -> None:
    fleet = _fleet(4)
    server, clients, requests = _run_to_masked(fleet)
    responses: list[UnmaskResponse] = []
    for cid, request in requests.items():
        clients[cid], response = clients[cid].unmask(request)
        responses.append(response)
    assert server.threshold is not None
    target = 0
    holders = [r for r in responses if target in r.seed_shares]
    keep = holders[: server.threshold - 1]
    trimmed = [r for r in responses if target not in r.seed_shares or r in keep]
    with pytest.raises(
        SecAggError, match=r"cannot recover the self-mask seed of client 0: \d+ shares"
    ):
        server.unmask(trimmed)


def test_honest_client_refuses_both_shares_of_one_peer() -> None:
    fleet = _fleet(5)
    _, clients, requests = _run_to_masked(fleet)
    cid, request = next(iter(requests.items()))
    peer = next(iter(request.survivors))
    greedy = UnmaskRequest(cid, survivors=request.survivors, dropped=frozenset({peer}))
    with pytest.raises(SecAggError, match="refusing to reveal both"):
        clients[cid].unmask(greedy)
    state, _ = clients[cid].unmask(request)
    later = UnmaskRequest(cid, survivors=frozenset(), dropped=frozenset({peer}))
    with pytest.raises(SecAggError, match="already revealed"):
        state.unmask(later)


def test_client_refuses_to_unmask_with_too_few_surviving_neighbours() -> None:
    fleet = _fleet(6)
    _, clients, requests = _run_to_masked(fleet)
    cid, request = next(iter(requests.items()))
    survivors = sorted(request.survivors)
    threshold = len(survivors) // 2 + 1
    few = UnmaskRequest(
        cid,
        survivors=frozenset(survivors[: threshold - 1]),
        dropped=frozenset(survivors[threshold - 1 :]),
    )
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        clients[cid].unmask(few)


def test_client_refuses_a_roster_with_a_minority_threshold() -> None:
    config = _config()
    clients = [ClientState.create(cid, config) for cid in range(8)]
    server = ServerState(config, degree=4, threshold=3)
    _, rosters = server.collect_keys([c.advertise() for c in clients], rng=np.random.default_rng(0))
    roster = rosters[0]
    weak = type(roster)(roster.client_id, 2, roster.neighbours)
    with pytest.raises(SecAggError, match="strict majority"):
        clients[0].share_keys(weak)
    assert clients[0].share_keys(roster)[1].client_id == 0


def test_codec_refuses_malformed_documents() -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_secagg({"type": "model_update"})
    with pytest.raises(ProtocolError, match="has the fields"):
        decode_secagg({"type": "secagg_advertise_keys", "client_id": 1, "mask_key": ""})
    with pytest.raises(ProtocolError, match="needs binary body"):
        decode_secagg({"type": "secagg_masked_input", "client_id": 1})
    with pytest.raises(ProtocolError, match="not base64"):
        decode_secagg(
            {"type": "secagg_advertise_keys", "client_id": 1, "encryption_key": "!", "mask_key": ""}
        )
    with pytest.raises(ProtocolError, match="client ids"):
        decode_secagg({"type": "secagg_share_keys", "client_id": 1, "bundles": {"x": ""}})


def test_server_state_round_trips_through_json_and_refuses_garbage() -> None:
    fleet = _fleet(9)
    server, _, _ = _run_to_masked(fleet)
    stored = server_state_to_dict(server)
    restored = server_state_from_dict(json.loads(json.dumps(stored)))
    assert restored.masked_sum is not None
    assert server.masked_sum is not None
    assert np.array_equal(restored.masked_sum, server.masked_sum)
    assert (restored.keys, restored.graph, restored.survivors) == (
        server.keys,
        server.graph,
        server.survivors,
    )
    with pytest.raises(SecAggError, match="not a secure-aggregation server state"):
        server_state_from_dict({**stored, "graph": None})
    with pytest.raises(SecAggError, match="at stage 'unmask', not 'masked'"):
        server.unmask_requests()


def test_collect_masked_equals_accepting_inputs_one_by_one() -> None:
    config = MaskingConfig(dimension=8, clip=1.0, example_cap=4)
    rng = np.random.default_rng(0)
    clients = {cid: ClientState.create(cid, config) for cid in range(6)}
    server, rosters = ServerState(config).collect_keys(
        [c.advertise() for c in clients.values()], rng=rng
    )
    shares = []
    for cid, roster in rosters.items():
        clients[cid], message = clients[cid].share_keys(roster)
        shares.append(message)
    server, deliveries = server.collect_shares(shares)
    inputs = [
        clients[cid].mask(delivery, rng.uniform(-1, 1, 8), 3, rng=rng)[1]
        for cid, delivery in deliveries.items()
    ]
    batch, batch_requests = server.collect_masked(inputs[1:])
    one_by_one = server
    for masked in inputs[1:]:
        one_by_one = one_by_one.accept_masked(masked)
    with pytest.raises(SecAggError, match="repeated input from client 1"):
        one_by_one.accept_masked(inputs[1])
    streamed, streamed_requests = one_by_one.unmask_requests()
    assert batch.masked_sum is not None
    assert streamed.masked_sum is not None
    assert np.array_equal(batch.masked_sum, streamed.masked_sum)
    assert batch_requests == streamed_requests
    assert 0 not in batch_requests
    assert any(0 in r.dropped for r in batch_requests.values())


def test_masked_input_is_packed_and_the_server_refuses_a_bad_one_unchanged() -> None:
    config = MaskingConfig(dimension=8, clip=1.0, example_cap=4, modulus_bits=20)
    rng = np.random.default_rng(3)
    clients = {cid: ClientState.create(cid, config) for cid in range(4)}
    server, rosters = ServerState(config).collect_keys(
        [c.advertise() for c in clients.values()], rng=rng
    )
    shares = []
    for cid, roster in rosters.items():
        clients[cid], message = clients[cid].share_keys(roster)
        shares.append(message)
    server, deliveries = server.collect_shares(shares)
    masked = clients[0].mask(deliveries[0], rng.uniform(-1, 1, 8), 3, rng=rng)[1]
    assert len(masked.data) == masked_input_bytes(config) == 9 * 3
    too_large = masked.data[:-3] + (2**20).to_bytes(3, "little")
    with pytest.raises(SecAggError, match=r"client 0's masked input is refused: .*2\^20"):
        server.accept_masked(MaskedInput(0, too_large))
    with pytest.raises(SecAggError, match=r"client 0's masked input is refused: .*expected 27"):
        server.accept_masked(MaskedInput(0, masked.data + b"\x00"))
    accepted = server.accept_masked(masked)
    assert server.survivors == frozenset()
    assert server.masked_sum is None
    assert accepted.survivors == {0}
    assert accepted.masked_sum is not None
    assert int(accepted.masked_sum.max()) < 2**20
