"""A continuous simulation: the coordinator runs round after round on its own while part of
the fleet's data goes bad, with the real service and the real edge client in memory.

The service runs in continuous mode on a simulated clock (:class:`~simulations.
native_engine.SimulatedClock`) over a :class:`~coordinator.MemoryStore`, with the
quarantine on and ``stats_every_round`` (every selected client sends fresh statistics
with its update), and, with ``gate``, the cloud holdout gate (:mod:`coordinator.gate`) on
the task's test split. The bundle is the pretrained one with the statistics of the
cloud's training share in its manifest (``metadata["training_stats"]``, the reference the
quarantine validates against: :func:`bundle_with_training_stats`).

Every client registers with a region and polls :meth:`~coordinator.CoordinatorService.
next_task` until it has nothing to do, answering whatever it gets (train, stats,
evaluate) with :func:`edge_client.handle` under a device policy that noises its statistics
(:class:`~edge_client.DevicePolicy`, ``stats_epsilon`` and ``min_class_rows`` from the
config). When nobody has work the clock jumps past the round's deadline.

Two schedules change the clients' data (digits; a client's rows never change otherwise):

- **corruption**: from round ``corrupt_from_round`` a ``corrupt_fraction`` of the clients
  read their pixels through a sensor whose gain went up 16-fold (values 0..256 instead of
  0..16). Their statistics show it, so their updates are quarantined.
- **region shift**: from round ``shift_from_round`` the clients of ``shift_region`` see
  their digits mirrored left to right: every pixel value is as before, so the statistics
  cannot see it, but what the model learns there is wrong; the gate is what stops it.

:func:`run_continuous` returns every round's outcome, the quarantined updates, the
registry's versions (rejected candidates with their reasons) and each version's accuracy
on the holdout through the device's serving path (:meth:`edge_client.EdgeModel.
predict_scores`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.data import split_task
from coordinator import ArtifactStore, CoordinatorService, MemoryStore, RoundConfig, ServiceConfig
from coordinator.intake import UpdateSubmission
from coordinator.records import ClientRecord, ModelEvent, ModelRecord, UpdateRecord
from edge_client import ClientContext, MemoryData, ModelCache, handle
from edge_client.errors import PolicyRefusal
from edge_client.policy import DevicePolicy
from fedge.bundle import REQUIRED_FILES, verify_bundle, write_manifest
from fedge.data import Dataset, load_task
from fedge.data.partition import dirichlet
from fedge.errors import ConfigError, FedgeError
from fedge.messages import EvalReport, ModelUpdate, StatsReport, Task, encode_message
from fedge.stats import compute_stats
from fedge.validation import check_fraction, check_int, check_number
from simulations.native_engine import BundleMirror, SimulatedClock
from simulations.pretrain import Pretrained

__all__ = [
    "CORRUPTIONS",
    "SHIFTS",
    "ContinuousConfig",
    "ContinuousResult",
    "RoundOutcome",
    "bundle_with_training_stats",
    "run_continuous",
]

logger = logging.getLogger(__name__)

Transform = Callable[[NDArray[Any]], NDArray[Any]]
CORRUPTIONS: Mapping[str, Transform] = {"gain": lambda pixels: pixels * 16.0}
"""Corruptions of a client's pixels (``gain``: a sensor whose gain went up 16-fold)."""
SHIFTS: Mapping[str, Transform] = {"mirror": lambda pixels: pixels[:, :, ::-1]}
"""Shifts of a region's pixels that keep every value (``mirror``: left to right)."""
_DEADLINE = 3600.0


@dataclass(frozen=True)
class ContinuousConfig:
    """The fleet, the rounds and the schedules of a continuous simulation (digits)."""

    rounds: int = 20
    num_clients: int = 20
    clients_per_round: int = 10
    min_clients: int = 2
    regions: tuple[str, ...] = ("north", "south")
    """Clients take these regions in turn."""
    alpha: float = 0.5
    """Dirichlet concentration of the clients' label mix (small: few classes each)."""
    min_rows: int = 30
    epochs: int = 1
    learning_rate: float = 0.02
    corrupt_fraction: float = 0.2
    corrupt_from_round: int = 10
    corruption: str = "gain"
    shift_region: str | None = None
    shift_from_round: int = 1
    shift: str = "mirror"
    gate: bool = False
    """Gate the candidates on the cloud holdout (the test split)."""
    gate_margin: float = 0.0
    stats_epsilon: float = 8.0
    min_class_rows: int = 100
    """The devices' policy: the epsilon and the k of their statistics reports."""
    seed: int = 0
    round_options: Mapping[str, Any] = field(default_factory=dict)
    """Further :class:`~coordinator.RoundConfig` fields (e.g. quarantine thresholds)."""

    def __post_init__(self) -> None:
        check_int(self.rounds, "rounds", low=1)
        check_int(self.num_clients, "num_clients", low=2)
        check_int(self.clients_per_round, "clients_per_round", low=1, high=self.num_clients)
        check_int(self.min_rows, "min_rows", low=1)
        check_fraction(self.corrupt_fraction, "corrupt_fraction", zero_ok=True, one_ok=True)
        check_int(self.corrupt_from_round, "corrupt_from_round", low=1)
        check_int(self.shift_from_round, "shift_from_round", low=1)
        check_number(self.stats_epsilon, "stats_epsilon", low=0.0, low_inclusive=False)
        if not self.regions:
            raise ConfigError("regions must name at least one region")
        if self.corruption not in CORRUPTIONS:
            raise ConfigError(f"corruption must be one of {sorted(CORRUPTIONS)}")
        if self.shift not in SHIFTS:
            raise ConfigError(f"shift must be one of {sorted(SHIFTS)}")
        if self.shift_region is not None and self.shift_region not in self.regions:
            raise ConfigError(f"shift_region {self.shift_region!r} is not one of {self.regions}")

    def round_config(self) -> RoundConfig:
        return RoundConfig.from_dict(
            {
                "clients_per_round": self.clients_per_round,
                "min_clients": self.min_clients,
                "deadline_seconds": _DEADLINE,
                "epochs": self.epochs,
                "learning_rate": self.learning_rate,
                "continuous": True,
                "stats_every_round": True,
                "quarantine": True,
                **({"gate": True, "gate_margin": self.gate_margin} if self.gate else {}),
                **self.round_options,
            }
        )


@dataclass(frozen=True)
class RoundOutcome:
    """One closed round: its state, its version (promoted, or a rejected candidate), why it
    failed, the clients whose updates it quarantined and production after it."""

    round_id: int
    state: str
    version: str | None
    failure_reason: str | None
    quarantined: tuple[str, ...]
    corrupted: tuple[str, ...]
    """Its selected clients whose data was corrupted."""
    production: str
    production_accuracy: float
    """Production's accuracy on the holdout after the round (the device's serving path)."""


@dataclass(frozen=True)
class ContinuousResult:
    rounds: tuple[RoundOutcome, ...]
    corrupted: tuple[str, ...]
    """Coordinator ids of the clients whose data is corrupted from ``corrupt_from_round``."""
    shifted: tuple[str, ...]
    quarantined: tuple[UpdateRecord, ...]
    """Every quarantined update (released ones included), oldest first."""
    models: tuple[ModelRecord, ...]
    events: tuple[ModelEvent, ...]
    holdout_accuracy: Mapping[str, float]
    """Each version's accuracy on the holdout through the device's serving path."""
    seconds: float

    def rejected(self) -> tuple[ModelRecord, ...]:
        return tuple(m for m in self.models if m.stage == "rejected")

    def promoted(self) -> tuple[ModelRecord, ...]:
        """The versions rounds promoted (the imported one, without a parent, left out)."""
        return tuple(m for m in self.models if m.promoted_at is not None and m.parent is not None)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON: every round, every version with its holdout accuracy, the
        quarantined updates with their reasons and the counts."""
        return {
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "corrupted": list(self.corrupted),
            "shifted": list(self.shifted),
            "quarantined": [
                {"round": u.round_id, "client": u.client_id, "reason": u.quarantine}
                for u in self.quarantined
            ],
            "models": [
                {
                    "version": m.version,
                    "parent": m.parent,
                    "stage": m.stage,
                    "holdout_accuracy": self.holdout_accuracy.get(m.version),
                }
                for m in self.models
            ],
            "summary": {
                "promoted": len(self.promoted()),
                "rejected": len(self.rejected()),
                "quarantined": len(self.quarantined),
                "seconds": round(self.seconds, 3),
            },
        }


def bundle_with_training_stats(pretrained: Pretrained, out: Path) -> Path:
    """A copy of the pretrained bundle whose manifest carries the statistics of the cloud's
    training share (``metadata["training_stats"]``): the quarantine's reference."""
    config = pretrained.config
    dataset = load_task(config.task)
    train, _ = split_task(
        dataset,
        test_fraction=config.test_fraction,
        seed=config.seed,
        data_fraction=config.proxy_fraction,
    )
    stats = compute_stats(train.columns, schema=train.schema, labels=train.labels)
    manifest = pretrained.manifest
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pretrained.bundle_dir, out)
    write_manifest(
        out,
        model_version=manifest.model_version,
        task=manifest.task,
        schema=manifest.schema,
        feature_spec=manifest.feature_spec,
        train_batch_size=manifest.train_batch_size,
        created_at=manifest.created_at,
        head=manifest.head,
        metadata={**manifest.metadata, "training_stats": stats.to_dict()},
        extra_files=[name for name in manifest.files if name not in REQUIRED_FILES],
    )
    verify_bundle(out)
    return out


@dataclass
class _Client:
    record: ClientRecord
    region: str
    train: Dataset
    holdout: Dataset
    context: ClientContext
    corrupted: bool = False
    shifted: bool = False


def _with_pixels(data: Dataset, transform: Transform) -> Dataset:
    return dataclasses.replace(
        data, columns={**data.columns, "pixels": transform(np.asarray(data.columns["pixels"]))}
    )


class _Run:
    def __init__(self, config: ContinuousConfig, pretrained: Pretrained, workdir: Path) -> None:
        if pretrained.config.task != "digits":
            raise ConfigError("the continuous simulation runs the digits task")
        self.config = config
        self.clock = SimulatedClock()
        bundle = bundle_with_training_stats(pretrained, workdir / "bundle")
        dataset = load_task("digits")
        train, self.test = split_task(
            dataset, test_fraction=pretrained.config.test_fraction, seed=pretrained.config.seed
        )
        extra: dict[str, Any] = {}
        if config.gate:
            from coordinator.gate import HoldoutSet

            extra["holdout"] = HoldoutSet(columns=self.test.columns, labels=self.test.labels)
        self.service = CoordinatorService(
            store=MemoryStore(),
            artifacts=ArtifactStore(workdir / "artifacts"),
            config=ServiceConfig(
                task="digits", rounds=config.round_config(), seed=config.seed, min_cohort=1
            ),
            now=self.clock,
            **extra,
        )
        self.service.import_bundle(bundle)
        self.mirror = BundleMirror(self.service, workdir / "bundles")
        self.models = ModelCache(self.mirror.ensure, max_versions=3)
        self.clients = self._clients(train)
        self._accuracy: dict[str, float] = {}

    def _clients(self, train: Dataset) -> list[_Client]:
        config = self.config
        partition = dirichlet(
            np.arange(len(train)),
            train.labels,
            num_clients=config.num_clients,
            alpha=config.alpha,
            seed=config.seed,
            min_size=config.min_rows,
        )
        policy = DevicePolicy(
            stats_epsilon=config.stats_epsilon,
            min_class_rows=config.min_class_rows,
            epsilon_budget=1e9,
            min_interval_seconds={"stats": 0.0, "evaluate": 0.0},
        )
        rng = np.random.default_rng(config.seed)
        bad = set(
            rng.choice(
                config.num_clients,
                size=round(config.corrupt_fraction * config.num_clients),
                replace=False,
            ).tolist()
        )
        clients = []
        for i, split in enumerate(partition.values()):
            region = config.regions[i % len(config.regions)]
            record = self.service.authenticate(self.service.register_client(region=region).token)
            context = ClientContext(
                data=MemoryData(train.take(split.train), train.take(split.holdout)),
                models=self.models,
                rng=np.random.default_rng(config.seed + i),
                client_id=record.client_id,
                policy=policy,
                noise_rng=np.random.default_rng(config.seed + 10_000 + i),
                clock=self.clock,
            )
            clients.append(
                _Client(
                    record,
                    region,
                    train.take(split.train),
                    train.take(split.holdout),
                    context,
                    corrupted=i in bad,
                    shifted=region == config.shift_region,
                )
            )
        return clients

    # The loop -----------------------------------------------------------------------------

    def run(self, on_round: Callable[[RoundOutcome], None] | None = None) -> None:
        config = self.config
        reported = 0
        for _ in range(config.rounds * 20):  # each pass answers tasks or lets a deadline pass
            self.service.tick()
            closed = self._closed()
            if on_round is not None and closed > reported:
                for outcome in self._outcomes()[reported:closed]:
                    on_round(outcome)
                reported = closed
            if closed >= config.rounds:
                return
            if not self._poll():
                self.clock.advance(_DEADLINE)
        raise FedgeError(f"the simulation did not close {config.rounds} rounds")

    def _closed(self) -> int:
        return sum(
            1
            for r in self.service.store.list_rounds(("committed", "failed"))
            if r.round_id <= self.config.rounds
        )

    def _current_round(self) -> int:
        rounds = self.service.store.list_rounds()
        return rounds[-1].round_id if rounds else 0

    def _poll(self) -> int:
        answered = 0
        for client in self.clients:
            while (task := self.service.next_task(client.record)) is not None:
                if (task.round_id or self._current_round()) > self.config.rounds:
                    break
                self._answer(client, task)
                answered += 1
        return answered

    def _data(self, client: _Client, round_id: int) -> MemoryData:
        train, holdout = client.train, client.holdout
        config = self.config
        if client.corrupted and round_id >= config.corrupt_from_round:
            corrupt = CORRUPTIONS[config.corruption]
            train, holdout = _with_pixels(train, corrupt), _with_pixels(holdout, corrupt)
        if client.shifted and round_id >= config.shift_from_round:
            shift = SHIFTS[config.shift]
            train, holdout = _with_pixels(train, shift), _with_pixels(holdout, shift)
        return MemoryData(train, holdout)

    def _answer(self, client: _Client, task: Task) -> None:
        round_id = task.round_id or self._current_round()
        context = dataclasses.replace(client.context, data=self._data(client, round_id))
        try:
            reply = handle(task, context)
            if isinstance(reply, ModelUpdate):
                _, body = encode_message(reply)
                self.service.submit_update(
                    client.record,
                    UpdateSubmission(
                        round_id=round_id,
                        task_id=reply.task_id,
                        num_examples=reply.num_examples,
                        idempotency_key=f"sim-{reply.task_id}",
                        body=body or b"",
                        metrics=dict(reply.metrics),
                    ),
                )
            elif isinstance(reply, StatsReport):
                self.service.submit_stats(client.record, reply)
            elif isinstance(reply, EvalReport):
                self.service.submit_evaluation(client.record, reply)
            else:
                self.service.decline_task(client.record, task.task_id, "not simulated")
        except (PolicyRefusal, FedgeError) as exc:  # declined, so the client moves on
            logger.warning("client %s: %s task %s: %s", client.record.client_id, task.kind,
                           task.task_id, exc)  # fmt: skip
            record = self.service.store.get_task(task.task_id)
            if record is not None and record.status == "pending":
                self.service.decline_task(client.record, task.task_id, str(exc)[:200] or "failed")

    # The result ---------------------------------------------------------------------------

    def accuracy(self, version: str) -> float:
        """``version``'s accuracy on the holdout through the device's serving path."""
        if version not in self._accuracy:
            edge = self.models.model(version)
            scores = edge.predict_scores(edge.transform(self.test.columns))
            self._accuracy[version] = float(np.mean(np.argmax(scores, axis=1) == self.test.labels))
        return self._accuracy[version]

    def _outcomes(self) -> list[RoundOutcome]:
        service = self.service
        outcomes = []
        production = "v1"  # only rounds promote here: production is the last committed
        by_client = {c.record.client_id: c for c in self.clients}
        for round_ in service.store.list_rounds():
            if round_.round_id > self.config.rounds or round_.active:
                continue
            if round_.state == "committed" and round_.result_version is not None:
                production = round_.result_version
            updates = service.round_updates(round_.round_id)
            outcomes.append(
                RoundOutcome(
                    round_id=round_.round_id,
                    state=round_.state,
                    version=round_.result_version,
                    failure_reason=round_.failure_reason,
                    quarantined=tuple(u.client_id for u in updates if u.quarantine is not None),
                    corrupted=tuple(
                        c
                        for c in round_.selected
                        if by_client[c].corrupted
                        and round_.round_id >= self.config.corrupt_from_round
                    ),
                    production=production,
                    production_accuracy=self.accuracy(production),
                )
            )
        return outcomes

    def result(self, seconds: float) -> ContinuousResult:
        service = self.service
        events = service.model_events()
        models = service.list_models()
        accuracy = {model.version: self.accuracy(model.version) for model in models}
        return ContinuousResult(
            rounds=tuple(self._outcomes()),
            corrupted=tuple(c.record.client_id for c in self.clients if c.corrupted),
            shifted=tuple(c.record.client_id for c in self.clients if c.shifted),
            quarantined=tuple(service.store.list_quarantined_updates(released=True)),
            models=tuple(models),
            events=tuple(events),
            holdout_accuracy=accuracy,
            seconds=seconds,
        )


def run_continuous(
    config: ContinuousConfig,
    pretrained: Pretrained,
    workdir: str | Path,
    *,
    on_round: Callable[[RoundOutcome], None] | None = None,
) -> ContinuousResult:
    """Run ``config`` on the pretrained digits bundle in ``workdir`` (module docstring);
    ``on_round`` is called with each round's outcome as the round closes."""
    started = time.perf_counter()
    run = _Run(config, pretrained, Path(workdir))
    run.run(on_round)
    return run.result(time.perf_counter() - started)
