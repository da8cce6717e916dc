"""Tests for fedge.dp and the DPFedAvg strategy wrapper: calibration, clipping, noise."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from fedge.aggregation import RoundAggregator
from fedge.dp import (
    DP_CLIP_SLOT,
    DPConfig,
    clip_l2,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_sigma,
    next_clip,
)
from fedge.errors import AggregationError, ConfigError
from fedge.server_optimizers import ServerState
from fedge.strategy import ClippedUpdates, DPFedAvg, Strategy, build_strategy
from fedge.weights import Weights

FloatArray = npt.NDArray[np.float64]
DIM = 2000
X0 = Weights({"w": np.zeros(DIM, np.float32)})


def _dp_round(
    strategy: Strategy, deltas: Sequence[FloatArray], state: ServerState | None = None
) -> tuple[Weights, ServerState, dict[str, float]]:
    state = strategy.init_server_state(X0) if state is None else state
    bound = strategy.bind_state(state)
    aggregator = bound.new_aggregator(X0)
    for delta in deltas:
        aggregator.add(Weights({"w": delta}), 50)
    result = bound.aggregate(aggregator)
    new_weights, new_state = bound.server_step(state, X0, result)
    return new_weights, new_state, dict(result.measurements)


def _dp(z: float, clip: float = 1.0, m: int = 10, seed: int = 0, **kw: object) -> DPFedAvg:
    config = DPConfig(noise_multiplier=z, clip=clip, expected_clients=m, **kw)  # type: ignore[arg-type]
    return DPFedAvg(build_strategy(), config=config, rng=np.random.default_rng(seed))


# The analytic Gaussian mechanism -------------------------------------------------------------


def test_gaussian_sigma_meets_delta_exactly_at_the_calibrated_sigma() -> None:
    sigma = gaussian_sigma(1.0, 1e-5, 1.0)
    assert gaussian_delta(sigma, 1.0, 1.0) == pytest.approx(1e-5, rel=1e-6)
    assert gaussian_delta(sigma * 0.99, 1.0, 1.0) > 1e-5


def test_gaussian_sigma_is_tighter_than_the_classical_bound() -> None:
    # Dwork & Roth: sigma = sqrt(2 ln(1.25/delta)) / eps is sufficient for eps < 1.
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5
    assert gaussian_sigma(0.5, 1e-5, 1.0) < classical


def test_gaussian_sigma_scales_with_sensitivity() -> None:
    assert gaussian_sigma(2.0, 1e-6, 3.0) == pytest.approx(3 * gaussian_sigma(2.0, 1e-6, 1.0))


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 3.0, 8.0])
def test_gaussian_epsilon_inverts_gaussian_sigma(epsilon: float) -> None:
    sigma = gaussian_sigma(epsilon, 1e-5, 2.0)
    assert gaussian_epsilon(sigma, 1e-5, 2.0) == pytest.approx(epsilon, rel=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1e-5, 1.0), "epsilon must be >"),
        ((1.0, 1.0, 1.0), "delta must be"),
        ((1.0, 1e-5, -1.0), "sensitivity must be >"),
    ],
)
def test_gaussian_sigma_refuses_bad_arguments(
    args: tuple[float, float, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        gaussian_sigma(*args)


# Clipping ------------------------------------------------------------------------------------


def test_clip_l2_scales_only_vectors_over_the_bound() -> None:
    clipped, was = clip_l2([3.0, 4.0], 1.0)
    assert was
    assert np.allclose(clipped, [0.6, 0.8])
    kept, was = clip_l2([0.3, 0.4], 1.0)
    assert not was
    assert np.allclose(kept, [0.3, 0.4])


def test_clip_l2_refuses_a_non_finite_vector() -> None:
    with pytest.raises(ConfigError, match="NaN or infinite"):
        clip_l2([np.nan, 1.0], 1.0)


# DPConfig ------------------------------------------------------------------------------------


def test_dp_config_defaults_the_clipped_count_noise_to_m_over_20() -> None:
    config = DPConfig(noise_multiplier=1.0, expected_clients=100, adaptive=True)
    assert config.count_stddev == 5.0
    # Andrew et al. 2021: the update noise keeps the round's total multiplier at z.
    assert config.update_noise_multiplier == pytest.approx((1.0 - 1.0 / 100.0) ** -0.5)


def test_dp_config_refuses_adaptive_clipping_whose_count_noise_is_too_small() -> None:
    with pytest.raises(ConfigError, match=r"clipped_count_stddev > 1\.5"):
        DPConfig(noise_multiplier=3.0, expected_clients=10, adaptive=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
        ({"noise_multiplier": 1.0, "clip": 0.0}, "clip must be > 0"),
        ({"noise_multiplier": 1.0, "target_quantile": 1.0}, "target_quantile must be"),
    ],
)
def test_dp_config_refuses_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DPConfig(expected_clients=10, **kwargs)  # type: ignore[arg-type]


def test_client_noise_sums_to_the_central_noise() -> None:
    config = DPConfig(noise_multiplier=1.2, clip=0.5, expected_clients=16)
    assert config.client_noise_stddev() == pytest.approx(1.2 * 0.5 / 4)
    assert math.sqrt(16) * config.client_noise_stddev() == pytest.approx(config.noise_stddev(0.5))


# DPFedAvg -----------------------------------------------------------------------------------


def test_dp_fedavg_without_noise_is_the_sum_of_clipped_updates_over_m() -> None:
    deltas = [np.full(DIM, 0.001), np.full(DIM, 10.0)]  # norms 0.045 and 447
    new, _, measurements = _dp_round(_dp(0.0, clip=1.0, m=4), deltas)
    clipped = deltas[1] / np.linalg.norm(deltas[1])
    assert np.allclose(new["w"], (deltas[0] + clipped) / 4, atol=1e-7)
    assert measurements["dp_clipped_updates"] == 1.0
    assert measurements["dp_noise_stddev"] == 0.0


def test_dp_round_differs_from_the_plain_round_by_noise_of_z_clip_over_m() -> None:
    rng = np.random.default_rng(7)
    deltas = [rng.normal(0, 0.005, DIM) for _ in range(8)]  # all within the clip
    z, clip, m = 1.5, 0.5, 8
    plain, _, _ = _dp_round(_dp(0.0, clip=clip, m=m), deltas)
    noised, _, measurements = _dp_round(_dp(z, clip=clip, m=m, seed=3), deltas)
    difference = noised["w"].astype(np.float64) - plain["w"].astype(np.float64)
    expected = z * clip / m
    # 2000 draws: the sample stddev is within 5% of the truth with overwhelming probability.
    assert np.std(difference) == pytest.approx(expected, rel=0.05)
    assert abs(np.mean(difference)) < 4 * expected / math.sqrt(DIM)
    assert measurements["dp_noise_stddev"] == pytest.approx(z * clip)


def test_one_huge_update_moves_the_model_by_at_most_clip_over_m_plus_noise() -> None:
    z, clip, m = 1.0, 1.0, 10
    honest = [np.zeros(DIM) for _ in range(9)]
    attack = np.full(DIM, 1e6)
    base, _, _ = _dp_round(_dp(z, clip=clip, m=m, seed=5), honest)
    moved, _, _ = _dp_round(_dp(z, clip=clip, m=m, seed=5), [*honest, attack])
    # Same seed, same noise: the difference is the attacker's clipped update over m.
    shift = moved["w"].astype(np.float64) - base["w"].astype(np.float64)
    assert np.linalg.norm(shift) <= clip / m * (1 + 1e-5)
    assert np.linalg.norm(moved["w"]) <= clip / m + 1.2 * z * clip / m * math.sqrt(DIM)


def test_dp_fedavg_ignores_the_example_counts() -> None:
    strategy = _dp(0.0, m=2)
    aggregator = strategy.new_aggregator(X0)
    aggregator.add(Weights({"w": np.full(DIM, 0.001)}), 1)
    aggregator.add(Weights({"w": np.full(DIM, 0.003)}), 1000)
    result = strategy.aggregate(aggregator)
    assert np.allclose(result.delta["w"], 0.002)


def test_adaptive_clip_moves_toward_the_quantile_and_persists_in_the_server_state() -> None:
    strategy = _dp(0.5, clip=1.0, m=20, adaptive=True)
    deltas = [np.full(DIM, 0.0001) for _ in range(20)]  # every norm far below the clip
    state = None
    clips = []
    for _ in range(5):
        _, state, measurements = _dp_round(strategy, deltas, state)
        clips.append(float(state.slots[DP_CLIP_SLOT]["clip"][0]))
        assert measurements["dp_next_clip"] == pytest.approx(clips[-1], rel=1e-6)
    # b is about 1 > 0.5 every round: the clip shrinks by about exp(-0.2 * 0.5) per round.
    assert clips[-1] < 0.7
    assert all(b < a for a, b in itertools.pairwise(clips))
    assert state is not None
    assert state.optimizer == "fedavg"
    assert (
        ServerState.from_bytes(state.to_bytes())
        .slots[DP_CLIP_SLOT]
        .equal(state.slots[DP_CLIP_SLOT])
    )


def test_next_clip_grows_when_most_updates_are_clipped() -> None:
    config = DPConfig(noise_multiplier=0.0, expected_clients=100, clipped_count_stddev=0.0)
    clip, fraction = next_clip(config, 1.0, 10, rng=np.random.default_rng(0))
    assert fraction == pytest.approx(0.1)
    assert clip == pytest.approx(math.exp(0.2 * 0.4))


def test_a_plain_round_after_a_dp_round_steps_from_its_state() -> None:
    _, state, _ = _dp_round(_dp(0.0, m=2), [np.full(DIM, 0.001)])
    assert DP_CLIP_SLOT in state.slots
    plain = build_strategy()
    new, new_state = plain.server_step(
        state, X0, plain.aggregate(_filled(plain, [np.full(DIM, 0.002)]))
    )
    assert np.allclose(new["w"], 0.002)
    assert DP_CLIP_SLOT not in new_state.slots


def _filled(strategy: Strategy, deltas: Sequence[FloatArray]) -> RoundAggregator:
    aggregator = strategy.new_aggregator(X0)
    for delta in deltas:
        aggregator.add(Weights({"w": delta}), 1)
    return aggregator


def test_secure_dp_fedavg_turns_the_survivors_mean_into_their_sum_over_m_without_noise() -> None:
    config = DPConfig(noise_multiplier=2.0, clip=1.0, expected_clients=10)
    strategy = DPFedAvg(build_strategy(), config=config, rng=np.random.default_rng(0), secure=True)
    aggregator = strategy.new_aggregator(X0)
    aggregator.add(Weights({"w": np.full(DIM, 0.003)}), 6)  # the mean of 6 survivors
    result = strategy.aggregate(aggregator)
    assert np.allclose(result.delta["w"], 0.003 * 6 / 10)
    assert result.measurements["dp_noise_stddev"] == 0.0


def test_secure_dp_fedavg_refuses_adaptive_clipping() -> None:
    config = DPConfig(noise_multiplier=0.5, expected_clients=10, adaptive=True)
    with pytest.raises(ConfigError, match="adaptive clipping cannot run in a secure round"):
        DPFedAvg(build_strategy(), config=config, rng=np.random.default_rng(0), secure=True)


def test_dp_fedavg_refuses_a_robust_aggregator() -> None:
    config = DPConfig(noise_multiplier=1.0, expected_clients=10)
    with pytest.raises(ConfigError, match="needs the fedavg aggregator"):
        DPFedAvg(build_strategy("median"), config=config, rng=np.random.default_rng(0))


def test_dp_fedavg_rejects_a_non_finite_update() -> None:
    aggregator = _dp(1.0).new_aggregator(X0)
    bad = np.zeros(DIM)
    bad[3] = np.nan
    with pytest.raises(AggregationError, match="update 0 rejected"):
        aggregator.add(Weights({"w": bad}), 1)


def test_a_wrapper_around_dp_fedavg_passes_the_adaptive_clip_through() -> None:
    _, state, measurements = _dp_round(_dp(0.5, clip=1.0, m=20, adaptive=True), [np.zeros(DIM)])
    wrapped = ClippedUpdates(_dp(0.5, clip=1.0, m=20, adaptive=True), clip_norm=100.0)
    bound = wrapped.bind_state(state)
    assert isinstance(bound, ClippedUpdates)
    assert isinstance(bound.inner, DPFedAvg)
    assert bound.inner.clip == pytest.approx(measurements["dp_next_clip"], rel=1e-6)
    assert bound.clip_norm == 100.0
