"""What one simulation run takes, and the checks that run before any work.

:class:`Settings` holds everything ``fedge-simulate`` takes; :func:`check_settings`
validates the options and reads every input file a run needs (the built-in task or the
user's files: data, initial weights, partition, schedule, through
:mod:`simulations.inputs.files`) without TensorFlow, so a bad input fails in seconds with
one message. Its :class:`CheckedInputs` are what :mod:`simulations.preparation` builds the
scenario from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.data import TASK_NAMES, Partition, parse_partition
from fedge.errors import ConfigError
from fedge.strategy import build_strategy
from fedge.validation import check_fraction, check_int, check_positive
from fedge.weights import Weights
from simulations.inputs import files
from simulations.native_engine import STORES
from simulations.pretrain import DEFAULT_PROXY_FRACTION
from simulations.scenario import DEFAULT_HOLDOUT_FRACTION, split_task_rows
from simulations.workload import Schedule

__all__ = [
    "DEFAULT_DEVICE_BATCH",
    "DEFAULT_EPOCHS",
    "DEFAULT_LEARNING_RATE",
    "ENGINES",
    "CheckedInputs",
    "Settings",
    "check_settings",
]

ENGINES = ("native", "tff")
DEFAULT_LEARNING_RATE = 0.02
DEFAULT_EPOCHS = 2
DEFAULT_DEVICE_BATCH = 32


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
    server_optimizer: str | None = None
    """None: the aggregator's preset (plain FedAvg for fedavg, median, trimmed_mean, krum)."""
    server_optimizer_options: Mapping[str, float] = field(default_factory=dict)
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
        out["server_optimizer_options"] = dict(self.server_optimizer_options)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


_FLAGS = {"personalize_epochs": "--personal-epochs"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, f"--{name.replace('_', '-')}")


@dataclass(frozen=True, eq=False)
class CheckedInputs:
    """The settings' files, read and checked (no TensorFlow): what :func:`prepare_scenario`
    builds the scenario from."""

    data: files.UserData | None
    partition: Partition | None
    schedule: Schedule | None
    init: Weights | None


def check_settings(settings: Settings) -> CheckedInputs:
    """Every check that needs no model: options, then each file, in the order they are used.

    ConfigError (or DataError) with a one-line message for the first problem found.
    """
    s = settings
    for name in ("clients", "epochs", "batch_size", "workers", "personalize_epochs"):
        check_int(getattr(s, name), _flag(name), low=1)
    for name in ("rounds", "per_round", "pretrain_epochs"):
        if getattr(s, name) is not None:
            check_int(getattr(s, name), _flag(name), low=1)
    for flag, rate in (
        ("--learning-rate", s.learning_rate),
        ("--personal-learning-rate", s.personalize_lr),
    ):
        check_positive(rate, flag)
    check_fraction(s.proxy_fraction, "--proxy-fraction", zero_ok=False)
    check_fraction(s.test_fraction, "--test-fraction", zero_ok=False)
    check_fraction(s.holdout_fraction, "--holdout-fraction")
    if s.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {list(ENGINES)}, got {s.engine!r}")
    try:  # the names, their combination and the options
        strategy = build_strategy(
            s.aggregator,
            aggregator_options=s.aggregator_options,
            server_optimizer=s.server_optimizer,
            server_optimizer_options=s.server_optimizer_options,
        )
    except ConfigError as exc:
        raise ConfigError(f"invalid strategy (--aggregator, --server-optimizer): {exc}") from exc
    if s.engine == "tff" and strategy != build_strategy():
        raise ConfigError(
            "the tff reference engine runs plain FedAvg: use --aggregator fedavg without "
            "options or another server optimizer"
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
        data = files.load_data(s.data_file, label_column=s.label_column)
    init = files.load_init(s.init_file) if s.init_file is not None else None
    partition = None
    if s.partition_file is not None:
        rows = len(data) if data is not None else _pool_size(s)
        partition = files.load_partition(
            s.partition_file, rows=rows, holdout_fraction=s.holdout_fraction, seed=s.seed
        )
    schedule = None
    if s.schedule_file is not None:
        schedule = files.load_schedule_file(s.schedule_file)
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
