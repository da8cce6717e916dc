"""Personalization: a head fine-tuned on the device's own data from each new global version.

After the device sees a new global model version it fine-tunes a copy of that version's
head on its local training rows and keeps it as the *personal head*: plain SGD through
``head.tflite``'s ``train_step`` on the int8 backbone's embeddings of the rows, computed once
and cached (:meth:`~edge_client.model.EdgeModel.cached_embeddings`), where the bundle has
``head.tflite``; else through the trainable model's ``train_step`` with the backbone frozen.
Local predictions use the personal head (on the serving path,
:meth:`~edge_client.model.EdgeModel.serving_path`); evaluations report it next to the global
model on the local holdout. A personal head records the version it started from, so it is
rebuilt when a newer global version arrives and never mixed with another version's backbone.

Heads are kept in a :class:`HeadStore`: in memory for simulated clients, or as one
safetensors file in the daemon's state directory (:class:`FileHeadStore`), whose metadata
holds the base version and the fine-tuning figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import numpy as np

from edge_client.model import EdgeModel, accuracy
from fedge.data import Dataset
from fedge.errors import FedgeError
from fedge.fileio import atomic_write_bytes
from fedge.validation import check_int, check_positive
from fedge.weights import Weights, decode_weights, encode_weights

__all__ = [
    "FileHeadStore",
    "HeadStore",
    "MemoryHeadStore",
    "PersonalHead",
    "PersonalizationConfig",
    "ensure_personal_head",
    "fine_tune",
]

logger = logging.getLogger(__name__)

HEAD_FILE = "personal_head.safetensors"


@dataclass(frozen=True)
class PersonalizationConfig:
    """Local fine-tuning of the personal head: ``epochs`` of SGD at ``learning_rate``, rows
    reshuffled every epoch; skipped (no personal head) below ``min_examples`` rows."""

    enabled: bool = True
    epochs: int = 5
    learning_rate: float = 0.05
    min_examples: int = 1

    def __post_init__(self) -> None:
        check_int(self.epochs, "personalization epochs", low=1)
        check_positive(self.learning_rate, "personalization learning_rate")
        check_int(self.min_examples, "personalization min_examples", low=1)


@dataclass(frozen=True)
class PersonalHead:
    """A fine-tuned head and the global version it was fine-tuned from."""

    base_version: str
    weights: Weights
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


class HeadStore(Protocol):
    """Keeps a client's current personal head."""

    def get(self) -> PersonalHead | None: ...

    def put(self, head: PersonalHead) -> None: ...


class MemoryHeadStore:
    """A personal head held in memory (simulated clients)."""

    def __init__(self) -> None:
        self._head: PersonalHead | None = None

    def get(self) -> PersonalHead | None:
        return self._head

    def put(self, head: PersonalHead) -> None:
        self._head = head


class FileHeadStore:
    """A personal head in ``directory/personal_head.safetensors``, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / HEAD_FILE
        self._cached: PersonalHead | None = None

    def get(self) -> PersonalHead | None:
        if self._cached is not None:
            return self._cached
        if not self.path.exists():
            return None
        try:
            weights, metadata = decode_weights(self.path.read_bytes())
            head = PersonalHead(
                base_version=metadata["base_version"],
                weights=weights,
                num_examples=int(metadata["num_examples"]),
                metrics=json.loads(metadata.get("metrics", "{}")),
            )
        except (OSError, KeyError, ValueError, FedgeError) as exc:
            logger.warning("ignoring unreadable personal head %s: %s", self.path, exc)
            return None
        self._cached = head
        return head

    def put(self, head: PersonalHead) -> None:
        data = encode_weights(
            head.weights,
            metadata={
                "base_version": head.base_version,
                "num_examples": str(head.num_examples),
                "metrics": json.dumps(dict(head.metrics), sort_keys=True),
            },
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, data)
        self._cached = head


def fine_tune(
    model: EdgeModel,
    train: Dataset,
    *,
    config: PersonalizationConfig,
    rng: np.random.Generator,
) -> PersonalHead | None:
    """A personal head fine-tuned from ``model``'s global head on ``train`` (None when
    personalization is off or there are too few rows)."""
    if not config.enabled or len(train) < config.min_examples:
        return None
    x = model.transform(train.columns)
    if model.has_head_model:
        embeddings = model.cached_embeddings(x)
        weights, result = model.train_head(
            embeddings,
            train.labels,
            start=model.global_weights,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            rng=rng,
        )
        train_accuracy = accuracy(model.head_logits(embeddings, head=weights), train.labels)
    else:
        weights, result = model.train(
            x,
            train.labels,
            start=model.global_weights,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            rng=rng,
        )
        train_accuracy = accuracy(model.logits(x, head=weights), train.labels)
    return PersonalHead(
        base_version=model.version,
        weights=weights,
        num_examples=len(train),
        metrics={"loss": result.epoch_losses[-1], "accuracy": train_accuracy},
    )


def ensure_personal_head(
    model: EdgeModel,
    train: Dataset,
    store: HeadStore,
    *,
    config: PersonalizationConfig,
    rng: np.random.Generator,
) -> PersonalHead | None:
    """The personal head for ``model``'s version, fine-tuned now if the stored one is from
    another version (or missing)."""
    head = store.get()
    if head is not None and head.base_version == model.version:
        return head
    fresh = fine_tune(model, train, config=config, rng=rng)
    if fresh is None:
        return None
    store.put(fresh)
    logger.info(
        "personal head fine-tuned from %s on %d rows (train accuracy %.3f)",
        model.version,
        fresh.num_examples,
        fresh.metrics["accuracy"],
    )
    return fresh
