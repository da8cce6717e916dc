"""Metrics of logits against integer labels, in numpy (no TensorFlow).

Computed locally from the model's logits rather than with distributed ``evaluate``, so
every worker of a cluster gets the same numbers with no collective ops, and the AUC of
a two-class logit model needs no custom Keras metric in the exported SavedModel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.errors import ConfigError

__all__ = ["binary_auc", "logit_metrics", "slice_metrics", "softmax_cross_entropy"]

MIN_SLICE_SIZE = 20
"""Slices with fewer test examples are left out: their metrics are mostly noise."""


def softmax_cross_entropy(
    logits: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]]
) -> float:
    """Mean of ``-log softmax(logits)[label]`` over the rows (stable log-sum-exp)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    _check(z, y)
    shifted = z - z.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean())


def binary_auc(
    scores: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]]
) -> float:
    """ROC AUC: the chance a random positive scores above a random negative (ties count 1/2).

    Mann and Whitney's U statistic over average ranks; NaN when a class is absent.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ConfigError(f"{s.size} scores but {y.size} labels")
    positives = int((y == 1).sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average ranks over runs of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def logit_metrics(
    logits: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]]
) -> dict[str, float]:
    """``loss`` and ``accuracy``, plus ``auc`` of class 1 when there are two classes."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    _check(z, y)
    metrics = {
        "loss": softmax_cross_entropy(z, y),
        "accuracy": float((z.argmax(axis=1) == y).mean()),
    }
    if z.shape[1] == 2:
        # The logit margin orders examples exactly as the class-1 probability does.
        metrics["auc"] = binary_auc(z[:, 1] - z[:, 0], y)
    return metrics


def slice_metrics(
    logits: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    keys: npt.NDArray[Any],
    *,
    name: str,
    min_size: int = MIN_SLICE_SIZE,
) -> dict[str, dict[str, float]]:
    """:func:`logit_metrics` plus ``count`` per ``"<name>=<key>"`` slice of ``min_size``+ rows.

    Missing keys (``None``, NaN, empty) form no slice.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    keys = np.asarray(keys, dtype=object)
    if keys.shape != y.shape:
        raise ConfigError(f"{keys.size} slice keys but {y.size} labels")
    text = np.array([_key(k) for k in keys], dtype=object)
    out: dict[str, dict[str, float]] = {}
    for value in sorted({t for t in text if t is not None}):
        rows = text == value
        if rows.sum() >= min_size:
            out[f"{name}={value}"] = {**logit_metrics(z[rows], y[rows]), "count": float(rows.sum())}
    return out


def _key(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _check(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"need logits of shape (n, classes) and n labels, got {logits.shape} and {labels.shape}"
        )
    if labels.size == 0:
        raise ConfigError("cannot compute metrics of zero examples")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ConfigError(f"labels must lie in 0..{logits.shape[1] - 1}")
