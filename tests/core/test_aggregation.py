"""Tests for fedge.aggregation (aggregators and their specs) and fedge.server_optimizers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.aggregation import (
    AGGREGATOR_NAMES,
    AggregateResult,
    Aggregator,
    AggregatorSpec,
    FedAvg,
    Median,
    MultiKrum,
    TrimmedMean,
    build_aggregator,
)
from fedge.errors import AggregationError, ConfigError, ShapeMismatchError, WeightsFormatError
from fedge.server_optimizers import (
    SERVER_OPTIMIZER_NAMES,
    FedAdam,
    FedAvgM,
    FedAvgServer,
    FedYogi,
    ServerOptimizer,
    ServerState,
    build_server_optimizer,
)
from fedge.weights import Weights

REFERENCE = Weights({"w": np.zeros(3, np.float32)})


def _aggregate(
    aggregator: Aggregator, values: Sequence[Sequence[float]], weights: Sequence[float]
) -> list[float]:
    for value, weight in zip(values, weights, strict=True):
        aggregator.add(Weights({"w": value}), weight)
    return [float(v) for v in aggregator.result().delta["w"]]


# FedAvg --------------------------------------------------------------------------------------


@st.composite
def _rounds(
    draw: st.DrawFn,
) -> tuple[list[tuple[int, ...]], list[list[npt.NDArray[np.float32]]], list[int]]:
    shapes = draw(
        st.lists(hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), min_size=1, max_size=3)
    )
    count = draw(st.integers(1, 20))
    elements = st.floats(-1.0, 1.0, width=32)
    updates = [
        [draw(hnp.arrays(np.float32, shape, elements=elements)) for shape in shapes]
        for _ in range(count)
    ]
    weights = draw(st.lists(st.integers(1, 1000), min_size=count, max_size=count))
    return shapes, updates, weights


@settings(max_examples=100, deadline=None)
@given(_rounds())
def test_fedavg_equals_numpy_weighted_average(
    case: tuple[list[tuple[int, ...]], list[list[npt.NDArray[np.float32]]], list[int]],
) -> None:
    shapes, updates, weights = case
    names = [f"t{i}" for i in range(len(shapes))]
    reference = Weights({n: np.zeros(s) for n, s in zip(names, shapes, strict=True)})
    aggregator = FedAvg(reference)
    for tensors, weight in zip(updates, weights, strict=True):
        aggregator.add(Weights(dict(zip(names, tensors, strict=True))), weight)
    result = aggregator.result()
    assert result.count == len(updates)
    assert result.total_weight == sum(weights)
    for i, name in enumerate(names):
        stacked = np.stack([u[i] for u in updates]).astype(np.float64)
        expected = np.average(stacked, axis=0, weights=weights)
        np.testing.assert_allclose(result.delta[name], expected, rtol=0, atol=1e-6)


def test_fedavg_weights_by_example_count_by_hand() -> None:
    # (1*[1,2,3] + 3*[5,6,7]) / 4 = [16, 20, 24] / 4
    assert _aggregate(FedAvg(REFERENCE), [[1, 2, 3], [5, 6, 7]], [1, 3]) == [4.0, 5.0, 6.0]


def test_fedavg_result_reports_measurements() -> None:
    aggregator = FedAvg(REFERENCE)
    aggregator.add(Weights({"w": [3.0, 4.0, 0.0]}), 2)
    aggregator.add(Weights({"w": [0.0, 0.0, 1.0]}), 2)
    result = aggregator.result()
    assert isinstance(result, AggregateResult)
    assert result.measurements["count"] == 2.0
    assert result.measurements["total_weight"] == 4.0
    assert result.measurements["mean_update_norm"] == 3.0  # (5 + 1) / 2
    assert result.measurements["max_update_norm"] == 5.0
    assert result.measurements["aggregate_norm"] == pytest.approx(np.sqrt(1.5**2 + 2**2 + 0.25))
    assert aggregator.result() == result  # result() does not consume the round


def test_aggregator_accepts_updates_with_tensors_in_another_order() -> None:
    reference = Weights.from_pairs([("a", [0.0]), ("b", [0.0, 0.0])])
    for aggregator in (FedAvg(reference), Median(reference)):
        aggregator.add(Weights.from_pairs([("b", [1.0, 2.0]), ("a", [3.0])]), 1)
        result = aggregator.result().delta
        assert result.names == ("a", "b")
        assert result["b"].tolist() == [1.0, 2.0]
        assert result["a"].tolist() == [3.0]


# Robust aggregators, by hand -----------------------------------------------------------------


def test_median_is_coordinate_wise_and_unweighted() -> None:
    values = [[1, 10, 0], [5, 20, 0], [2, 30, 1], [4, 40, 1]]
    # Per coordinate: median(1,5,2,4)=3, median(10,20,30,40)=25, median(0,0,1,1)=0.5.
    assert _aggregate(Median(REFERENCE), values, [1000, 1, 1, 1]) == [3.0, 25.0, 0.5]


def test_trimmed_mean_drops_the_extremes_per_coordinate() -> None:
    values = [[1, 40, 0], [2, 30, 0], [3, 20, 9], [100, 10, 9]]
    # trim 0.25 of 4 -> drop 1 low and 1 high per coordinate: mean(2,3), mean(20,30), mean(0,9).
    result = _aggregate(TrimmedMean(REFERENCE, trim_fraction=0.25), values, [1, 1, 1, 1])
    assert result == [2.5, 25.0, 4.5]


def test_trimmed_mean_with_no_trim_is_the_plain_mean() -> None:
    values = [[0, 0, 3], [3, 6, 3]]
    assert _aggregate(TrimmedMean(REFERENCE, trim_fraction=0.0), values, [1, 9]) == [1.5, 3, 3]


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    reference = Weights({"w": [0.0]})
    # n=4, f=0: each score sums the n-f-2 = 2 smallest squared distances to the others.
    # 0: {1, 4, 10000} -> 5;  1: {1, 1, 9801} -> 2;  2: {1, 4, 9604} -> 5;
    # 100: {9604, 9801, 10000} -> 19405.
    values = [[0.0], [1.0], [2.0], [100.0]]
    krum = MultiKrum(reference, num_byzantine=0)
    for value in values:
        krum.add(Weights({"w": value}), 1)
    assert krum.scores().tolist() == [5.0, 2.0, 5.0, 19405.0]
    assert krum.result().delta["w"].tolist() == [1.0]
    # m=2: scores 2 (update 1) then the tie at 5 goes to the earlier update 0 -> mean(1, 0).
    multi = MultiKrum(reference, num_byzantine=0, num_selected=2)
    for value, weight in zip(values, [1, 1000, 1, 1], strict=True):
        multi.add(Weights({"w": value}), weight)
    assert multi.result().delta["w"].tolist() == [0.5]


def test_krum_needs_more_than_2f_plus_2_updates() -> None:
    krum = MultiKrum(REFERENCE, num_byzantine=1)
    for _ in range(4):
        krum.add(Weights({"w": [1.0, 2.0, 3.0]}), 1)
    with pytest.raises(AggregationError, match="more than 4 updates, got 4"):
        krum.result()
    krum.add(Weights({"w": [1.0, 2.0, 3.0]}), 1)
    assert krum.result().delta["w"].tolist() == [1.0, 2.0, 3.0]


def test_multi_krum_rejects_selecting_more_than_n_minus_f() -> None:
    krum = MultiKrum(REFERENCE, num_byzantine=1, num_selected=5)
    for _ in range(5):
        krum.add(Weights({"w": [0.0, 0.0, 0.0]}), 1)
    with pytest.raises(AggregationError, match="num_selected=5"):
        krum.result()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrimmedMean(REFERENCE, trim_fraction=0.5), "trim_fraction"),
        (lambda: TrimmedMean(REFERENCE, trim_fraction=-0.1), "trim_fraction"),
        (lambda: MultiKrum(REFERENCE, num_byzantine=-1), "num_byzantine"),
        (lambda: MultiKrum(REFERENCE, num_byzantine=1, num_selected=0), "num_selected"),
    ],
)
def test_robust_aggregators_reject_bad_parameters(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


# Robust aggregators under attack -------------------------------------------------------------


def _attacked_round(
    aggregator: Aggregator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """12 honest updates near a true delta plus 3 (20%) equal to 100x an honest one."""
    rng = np.random.default_rng(7)
    true_delta = rng.normal(size=50).astype(np.float32)
    honest = [true_delta + rng.normal(scale=0.05, size=50).astype(np.float32) for _ in range(12)]
    attack = [100.0 * honest[0]] * 3
    for i, update in enumerate(honest + attack):
        aggregator.add(Weights({"w": update}), 10 + i)
    return aggregator.result().delta["w"], np.mean(honest, axis=0)


@pytest.mark.parametrize(
    "build",
    [
        Median,
        lambda ref: TrimmedMean(ref, trim_fraction=0.2),
        lambda ref: MultiKrum(ref, num_byzantine=3, num_selected=1),
        lambda ref: MultiKrum(ref, num_byzantine=3, num_selected=12),
    ],
    ids=["median", "trimmed_mean", "krum", "multi_krum"],
)
def test_robust_aggregators_resist_scaled_updates_that_pull_fedavg_away(
    build: Callable[[Weights], Aggregator],
) -> None:
    reference = Weights({"w": np.zeros(50, np.float32)})
    robust, honest_mean = _attacked_round(build(reference))
    plain, _ = _attacked_round(FedAvg(reference))
    honest_norm = np.linalg.norm(honest_mean)
    assert np.linalg.norm(robust - honest_mean) < 0.2 * honest_norm
    assert np.linalg.norm(plain - honest_mean) > 10 * honest_norm


# Aggregator errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [FedAvg, Median, TrimmedMean])
def test_result_without_updates_raises(make: type[Aggregator]) -> None:
    with pytest.raises(AggregationError, match="no updates"):
        make(REFERENCE).result()


@pytest.mark.parametrize("weight", [0, -1, -0.5, float("nan"), float("inf"), True, "3"])
def test_add_rejects_a_weight_that_is_not_positive_and_finite(weight: object) -> None:
    aggregator = FedAvg(REFERENCE)
    with pytest.raises(AggregationError, match="weight"):
        aggregator.add(Weights({"w": [1.0, 1.0, 1.0]}), weight)  # type: ignore[arg-type]
    assert aggregator.count == 0


@pytest.mark.parametrize(
    ("delta", "tensor"),
    [
        (Weights({"w": [1.0, 2.0]}), "'w'"),
        (Weights({"w": [1.0, 2.0, 3.0], "x": [1.0]}), "'x'"),
        (Weights({"v": [1.0, 2.0, 3.0]}), "'v'"),
        (Weights({"w": [1.0, np.nan, 3.0]}), "'w'"),
    ],
)
def test_add_rejects_a_mismatched_update(delta: Weights, tensor: str) -> None:
    aggregator = FedAvg(REFERENCE)
    aggregator.add(Weights({"w": [1.0, 1.0, 1.0]}), 1)
    with pytest.raises(AggregationError, match=tensor):
        aggregator.add(delta, 1)
    assert aggregator.count == 1
    assert aggregator.result().delta["w"].tolist() == [1.0, 1.0, 1.0]


# Server optimizers, by hand ------------------------------------------------------------------

X0 = Weights({"w": [1.0, -2.0, 0.5]})
D1 = Weights({"w": [0.1, -0.2, 0.0]})
D2 = Weights({"w": [0.2, 0.01, 0.4]})


def _two_steps(optimizer: ServerOptimizer) -> tuple[ServerState, ServerState, Weights, Weights]:
    """(state after step 1, state after step 2, x1, x2) from X0 with deltas D1 then D2."""
    x1, state1 = optimizer.step(optimizer.init(X0), X0, D1)
    x2, state2 = optimizer.step(state1, x1, D2)
    return state1, state2, x1, x2


def test_fedavg_server_adds_the_scaled_delta() -> None:
    x, state = FedAvgServer(lr=0.5).step(FedAvgServer(lr=0.5).init(X0), X0, D1)
    assert x.allclose(Weights({"w": [1.05, -2.1, 0.5]}), rtol=1e-7, atol=0)
    assert state.step == 1
    assert dict(state.slots) == {}


def test_fedavgm_matches_hand_computed_steps() -> None:
    # lr = 0.5, momentum = 0.9, v0 = 0.
    # step 1: v1 = 0.9*0 + d1 = [0.1, -0.2, 0];  x1 = x0 + 0.5*v1 = [1.05, -2.1, 0.5]
    # step 2: v2 = 0.9*v1 + d2 = [0.09+0.2, -0.18+0.01, 0+0.4] = [0.29, -0.17, 0.4]
    #         x2 = x1 + 0.5*v2 = [1.05+0.145, -2.1-0.085, 0.5+0.2] = [1.195, -2.185, 0.7]
    state1, state2, x1, x2 = _two_steps(FedAvgM(lr=0.5, momentum=0.9))
    np.testing.assert_allclose(state1.slots["momentum"]["w"], [0.1, -0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(x1["w"], [1.05, -2.1, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state2.slots["momentum"]["w"], [0.29, -0.17, 0.4], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.195, -2.185, 0.7], rtol=1e-6)


def test_fedadam_matches_hand_computed_steps() -> None:
    # lr = 0.1, b1 = 0.9, b2 = 0.99, tau = 1e-3; m0 = 0, v0 = tau^2 = 1e-6.
    # step 1 (d1 = [0.1, -0.2, 0]):
    #   m1 = 0.1*d1 = [0.01, -0.02, 0]
    #   v1 = 0.99*1e-6 + 0.01*d1^2 = [9.9e-7 + 1e-4, 9.9e-7 + 4e-4, 9.9e-7]
    #      = [1.0099e-4, 4.0099e-4, 9.9e-7]
    #   sqrt(v1) = [0.01004938, 0.02002473, 0.00099499]
    #   x1 = x0 + 0.1*m1/(sqrt(v1)+1e-3) = [1 + 0.001/0.01104938, -2 - 0.002/0.02102473, 0.5]
    #      = [1 + 0.09050283, -2 - 0.09512605, 0.5] = [1.09050283, -2.09512605, 0.5]
    # step 2 (d2 = [0.2, 0.01, 0.4]):
    #   m2 = 0.9*m1 + 0.1*d2 = [0.009+0.02, -0.018+0.001, 0+0.04] = [0.029, -0.017, 0.04]
    #   v2 = 0.99*v1 + 0.01*d2^2 = [0.999801e-4 + 4e-4, 3.969801e-4 + 1e-6, 9.801e-7 + 1.6e-3]
    #      = [4.999801e-4, 3.979801e-4, 1.6009801e-3]
    #   sqrt(v2) = [0.02236023, 0.01994944, 0.04001225]
    #   x2 = x1 + 0.1*m2/(sqrt(v2)+1e-3)
    #      = x1 + [0.0029/0.02336023, -0.0017/0.02094944, 0.004/0.04101225]
    #      = x1 + [0.12414259, -0.08114776, 0.09753184]
    #      = [1.21464542, -2.17627381, 0.59753184]
    state1, state2, x1, x2 = _two_steps(FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    np.testing.assert_allclose(state1.slots["m"]["w"], [0.01, -0.02, 0.0], rtol=1e-6)
    np.testing.assert_allclose(state1.slots["v"]["w"], [1.0099e-4, 4.0099e-4, 9.9e-7], rtol=1e-6)
    np.testing.assert_allclose(x1["w"], [1.09050283, -2.09512605, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state2.slots["m"]["w"], [0.029, -0.017, 0.04], rtol=1e-6)
    np.testing.assert_allclose(
        state2.slots["v"]["w"], [4.999801e-4, 3.979801e-4, 1.6009801e-3], rtol=1e-6
    )
    np.testing.assert_allclose(x2["w"], [1.21464542, -2.17627381, 0.59753184], rtol=1e-6)


def test_fedyogi_matches_hand_computed_steps() -> None:
    # Same m as FedAdam; v <- v - 0.01 * d^2 * sign(v - d^2), v0 = 1e-6.
    # step 1 (d1^2 = [0.01, 0.04, 0]): sign(v0 - d1^2) = [-1, -1, +1]
    #   v1 = [1e-6 + 1e-4, 1e-6 + 4e-4, 1e-6 - 0] = [1.01e-4, 4.01e-4, 1e-6]
    #   sqrt(v1) = [0.01004988, 0.02002498, 0.001]
    #   x1 = [1 + 0.001/0.01104988, -2 - 0.002/0.02102498, 0.5 + 0]
    #      = [1.09049876, -2.09512492, 0.5]
    # step 2 (d2^2 = [0.04, 1e-4, 0.16]): sign(v1 - d2^2) = [-1, +1, -1]  (4.01e-4 > 1e-4)
    #   v2 = [1.01e-4 + 4e-4, 4.01e-4 - 1e-6, 1e-6 + 1.6e-3] = [5.01e-4, 4.0e-4, 1.601e-3]
    #   sqrt(v2) = [0.02238303, 0.02, 0.0400125]
    #   x2 = x1 + 0.1*[0.029, -0.017, 0.04]/(sqrt(v2)+1e-3)
    #      = x1 + [0.0029/0.02338303, -0.0017/0.021, 0.004/0.0410125]
    #      = x1 + [0.12402157, -0.08095238, 0.09753125]
    #      = [1.21452033, -2.1760773, 0.59753125]
    state1, state2, x1, x2 = _two_steps(FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3))
    np.testing.assert_allclose(state1.slots["v"]["w"], [1.01e-4, 4.01e-4, 1e-6], rtol=1e-6)
    np.testing.assert_allclose(x1["w"], [1.09049876, -2.09512492, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state2.slots["m"]["w"], [0.029, -0.017, 0.04], rtol=1e-6)
    np.testing.assert_allclose(state2.slots["v"]["w"], [5.01e-4, 4.0e-4, 1.601e-3], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.21452033, -2.1760773, 0.59753125], rtol=1e-6)


def test_server_step_never_mutates_its_inputs() -> None:
    optimizer = FedAdam(lr=0.1)
    state = optimizer.step(optimizer.init(X0), X0, D1)[1]
    before = (state.to_bytes(), X0.digest(), D2.digest())
    optimizer.step(state, X0, D2)
    assert (state.to_bytes(), X0.digest(), D2.digest()) == before
    assert state.step == 1


def test_server_state_round_trips_through_bytes() -> None:
    reference = Weights.from_pairs([("layer/w", [[1.0, 2.0]]), ("b", 0.5)])
    optimizer = FedYogi(lr=0.1)
    _, state = optimizer.step(optimizer.init(reference), reference, reference.scale(0.1))
    restored = ServerState.from_bytes(state.to_bytes())
    assert restored.optimizer == "fedyogi"
    assert restored.step == 1
    assert list(restored.slots) == ["m", "v"]
    assert all(restored.slots[s] == state.slots[s] for s in ("m", "v"))
    assert (
        optimizer.step(restored, reference, reference)[0]
        == optimizer.step(state, reference, reference)[0]
    )


def test_server_state_from_bytes_rejects_plain_weights() -> None:
    with pytest.raises(WeightsFormatError, match="not a server state"):
        ServerState.from_bytes(X0.to_bytes())


def test_server_step_rejects_a_state_of_another_optimizer_or_shape() -> None:
    adam_state = FedAdam().init(X0)
    with pytest.raises(ConfigError, match="fedadam"):
        FedYogi().step(adam_state, X0, D1)
    with pytest.raises(ShapeMismatchError, match="'w'"):
        FedAdam().step(adam_state, X0, Weights({"w": [1.0]}))


@pytest.mark.parametrize(
    "build",
    [
        lambda: FedAvgServer(lr=0.0),
        lambda: FedAvgM(momentum=1.0),
        lambda: FedAdam(tau=0.0),
        lambda: FedYogi(beta2=-0.1),
        lambda: FedAdam(lr=float("nan")),
    ],
)
def test_server_optimizers_reject_bad_hyperparameters(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


# Factories -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("fedavg", {}, FedAvg),
        ("median", {}, Median),
        ("trimmed_mean", {"trim_fraction": 0.2}, TrimmedMean),
        ("krum", {"num_byzantine": 1}, MultiKrum),
    ],
)
def test_aggregator_spec_builds_a_fresh_aggregator_each_time(
    name: str, options: dict[str, float], expected: type[Aggregator]
) -> None:
    spec = AggregatorSpec(name, options)
    first, second = spec.build(REFERENCE), spec.build(REFERENCE)
    assert type(first) is expected
    assert first is not second
    first.add(Weights({"w": [1.0, 2.0, 3.0]}), 1)
    assert (first.count, second.count) == (1, 0)
    assert type(build_aggregator(name, REFERENCE, **options)) is expected
    assert AGGREGATOR_NAMES == ("fedavg", "median", "trimmed_mean", "krum")


def test_aggregator_spec_passes_its_options_to_the_aggregator() -> None:
    krum = AggregatorSpec("krum", {"num_byzantine": 2, "num_selected": 3}).build(REFERENCE)
    assert isinstance(krum, MultiKrum)
    assert (krum.num_byzantine, krum.num_selected) == (2, 3)
    trimmed = AggregatorSpec("trimmed_mean", {"trim_fraction": 0.25}).build(REFERENCE)
    assert isinstance(trimmed, TrimmedMean)
    assert trimmed.trim_fraction == 0.25


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedprox", {}, r"unknown aggregator 'fedprox'; expected one of \['fedavg', 'median'"),
        ("fedadam", {}, "unknown aggregator 'fedadam'"),
        ("median", {"lr": 0.1}, r"'median' takes the options \[\], got \['lr'\]"),
        ("krum", {}, r"'krum' needs the options \['num_byzantine'\]"),
        ("krum", {"num_byzantine": 1.5}, "num_byzantine must be an integer >= 0, got 1.5"),
        ("trimmed_mean", {"trim_fraction": 0.7}, r"trim_fraction must be in \[0, 0.5\)"),
        ("trimmed_mean", {"trim_fraction": True}, "must be a number, got True"),
    ],
)
def test_aggregator_spec_is_validated_when_built(
    name: str, options: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        AggregatorSpec(name, options)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("fedavg", FedAvgServer), ("fedavgm", FedAvgM), ("fedadam", FedAdam), ("fedyogi", FedYogi)],
)
def test_build_server_optimizer_by_name(name: str, expected: type[ServerOptimizer]) -> None:
    optimizer = build_server_optimizer(name, lr=0.5)
    assert type(optimizer) is expected
    assert optimizer.name == name
    assert optimizer == expected(lr=0.5)


def test_build_server_optimizer_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ConfigError, match="unknown server optimizer 'median'") as info:
        build_server_optimizer("median")
    assert all(name in str(info.value) for name in SERVER_OPTIMIZER_NAMES)
    with pytest.raises(ConfigError, match=r"'fedadam' takes the options .*got \['momentum'\]"):
        build_server_optimizer("fedadam", momentum=0.9)
