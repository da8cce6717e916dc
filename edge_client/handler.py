"""Client work: ``handle(task, context) -> reply``, used unchanged by the daemon and the
simulation.

A :class:`ClientContext` holds only what belongs to one client: its local data, its
personal head, its random generator and settings, and a :class:`~edge_client.model.
ModelProvider` that hands out model versions. Share one provider (a
:class:`~edge_client.model.ModelCache`) between many contexts and the interpreters are
loaded once for the whole fleet::

    models = ModelCache({"v1": bundle_dir})
    contexts = [ClientContext(data=MemoryData(train, holdout), models=models) for ...]
    replies = [handle(task, ctx) for ctx in contexts]

The task kinds and their replies:

- ``train``: the task version's global head (``set_weights``), ``epochs`` of plain SGD on
  the local training rows in static batches (the last one padded with weight-0 rows), in
  file order unless ``config.options["shuffle_seed"]`` asks for a reshuffle every epoch
  (:func:`batch_rng`) ->
  :class:`~fedge.messages.ModelUpdate` with ``delta = trained - global``, the number of
  local training rows and ``{loss, accuracy}`` (the last epoch's mean loss, the trained
  head's accuracy on those rows); when ``config.options["compression"]`` asks for a codec,
  a :class:`~edge_client.compress.CompressedUpdate` (top-k's residual in the context's
  ``feedback`` store);
- ``evaluate``: global and personalized ``{accuracy, loss}`` on the local holdout, per
  region slice where the schema has a region column -> :class:`~fedge.messages.EvalReport`;
- ``stats``: :func:`~edge_client.privacy.private_stats` of every local row ->
  :class:`~fedge.messages.StatsReport`;
- ``features``: int8 backbone embeddings (dequantized) and labels of the training rows ->
  :class:`~fedge.messages.FeatureBatch`.

None of these types has a field for raw rows; :mod:`edge_client.privacy` says what the
aggregates may reveal.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_client.compress import FeedbackStore, MemoryFeedbackStore, compress_update
from edge_client.local_data import LocalData
from edge_client.model import EdgeModel, ModelProvider, accuracy, cross_entropy
from edge_client.personalize import (
    HeadStore,
    MemoryHeadStore,
    PersonalHead,
    PersonalizationConfig,
    ensure_personal_head,
)
from edge_client.privacy import DEFAULT_MIN_COUNT, private_stats, slice_groups
from fedge.data import Dataset
from fedge.errors import ConfigError, DataError
from fedge.messages import (
    MAX_FEATURE_VALUES,
    EvalReport,
    FeatureBatch,
    ModelUpdate,
    Reply,
    StatsReport,
    Task,
)
from fedge.validation import check_int

__all__ = [
    "ClientConfig",
    "ClientContext",
    "batch_rng",
    "client_key",
    "handle",
    "personal_head",
]

logger = logging.getLogger(__name__)

SHUFFLE_SEED = "shuffle_seed"
SHUFFLE_ROUND = "shuffle_round"


@dataclass(frozen=True)
class ClientConfig:
    """Per-client settings: ``min_count`` is the k of :mod:`edge_client.privacy`;
    ``max_feature_rows`` caps one FeatureBatch."""

    min_count: int = DEFAULT_MIN_COUNT
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    max_feature_rows: int = 50_000

    def __post_init__(self) -> None:
        check_int(self.min_count, "min_count", low=1)
        check_int(self.max_feature_rows, "max_feature_rows", low=1)


@dataclass
class ClientContext:
    """The per-client state ``handle`` works with; ``models`` may be shared by many."""

    data: LocalData
    models: ModelProvider
    heads: HeadStore = field(default_factory=MemoryHeadStore)
    config: ClientConfig = field(default_factory=ClientConfig)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    client_id: str = "local"
    feedback: FeedbackStore = field(default_factory=MemoryFeedbackStore)
    """The top-k error-feedback residual kept between rounds (:mod:`edge_client.compress`)."""


def client_key(client_id: str) -> int:
    """A stable 64-bit number for a client id (a digest: ``hash()`` changes per process)."""
    return int.from_bytes(hashlib.sha256(client_id.encode("utf-8")).digest()[:8], "little")


def batch_rng(task: Task, client_id: str) -> np.random.Generator | None:
    """The generator that reshuffles training rows each epoch, or None for file order.

    Only ``config.options["shuffle_seed"]`` turns shuffling on, so a task's batches are
    reproducible. Each epoch's order is then ``rng.permutation(n)`` of a generator seeded
    by ``(shuffle_seed, round, client_key(client_id))`` where ``round`` is
    ``options["shuffle_round"]`` (default: the task's round id): the rule of
    ``simulations.workload.batch_order``, so an engine replaying a workload gets the same
    batches as the device.
    """
    options = task.config.options
    seed = options.get(SHUFFLE_SEED)
    if seed is None:
        return None
    round_index = options.get(SHUFFLE_ROUND, task.round_id or 0)
    for name, value in ((SHUFFLE_SEED, seed), (SHUFFLE_ROUND, round_index)):
        check_int(value, f"option {name}", low=0)
    return np.random.default_rng([int(seed), int(round_index), client_key(client_id)])


def handle(task: Task, context: ClientContext) -> Reply:
    """Do ``task`` on ``context``'s local data with the model version the task names."""
    model = context.models.model(task.model_version)
    context.data.refresh()
    if model.schema.to_dict() != context.data.schema.to_dict():
        raise ConfigError(
            f"model {model.version} expects the schema of task {model.manifest.task!r}; "
            "the local data was read with another"
        )
    work = _HANDLERS[task.kind]
    reply = work(task, model, context)
    logger.debug("client %s answered %s task %s", context.client_id, task.kind, task.task_id)
    return reply


def personal_head(model: EdgeModel, context: ClientContext) -> PersonalHead | None:
    """The client's personal head for ``model`` (fine-tuned now when stale)."""
    return ensure_personal_head(
        model,
        context.data.train(),
        context.heads,
        config=context.config.personalization,
        rng=context.rng,
    )


def _first(table: Dataset, limit: int | None) -> Dataset:
    if limit is None or len(table) <= limit:
        return table
    return table.take(np.arange(limit))


def _train(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    assert task.round_id is not None  # Task guarantees it for train tasks
    table = _first(context.data.train(), task.config.max_examples)
    if not len(table):
        raise DataError("no labelled local training rows: nothing to train on")
    if task.config.batch_size != model.batch_size:
        logger.warning(
            "task %s asks for batch size %d; the on-device model's static batch is %d",
            task.task_id,
            task.config.batch_size,
            model.batch_size,
        )
    x = model.transform(table.columns)
    base = model.global_weights
    trained, result = model.train(
        x,
        table.labels,
        start=base,
        epochs=task.config.epochs,
        learning_rate=task.config.learning_rate,
        rng=batch_rng(task, context.client_id),
    )
    train_accuracy = accuracy(model.logits(x, head=trained), table.labels)
    update = ModelUpdate(
        task_id=task.task_id,
        round_id=task.round_id,
        num_examples=len(table),
        metrics={"loss": result.epoch_losses[-1], "accuracy": train_accuracy},
        delta=trained.delta(base),
    )
    return compress_update(task, update, context.feedback, context.rng)


def _evaluate(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    holdout = context.data.holdout()
    if not len(holdout):
        return EvalReport(task.task_id, model.version, 0, {})
    x, y = model.transform(holdout.columns), holdout.labels
    logits = model.logits(x)
    metrics = {"accuracy": accuracy(logits, y), "loss": cross_entropy(logits, y)}
    if model.int8_current:
        metrics["int8_accuracy"] = accuracy(model.int8_logits(x), y)
    head = personal_head(model, context)
    personal_logits = None if head is None else model.logits(x, head=head.weights)
    personalized = {}
    if personal_logits is not None:
        personalized = {
            "accuracy": accuracy(personal_logits, y),
            "loss": cross_entropy(personal_logits, y),
        }
    slices: dict[str, dict[str, float]] = {}
    region = model.schema.region
    if region is not None and region in holdout.columns:
        for name, rows in slice_groups(holdout.columns[region], k=context.config.min_count).items():
            values = {
                "accuracy": accuracy(logits[rows], y[rows]),
                "loss": cross_entropy(logits[rows], y[rows]),
                "count": float(rows.size),
            }
            if personal_logits is not None:
                values["personalized_accuracy"] = accuracy(personal_logits[rows], y[rows])
            slices[name] = values
    return EvalReport(
        task_id=task.task_id,
        model_version=model.version,
        num_examples=len(holdout),
        metrics=metrics,
        personalized_metrics=personalized,
        slice_metrics=slices,
    )


def _stats(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    stats = private_stats(context.data.everything(), k=context.config.min_count)
    return StatsReport(task_id=task.task_id, stats=stats)


def _features(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    table = context.data.train()
    if not len(table):
        raise DataError("no labelled local training rows: no features to send")
    limit = context.config.max_feature_rows
    if task.config.max_examples is not None:
        limit = min(limit, task.config.max_examples)
    table = _first(table, limit)
    embeddings = model.embed(model.transform(table.columns))
    rows = min(len(table), MAX_FEATURE_VALUES // embeddings.shape[1])  # one message's limit
    return FeatureBatch(
        task_id=task.task_id, embeddings=embeddings[:rows], labels=table.labels[:rows]
    )


_HANDLERS: dict[str, Callable[[Task, EdgeModel, ClientContext], Reply]] = {
    "train": _train,
    "evaluate": _evaluate,
    "stats": _stats,
    "features": _features,
}
