"""Distributed differential privacy on the device (edge_client.secure.begin with ``dp_*``
options), through a whole secure round against :class:`fedge.secagg.ServerState` in process.

Each device clips its delta to L2 ``dp_clip`` and adds N(0, dp_noise_stddev^2) per
coordinate before masking, and enters the sum with weight 1. So the unmasked sum minus the
noiseless sum of the clipped deltas (computed here with numpy) is Gaussian noise of stddev
``sqrt(m) * dp_noise_stddev`` per coordinate; with 4,000 coordinates the sample stddev is
within 1.2% of it (one standard error), so a 10% tolerance holds and a missing noise
(quantization error only, ~1e-4) fails by three orders of magnitude.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_client.secure import (
    MemorySecretStore,
    SecureReply,
    begin,
    dp_options,
    masking_config,
    step,
)
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

ROUND = 3
SHAPES = {"head/bias": (40,), "head/kernel": (99, 40)}
DIMENSION = 40 + 99 * 40
SECAGG_CLIP, CAP, MODULUS_BITS, QUANTIZATION_BITS = 4.0, 1000, 32, 16
DP_CLIP, DP_STDDEV = 1.0, 0.05
CLIENTS = 6
KIND = {"share": "secagg_share", "mask": "secagg_mask", "unmask": "secagg_unmask"}


def _task(kind: str, cid: int, **dp: Any) -> Task:
    options: dict[str, Any] = {
        "secagg": True,
        "secagg_id": cid,
        "secagg_clip": SECAGG_CLIP,
        "secagg_quantization_bits": QUANTIZATION_BITS,
        "secagg_modulus_bits": MODULUS_BITS,
        "secagg_example_cap": CAP,
        "secagg_dimension": DIMENSION,
        **dp,
    }
    return Task(
        task_id=f"r{ROUND}-c{cid}" + ("" if kind == "train" else f"-{kind}"),
        kind=kind,  # type: ignore[arg-type]
        round_id=ROUND,
        model_version="v1",
        config=TaskConfig(options=options),
        deadline=2e9,
    )


def _update(cid: int) -> ModelUpdate:
    """Even clients' deltas are far over the clip (norm ~6), odd ones under it (~0.3)."""
    rng = np.random.default_rng(40 + cid)
    scale = 0.1 if cid % 2 == 0 else 0.005
    delta = Weights.from_pairs(
        (name, (rng.standard_normal(shape) * scale).astype(np.float32))
        for name, shape in SHAPES.items()
    )
    return ModelUpdate(
        task_id=_task("train", cid).task_id,
        round_id=ROUND,
        num_examples=20 + 13 * cid,
        metrics={"loss": 0.4},
        delta=delta,
    )


def _clipped(update: ModelUpdate) -> npt.NDArray[np.float64]:
    vector = update.delta.flatten()
    norm = float(np.linalg.norm(vector))
    return vector * min(1.0, DP_CLIP / norm)


def _served(message: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(encode_secagg(message)[0]))
    return document


def _parsed(reply: SecureReply) -> Any:
    assert reply.document is not None
    return decode_secagg(json.loads(json.dumps(dict(reply.document))))


def _secure_round(
    dp: Mapping[str, Any], stores: dict[int, MemorySecretStore], *, seed: int
) -> SecureSum:
    """Every stage of one round for CLIENTS devices; the server's unmasked sum."""
    rng = np.random.default_rng(seed)
    config = masking_config(_task("train", 0))
    adverts = []
    for cid, store in stores.items():
        message = _parsed(begin(_task("train", cid, **dp), _update(cid), store, rng=rng))
        assert isinstance(message, AdvertiseKeys)
        adverts.append(message)
    server, rosters = ServerState(config).collect_keys(adverts, rng=rng)
    shares = []
    for cid, roster in rosters.items():
        message = _parsed(step(_task(KIND["share"], cid), _served(roster), stores[cid]))
        assert isinstance(message, ShareKeys)
        shares.append(message)
    server, deliveries = server.collect_shares(shares)
    for cid, delivery in deliveries.items():
        reply = step(_task(KIND["mask"], cid), _served(delivery), stores[cid], rng=rng)
        assert reply.body is not None
        server = server.accept_masked(MaskedInput(cid, reply.body))
    server, requests = server.unmask_requests()
    responses = []
    for cid, request in requests.items():
        message = _parsed(step(_task(KIND["unmask"], cid), _served(request), stores[cid]))
        assert isinstance(message, UnmaskResponse)
        responses.append(message)
    return server.unmask(responses)


def _stores() -> dict[int, MemorySecretStore]:
    return {cid: MemorySecretStore() for cid in range(CLIENTS)}


def _noiseless_clipped_sum() -> npt.NDArray[np.float64]:
    total: npt.NDArray[np.float64] = np.sum([_clipped(_update(c)) for c in range(CLIENTS)], axis=0)
    return total


def test_the_unmasked_sum_carries_noise_of_the_stated_stddev() -> None:
    dp = {"dp_clip": DP_CLIP, "dp_noise_stddev": DP_STDDEV}
    result = _secure_round(dp, _stores(), seed=1)
    # weight 1 per client: the count is the cap for each, the mean divides by the clients
    assert result.num_clients == CLIENTS
    assert result.num_examples == CLIENTS * CAP
    # each input has weight cap / cap = 1: the weighted sum is cap times the plain sum
    noise = result.weighted_sum / CAP - _noiseless_clipped_sum()
    expected = np.sqrt(CLIENTS) * DP_STDDEV
    assert abs(float(noise.std()) / expected - 1.0) < 0.10, (noise.std(), expected)
    assert abs(float(noise.mean())) < 5 * expected / np.sqrt(DIMENSION)
    # Gaussian, not merely spread: about 68.3% of the coordinates within one stddev
    inside = float(np.mean(np.abs(noise) <= expected))
    assert 0.64 < inside < 0.72, inside
    np.testing.assert_allclose(result.mean * CLIENTS, result.weighted_sum / CAP, atol=1e-9)


def test_no_clipped_update_is_longer_than_dp_clip_and_the_sum_is_theirs() -> None:
    stores = _stores()
    dp = {"dp_clip": DP_CLIP, "dp_noise_stddev": 0.0}
    for cid, store in stores.items():
        begin(_task("train", cid, **dp), _update(cid), store)
        kept = store.load(ROUND)
        assert kept is not None
        assert kept.vector is not None
        norm = float(np.linalg.norm(kept.vector))
        assert norm <= DP_CLIP * (1 + 1e-12), (cid, norm)
        raw = float(np.linalg.norm(_update(cid).delta.flatten()))
        if raw > DP_CLIP:  # scaled down onto the bound, direction kept
            assert norm == pytest.approx(DP_CLIP, rel=1e-9)
        else:  # left alone
            np.testing.assert_array_equal(kept.vector, _update(cid).delta.flatten())
        assert kept.num_examples == CAP
    assert sum(float(np.linalg.norm(_update(c).delta.flatten())) > DP_CLIP for c in stores) == 3
    result = _secure_round(dp, _stores(), seed=2)
    error = np.abs(result.weighted_sum / CAP - _noiseless_clipped_sum())
    bound = masking_config(_task("train", 0)).error_bound(CLIENTS)
    assert float(error.max()) <= bound


def test_without_dp_options_the_delta_is_kept_as_trained() -> None:
    store = MemorySecretStore()
    begin(_task("train", 0), _update(0), store)
    kept = store.load(ROUND)
    assert kept is not None
    assert kept.vector is not None
    np.testing.assert_array_equal(kept.vector, _update(0).delta.flatten())
    assert kept.num_examples == _update(0).num_examples
    assert dp_options(_task("train", 0)) is None


@pytest.mark.parametrize(
    ("dp", "message"),
    [
        ({"dp_clip": 1.0}, "option dp_clip needs dp_noise_stddev too"),
        ({"dp_noise_stddev": 0.1}, "option dp_noise_stddev needs dp_clip too"),
        ({"dp_clip": 0.0, "dp_noise_stddev": 0.1}, "dp_clip must be a finite number positive"),
        ({"dp_clip": 1.0, "dp_noise_stddev": -0.1}, "dp_noise_stddev must be a finite number >= 0"),
        ({"dp_clip": True, "dp_noise_stddev": 0.1}, "dp_clip must be a finite number positive"),
    ],
)
def test_malformed_dp_options_are_refused_and_nothing_is_kept(
    dp: dict[str, Any], message: str
) -> None:
    store = MemorySecretStore()
    with pytest.raises(SecAggError, match=message):
        begin(_task("train", 0, **dp), _update(0), store)
    assert store.round_ids() == []
