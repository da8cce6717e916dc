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
- ``evaluate``: global and personalized ``{accuracy, loss}`` on the local holdout, computed
  on the serving path (:meth:`~edge_client.model.EdgeModel.predict_scores`, with
  ``int8_accuracy`` too where that path is int8), per
  region slice where the schema has a region column, and the per-class counts of the
  global model's predictions and of the labels (noised under the policy, see
  :mod:`edge_client.privacy`) -> :class:`~fedge.messages.EvalReport`;
- ``stats``: :func:`~edge_client.privacy.noisy_stats` of every local row (with the policy
  off, the exact :func:`~edge_client.privacy.private_stats`) ->
  :class:`~fedge.messages.StatsReport`;
- ``features``: int8 backbone embeddings (dequantized) of the training rows, sent as
  noised per-class prototypes (:func:`~edge_client.privacy.private_prototypes`), or per
  row under local DP when the task's options say ``row_features: true`` and the policy
  allows it (with the policy off: every row's embedding and true label) ->
  :class:`~fedge.messages.FeatureBatch`.

Before any work the context's :class:`~edge_client.policy.DevicePolicy` admits the task
(task kinds, minimum interval, epsilon budget) and each kind checks the rows behind its
reply (``min_rows``); a refusal raises :class:`~edge_client.errors.PolicyRefusal`. An
answer is charged to the context's ledger (its epsilon, and the time of the last answer of
its kind) before ``handle`` returns it. A context's default policy is the unprotected
``privacy: "off"`` (:data:`~edge_client.policy.UNPROTECTED`), the in-memory simulation's
setting; the device daemon always passes its owner's policy, safe by default.

None of these types has a field for raw rows; :mod:`edge_client.privacy` says what the
replies may reveal.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_client.compress import FeedbackStore, MemoryFeedbackStore, compress_update
from edge_client.errors import PolicyRefusal
from edge_client.local_data import LocalData
from edge_client.model import FLOAT_PATH, EdgeModel, ModelProvider, accuracy, cross_entropy
from edge_client.personalize import (
    HeadStore,
    MemoryHeadStore,
    PersonalHead,
    PersonalizationConfig,
    ensure_personal_head,
)
from edge_client.policy import UNPROTECTED, DevicePolicy, LedgerStore, MemoryLedgerStore
from edge_client.privacy import (
    DEFAULT_MIN_COUNT,
    class_counts,
    noisy_stats,
    private_class_counts,
    private_prototypes,
    private_rows,
    private_stats,
    slice_groups,
)
from fedge.data import Dataset
from fedge.errors import ConfigError, DataError
from fedge.messages import (
    MAX_FEATURE_VALUES,
    EvalReport,
    FeatureBatch,
    ModelUpdate,
    PrivacyNote,
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
ROW_FEATURES = "row_features"


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
    policy: DevicePolicy = UNPROTECTED
    """The owner's privacy policy (the daemon passes the device's; see the module docstring)."""
    ledger: LedgerStore = field(default_factory=MemoryLedgerStore)
    """Epsilon spent and last answers (the daemon's is a file in its state directory)."""
    noise_rng: np.random.Generator = field(default_factory=np.random.default_rng)
    """The generator of privacy noise: fresh OS entropy by default, never ``rng``'s seed,
    which a coordinator may know."""
    clock: Callable[[], float] = time.time


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
    """Do ``task`` on ``context``'s local data with the model version the task names, if
    the context's policy allows it (:class:`PolicyRefusal` otherwise)."""
    policy = context.policy
    ledger = context.ledger.load()
    now = context.clock()
    policy.admit(task.kind, ledger, now=now)
    model = context.models.model(task.model_version)
    context.data.refresh()
    if model.schema.to_dict() != context.data.schema.to_dict():
        raise ConfigError(
            f"model {model.version} expects the schema of task {model.manifest.task!r}; "
            "the local data was read with another"
        )
    work = _HANDLERS[task.kind]
    try:
        reply = work(task, model, context)
    except PolicyRefusal as exc:
        if policy.protected and exc.epsilon > 0:  # the noise was drawn: the budget pays
            context.ledger.save(
                ledger.charge(
                    kind=task.kind,
                    task_id=task.task_id,
                    now=now,
                    epsilon=exc.epsilon,
                    delta=exc.delta,
                )
            )
        raise
    if policy.protected:
        note = getattr(reply, "privacy", None)
        epsilon, delta = (0.0, 0.0) if note is None else (note.epsilon, note.delta)
        context.ledger.save(
            ledger.charge(
                kind=task.kind, task_id=task.task_id, now=now, epsilon=epsilon, delta=delta
            )
        )
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
    context.policy.check_rows(len(table), "train")
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
    policy = context.policy
    policy.check_rows(len(holdout), "evaluate")
    if not len(holdout):
        return EvalReport(task.task_id, model.version, 0, {})
    x, y = model.transform(holdout.columns), holdout.labels
    logits = model.predict_scores(x)  # what the device serves: int8 where the bundle allows
    metrics = {"accuracy": accuracy(logits, y), "loss": cross_entropy(logits, y)}
    if model.serving_path() != FLOAT_PATH:
        metrics["int8_accuracy"] = metrics["accuracy"]
    head = personal_head(model, context)
    personal_logits = None if head is None else model.predict_scores(x, head=head.weights)
    personalized = {}
    if personal_logits is not None:
        personalized = {
            "accuracy": accuracy(personal_logits, y),
            "loss": cross_entropy(personal_logits, y),
        }
    slices: dict[str, dict[str, float]] = {}
    region = model.schema.region
    if region is not None and region in holdout.columns:
        k = max(context.config.min_count, policy.min_class_rows if policy.protected else 1)
        for name, rows in slice_groups(holdout.columns[region], k=k).items():
            values = {
                "accuracy": accuracy(logits[rows], y[rows]),
                "loss": cross_entropy(logits[rows], y[rows]),
                "count": float(rows.size),
            }
            if personal_logits is not None:
                values["personalized_accuracy"] = accuracy(personal_logits[rows], y[rows])
            slices[name] = values
    predictions, labels, note = _class_distributions(np.argmax(logits, axis=1), y, model, context)
    return EvalReport(
        task_id=task.task_id,
        model_version=model.version,
        num_examples=len(holdout),
        metrics=metrics,
        personalized_metrics=personalized,
        slice_metrics=slices,
        prediction_counts=predictions,
        label_counts=labels,
        privacy=note,
    )


def _class_distributions(
    predicted: NDArray[np.int64], labels: NDArray[Any], model: EdgeModel, context: ClientContext
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, PrivacyNote | None]:
    """The per-class counts of the global model's predictions and of the labels: exact
    with the policy off, noised under it (:func:`~edge_client.privacy.private_class_counts`)
    while the budget pays, else none."""
    classes = model.schema.num_classes
    policy = context.policy
    if not policy.protected:
        return class_counts(predicted, classes), class_counts(labels, classes), None
    epsilon = policy.evaluation_epsilon
    if not policy.affords(epsilon, context.ledger.load()):
        logger.info(
            "the privacy budget cannot pay for an evaluation's class counts "
            "(epsilon %g): sending the metrics alone",
            epsilon,
        )
        return None, None, None
    predictions, truth = private_class_counts(
        predicted,
        labels,
        num_classes=classes,
        epsilon=epsilon,
        delta=policy.delta,
        k=policy.min_class_rows,
        rng=context.noise_rng,
    )
    return predictions, truth, PrivacyNote("gaussian", epsilon, policy.delta, "statistics")


def _stats(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    table = context.data.everything()
    policy = context.policy
    if not policy.protected:
        return StatsReport(task.task_id, private_stats(table, k=context.config.min_count))
    policy.check_rows(len(table), "stats")
    stats = noisy_stats(
        table,
        spec=model.spec,
        epsilon=policy.stats_epsilon,
        delta=policy.delta,
        k=policy.min_class_rows,
        rng=context.noise_rng,
    )
    note = PrivacyNote("gaussian", policy.stats_epsilon, policy.delta, "statistics")
    return StatsReport(task_id=task.task_id, stats=stats, privacy=note)


def _features(task: Task, model: EdgeModel, context: ClientContext) -> Reply:
    table = context.data.train()
    if not len(table):
        raise DataError("no labelled local training rows: no features to send")
    limit = context.config.max_feature_rows
    if task.config.max_examples is not None:
        limit = min(limit, task.config.max_examples)
    table = _first(table, limit)
    policy = context.policy
    policy.check_rows(len(table), "features")
    embeddings = model.embed(model.transform(table.columns))
    rows = min(len(table), MAX_FEATURE_VALUES // embeddings.shape[1])  # one message's limit
    if not policy.protected:
        return FeatureBatch(
            task_id=task.task_id, embeddings=embeddings[:rows], labels=table.labels[:rows]
        )
    epsilon, delta = policy.features_epsilon, policy.delta
    if task.config.options.get(ROW_FEATURES) is True:
        if policy.allow_row_features:
            noisy, labels = private_rows(
                embeddings[:rows],
                table.labels[:rows],
                num_classes=model.schema.num_classes,
                epsilon=epsilon,
                delta=delta,
                clip=policy.features_clip,
                rng=context.noise_rng,
            )
            note = PrivacyNote("gaussian.randomized_response", epsilon, delta, "rows")
            return FeatureBatch(task.task_id, noisy, labels, privacy=note)
        logger.info(
            "task %s asks for row-level features; the device policy does not allow them: "
            "sending per-class prototypes",
            task.task_id,
        )
    release = private_prototypes(
        embeddings,
        table.labels,
        num_classes=model.schema.num_classes,
        epsilon=epsilon,
        delta=delta,
        clip=policy.features_clip,
        min_class_rows=policy.min_class_rows,
        rng=context.noise_rng,
    )
    return FeatureBatch(
        task.task_id,
        release.embeddings,
        release.labels,
        privacy=PrivacyNote("gaussian", epsilon, delta, "prototypes"),
        counts=release.counts,
    )


_HANDLERS: dict[str, Callable[[Task, EdgeModel, ClientContext], Reply]] = {
    "train": _train,
    "evaluate": _evaluate,
    "stats": _stats,
    "features": _features,
}
