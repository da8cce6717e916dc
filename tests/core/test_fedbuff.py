"""FedBuff's server buffer (fedge.fedbuff) against a numpy reference: staleness weights, the
max-staleness drop, the commit, and updates that must never reach the model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fedge.errors import ConfigError
from fedge.fedbuff import FedBuffBuffer, FedBuffConfig, staleness_weight
from fedge.weights import Weights


def _weights(rng: np.random.Generator) -> Weights:
    return Weights({"dense/kernel": rng.normal(size=(4, 3)), "dense/bias": rng.normal(size=(3,))})


def _reference(
    global_weights: Weights,
    updates: list[tuple[Weights, int]],
    *,
    buffer_size: int,
    lr: float,
    exponent: float = 0.5,
) -> dict[str, npt.NDArray[np.float64]]:
    """The FedBuff commit in plain numpy: global + lr * sum((1+tau)^-a * delta) / K."""
    out = {}
    for name in global_weights.names:
        total = np.zeros(global_weights[name].shape, dtype=np.float64)
        for delta, tau in updates:
            total += (1.0 + tau) ** -exponent * delta[name].astype(np.float64)
        out[name] = global_weights[name].astype(np.float64) + lr * total / buffer_size
    return out


@pytest.mark.parametrize("tau", [0, 1, 3, 8, 99])
def test_staleness_weight_is_one_over_sqrt_one_plus_tau(tau: int) -> None:
    assert staleness_weight(tau) == pytest.approx(1.0 / np.sqrt(1.0 + tau), rel=1e-12)
    assert staleness_weight(tau, exponent=1.0) == pytest.approx(1.0 / (1.0 + tau), rel=1e-12)


def test_staleness_weight_refuses_a_negative_staleness() -> None:
    with pytest.raises(ConfigError, match="staleness"):
        staleness_weight(-1)


def test_commit_matches_the_numpy_reference_with_mixed_staleness() -> None:
    rng = np.random.default_rng(0)
    start = _weights(rng)
    buffer = FedBuffBuffer(
        FedBuffConfig(buffer_size=3, max_staleness=5, server_learning_rate=0.7), start, version=4
    )
    updates = [(_weights(rng), base) for base in (4, 2, 1)]
    admissions = []
    commit = None
    for k, (delta, base) in enumerate(updates):
        admission, commit = buffer.offer(f"u{k}", delta, base)
        admissions.append(admission)
        if k < 2:
            assert commit is None
            assert buffer.pending == k + 1
    assert [a.staleness for a in admissions] == [0, 2, 3]
    assert [a.weight for a in admissions] == pytest.approx([1.0, 3**-0.5, 4**-0.5])
    assert commit is not None
    expected = _reference(start, [(d, 4 - b) for d, b in updates], buffer_size=3, lr=0.7)
    for name, value in expected.items():
        np.testing.assert_allclose(commit.weights[name], value, rtol=1e-6, atol=1e-6)
    assert (commit.version, commit.parent) == (5, 4)
    assert commit.participants == ("u0", "u1", "u2")
    assert commit.mean_staleness == pytest.approx(5 / 3)
    assert commit.max_staleness == 3
    assert buffer.version == 5
    assert buffer.pending == 0
    assert buffer.global_weights.equal(commit.weights)


def test_an_update_staler_than_max_staleness_is_dropped_and_not_summed() -> None:
    rng = np.random.default_rng(1)
    start = _weights(rng)
    buffer = FedBuffBuffer(FedBuffConfig(buffer_size=2, max_staleness=2), start, version=5)
    stale = _weights(rng)
    admission, commit = buffer.offer("stale", stale, 2)
    assert not admission.accepted
    assert admission.reason == "too_stale"
    assert admission.staleness == 3
    assert "max_staleness 2" in admission.detail
    assert commit is None
    assert buffer.pending == 0
    # The boundary (staleness == S) is still accepted.
    fresh, edge = _weights(rng), _weights(rng)
    assert buffer.offer("fresh", fresh, 5)[0].accepted
    admission, commit = buffer.offer("edge", edge, 3)
    assert admission.accepted
    assert admission.staleness == 2
    assert commit is not None
    assert commit.participants == ("fresh", "edge")
    expected = _reference(start, [(fresh, 0), (edge, 2)], buffer_size=2, lr=1.0)
    for name, value in expected.items():
        np.testing.assert_allclose(commit.weights[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "base", "reason"),
    [
        (Weights({"dense/kernel": np.zeros((4, 3))}), 0, "missing"),
        (Weights({"dense/kernel": np.zeros((3, 4)), "dense/bias": np.zeros(3)}), 0, "shape"),
        (Weights({"dense/kernel": np.full((4, 3), np.nan), "dense/bias": np.zeros(3)}), 0, "NaN"),
        ("not weights", 0, "Weights"),
        (None, 7, "not a committed version"),
        (None, True, "base version"),
    ],
)
def test_a_malformed_update_never_reaches_the_model(bad: object, base: object, reason: str) -> None:
    rng = np.random.default_rng(2)
    start = _weights(rng)
    buffer = FedBuffBuffer(FedBuffConfig(buffer_size=1, max_staleness=3), start)
    offered = bad if bad is not None else _weights(rng)
    admission, commit = buffer.offer("bad", offered, base)  # type: ignore[arg-type]
    assert not admission.accepted
    assert admission.reason == "malformed"
    assert reason.lower() in admission.detail.lower()
    assert commit is None
    assert buffer.pending == 0
    assert buffer.version == 0
    assert buffer.global_weights.digest() == start.digest()
    # The next good update commits exactly as if the bad one had never been offered.
    good = _weights(rng)
    _, commit = buffer.offer("good", good, 0)
    assert commit is not None
    assert commit.participants == ("good",)
    expected = _reference(start, [(good, 0)], buffer_size=1, lr=1.0)
    for name, value in expected.items():
        np.testing.assert_allclose(commit.weights[name], value, rtol=1e-6, atol=1e-6)


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ConfigError, match="buffer_size"):
        FedBuffConfig(buffer_size=0)
    with pytest.raises(ConfigError, match="max_staleness"):
        FedBuffConfig(max_staleness=-1)
    with pytest.raises(ConfigError, match="server_learning_rate"):
        FedBuffConfig(server_learning_rate=0.0)
