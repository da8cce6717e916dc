"""Strategies: how a round turns client updates into a new global model and its metrics.

A :class:`ComposedStrategy` combines three independent parts, any with any:

- an aggregator (:class:`~fedge.aggregation.AggregatorSpec`), built fresh every round;
- a server optimizer (:mod:`fedge.server_optimizers`) stepping an explicit
  :class:`~fedge.server_optimizers.ServerState` (Reddi et al. 2021, "Adaptive Federated
  Optimization", ICLR);
- a metrics aggregation: a function of the clients' ``(num_examples, metrics)`` pairs
  (:func:`weighted_mean_metrics` by default), applied overall and per client region.

The round engine calls only the :class:`Strategy` methods. A :class:`StrategyWrapper`
delegates every method to the strategy it wraps, so a subclass adds behaviour to any strategy
by overriding one step (:class:`ClippedUpdates` clips each update before aggregation).
The names ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``median``, ``trimmed_mean`` and
``krum`` are presets of the composition (:data:`PRESETS`); :func:`build_strategy` builds a
strategy from names, as round configs and command lines give them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from fedge import aggregation, server_optimizers
from fedge.aggregation import AGGREGATOR_NAMES, AggregateResult, AggregatorSpec, RoundAggregator
from fedge.errors import ConfigError
from fedge.server_optimizers import (
    FedAvgServer,
    ServerOptimizer,
    ServerState,
    build_server_optimizer,
)
from fedge.validation import check_int, check_positive
from fedge.weights import Weights

__all__ = [
    "METRICS_AGGREGATIONS",
    "PRESETS",
    "STRATEGY_NAMES",
    "AggregatedMetrics",
    "ClientMetrics",
    "ClippedUpdates",
    "ComposedStrategy",
    "MetricsAggregation",
    "Preset",
    "Strategy",
    "StrategyWrapper",
    "build_strategy",
    "mean_metrics",
    "median_metrics",
    "weighted_mean_metrics",
]

MetricsAggregation = Callable[[Sequence[tuple[int, Mapping[str, float]]]], dict[str, float]]
"""``[(num_examples, metrics), ...] -> metrics``; each metric over the clients reporting it."""


# Metrics aggregations ------------------------------------------------------------------------


def _by_name(
    results: Sequence[tuple[int, Mapping[str, float]]],
) -> dict[str, list[tuple[int, float]]]:
    values: dict[str, list[tuple[int, float]]] = {}
    for num_examples, metrics in results:
        for name, value in metrics.items():
            values.setdefault(name, []).append((num_examples, float(value)))
    return values


def weighted_mean_metrics(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric's mean weighted by the example counts of the clients that report it."""
    return {
        name: sum(n * v for n, v in pairs) / sum(n for n, _ in pairs)
        for name, pairs in _by_name(results).items()
    }


def mean_metrics(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric's unweighted mean over the clients that report it (one client, one vote)."""
    return {
        name: sum(v for _, v in pairs) / len(pairs) for name, pairs in _by_name(results).items()
    }


def median_metrics(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Each metric's unweighted median over the clients that report it."""
    return {
        name: float(statistics.median(v for _, v in pairs))
        for name, pairs in _by_name(results).items()
    }


METRICS_AGGREGATIONS: Mapping[str, MetricsAggregation] = MappingProxyType(
    {"weighted_mean": weighted_mean_metrics, "mean": mean_metrics, "median": median_metrics}
)


@dataclass(frozen=True)
class ClientMetrics:
    """One client's metrics for a round, with its example count and region (if any)."""

    num_examples: int
    metrics: Mapping[str, float]
    region: str | None = None

    def __post_init__(self) -> None:
        check_int(self.num_examples, "num_examples", low=1)
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


@dataclass(frozen=True)
class AggregatedMetrics:
    """A round's client metrics aggregated overall and per client region."""

    overall: Mapping[str, float]
    by_region: Mapping[str, Mapping[str, float]]


# Strategies ----------------------------------------------------------------------------------


class Strategy(ABC):
    """The steps of a round the engine delegates, in the order it calls them:
    :meth:`new_aggregator`, ``add`` on it per update, :meth:`aggregate`,
    :meth:`init_server_state` (when the base version has no state of
    :attr:`server_optimizer_name`), :meth:`server_step`, :meth:`aggregate_metrics`."""

    @property
    @abstractmethod
    def server_optimizer_name(self) -> str:
        """The name the server states of this strategy carry."""

    @abstractmethod
    def new_aggregator(self, reference: Weights) -> RoundAggregator:
        """An empty aggregator for one round over ``reference``'s tensors."""

    @abstractmethod
    def aggregate(self, aggregator: RoundAggregator) -> AggregateResult:
        """The round's aggregated delta and measurements from the filled ``aggregator``."""

    @abstractmethod
    def init_server_state(self, global_weights: Weights) -> ServerState:
        """The server state before the first round."""

    @abstractmethod
    def server_step(
        self, state: ServerState, global_weights: Weights, result: AggregateResult
    ) -> tuple[Weights, ServerState]:
        """Apply the aggregate; returns (new global weights, new state), inputs untouched."""

    @abstractmethod
    def aggregate_metrics(self, clients: Sequence[ClientMetrics]) -> AggregatedMetrics:
        """The clients' metrics, overall and per region."""


@dataclass(frozen=True, kw_only=True)
class ComposedStrategy(Strategy):
    """An aggregator, a server optimizer and a metrics aggregation, combined freely.

    E.g. ``ComposedStrategy(aggregator=AggregatorSpec("median"),
    server_optimizer=FedAdam(lr=0.01), metrics_aggregation=mean_metrics)``.
    """

    aggregator: AggregatorSpec = field(default_factory=AggregatorSpec)
    server_optimizer: ServerOptimizer = field(default_factory=FedAvgServer)
    metrics_aggregation: MetricsAggregation = weighted_mean_metrics

    def __post_init__(self) -> None:
        if not isinstance(self.aggregator, AggregatorSpec):
            raise ConfigError(
                f"aggregator must be an AggregatorSpec, got {type(self.aggregator).__name__}"
            )
        if not isinstance(self.server_optimizer, ServerOptimizer):
            raise ConfigError(
                "server_optimizer must be a ServerOptimizer, got "
                f"{type(self.server_optimizer).__name__}"
            )
        if not callable(self.metrics_aggregation):
            raise ConfigError(
                f"metrics_aggregation must be callable, got {self.metrics_aggregation!r}"
            )

    @property
    def server_optimizer_name(self) -> str:
        return self.server_optimizer.name

    def new_aggregator(self, reference: Weights) -> RoundAggregator:
        return self.aggregator.build(reference)

    def aggregate(self, aggregator: RoundAggregator) -> AggregateResult:
        return aggregator.result()

    def init_server_state(self, global_weights: Weights) -> ServerState:
        return self.server_optimizer.init(global_weights)

    def server_step(
        self, state: ServerState, global_weights: Weights, result: AggregateResult
    ) -> tuple[Weights, ServerState]:
        return self.server_optimizer.step(state, global_weights, result.delta)

    def aggregate_metrics(self, clients: Sequence[ClientMetrics]) -> AggregatedMetrics:
        regions: dict[str, list[tuple[int, Mapping[str, float]]]] = {}
        for client in clients:
            if client.region:
                regions.setdefault(client.region, []).append((client.num_examples, client.metrics))
        overall = self.metrics_aggregation([(c.num_examples, c.metrics) for c in clients])
        return AggregatedMetrics(
            overall=overall,
            by_region={region: self.metrics_aggregation(r) for region, r in regions.items()},
        )


class StrategyWrapper(Strategy):
    """Delegates every step to ``inner``; a subclass overrides the steps it changes (as
    Flower's differential-privacy wrappers do around any strategy)."""

    def __init__(self, inner: Strategy) -> None:
        if not isinstance(inner, Strategy):
            raise ConfigError(f"a wrapper needs a Strategy, got {type(inner).__name__}")
        self._inner = inner

    @property
    def inner(self) -> Strategy:
        return self._inner

    @property
    def server_optimizer_name(self) -> str:
        return self._inner.server_optimizer_name

    def new_aggregator(self, reference: Weights) -> RoundAggregator:
        return self._inner.new_aggregator(reference)

    def aggregate(self, aggregator: RoundAggregator) -> AggregateResult:
        return self._inner.aggregate(aggregator)

    def init_server_state(self, global_weights: Weights) -> ServerState:
        return self._inner.init_server_state(global_weights)

    def server_step(
        self, state: ServerState, global_weights: Weights, result: AggregateResult
    ) -> tuple[Weights, ServerState]:
        return self._inner.server_step(state, global_weights, result)

    def aggregate_metrics(self, clients: Sequence[ClientMetrics]) -> AggregatedMetrics:
        return self._inner.aggregate_metrics(clients)


class ClippedUpdates(StrategyWrapper):
    """Scales every update whose global L2 norm exceeds ``clip_norm`` down to that norm
    before the wrapped strategy aggregates it: ``d * min(1, clip_norm / ||d||)`` (the
    clipping step of DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private
    Recurrent Language Models", ICLR; no noise is added here).

    The result's measurements gain ``clip_norm`` and ``clipped_updates`` (how many were
    scaled down); the wrapped aggregator's norm measurements are of the clipped updates.
    """

    def __init__(self, inner: Strategy, *, clip_norm: float) -> None:
        super().__init__(inner)
        self.clip_norm = check_positive(clip_norm, "clip_norm")

    def new_aggregator(self, reference: Weights) -> RoundAggregator:
        return _ClippingAggregator(super().new_aggregator(reference), self.clip_norm)


class _ClippingAggregator:
    """Clips each update, then hands it to the wrapped aggregator (which validates it)."""

    def __init__(self, inner: RoundAggregator, clip_norm: float) -> None:
        self._inner = inner
        self._clip_norm = clip_norm
        self._clipped = 0

    def add(self, delta: Weights, weight: float) -> None:
        clipped = False
        if isinstance(delta, Weights):
            norm = delta.l2_norm()
            # A non-finite norm is left for the wrapped aggregator to reject.
            if math.isfinite(norm) and norm > self._clip_norm:
                delta = delta.scale(self._clip_norm / norm)
                clipped = True
        self._inner.add(delta, weight)
        self._clipped += clipped

    def result(self) -> AggregateResult:
        result = self._inner.result()
        measurements = {
            **result.measurements,
            "clip_norm": self._clip_norm,
            "clipped_updates": float(self._clipped),
        }
        return dataclasses.replace(result, measurements=measurements)


# Presets and names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named composition: an aggregator and a server optimizer."""

    aggregator: str
    server_optimizer: str


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "fedavg": Preset("fedavg", "fedavg"),
        "fedavgm": Preset("fedavg", "fedavgm"),
        "fedadam": Preset("fedavg", "fedadam"),
        "fedyogi": Preset("fedavg", "fedyogi"),
        "median": Preset("median", "fedavg"),
        "trimmed_mean": Preset("trimmed_mean", "fedavg"),
        "krum": Preset("krum", "fedavg"),
    }
)
STRATEGY_NAMES: tuple[str, ...] = tuple(PRESETS)
"""What ``aggregator`` accepts in :func:`build_strategy`: every preset (the aggregators'
own names among them)."""


def build_strategy(
    aggregator: str = "fedavg",
    *,
    aggregator_options: Mapping[str, float] | None = None,
    server_optimizer: str | None = None,
    server_optimizer_options: Mapping[str, float] | None = None,
    metrics_aggregation: str = "weighted_mean",
) -> ComposedStrategy:
    """The strategy these names describe, e.g. ``build_strategy("median",
    server_optimizer="fedadam", server_optimizer_options={"lr": 0.01})``.

    ``aggregator`` is an aggregator (``fedavg``, ``median``, ``trimmed_mean``, ``krum``) or a
    preset (``fedavgm``, ``fedadam``, ``fedyogi``: FedAvg with that server optimizer).
    ``server_optimizer`` defaults to the preset's (``fedavg`` for a plain aggregator); a
    preset combines only with its own server optimizer. The preset form of earlier versions,
    where ``aggregator_options`` also carries the server optimizer's options (``{"lr": 0.01}``
    for ``fedadam``), holds while ``server_optimizer`` and ``server_optimizer_options`` are
    not given (None or empty). Every mistake is a :class:`ConfigError`.
    """
    if not isinstance(aggregator, str) or aggregator not in PRESETS:
        raise ConfigError(
            f"unknown aggregator {aggregator!r}; expected an aggregator "
            f"{list(AGGREGATOR_NAMES)} or a preset {list(STRATEGY_NAMES)}"
        )
    preset = PRESETS[aggregator]
    agg_options = _options(aggregator_options, "aggregator_options")
    srv_options = _options(server_optimizer_options, "server_optimizer_options")
    legacy = server_optimizer is None and not srv_options
    if server_optimizer is None:
        server_optimizer = preset.server_optimizer
    elif aggregator not in AGGREGATOR_NAMES and server_optimizer != preset.server_optimizer:
        raise ConfigError(
            f"aggregator {aggregator!r} is the preset {preset.aggregator} + "
            f"{preset.server_optimizer}, which contradicts server_optimizer "
            f"{server_optimizer!r}; use aggregator {preset.aggregator!r} with it"
        )
    if not isinstance(server_optimizer, str):
        raise ConfigError(f"server_optimizer must be a name, got {server_optimizer!r}")
    aggregator_keys = set(aggregation.aggregator_options(preset.aggregator))
    server_keys = set(server_optimizers.server_optimizer_options(server_optimizer))
    misplaced = sorted(set(agg_options) - aggregator_keys)
    if legacy:
        srv_options = {k: v for k, v in agg_options.items() if k in misplaced}
        agg_options = {k: v for k, v in agg_options.items() if k not in misplaced}
        unknown = sorted(set(srv_options) - server_keys)
        if unknown:
            raise ConfigError(
                f"{aggregator!r} takes the options {sorted(aggregator_keys | server_keys)}, "
                f"got {unknown}"
            )
    elif misplaced:
        raise ConfigError(
            f"aggregator {preset.aggregator!r} takes the options {sorted(aggregator_keys)}, "
            f"got {misplaced} in aggregator_options (server optimizer options go in "
            "server_optimizer_options)"
        )
    if not isinstance(metrics_aggregation, str) or metrics_aggregation not in METRICS_AGGREGATIONS:
        raise ConfigError(
            f"unknown metrics_aggregation {metrics_aggregation!r}; expected one of "
            f"{list(METRICS_AGGREGATIONS)}"
        )
    return ComposedStrategy(
        aggregator=AggregatorSpec(preset.aggregator, agg_options),
        server_optimizer=build_server_optimizer(server_optimizer, **srv_options),
        metrics_aggregation=METRICS_AGGREGATIONS[metrics_aggregation],
    )


def _options(options: Mapping[str, float] | None, what: str) -> dict[str, float]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{what} must be a mapping of names to numbers, got {options!r}")
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{what}[{key!r}] must be a number, got {value!r}")
    return dict(options)
