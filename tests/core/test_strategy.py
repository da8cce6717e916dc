"""Tests for fedge.strategy: composed strategies, presets, metrics aggregations, wrappers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from fedge.aggregation import (
    AggregateResult,
    AggregatorSpec,
    FedAvg,
    Median,
    MultiKrum,
    TrimmedMean,
)
from fedge.errors import AggregationError, ConfigError
from fedge.server_optimizers import FedAdam, FedAvgM, FedAvgServer, FedYogi, ServerState
from fedge.strategy import (
    METRICS_AGGREGATIONS,
    STRATEGY_NAMES,
    AggregatedMetrics,
    ClientMetrics,
    ClippedUpdates,
    ComposedStrategy,
    Strategy,
    StrategyWrapper,
    build_strategy,
    mean_metrics,
    median_metrics,
    weighted_mean_metrics,
)
from fedge.weights import Weights

X0 = Weights({"w": [1.0, -2.0, 0.5]})


def _round(
    strategy: Strategy, updates: Sequence[tuple[Sequence[float], int]]
) -> tuple[Weights, ServerState, AggregateResult]:
    """One round over X0 the way the round engine runs it: only the strategy's steps."""
    aggregator = strategy.new_aggregator(X0)
    for values, num_examples in updates:
        aggregator.add(Weights({"w": values}), num_examples)
    result = strategy.aggregate(aggregator)
    state = strategy.init_server_state(X0)
    weights, new_state = strategy.server_step(state, X0, result)
    return weights, new_state, result


# Composition, by hand ------------------------------------------------------------------------

MEDIAN_ROUND = [([0.1, 0.0, 0.3], 1), ([0.3, -0.2, -0.1], 1), ([5.0, 0.4, 0.2], 100)]


def test_median_with_fedadam_matches_a_hand_computed_step() -> None:
    # Median per coordinate, counts ignored: median(0.1,0.3,5)=0.3, median(0,-0.2,0.4)=0,
    # median(0.3,-0.1,0.2)=0.2 -> d = [0.3, 0, 0.2].
    # FedAdam lr=0.1, b1=0.9, b2=0.99, tau=1e-3; m0 = 0, v0 = tau^2 = 1e-6:
    #   m1 = 0.1*d = [0.03, 0, 0.02]
    #   v1 = 0.99e-6 + 0.01*d^2 = [9.9e-7 + 9e-4, 9.9e-7, 9.9e-7 + 4e-4]
    #      = [9.0099e-4, 9.9e-7, 4.0099e-4];  sqrt(v1) = [0.0300165, 0.00099499, 0.02002473]
    #   x1 = x0 + 0.1*m1/(sqrt(v1)+1e-3) = [1 + 0.003/0.0310165, -2 + 0, 0.5 + 0.002/0.02102473]
    #      = [1.09672273, -2.0, 0.59512605]
    strategy = build_strategy(
        "median",
        server_optimizer="fedadam",
        server_optimizer_options={"lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    )
    weights, state, result = _round(strategy, MEDIAN_ROUND)
    np.testing.assert_allclose(result.delta["w"], [0.3, 0.0, 0.2], rtol=1e-6)
    assert (state.optimizer, state.step) == ("fedadam", 1)
    np.testing.assert_allclose(state.slots["m"]["w"], [0.03, 0.0, 0.02], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(state.slots["v"]["w"], [9.0099e-4, 9.9e-7, 4.0099e-4], rtol=1e-6)
    np.testing.assert_allclose(weights["w"], [1.09672273, -2.0, 0.59512605], rtol=1e-6)
    # FedAvg + Adam on the same updates follows the outlier's 100 examples instead.
    plain, _, _ = _round(build_strategy("fedadam", aggregator_options={"lr": 0.1}), MEDIAN_ROUND)
    assert not plain.allclose(weights, atol=1e-3)


def test_trimmed_mean_with_fedyogi_matches_a_hand_computed_step() -> None:
    # trim 0.25 of 4 -> drop the lowest and highest per coordinate:
    # mean(0.2, 0.4) = 0.3, mean(0.0, 0.2) = 0.1, mean(0.3, 0.5) = 0.4 -> d = [0.3, 0.1, 0.4].
    # FedYogi lr=0.1 (b1 0.9, b2 0.99, tau 1e-3); d^2 = [0.09, 0.01, 0.16] > v0 = 1e-6, so
    #   v1 = v0 + 0.01*d^2 = [9.01e-4, 1.01e-4, 1.601e-3]; sqrt = [0.03001666, 0.01004988,
    #   0.0400125]; m1 = [0.03, 0.01, 0.04]
    #   x1 = [1 + 0.003/0.03101666, -2 + 0.001/0.01104988, 0.5 + 0.004/0.0410125]
    #      = [1.09672221, -1.90950124, 0.59753125]
    updates = [
        ([0.1, -0.4, 2.0], 5),
        ([0.2, 0.0, 0.1], 5),
        ([0.4, 0.2, 0.3], 5),
        ([9.0, 0.6, 0.5], 5),
    ]
    strategy = build_strategy(
        "trimmed_mean",
        aggregator_options={"trim_fraction": 0.25},
        server_optimizer="fedyogi",
        server_optimizer_options={"lr": 0.1},
    )
    weights, state, result = _round(strategy, updates)
    np.testing.assert_allclose(result.delta["w"], [0.3, 0.1, 0.4], rtol=1e-6)
    assert result.measurements["trimmed_per_side"] == 1.0
    assert (state.optimizer, state.step) == ("fedyogi", 1)
    np.testing.assert_allclose(state.slots["v"]["w"], [9.01e-4, 1.01e-4, 1.601e-3], rtol=1e-6)
    np.testing.assert_allclose(weights["w"], [1.09672221, -1.90950124, 0.59753125], rtol=1e-6)


def test_a_composed_strategy_takes_objects_directly() -> None:
    strategy = ComposedStrategy(
        aggregator=AggregatorSpec("median"),
        server_optimizer=FedAvgM(lr=0.5, momentum=0.9),
        metrics_aggregation=mean_metrics,
    )
    assert strategy.server_optimizer_name == "fedavgm"
    weights, state, _ = _round(strategy, MEDIAN_ROUND)
    # v1 = 0.9*0 + [0.3, 0, 0.2];  x1 = x0 + 0.5*v1 = [1.15, -2.0, 0.6]
    np.testing.assert_allclose(weights["w"], [1.15, -2.0, 0.6], rtol=1e-6)
    np.testing.assert_allclose(state.slots["momentum"]["w"], [0.3, 0.0, 0.2], rtol=1e-6)
    assert strategy == build_strategy(
        "median",
        server_optimizer="fedavgm",
        server_optimizer_options={"lr": 0.5, "momentum": 0.9},
        metrics_aggregation="mean",
    )


def test_a_composed_strategy_defaults_to_plain_fedavg() -> None:
    strategy = ComposedStrategy()
    assert strategy == build_strategy()
    weights, state, _ = _round(strategy, [([1.0, 2.0, 3.0], 1), ([5.0, 6.0, 7.0], 3)])
    # (1*[1,2,3] + 3*[5,6,7]) / 4 = [4, 5, 6];  x1 = x0 + d
    np.testing.assert_allclose(weights["w"], [5.0, 3.0, 6.5], rtol=1e-6)
    assert (state.optimizer, dict(state.slots)) == ("fedavg", {})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregator": "median"}, "aggregator must be an AggregatorSpec, got str"),
        ({"server_optimizer": "fedadam"}, "server_optimizer must be a ServerOptimizer"),
        ({"metrics_aggregation": "mean"}, "metrics_aggregation must be callable"),
    ],
)
def test_a_composed_strategy_refuses_names_where_objects_belong(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ComposedStrategy(**changes)  # type: ignore[arg-type]


# Presets and names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "aggregator", "server"),
    [
        ("fedavg", FedAvg, FedAvgServer),
        ("fedavgm", FedAvg, FedAvgM),
        ("fedadam", FedAvg, FedAdam),
        ("fedyogi", FedAvg, FedYogi),
        ("median", Median, FedAvgServer),
        ("trimmed_mean", TrimmedMean, FedAvgServer),
        ("krum", MultiKrum, FedAvgServer),
    ],
)
def test_every_old_name_is_a_preset_of_the_composition(
    name: str, aggregator: type, server: type
) -> None:
    options = {"num_byzantine": 1} if name == "krum" else {}
    strategy = build_strategy(name, aggregator_options=options)
    assert type(strategy.new_aggregator(X0)) is aggregator
    assert type(strategy.server_optimizer) is server
    assert strategy.metrics_aggregation is weighted_mean_metrics
    assert name in STRATEGY_NAMES


def test_preset_options_route_to_the_server_optimizer_as_before() -> None:
    fedadam = build_strategy("fedadam", aggregator_options={"lr": 0.2, "tau": 1e-2})
    assert fedadam.aggregator == AggregatorSpec("fedavg")
    assert fedadam.server_optimizer == FedAdam(lr=0.2, tau=1e-2)
    krum = build_strategy(
        "krum", aggregator_options={"num_byzantine": 2, "num_selected": 3, "lr": 0.5}
    )
    assert krum.aggregator == AggregatorSpec("krum", {"num_byzantine": 2, "num_selected": 3})
    assert krum.server_optimizer == FedAvgServer(lr=0.5)


def test_a_preset_takes_its_own_server_optimizer_and_options_given_apart() -> None:
    strategy = build_strategy(
        "fedadam", server_optimizer="fedadam", server_optimizer_options={"lr": 0.3}
    )
    assert strategy.server_optimizer == FedAdam(lr=0.3)
    assert build_strategy("fedyogi", server_optimizer_options={"lr": 0.3}).server_optimizer == (
        FedYogi(lr=0.3)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregator": "fedprox"}, r"unknown aggregator 'fedprox'; expected an aggregator"),
        (
            {"aggregator": "fedadam", "server_optimizer": "fedyogi"},
            "aggregator 'fedadam' is the preset fedavg \\+ fedadam, which contradicts "
            "server_optimizer 'fedyogi'; use aggregator 'fedavg' with it",
        ),
        (
            {
                "aggregator": "median",
                "server_optimizer": "fedadam",
                "aggregator_options": {"lr": 1},
            },
            r"aggregator 'median' takes the options \[\], got \['lr'\] in aggregator_options "
            r"\(server optimizer options go in server_optimizer_options\)",
        ),
        (
            {"aggregator": "fedadam", "aggregator_options": {"lr": 0.1, "momentum": 0.9}},
            r"'fedadam' takes the options \[.*'lr'.*\], got \['momentum'\]",
        ),
        ({"server_optimizer": "median"}, "unknown server optimizer 'median'"),
        ({"server_optimizer_options": {"momentum": 0.9}}, r"'fedavg' takes the options \['lr'\]"),
        ({"aggregator": "krum"}, r"'krum' needs the options \['num_byzantine'\]"),
        (
            {"aggregator": "trimmed_mean", "aggregator_options": {"trim_fraction": 0.7}},
            "trim_fraction must be in",
        ),
        ({"aggregator_options": {"lr": "fast"}}, r"aggregator_options\['lr'\] must be a number"),
        ({"server_optimizer_options": {"lr": float("nan")}}, "lr must be finite"),
        ({"metrics_aggregation": "mode"}, r"unknown metrics_aggregation 'mode'; expected one of"),
        ({"metrics_aggregation": ["mean"]}, "unknown metrics_aggregation"),
    ],
)
def test_build_strategy_refuses_bad_names_combinations_and_options(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(**kwargs)  # type: ignore[arg-type]


# Metrics aggregations ------------------------------------------------------------------------

REPORTS: list[tuple[int, Mapping[str, float]]] = [
    (10, {"accuracy": 0.9, "loss": 0.2}),
    (30, {"accuracy": 0.5, "loss": 1.0}),
    (60, {"accuracy": 0.6}),
]


def test_weighted_mean_weights_each_metric_by_the_clients_reporting_it() -> None:
    # accuracy: (10*0.9 + 30*0.5 + 60*0.6) / 100 = (9 + 15 + 36) / 100 = 0.6
    # loss (first two only): (10*0.2 + 30*1.0) / 40 = 32 / 40 = 0.8
    assert weighted_mean_metrics(REPORTS) == pytest.approx({"accuracy": 0.6, "loss": 0.8})


def test_mean_and_median_give_each_client_one_vote() -> None:
    # accuracy: (0.9 + 0.5 + 0.6) / 3 = 2/3; loss: (0.2 + 1.0) / 2 = 0.6
    assert mean_metrics(REPORTS) == pytest.approx({"accuracy": 2 / 3, "loss": 0.6})
    # accuracy: median(0.9, 0.5, 0.6) = 0.6; loss: median(0.2, 1.0) = 0.6
    assert median_metrics(REPORTS) == pytest.approx({"accuracy": 0.6, "loss": 0.6})
    assert set(METRICS_AGGREGATIONS) == {"weighted_mean", "mean", "median"}
    assert all(fn([]) == {} for fn in METRICS_AGGREGATIONS.values())


def test_aggregate_metrics_overall_and_per_region() -> None:
    clients = [
        ClientMetrics(10, {"accuracy": 0.9}, "north"),
        ClientMetrics(30, {"accuracy": 0.5}, "north"),
        ClientMetrics(60, {"accuracy": 0.6}, "south"),
        ClientMetrics(100, {"accuracy": 0.1}),  # no region: counts overall only
    ]
    weighted = build_strategy().aggregate_metrics(clients)
    # overall: (9 + 15 + 36 + 10) / 200 = 0.35; north: (9 + 15) / 40 = 0.6; south: 0.6
    assert isinstance(weighted, AggregatedMetrics)
    assert weighted.overall == pytest.approx({"accuracy": 0.35})
    assert list(weighted.by_region) == ["north", "south"]
    assert weighted.by_region["north"] == pytest.approx({"accuracy": 0.6})
    assert weighted.by_region["south"] == pytest.approx({"accuracy": 0.6})
    plain = build_strategy(metrics_aggregation="mean").aggregate_metrics(clients)
    # overall: (0.9 + 0.5 + 0.6 + 0.1) / 4 = 0.525; north: (0.9 + 0.5) / 2 = 0.7
    assert plain.overall == pytest.approx({"accuracy": 0.525})
    assert plain.by_region["north"] == pytest.approx({"accuracy": 0.7})


def test_client_metrics_need_a_positive_example_count() -> None:
    with pytest.raises(ConfigError, match="num_examples must be an integer >= 1, got 0"):
        ClientMetrics(0, {"accuracy": 1.0})


# Wrappers ------------------------------------------------------------------------------------


def test_clipped_updates_scales_long_updates_to_the_clip_norm_before_fedavg() -> None:
    # [3, 4, 0] has norm 5 -> scaled by 1/5 to [0.6, 0.8, 0]; [0, 0, 0.5] (norm 0.5) is kept.
    # FedAvg with counts 1 and 3: ([0.6, 0.8, 0] + 3*[0, 0, 0.5]) / 4 = [0.15, 0.2, 0.375].
    strategy = ClippedUpdates(build_strategy("fedavg"), clip_norm=1.0)
    weights, state, result = _round(strategy, [([3.0, 4.0, 0.0], 1), ([0.0, 0.0, 0.5], 3)])
    np.testing.assert_allclose(result.delta["w"], [0.15, 0.2, 0.375], rtol=1e-6)
    assert result.measurements["clipped_updates"] == 1.0
    assert result.measurements["clip_norm"] == 1.0
    assert result.measurements["max_update_norm"] == pytest.approx(1.0)
    np.testing.assert_allclose(weights["w"], [1.15, -1.8, 0.875], rtol=1e-6)
    assert state.optimizer == "fedavg"


def test_clipped_updates_wraps_any_strategy() -> None:
    # Clip to 1: [0.1, 0, 0.3] (norm 0.32) and [0.3, -0.2, -0.1] (norm 0.37) stay;
    # [5, 0.4, 0.2] has norm sqrt(25.2) = 5.01996 and shrinks to [0.99602, 0.07968, 0.03984].
    # Median per coordinate: median(0.1, 0.3, 0.99602) = 0.3, median(0, -0.2, 0.07968) = 0,
    # median(0.3, -0.1, 0.03984) = 0.03984 (unclipped it was 0.2).
    inner = build_strategy(
        "median", server_optimizer="fedadam", server_optimizer_options={"lr": 0.1}
    )
    wrapped = ClippedUpdates(inner, clip_norm=1.0)
    assert wrapped.inner is inner
    assert wrapped.server_optimizer_name == "fedadam"
    weights, state, result = _round(wrapped, MEDIAN_ROUND)
    np.testing.assert_allclose(result.delta["w"], [0.3, 0.0, 0.2 / np.sqrt(25.2)], rtol=1e-6)
    assert result.measurements["clipped_updates"] == 1.0
    assert (state.optimizer, state.step) == ("fedadam", 1)
    assert not weights.allclose(_round(inner, MEDIAN_ROUND)[0], atol=1e-4)
    twice = ClippedUpdates(ClippedUpdates(inner, clip_norm=1.0), clip_norm=0.1)
    assert _round(twice, MEDIAN_ROUND)[2].measurements["clipped_updates"] == 3.0


def test_clipped_updates_leaves_rejection_to_the_wrapped_aggregator() -> None:
    aggregator = ClippedUpdates(build_strategy(), clip_norm=1.0).new_aggregator(X0)
    for bad in ([np.inf, 1.0, 1.0], [np.nan, 1.0, 1.0]):
        with pytest.raises(AggregationError, match="'w'"):
            aggregator.add(Weights({"w": bad}), 1)
    with pytest.raises(AggregationError, match="weight"):
        aggregator.add(Weights({"w": [10.0, 0.0, 0.0]}), 0)
    aggregator.add(Weights({"w": [0.1, 0.0, 0.0]}), 1)
    assert aggregator.result().measurements["clipped_updates"] == 0.0


@pytest.mark.parametrize("clip_norm", [0, -1.0, float("inf"), True])
def test_clipped_updates_needs_a_positive_finite_clip_norm(clip_norm: float) -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        ClippedUpdates(build_strategy(), clip_norm=clip_norm)


class _RegionBlind(StrategyWrapper):
    """A wrapper that changes one step: it drops the per-region metrics."""

    def aggregate_metrics(self, clients: Sequence[ClientMetrics]) -> AggregatedMetrics:
        overall = self.inner.aggregate_metrics(clients).overall
        return AggregatedMetrics(overall=overall, by_region={})


def test_a_wrapper_delegates_every_step_it_does_not_override() -> None:
    inner = build_strategy("trimmed_mean", server_optimizer="fedyogi")
    wrapped = _RegionBlind(inner)
    updates = [([0.1, -0.4, 2.0], 5), ([0.2, 0.0, 0.1], 5), ([0.4, 0.2, 0.3], 5)]
    assert _round(wrapped, updates)[0] == _round(inner, updates)[0]
    assert wrapped.server_optimizer_name == "fedyogi"
    clients = [ClientMetrics(1, {"loss": 1.0}, "north"), ClientMetrics(3, {"loss": 3.0}, "south")]
    assert wrapped.aggregate_metrics(clients).by_region == {}
    assert wrapped.aggregate_metrics(clients).overall == pytest.approx({"loss": 2.5})
    with pytest.raises(ConfigError, match="a wrapper needs a Strategy, got str"):
        StrategyWrapper("fedavg")  # type: ignore[arg-type]
