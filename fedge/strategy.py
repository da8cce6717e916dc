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
by overriding one step (:class:`ClippedUpdates` clips each update before aggregation;
:class:`DPFedAvg` clips, sums with weight 1, noises and divides by the expected cohort).
The names ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``median``, ``trimmed_mean`` and
``krum`` are presets of the composition (:data:`PRESETS`); :func:`build_strategy` builds a
strategy from names, as round configs and command lines give them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from fedge import aggregation, server_optimizers
from fedge.aggregation import (
    AGGREGATOR_NAMES,
    AggregateResult,
    AggregatorSpec,
    RoundAggregator,
    check_delta,
)
from fedge.dp import DP_CLIP_SLOT, DPConfig, next_clip
from fedge.errors import AggregationError, ConfigError
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
    "DPFedAvg",
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

    def bind_state(self, state: ServerState) -> Strategy:
        """This strategy for a round that starts from ``state``: the engine calls it before
        :meth:`new_aggregator`, so a strategy whose aggregation depends on what earlier rounds
        learnt (:class:`DPFedAvg`'s adaptive clip) reads it from there. By default itself."""
        return self


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
        # A DP round's clip slot is DPFedAvg's; a plain round after it steps without it.
        slots = {k: v for k, v in state.slots.items() if k != DP_CLIP_SLOT}
        if len(slots) != len(state.slots):
            state = dataclasses.replace(state, slots=slots)
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

    def bind_state(self, state: ServerState) -> Strategy:
        inner = self._inner.bind_state(state)
        if inner is self._inner:
            return self
        bound = copy.copy(self)  # the same wrapper around the bound strategy
        bound._inner = inner
        return bound

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


class DPFedAvg(StrategyWrapper):
    """DP-FedAvg around any FedAvg strategy (McMahan et al. 2018, ICLR): each update is
    clipped to L2 ``clip``, the clipped updates are summed with weight 1 each, Gaussian
    noise of stddev ``config.noise_stddev(clip)`` is added to every coordinate of the sum
    (from ``rng``: the caller seeds it from a CSPRNG), and the sum is divided by
    ``config.expected_clients`` (the fixed denominator m, so one client moves the mean by at
    most clip / m whatever the others send); the wrapped server optimizer then steps.

    With ``config.adaptive`` the clip is a quantile estimate (Andrew et al. 2021, NeurIPS)
    carried between rounds in the server state's ``dp_clip`` slot: :meth:`bind_state` reads
    it, :meth:`server_step` writes the next one (:func:`fedge.dp.next_clip`).

    ``secure``: the round is securely aggregated and the clients clipped and noised their
    own updates (distributed noise, :meth:`DPConfig.client_noise_stddev`); the aggregator
    gets the survivors' mean once, weighted by their count, and the server only turns it
    into the sum over m; it adds no noise. Adaptive clipping needs each norm, so it is
    refused there. The example counts are not used: DP-FedAvg weighs every client alike.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        config: DPConfig,
        rng: np.random.Generator,
        secure: bool = False,
        clip: float | None = None,
    ) -> None:
        super().__init__(inner)
        if not isinstance(config, DPConfig):
            raise ConfigError(f"config must be a DPConfig, got {type(config).__name__}")
        if isinstance(inner, ComposedStrategy) and inner.aggregator.name != "fedavg":
            raise ConfigError(
                f"DP-FedAvg needs the fedavg aggregator, not {inner.aggregator.name!r}: its "
                "noise is calibrated to a sum of clipped updates"
            )
        if secure and config.adaptive:
            raise ConfigError(
                "adaptive clipping cannot run in a secure round: it needs each update's norm, "
                "which only the client sees (use a fixed dp_clip)"
            )
        self.config = config
        self.secure = bool(secure)
        self.clip = config.clip if clip is None else check_positive(clip, "clip")
        self._rng = rng

    def bind_state(self, state: ServerState) -> DPFedAvg:
        slot = state.slots.get(DP_CLIP_SLOT)
        if not self.config.adaptive or slot is None or "clip" not in slot:
            return self
        clip = float(np.asarray(slot["clip"]).reshape(-1)[0])
        if not (math.isfinite(clip) and clip > 0.0):
            raise ConfigError(f"the server state's adaptive clip is not a positive number: {clip}")
        return DPFedAvg(
            self.inner, config=self.config, rng=self._rng, secure=self.secure, clip=clip
        )

    def new_aggregator(self, reference: Weights) -> RoundAggregator:
        return _DPAggregator(reference, self, self._rng)

    def init_server_state(self, global_weights: Weights) -> ServerState:
        return self._with_clip(super().init_server_state(global_weights), self.config.clip)

    def server_step(
        self, state: ServerState, global_weights: Weights, result: AggregateResult
    ) -> tuple[Weights, ServerState]:
        slots = {k: v for k, v in state.slots.items() if k != DP_CLIP_SLOT}
        new_weights, new_state = super().server_step(
            dataclasses.replace(state, slots=slots), global_weights, result
        )
        clip = result.measurements.get("dp_next_clip", self.clip)
        return new_weights, self._with_clip(new_state, clip)

    @staticmethod
    def _with_clip(state: ServerState, clip: float) -> ServerState:
        slot = Weights({"clip": np.asarray([clip], np.float32)})
        return dataclasses.replace(state, slots={**state.slots, DP_CLIP_SLOT: slot})


class _DPAggregator:
    """Streams clipped updates into a float64 sum; the noise is drawn in :meth:`result`."""

    def __init__(self, reference: Weights, strategy: DPFedAvg, rng: np.random.Generator) -> None:
        self._reference = reference
        self._strategy = strategy
        self._rng = rng
        self._sums = {n: np.zeros(a.shape, np.float64) for n, a in reference.items()}
        self._term = {n: np.empty(a.shape, np.float64) for n, a in reference.items()}
        self._count = 0
        self._clients = 0.0
        self._clipped = 0
        self._norm_sum = 0.0
        self._norm_max = 0.0

    def add(self, delta: Weights, weight: float) -> None:
        check_delta(delta, self._reference, self._count)
        norm = delta.l2_norm()
        if self._strategy.secure:
            # The survivors' mean, once: their count turns it back into their sum.
            scale = check_positive(weight, "weight", error=AggregationError)
            self._clients += scale
        else:
            clip = self._strategy.clip
            scale = min(1.0, clip / norm) if norm > 0.0 else 1.0
            self._clipped += norm > clip
            self._clients += 1.0
        for name, total in self._sums.items():
            # float64(x) * scale into one reused buffer: the bits of astype-then-multiply
            np.multiply(delta[name], scale, out=self._term[name], dtype=np.float64)
            total += self._term[name]
        self._count += 1
        self._norm_sum += norm
        self._norm_max = max(self._norm_max, norm)

    def result(self) -> AggregateResult:
        if self._count == 0:
            raise AggregationError("DPFedAvg: no updates to aggregate")
        strategy, config = self._strategy, self._strategy.config
        m = float(config.expected_clients)
        stddev = 0.0 if strategy.secure else config.noise_stddev(strategy.clip)
        tensors = {}
        for name, total in self._sums.items():
            noised = total + self._rng.normal(0.0, stddev, total.shape) if stddev > 0.0 else total
            tensors[name] = noised / m
        delta = Weights(tensors)
        measurements = {
            "count": float(self._count),
            "total_weight": self._clients,
            "mean_update_norm": self._norm_sum / self._count,
            "max_update_norm": self._norm_max,
            "aggregate_norm": delta.l2_norm(),
            "dp_clip": strategy.clip,
            "dp_noise_stddev": stddev,
            "dp_expected_clients": m,
        }
        if not strategy.secure:
            measurements["dp_clipped_updates"] = float(self._clipped)
        if config.adaptive:
            unclipped = self._count - self._clipped
            clip, fraction = next_clip(config, strategy.clip, unclipped, rng=self._rng)
            measurements["dp_unclipped_fraction"] = fraction
            measurements["dp_next_clip"] = clip
        return AggregateResult(delta, self._count, self._clients, measurements)


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
