"""What may leave the device about local data: the edge privacy model.

**Who is protected, against whom.** The unit of privacy is one local row (one trip, one
image). The adversary is anyone who sees the device's replies: the coordinator, its admin
API, or whoever reads its store, and who may know every other row of the device and may
send it any task. Replies never carry rows (see :mod:`fedge.messages`); with the policy on
(:mod:`edge_client.policy`, the default) every statistic and feature reply is also
(epsilon, delta)-differentially private with respect to adding or removing one row, and
the device sums what it spent (basic composition) against its own ``epsilon_budget``.

- **Every reply** (train, evaluate, stats, features) needs ``min_rows`` local rows behind
  it (20 by default); a device with fewer answers nothing. A task kind the owner did not
  list, a kind answered again before its ``min_interval_seconds``, or a reply that would
  overspend the budget is refused too; the refusal stays on the device (the daemon's
  status says why) and the task is not answered.
- **Features** (:func:`private_prototypes`, the default): every row's backbone embedding
  is clipped to L2 norm ``C = features_clip``; per class ``c`` of the schema's fixed label
  set the device computes the clipped sum ``S_c`` and the row count ``n_c``. Adding or
  removing one row moves ``(S_c / C, n_c)`` by at most ``sqrt(2)`` in L2, so the analytic
  Gaussian mechanism (Balle & Wang, ICML 2018; :func:`fedge.dp.gaussian_sigma`) with
  ``s = gaussian_sigma(features_epsilon, delta, sqrt(2))`` adds N(0, (s C)^2) to every
  coordinate of every ``S_c`` and N(0, s^2) to every ``n_c``. Only classes whose *noisy*
  count reaches ``min_class_rows`` are sent, as ``noisy S_c / noisy n_c`` with the rounded
  noisy count in ``FeatureBatch.counts``; selecting on the noisy count over the fixed class
  set is post-processing, so which classes appear is private too. No true label count and
  no row order leave the device.
- **Row-level features** (:func:`private_rows`) only when the task's options say
  ``row_features: true`` *and* the policy says ``allow_row_features``: local DP per row.
  Half the epsilon protects the embedding (clipped to ``C``, Gaussian noise calibrated to
  the replacement sensitivity ``2C``), half the label (K-ary randomized response: the true
  label with probability ``e^e / (e^e + K - 1)``). Rows are disjoint people, so the reply
  costs ``features_epsilon`` once.
- **Statistics** (:func:`noisy_stats`): one Gaussian mechanism over the whole report at
  ``stats_epsilon``. The report is a list of J blocks, each with a stated L2 sensitivity
  ``D_j`` for one row: the label counts (D = 1), per numeric column of width ``w`` its
  histogram over the fixed edges (D = w) and, when the model's feature spec bounds the
  column, the sum and the sum of squares of values clipped to those bounds and centred on
  their midpoint (D = w h and w h^2, ``h`` the half-width), per categorical column its
  counts over the feature spec's vocabulary plus ``__other__`` (D = 1; values outside the
  vocabulary, or every value when there is no spec, are counted as ``__other__``, so the
  set of categories is data-independent). Block ``j`` gets N(0, (D_j s)^2) noise with
  ``s = gaussian_sigma(stats_epsilon, delta, sqrt(J))``. Then, as post-processing only:
  counts are rounded and clamped at 0, histogram bins and categories whose noisy count is
  under ``k = min_class_rows`` are set to 0 (a category is left out), ``num_rows`` is the
  sum of the noisy label counts, a column's counts are scaled down when they exceed the
  noisy row total, means and variances come from the noisy sums (clamped to the bounds),
  or from the noisy histogram when the spec gives no bounds. Bounds: ``offset + scale *
  clip`` of the feature spec's normalisation; without a clip, ``offset + scale * [0, 1]``
  for min-max normalisation (the training range) and ``offset + scale * [-4, 4]`` for
  z-scores. Min and max are never reported.

- **Evaluation class counts** (:func:`private_class_counts`): per class of the schema's
  fixed label set, how many holdout rows the global model predicts as that class and how
  many carry that label. One row moves the pair of count vectors by at most ``sqrt(2)`` in
  L2, so both get N(0, s^2) noise with ``s = gaussian_sigma(evaluation_epsilon, delta,
  sqrt(2))``; then, as post-processing, counts are rounded, clamped at 0, and set to 0 under
  ``k = min_class_rows``. The reply's privacy note says ``statistics`` at
  ``evaluation_epsilon``; a device whose budget cannot pay sends its metrics without them.

**The unsafe baseline.** With ``privacy: "off"`` none of this runs: features are row-level
embeddings with true labels, and statistics are :func:`private_stats`, exact apart from
these deterministic rules (which alone do not stop differencing two reports):

- categorical value counts: values seen fewer than ``k`` times are folded into one
  ``__other__`` count (``fedge.stats``' ``min_category_count``);
- numeric columns: min and max are never reported (``include_extremes=False``), and a
  column with fewer than ``k`` present values is reported as all missing, because its mean
  would otherwise *be* the value when only one is present.

Evaluation class counts are exact. Evaluation slices (e.g. per region) are named only when
they hold ``k`` rows; smaller ones are pooled into ``__other__``, itself dropped when under
``k`` (:func:`slice_groups`). Histograms use the fixed, data-independent edges of ``fedge.stats``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_client.errors import PolicyRefusal
from fedge.columns import categorical_codes, numeric_values
from fedge.data import Dataset
from fedge.dp import gaussian_sigma
from fedge.features import MINMAX, CategoricalFeature, FeatureSpec, NumericFeature
from fedge.stats import (
    DEFAULT_HISTOGRAM_EDGES,
    OTHER_CATEGORY,
    CategoricalStats,
    ColumnStats,
    DatasetStats,
    NumericStats,
    StatsConfig,
    compute_stats,
)
from fedge.validation import check_int

__all__ = [
    "DEFAULT_MIN_COUNT",
    "PrototypeRelease",
    "class_counts",
    "clip_rows",
    "noisy_stats",
    "private_class_counts",
    "private_prototypes",
    "private_rows",
    "private_stats",
    "prototype_noise",
    "slice_groups",
    "stats_noise_unit",
]

DEFAULT_MIN_COUNT = 5
_MAX_NAME = 128  # the longest slice name an EvalReport takes


def private_stats(table: Dataset, *, k: int = DEFAULT_MIN_COUNT) -> DatasetStats:
    """Mergeable statistics of ``table``'s raw feature columns, safe to send (see above)."""
    check_int(k, "the minimum count k", low=1)
    schema = table.schema
    columns: dict[str, NDArray[Any]] = dict(table.features())
    for name in schema.numeric:
        values = numeric_values(name, columns[name], shape=schema.shape_of(name))
        present = np.count_nonzero(~np.isnan(values))
        if 0 < present < k:
            columns[name] = np.full(values.shape, np.nan, dtype=np.float64)
    config = StatsConfig(min_category_count=k, include_extremes=False)
    return compute_stats(columns, schema=schema, labels=table.labels, config=config)


def slice_groups(
    values: NDArray[Any], *, k: int = DEFAULT_MIN_COUNT
) -> dict[str, NDArray[np.int64]]:
    """Row indices per slice value, for values with at least ``k`` rows; the rest (missing
    values included) pooled under ``__other__`` when they reach ``k`` together."""
    check_int(k, "the minimum count k", low=1)
    keys = ["" if v is None else str(v) for v in values]
    counts = Counter(keys)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        named = key and counts[key] >= k and key != OTHER_CATEGORY and len(key) <= _MAX_NAME
        name = key if named else OTHER_CATEGORY
        groups.setdefault(name, []).append(index)
    return {
        name: np.asarray(rows, dtype=np.int64)
        for name, rows in sorted(groups.items())
        if len(rows) >= k
    }


# Differentially private features --------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_NO_CLIP_ZSCORE = 4.0


def clip_rows(embeddings: NDArray[Any], bound: float) -> NDArray[np.float64]:
    """Every row scaled to L2 norm at most ``bound`` (float64)."""
    rows = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    clipped: NDArray[np.float64] = rows * scale
    return clipped


def prototype_noise(epsilon: float, delta: float, clip: float) -> tuple[float, float]:
    """The noise stddevs ``(of each sum coordinate, of each count)`` of
    :func:`private_prototypes` (see the module docstring)."""
    unit = gaussian_sigma(epsilon, delta, _SQRT2)
    return unit * clip, unit


@dataclass(frozen=True)
class PrototypeRelease:
    """Noised per-class prototypes: ``embeddings`` (m, d) float32, their ``labels`` and
    rounded noisy ``counts``."""

    embeddings: NDArray[np.float32]
    labels: NDArray[np.int64]
    counts: tuple[int, ...]


def private_prototypes(
    embeddings: NDArray[Any],
    labels: NDArray[Any],
    *,
    num_classes: int,
    epsilon: float,
    delta: float,
    clip: float,
    min_class_rows: int,
    rng: np.random.Generator,
) -> PrototypeRelease:
    """(epsilon, delta)-DP per-class mean embeddings (see the module docstring).

    PolicyRefusal (reason ``min_class_rows``, carrying the epsilon spent) when no class's
    noisy count reaches ``min_class_rows``."""
    clipped = clip_rows(embeddings, clip)
    classes = np.asarray(labels, dtype=np.int64)
    sum_std, count_std = prototype_noise(epsilon, delta, clip)
    sums = np.zeros((num_classes, clipped.shape[1]), dtype=np.float64)
    np.add.at(sums, classes, clipped)
    counts = np.bincount(classes, minlength=num_classes).astype(np.float64)
    noisy_sums = sums + rng.normal(0.0, sum_std, size=sums.shape)
    noisy_counts = counts + rng.normal(0.0, count_std, size=counts.shape)
    kept = np.flatnonzero(noisy_counts >= min_class_rows)
    if not kept.size:
        raise PolicyRefusal(
            f"no class reaches min_class_rows={min_class_rows} rows (after noise): "
            "no prototype to send",
            reason="min_class_rows",
            epsilon=epsilon,
            delta=delta,
        )
    prototypes = noisy_sums[kept] / noisy_counts[kept, None]
    return PrototypeRelease(
        embeddings=prototypes.astype(np.float32),
        labels=kept.astype(np.int64),
        counts=tuple(round(c) for c in noisy_counts[kept]),
    )


def private_rows(
    embeddings: NDArray[Any],
    labels: NDArray[Any],
    *,
    num_classes: int,
    epsilon: float,
    delta: float,
    clip: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Row-level features under local DP: each embedding clipped to ``clip`` with Gaussian
    noise for (epsilon/2, delta) at sensitivity ``2 clip``, each label by K-ary randomized
    response at epsilon/2."""
    clipped = clip_rows(embeddings, clip)
    sigma = gaussian_sigma(epsilon / 2, delta, 2 * clip)
    noisy = clipped + rng.normal(0.0, sigma, size=clipped.shape)
    truth = np.asarray(labels, dtype=np.int64)
    keep = math.exp(epsilon / 2) / (math.exp(epsilon / 2) + num_classes - 1)
    flip = rng.random(truth.shape) >= keep
    # a flipped label is uniform over the K - 1 other classes
    other = (truth + rng.integers(1, num_classes, size=truth.shape)) % num_classes
    return noisy.astype(np.float32), np.where(flip, other, truth).astype(np.int64)


# Evaluation class counts ----------------------------------------------------------------------


def class_counts(classes: NDArray[Any], num_classes: int) -> tuple[int, ...]:
    """How many of ``classes`` (class ids) fall on each of ``num_classes`` ids."""
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)
    return tuple(int(c) for c in counts[:num_classes])


def private_class_counts(
    predictions: NDArray[Any],
    labels: NDArray[Any],
    *,
    num_classes: int,
    epsilon: float,
    delta: float,
    k: int,
    rng: np.random.Generator,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(epsilon, delta)-DP per-class counts of ``predictions`` and ``labels`` (module
    docstring): one Gaussian mechanism at L2 sensitivity sqrt(2) over both vectors."""
    check_int(k, "the minimum count k", low=1)
    std = gaussian_sigma(epsilon, delta, _SQRT2)
    released = []
    for values in (predictions, labels):
        exact = np.asarray(class_counts(values, num_classes), dtype=np.float64)
        noisy = _noisy_counts(exact, std, rng)
        released.append(tuple(int(c) for c in np.where(noisy < k, 0, noisy)))
    return released[0], released[1]


# Differentially private statistics -------------------------------------------------------------


def _bounds(feature: NumericFeature | CategoricalFeature | None) -> tuple[float, float] | None:
    """The raw-value range a numeric feature's normalisation implies (module docstring)."""
    if not isinstance(feature, NumericFeature):
        return None
    if feature.clip is not None:
        low, high = feature.clip
    elif feature.normalization == MINMAX:  # scaled from the training min/max to [0, 1]
        low, high = 0.0, 1.0
    else:
        low, high = -_NO_CLIP_ZSCORE, _NO_CLIP_ZSCORE
    ends = (feature.offset + feature.scale * low, feature.offset + feature.scale * high)
    lo, hi = min(ends), max(ends)
    return (lo, hi) if hi > lo else None


def _stats_blocks(schema_numeric: list[tuple[int, bool]], categorical: int) -> int:
    """J: the label block, per numeric column a histogram (plus sum and sum of squares
    when bounded), and one block per categorical column."""
    return 1 + sum(3 if bounded else 1 for _, bounded in schema_numeric) + categorical


def stats_noise_unit(epsilon: float, delta: float, blocks: int) -> float:
    """``s``: a block of L2 sensitivity D gets N(0, (D s)^2) noise (module docstring)."""
    return gaussian_sigma(epsilon, delta, math.sqrt(blocks))


def _noisy_counts(values: NDArray[Any], std: float, rng: np.random.Generator) -> NDArray[np.int64]:
    noisy = np.asarray(values, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(values))
    return np.maximum(np.rint(noisy), 0).astype(np.int64)


def _fit(counts: NDArray[np.int64], total: int, k: int) -> NDArray[np.int64]:
    """Counts under ``k`` set to 0, scaled down when they exceed ``total``."""
    counts = np.where(counts < k, 0, counts)
    if counts.sum() > total:
        counts = np.floor(counts * (total / counts.sum())).astype(np.int64)
        counts = np.where(counts < k, 0, counts)
    return counts.astype(np.int64)


def _histogram_moments(edges: tuple[float, ...], counts: NDArray[np.int64]) -> tuple[float, float]:
    """Mean and m2 of a histogram, each value at its bin's midpoint (the outer bins at
    their edge): post-processing of the noisy histogram when no bounds are known."""
    inner = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    points = np.asarray([edges[0], *inner, edges[-1]], dtype=np.float64)
    total = int(counts.sum())
    if not total:
        return 0.0, 0.0
    mean = float(np.dot(points, counts) / total)
    return mean, float(np.dot(counts, np.square(points - mean)))


def noisy_stats(
    table: Dataset,
    *,
    spec: FeatureSpec | None,
    epsilon: float,
    delta: float,
    k: int,
    rng: np.random.Generator,
) -> DatasetStats:
    """(epsilon, delta)-DP statistics of ``table``'s feature columns (module docstring)."""
    check_int(k, "the minimum count k", low=1)
    schema = table.schema
    features = {f.name: f for f in spec.features} if spec is not None else {}
    numeric = []
    for name in schema.numeric:
        width = math.prod(schema.shape_of(name))
        numeric.append((width, _bounds(features.get(name)) is not None))
    unit = stats_noise_unit(epsilon, delta, _stats_blocks(numeric, len(schema.categorical)))
    labels = np.bincount(np.asarray(table.labels, dtype=np.int64), minlength=schema.num_classes)
    label_counts = _noisy_counts(labels, unit, rng)
    rows = int(label_counts.sum())
    columns: dict[str, ColumnStats] = {}
    for name in schema.numeric:
        columns[name] = _noisy_numeric(
            name, table, features.get(name), rows=rows, unit=unit, k=k, rng=rng
        )
    for name in schema.categorical:
        feature = features.get(name)
        vocabulary = feature.vocabulary if isinstance(feature, CategoricalFeature) else ()
        columns[name] = _noisy_categorical(
            name, table.columns[name], vocabulary, rows=rows, unit=unit, k=k, rng=rng
        )
    return DatasetStats(
        num_rows=rows, columns=columns, label_counts=tuple(int(c) for c in label_counts)
    )


def _noisy_numeric(
    name: str,
    table: Dataset,
    feature: NumericFeature | CategoricalFeature | None,
    *,
    rows: int,
    unit: float,
    k: int,
    rng: np.random.Generator,
) -> NumericStats:
    schema = table.schema
    shape = schema.shape_of(name)
    width = math.prod(shape)
    values = numeric_values(name, table.columns[name], shape=shape).reshape(-1)
    present = values[~np.isnan(values)]
    edges = DEFAULT_HISTOGRAM_EDGES
    bins = np.bincount(
        np.searchsorted(np.asarray(edges), present, side="right"), minlength=len(edges) + 1
    )
    counts = _fit(_noisy_counts(bins, width * unit, rng), rows * width, k)
    count = int(counts.sum())
    bounds = _bounds(feature)
    if bounds is None:
        mean, m2 = _histogram_moments(edges, counts)
    else:
        lo, hi = bounds
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        centred = np.clip(present, lo, hi) - mid
        total = float(centred.sum()) + rng.normal(0.0, width * half * unit)
        squares = float(np.square(centred).sum()) + rng.normal(0.0, width * half * half * unit)
        mean, m2 = 0.0, 0.0
        if count:
            offset = min(max(total / count, -half), half)
            mean = mid + offset
            m2 = min(max(squares - count * offset * offset, 0.0), count * half * half)
    if not count:
        mean, m2 = 0.0, 0.0
    return NumericStats(
        count=count,
        missing=rows * width - count,
        mean=mean,
        m2=m2,
        min=None,
        max=None,
        edges=edges,
        counts=tuple(int(c) for c in counts),
        shape=shape,
    )


def _noisy_categorical(
    name: str,
    column: NDArray[Any],
    vocabulary: tuple[str, ...],
    *,
    rows: int,
    unit: float,
    k: int,
    rng: np.random.Generator,
) -> CategoricalStats:
    _missing, uniques, inverse = categorical_codes(name, column)
    domain = [v for v in vocabulary if v != OTHER_CATEGORY] + [OTHER_CATEGORY]
    position = {value: index for index, value in enumerate(domain)}
    tallies = np.bincount(inverse, minlength=len(uniques))
    exact = np.zeros(len(domain), dtype=np.int64)
    for value, tally in zip(uniques, tallies.tolist(), strict=True):
        exact[position.get(value, len(domain) - 1)] += tally
    counts = _fit(_noisy_counts(exact, unit, rng), rows, k)
    value_counts = {v: int(c) for v, c in zip(domain, counts, strict=True) if c > 0}
    count = int(counts.sum())
    return CategoricalStats(count=count, missing=rows - count, value_counts=value_counts)
