"""Aggregators: fold one round's client updates (deltas plus example counts) into one delta.

Build a new aggregator each round from a reference (template) :class:`~fedge.weights.Weights`;
``add`` validates every update against it, ``result`` may be called any number of times.
:class:`FedAvg` streams in O(model) memory; the robust aggregators (:class:`Median`,
:class:`TrimmedMean`, :class:`MultiKrum`) need every update at once and hold the round's
updates in memory (O(clients x model)). An :class:`AggregatorSpec` names an aggregator and its
options, validated when built, and builds a fresh one per round; :mod:`fedge.strategy`
composes it with a server optimizer and a metrics aggregation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedge.errors import AggregationError, ConfigError, WeightsError
from fedge.summation import PairwiseSum, scale_with_squares, trustworthy
from fedge.weights import Weights

__all__ = [
    "AGGREGATOR_NAMES",
    "AggregateResult",
    "Aggregator",
    "AggregatorSpec",
    "FedAvg",
    "Median",
    "MultiKrum",
    "RoundAggregator",
    "TrimmedMean",
    "aggregator_options",
    "build_aggregator",
    "check_delta",
]

Float64Array = npt.NDArray[np.float64]

_PAIRWISE_DEPTH = 4
# Every float32 partial sum of FedAvg stays below sum(w_i * ||x_i||) * (1 + 6u); past this
# bound (float32 overflows at 2**128) the round continues in float64.
_FLOAT32_SAFE = 2.0**120


def check_delta(delta: object, reference: Weights, index: int) -> Weights:
    """``delta`` as the ``index``-th update of a round over ``reference``: Weights with
    exactly its tensors and shapes, finite; else :class:`~fedge.errors.AggregationError`."""
    checked = _check_structure(delta, reference, index)
    _check_finite(checked, index)
    return checked


def _check_structure(delta: object, reference: Weights, index: int) -> Weights:
    """:func:`check_delta` without the finiteness check (the same errors, in its order)."""
    if not isinstance(delta, Weights):
        raise AggregationError(f"update {index}: delta must be Weights, got {type(delta).__name__}")
    if delta.names == reference.names and all(
        delta[name].shape == array.shape for name, array in reference.items()
    ):
        return delta
    try:
        delta.validate_against(reference, check_finite=False)
    except WeightsError as exc:
        raise AggregationError(f"update {index} rejected: {exc}") from exc
    return delta


def _check_finite(delta: Weights, index: int) -> None:
    try:
        delta.check_finite()
    except WeightsError as exc:
        raise AggregationError(f"update {index} rejected: {exc}") from exc


@dataclass(frozen=True)
class AggregateResult:
    """One round's aggregated delta with what went into it.

    ``measurements`` holds ``count``, ``total_weight``, ``mean_update_norm``,
    ``max_update_norm``, ``aggregate_norm`` and any aggregator-specific numbers.
    """

    delta: Weights
    count: int
    total_weight: float
    measurements: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))


class RoundAggregator(Protocol):
    """What a strategy hands the round engine for one round: every :class:`Aggregator`, or
    a wrapper around one (see :class:`fedge.strategy.ClippedUpdates`)."""

    def add(self, delta: Weights, weight: float) -> None:
        """Add one client's delta with its example count."""

    def result(self) -> AggregateResult:
        """The round's aggregate so far."""


class Aggregator(ABC):
    """Takes weighted deltas one at a time (``add``) and combines them (``result``)."""

    def __init__(self, reference: Weights) -> None:
        if not isinstance(reference, Weights):
            raise ConfigError(f"reference must be Weights, got {type(reference).__name__}")
        self._reference = reference
        self._count = 0
        self._total_weight = 0.0
        self._norm_sum = 0.0
        self._norm_max = 0.0

    @property
    def reference(self) -> Weights:
        return self._reference

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._total_weight

    def add(self, delta: Weights, weight: float) -> None:
        """Add one client's delta; ``weight`` is its example count (finite, > 0)."""
        if isinstance(weight, bool) or not isinstance(weight, int | float | np.number):
            raise AggregationError(f"update {self._count}: weight must be a number, got {weight!r}")
        value = float(weight)
        if not math.isfinite(value) or value <= 0.0:
            raise AggregationError(
                f"update {self._count}: weight must be finite and > 0, got {value}"
            )
        norm = self._fold(delta, value)
        self._count += 1
        self._total_weight += value
        self._norm_sum += norm
        self._norm_max = max(self._norm_max, norm)

    def result(self) -> AggregateResult:
        """The aggregated delta; raises :class:`AggregationError` when nothing was added."""
        if self._count == 0:
            raise AggregationError(f"{type(self).__name__}: no updates to aggregate")
        delta, extra = self._combine()
        measurements = {
            "count": float(self._count),
            "total_weight": self._total_weight,
            "mean_update_norm": self._norm_sum / self._count,
            "max_update_norm": self._norm_max,
            "aggregate_norm": delta.l2_norm(),
            **extra,
        }
        return AggregateResult(delta, self._count, self._total_weight, measurements)

    def _fold(self, delta: Weights, weight: float) -> float:
        """Validate one update (:func:`check_delta`), fold it in; its L2 norm. Nothing
        changes when it is refused."""
        check_delta(delta, self._reference, self._count)
        self._accumulate(delta, weight)
        return delta.l2_norm()

    @abstractmethod
    def _accumulate(self, delta: Weights, weight: float) -> None:
        """Fold in one validated update."""

    @abstractmethod
    def _combine(self) -> tuple[Weights, dict[str, float]]:
        """The aggregate of at least one update, and extra measurements."""


class FedAvg(Aggregator):
    """Example-weighted mean of deltas (McMahan et al. 2017, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS).

    Streaming, one pass per update: in chunks of :data:`fedge.summation.CHUNK` elements, the
    float32 sum of squares (finiteness and the update's norm at once; no BLAS) and the
    weighted term ``float32(weight) * delta``, summed pairwise in float32
    (:class:`fedge.summation.PairwiseSum`, blocks of 16 flushed into float64). Memory: five
    float32 and one float64 vector of the model's size, whatever the number of updates.

    Error bound, per coordinate, against the exact mean ``m = sum(w_i x_i) / W``::

        |result - m| <= 6 * 2**-24 * sum(w_i |x_i|) / W  +  2**-24 * |m|

    (two roundings of each term, four pairwise levels, the flushes and the division in
    float64, and the final rounding to float32). Where float64 is needed - a bound
    ``sum(w_i ||x_i||)`` past ``2**120``, where a float32 sum could overflow - the
    aggregator moves to float64 accumulation for the rest of the round. The norm
    measurements are within ``2**-13`` relative of the exact norms
    (:func:`fedge.summation.scale_with_squares`).
    """

    def __init__(self, reference: Weights) -> None:
        super().__init__(reference)
        self._slices: list[tuple[str, int, int]] = []
        start = 0
        for name, array in reference.items():
            self._slices.append((name, start, start + array.size))
            start += array.size
        self._sum = PairwiseSum(start, depth=_PAIRWISE_DEPTH)
        self._bound = 0.0  # sum(w_i * ||x_i||): no partial sum exceeds it
        self._wide: Float64Array | None = None  # the float64 sum, once float32 is not enough

    def _fold(self, delta: Weights, weight: float) -> float:
        _check_structure(delta, self._reference, self._count)
        if self._wide is None and weight <= _FLOAT32_SAFE:
            term = self._sum.scratch()
            factor = np.float32(weight)
            # ||x|| <= 2**120 / weight keeps every scaled value below 2**120.
            limit = _FLOAT32_SAFE / weight
            max_squares = limit * limit
            squares = 0.0
            for name, start, stop in self._slices:
                flat = delta[name].reshape(-1)
                squares += scale_with_squares(
                    flat, factor, term[start:stop], max_squares=max_squares
                )
            if trustworthy(squares):
                norm = math.sqrt(squares)
            else:  # NaN/Inf (refused), an overflowed square, a large or a tiny update
                try:
                    _check_finite(delta, self._count)
                except AggregationError:
                    self._sum.give_back(term)
                    raise
                norm = delta.l2_norm()
                if weight * norm <= _FLOAT32_SAFE:  # the pass may have stopped early
                    for name, start, stop in self._slices:
                        np.multiply(delta[name].reshape(-1), factor, out=term[start:stop])
            bound = self._bound + weight * norm
            if bound <= _FLOAT32_SAFE:
                self._bound = bound
                self._sum.push(term)
                return norm
            self._sum.give_back(term)
        else:
            _check_finite(delta, self._count)
            norm = delta.l2_norm()
        if self._wide is None:
            self._wide = self._sum.total()
        for name, start, stop in self._slices:
            self._wide[start:stop] += delta[name].reshape(-1).astype(np.float64) * weight
        return norm

    def _accumulate(self, delta: Weights, weight: float) -> None:
        self._fold(delta, weight)

    def _combine(self) -> tuple[Weights, dict[str, float]]:
        if self._wide is None:
            mean = self._sum.total()
            np.divide(mean, self._total_weight, out=mean)
        else:
            mean = self._wide / self._total_weight
        shapes = self._reference.shapes
        return Weights._wrap(
            {
                name: mean[start:stop].astype(np.float32).reshape(shapes[name])
                for name, start, stop in self._slices
            }
        ), {}


class _HoldingAggregator(Aggregator):
    """Base of the robust aggregators: keeps every update as a flat float32 vector."""

    def __init__(self, reference: Weights) -> None:
        super().__init__(reference)
        self._vectors: list[npt.NDArray[np.float32]] = []

    def _accumulate(self, delta: Weights, weight: float) -> None:
        # Flatten in the reference's order: a delta may list its tensors in another order.
        self._vectors.append(
            np.concatenate([delta[n].ravel() for n in self._reference.names])
            if len(self._reference)
            else np.zeros(0, np.float32)
        )

    def _stacked(self) -> Float64Array:
        return np.stack(self._vectors).astype(np.float64)


class Median(_HoldingAggregator):
    """Coordinate-wise median, unweighted (Yin et al. 2018, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML).

    Holds the round's updates in memory. Example counts are not used: a client could lie.
    """

    def _combine(self) -> tuple[Weights, dict[str, float]]:
        return self._reference.unflatten(np.median(self._stacked(), axis=0)), {}


class TrimmedMean(_HoldingAggregator):
    """Coordinate-wise trimmed mean, unweighted (Yin et al. 2018, ICML).

    Per coordinate, drops the ``floor(trim_fraction * n)`` largest and smallest values and
    averages the rest. Holds the round's updates in memory; example counts are not used.
    """

    def __init__(self, reference: Weights, *, trim_fraction: float = 0.1) -> None:
        super().__init__(reference)
        beta = float(trim_fraction)
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = beta

    def _combine(self) -> tuple[Weights, dict[str, float]]:
        n = self._count
        k = math.floor(self.trim_fraction * n)
        kept = np.sort(self._stacked(), axis=0)[k : n - k]
        return self._reference.unflatten(kept.mean(axis=0)), {"trimmed_per_side": float(k)}


class MultiKrum(_HoldingAggregator):
    """Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS); ``num_selected=1`` is Krum.

    Each update's score is the sum of squared L2 distances to its ``n - f - 2`` nearest
    other updates; the ``num_selected`` lowest-scored updates are averaged UNWEIGHTED (a
    Byzantine client could inflate its example count). Needs ``n > 2f + 2`` updates and
    ``num_selected <= n - f``. Holds the round's updates in memory; O(n^2 x model) time.
    """

    def __init__(self, reference: Weights, *, num_byzantine: int, num_selected: int = 1) -> None:
        super().__init__(reference)
        for what, value, low in (
            ("num_byzantine", num_byzantine, 0),
            ("num_selected", num_selected, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected

    def scores(self) -> Float64Array:
        """Krum score of every update added so far, in the order added."""
        n, f = self._count, self.num_byzantine
        if n <= 2 * f + 2:
            raise AggregationError(
                f"Krum with num_byzantine={f} needs more than {2 * f + 2} updates, got {n}"
            )
        stacked = self._stacked()
        distances = np.stack([((stacked - row) ** 2).sum(axis=1) for row in stacked])
        np.fill_diagonal(distances, np.inf)
        nearest: Float64Array = np.sort(distances, axis=1)[:, : n - f - 2]
        scores: Float64Array = nearest.sum(axis=1)
        return scores

    def _combine(self) -> tuple[Weights, dict[str, float]]:
        n, f, m = self._count, self.num_byzantine, self.num_selected
        scores = self.scores()
        if m > n - f:
            raise AggregationError(
                f"num_selected={m} exceeds n - num_byzantine = {n - f} with {n} updates"
            )
        selected = np.argsort(scores, kind="stable")[:m]
        mean = self._stacked()[selected].mean(axis=0)
        return self._reference.unflatten(mean), {
            "num_selected": float(m),
            "max_selected_score": float(scores[selected].max()),
        }


# Aggregator name -> (class, required options, optional options).
_AGGREGATORS: dict[str, tuple[type[Aggregator], tuple[str, ...], tuple[str, ...]]] = {
    "fedavg": (FedAvg, (), ()),
    "median": (Median, (), ()),
    "trimmed_mean": (TrimmedMean, (), ("trim_fraction",)),
    "krum": (MultiKrum, ("num_byzantine",), ("num_selected",)),
}
AGGREGATOR_NAMES: tuple[str, ...] = tuple(_AGGREGATORS)


def aggregator_options(name: str) -> tuple[str, ...]:
    """The options aggregator ``name`` takes (required first)."""
    if name not in _AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; expected one of {list(AGGREGATOR_NAMES)}")
    _, required, optional = _AGGREGATORS[name]
    return required + optional


@dataclass(frozen=True)
class AggregatorSpec:
    """An aggregator by name with its options; :meth:`build` makes a fresh one per round.

    Validated when built: the name, the option names (required ones present) and values
    (by building one aggregator over an empty model), each failure a :class:`ConfigError`.
    """

    name: str = "fedavg"
    options: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        accepted = aggregator_options(self.name)
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"aggregator options must be a mapping, got {self.options!r}")
        options = dict(self.options)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"aggregator {self.name!r} takes the options {sorted(accepted)}, got {unknown}"
            )
        required = _AGGREGATORS[self.name][1]
        absent = [key for key in required if key not in options]
        if absent:
            raise ConfigError(f"aggregator {self.name!r} needs the options {absent}")
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"aggregator option {key!r} must be a number, got {value!r}")
        object.__setattr__(self, "options", MappingProxyType(options))
        self.build(Weights({}))

    def build(self, reference: Weights) -> Aggregator:
        """An empty aggregator for one round over ``reference``'s tensors."""
        cls = _AGGREGATORS[self.name][0]
        return cls(reference, **self.options)


def build_aggregator(name: str, reference: Weights, **options: float) -> Aggregator:
    """A fresh aggregator ``name`` (one of :data:`AGGREGATOR_NAMES`) over ``reference``."""
    return AggregatorSpec(name, options).build(reference)
