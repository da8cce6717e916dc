"""One simulation run as a plain function: settings -> scenario -> engine -> report.

:func:`check_settings` validates everything a run reads (the built-in task or the user's
files: model, initial weights, data, partition, schedule) before any training, so a bad
input fails in seconds with one message. :func:`prepare_scenario` builds the
:class:`~simulations.scenario.Scenario` (pretraining on the proxy share for the built-in
models, cached; bundling the user's model otherwise); :func:`simulate` runs the chosen
engine and adds the baselines. The CLI (:mod:`simulations.cli`) only parses and prints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_client import EdgeModel, PersonalizationConfig
from fedge.aggregation import STRATEGY_NAMES, build_strategy
from fedge.data import TASK_NAMES, Partition, parse_partition
from fedge.errors import ConfigError
from fedge.weights import Weights
from simulations import byo
from simulations.baseline import evaluate_head, matching_epochs, train_centrally
from simulations.native_engine import STORES, NativeOptions, run_native
from simulations.pretrain import DEFAULT_PROXY_FRACTION, PretrainConfig, find_pretrained, pretrain
from simulations.report import EngineResult, ProgressSink, RoundStats, RunReport
from simulations.scenario import (
    DEFAULT_HOLDOUT_FRACTION,
    Scenario,
    TaskRows,
    build_task_partition,
    build_workload,
    initial_head,
    plan_schedule,
    split_task_rows,
)
from simulations.workload import Hyperparams, Schedule

__all__ = [
    "ENGINES",
    "CheckedInputs",
    "Settings",
    "check_settings",
    "prepare_scenario",
    "run_engine",
    "simulate",
]

logger = logging.getLogger(__name__)

ENGINES = ("native", "tff")
DEFAULT_LEARNING_RATE = 0.02
DEFAULT_EPOCHS = 2
DEFAULT_DEVICE_BATCH = 32

Step = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Everything ``fedge-simulate`` takes (see its ``--help``)."""

    task: str | None = "digits"
    clients: int = 10
    per_round: int | None = None
    """Participants per round; None: every client."""
    rounds: int | None = 10
    """None: as many as the schedule file has."""
    partition: str = "iid"
    aggregator: str = "fedavg"
    aggregator_options: Mapping[str, float] = field(default_factory=dict)
    engine: str = "native"
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_DEVICE_BATCH
    workers: int = 2
    proxy_fraction: float = DEFAULT_PROXY_FRACTION
    test_fraction: float = 0.2
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    pretrain_epochs: int | None = None
    cache_dir: Path = Path(".fedge-cache")
    model_file: Path | None = None
    init_file: Path | None = None
    data_file: Path | None = None
    label_column: str = "label"
    partition_file: Path | None = None
    schedule_file: Path | None = None
    store: str = "memory"
    state_dir: Path | None = None
    baseline: bool = True
    personalization: bool = True
    personalize_epochs: int = 5
    personalize_lr: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aggregator_options"] = dict(self.aggregator_options)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


def _fraction(name: str, value: float, *, zero_ok: bool = False) -> None:
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0) and value < 1):
        interval = "[0, 1)" if zero_ok else "(0, 1)"
        raise ConfigError(f"--{name.replace('_', '-')} must lie in {interval}, got {value!r}")


@dataclass(frozen=True, eq=False)
class CheckedInputs:
    """The settings' files, read and checked (no TensorFlow): what :func:`prepare_scenario`
    builds the scenario from."""

    data: byo.UserData | None
    partition: Partition | None
    schedule: Schedule | None
    init: Weights | None


def check_settings(settings: Settings) -> CheckedInputs:
    """Every check that needs no model: options, then each file, in the order they are used.

    ConfigError (or DataError) with a one-line message for the first problem found.
    """
    s = settings
    for name in ("clients", "epochs", "batch_size", "workers", "personalize_epochs"):
        _positive(name, getattr(s, name))
    if s.rounds is not None:
        _positive("rounds", s.rounds)
    if s.per_round is not None:
        _positive("per_round", s.per_round)
    if s.pretrain_epochs is not None:
        _positive("pretrain_epochs", s.pretrain_epochs)
    for flag, rate in (("--lr", s.learning_rate), ("--personalize-lr", s.personalize_lr)):
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"{flag} must be a number > 0, got {rate!r}")
    _fraction("proxy_fraction", s.proxy_fraction)
    _fraction("test_fraction", s.test_fraction)
    _fraction("holdout_fraction", s.holdout_fraction, zero_ok=True)
    if s.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {list(ENGINES)}, got {s.engine!r}")
    if s.aggregator not in STRATEGY_NAMES:
        raise ConfigError(f"unknown --aggregator {s.aggregator!r}; valid: {list(STRATEGY_NAMES)}")
    try:  # the options' names and values, on a stand-in model
        build_strategy(
            s.aggregator, Weights({"w": np.zeros(1, np.float32)}), **s.aggregator_options
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--aggregator-options for {s.aggregator}: {exc}") from exc
    if s.engine == "tff" and (s.aggregator != "fedavg" or s.aggregator_options):
        raise ConfigError(
            "the tff reference engine runs plain FedAvg: use --aggregator fedavg without options"
        )
    if s.store not in STORES:
        raise ConfigError(f"--store must be one of {list(STORES)}, got {s.store!r}")
    if s.data_file is None and s.task not in TASK_NAMES:
        raise ConfigError(
            f"--task must be one of {list(TASK_NAMES)} (or give --data), got {s.task!r}"
        )
    if s.data_file is not None and s.model_file is None:
        raise ConfigError("--data needs --model: there is no built-in model for your data")
    if s.partition_file is None:
        parse_partition(s.partition)
    data = None
    if s.data_file is not None:
        data = byo.load_data(s.data_file, label_column=s.label_column)
    init = byo.load_init(s.init_file) if s.init_file is not None else None
    partition = None
    if s.partition_file is not None:
        rows = len(data) if data is not None else _pool_size(s)
        partition = byo.load_partition(
            s.partition_file, rows=rows, holdout_fraction=s.holdout_fraction, seed=s.seed
        )
    schedule = None
    if s.schedule_file is not None:
        schedule = byo.load_schedule_file(s.schedule_file)
        if s.rounds is not None and s.rounds != len(schedule):
            raise ConfigError(
                f"--rounds {s.rounds} but the schedule file {s.schedule_file} has "
                f"{len(schedule)} rounds; leave --rounds out to run them all"
            )
    elif s.rounds is None:
        raise ConfigError("give --rounds (or a --schedule-file)")
    return CheckedInputs(data=data, partition=partition, schedule=schedule, init=init)


def _pool_size(settings: Settings) -> int:
    assert settings.task is not None
    rows = split_task_rows(
        settings.task,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        proxy_fraction=settings.proxy_fraction,
    )
    return len(rows.pool)


def prepare_scenario(
    settings: Settings, inputs: CheckedInputs, *, step: Step | None = None
) -> Scenario:
    """The scenario of ``settings``: pretrained (cached) or user-supplied model, bundled;
    the clients' rows; the schedule."""
    say = step or (lambda _: None)
    if inputs.data is not None or settings.model_file is not None:
        return byo.build_scenario(settings, inputs, step=say)
    return _task_scenario(settings, inputs, say)


def _task_scenario(settings: Settings, inputs: CheckedInputs, say: Step) -> Scenario:
    assert settings.task is not None
    rows = split_task_rows(
        settings.task,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        proxy_fraction=settings.proxy_fraction,
    )
    partition = inputs.partition or build_task_partition(
        rows.pool,
        settings.partition,
        clients=settings.clients,
        seed=settings.seed,
        holdout_fraction=settings.holdout_fraction,
    )
    ids = list(partition)
    schedule = plan_schedule(
        ids,
        rounds=settings.rounds or 1,
        per_round=settings.per_round or len(ids),
        seed=settings.seed,
        fixed=inputs.schedule,
    )
    config = PretrainConfig(
        task=settings.task,
        seed=settings.seed,
        proxy_fraction=settings.proxy_fraction,
        test_fraction=settings.test_fraction,
        epochs=settings.pretrain_epochs,
        device_batch_size=settings.batch_size,
    )
    if inputs.init is not None:  # checked against the model's head before any training
        found = find_pretrained(config, settings.cache_dir)
        reference = initial_head(found.bundle_dir) if found else _zoo_head(settings.task, rows)
        byo.check_init(inputs.init, reference)
    pretrained = pretrain(config, settings.cache_dir, progress=say)
    record_fingerprint = _record_fingerprint(pretrained.export_dir)
    if record_fingerprint is not None and record_fingerprint != rows.proxy.fingerprint():
        raise ConfigError(
            f"the cached model in {pretrained.export_dir} was trained on other rows than this "
            "run's proxy share; remove the cache entry"
        )
    bundle = pretrained.bundle_dir
    if inputs.init is not None:
        bundle = byo.bundle_with_head(bundle, inputs.init, Path(settings.cache_dir))
    return Scenario(
        task=settings.task,
        bundle_dir=bundle,
        keras_model=pretrained.export_dir,
        pool=rows.pool,
        partition=partition,
        test=rows.test,
        schedule=schedule,
        hyperparams=Hyperparams(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        ),
        seed=settings.seed,
        details={
            "task": settings.task,
            "source": "built-in task, pretrained on the proxy share",
            "partition": settings.partition if inputs.partition is None else "file",
            "proxy_examples": len(rows.proxy),
            "pool_examples": len(rows.pool),
            "test_examples": len(rows.test),
            "bundle": str(bundle),
            "pretrained_reused": pretrained.reused,
        },
    )


def _zoo_head(task: str, rows: TaskRows) -> Weights:
    """The zoo model's trainable head (names and shapes) for ``task``, untrained."""
    from cloud_trainer.data import build_feature_spec
    from cloud_trainer.models import build_model, freeze_backbone
    from quantize.trainable import trainable_weights

    spec = build_feature_spec(rows.proxy)
    model = build_model(
        task, input_shape=spec.output_shape, num_classes=rows.proxy.schema.num_classes
    )
    return Weights(trainable_weights(freeze_backbone(model)))


def _record_fingerprint(export_dir: Path) -> str | None:
    from cloud_trainer.record import load_training_record

    try:
        return load_training_record(export_dir).data_fingerprint
    except Exception:  # an unreadable record: the bundle check already passed
        return None


def run_engine(
    scenario: Scenario,
    settings: Settings,
    *,
    progress: ProgressSink | None = None,
) -> EngineResult:
    """Run ``scenario`` on the engine ``settings`` names."""
    if settings.engine == "tff":
        return _run_tff(scenario, progress)
    return run_native(
        scenario,
        NativeOptions(
            workers=settings.workers,
            aggregator=settings.aggregator,
            aggregator_options=dict(settings.aggregator_options),
            store=settings.store,
            state_dir=settings.state_dir,
            personalization=settings.personalization,
            personalize=PersonalizationConfig(
                epochs=settings.personalize_epochs, learning_rate=settings.personalize_lr
            ),
        ),
        progress=progress,
    )


def _run_tff(scenario: Scenario, progress: ProgressSink | None) -> EngineResult:
    # Importing the TFF engine installs the reaper that stops TFF's worker_binary at exit.
    from simulations.tff_engine import run_tff

    started = time.perf_counter()
    workload = build_workload(scenario)
    model_fn = byo.keras_model_factory(scenario.keras_model)
    rounds: list[RoundStats] = []
    total = scenario.num_rounds

    def on_round(metrics: Any) -> None:
        stats = RoundStats(
            round=metrics.round + 1,
            accuracy=metrics.test_accuracy,
            loss=None,
            participants=len(metrics.participants),
            bytes_up=None,
            bytes_down=None,
            seconds=metrics.seconds,
            train_loss=metrics.train_loss,
            clients=tuple(metrics.participants),
        )
        rounds.append(stats)
        if progress is not None:
            progress.round_finished(stats)
            if stats.round < total:
                progress.round_started(stats.round + 1, total, len(scenario.schedule[stats.round]))

    if progress is not None:
        progress.round_started(1, total, len(scenario.schedule[0]))
    result = run_tff(workload, model_fn=model_fn, on_round=on_round)
    return EngineResult(
        engine="tff",
        rounds=tuple(rounds),
        final_head=result.final_head,
        seconds=time.perf_counter() - started,
        details={"aggregator": "fedavg (tff.learning.algorithms.build_weighted_fed_avg)"},
    )


def simulate(
    settings: Settings,
    *,
    progress: ProgressSink | None = None,
    step: Step | None = None,
    inputs: CheckedInputs | None = None,
) -> RunReport:
    """Check, prepare, run and measure one simulation (nothing is written here)."""
    checked = inputs if inputs is not None else check_settings(settings)
    scenario = prepare_scenario(settings, checked, step=step)
    say = step or (lambda _: None)
    model = EdgeModel.load(scenario.bundle_dir)
    test_x, test_y = scenario.test_arrays()
    start = initial_head(scenario.bundle_dir)
    pretrained = evaluate_head(model, test_x, test_y, head=start)
    say(
        f"{len(scenario.client_ids)} clients, {scenario.num_rounds} rounds on the "
        f"{settings.engine} engine"
    )
    result = run_engine(scenario, settings, progress=progress)
    final = evaluate_head(model, test_x, test_y, head=_in_head_order(result.final_head, start))
    centralized, epochs = None, None
    if settings.baseline:
        epochs = matching_epochs(scenario)
        say(f"centralized baseline: the same head on the clients' union for {epochs} epochs")
        rows = scenario.train_rows()
        union = scenario.pool.take(rows)
        head = train_centrally(
            model,
            model.transform(union.columns),
            union.labels,
            start=start,
            epochs=epochs,
            learning_rate=settings.learning_rate,
            seed=settings.seed,
        )
        centralized = evaluate_head(model, test_x, test_y, head=head)
    return RunReport(
        settings={
            **settings.to_dict(),
            **dict(scenario.details),
            "clients": len(scenario.client_ids),
            "rounds": scenario.num_rounds,
        },
        result=result,
        pretrained=pretrained,
        final=final,
        centralized=centralized,
        centralized_epochs=epochs,
        schedule=scenario.schedule,
        initial_label=_initial_label(settings),
    )


def _initial_label(settings: Settings) -> str:
    if settings.model_file is not None:
        return "initial (your model)"
    if settings.init_file is not None:
        return "initial (--init)"
    return "pretrained (proxy share)"


def _in_head_order(head: Weights, reference: Weights) -> Weights:
    head.validate_against(reference)
    return Weights.from_pairs((name, np.asarray(head[name])) for name in reference.names)
