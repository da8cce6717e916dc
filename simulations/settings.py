"""What one simulation run takes, and the checks that run before any work.

:class:`Settings` holds everything ``fedge-simulate`` takes; :func:`check_settings`
validates the options and reads every input file a run needs (the built-in task or the
user's files: data, initial weights, partition, schedule, through
:mod:`simulations.inputs.files`) without TensorFlow, so a bad input fails in seconds with
one message: a :class:`~simulations.errors.SettingsError` that names the value by its
``Settings`` field (:func:`about` attaches the fields to an error of the code it wraps).
Its :class:`CheckedInputs` are what :mod:`simulations.preparation` builds the scenario from.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coordinator import RoundConfig
from fedge.data import TASK_NAMES, Partition, parse_partition
from fedge.errors import ConfigError
from fedge.strategy import PRESETS, build_strategy
from fedge.validation import check_fraction, check_int, check_number, check_positive
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.inputs import files
from simulations.native_engine import STORES, TRANSPORTS
from simulations.pretrain import DEFAULT_PROXY_FRACTION
from simulations.scenario import DEFAULT_HOLDOUT_FRACTION, split_task_rows
from simulations.workload import Schedule

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_DEVICE_BATCH",
    "DEFAULT_EPOCHS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_TOPK_FRACTION",
    "DROPOUT_STAGES",
    "ENGINES",
    "SAVE_WEIGHTS",
    "CheckedInputs",
    "Settings",
    "about",
    "check_settings",
]

ENGINES = ("native", "tff", "ray")
COMPRESSIONS = ("none", "q8", "topk")
"""The update codecs a round can ask the devices for (none: the plain safetensors delta)."""
DROPOUT_STAGES = ("mask", "unmask")
"""Where ``--secagg-dropout`` clients stop: before sending their masked input, or before
answering the unmask stage."""
DEFAULT_TOPK_FRACTION = 0.01
DEFAULT_LEARNING_RATE = 0.02
DEFAULT_EPOCHS = 2
DEFAULT_DEVICE_BATCH = 32
SAVE_WEIGHTS = ("final", "every-round")
"""What ``--save-weights`` writes: the final head (``final_head.safetensors``) only, or
also the global weights after every round (``weights/round-0001.safetensors``, ...)."""


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
    ray_address: str | None = None
    """The ray engine's cluster (``ray://host:10001`` or ``host:port``); None: a local Ray
    with ``workers`` CPUs, started and shut down by the run."""
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_DEVICE_BATCH
    workers: int | None = None
    """Worker processes of the clients (1: in this process); None: chosen by the run
    (:func:`simulations.runner.choose_workers`: in this process for a small run, else 2)."""
    proxy_fraction: float = DEFAULT_PROXY_FRACTION
    test_fraction: float = 0.2
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    pretrain_epochs: int | None = None
    cache_dir: Path = Path(".fedge-cache")
    model_file: Path | None = None
    init_file: Path | None = None
    data_file: Path | None = None
    test_data_file: Path | None = None
    """The evaluation set of every round (the data file's format, columns and label);
    None: the rows no client holds (or a split of the data file)."""
    label_column: str = "label"
    partition_file: Path | None = None
    schedule_file: Path | None = None
    store: str = "memory"
    transport: str = "memory"
    """How the simulated devices reach the coordinator service: memory (direct calls), rest
    or grpc (the service served on loopback, the edge client's client for each device)."""
    state_dir: Path | None = None
    baseline: bool = True
    personalization: bool = True
    personalize_epochs: int = 5
    personalize_lr: float = 0.05
    secure_aggregation: bool = False
    """Every round runs SecAgg+: the coordinator learns only the sum of the updates."""
    secagg_clip: float = 1.0
    """Per-coordinate clip of each secure delta (the round config's ``secagg_clip``)."""
    secagg_degree: int | None = None
    """Neighbours per client (even, < clients per round); None: the protocol's default."""
    secagg_threshold: int | None = None
    """Shares needed to recover a secret (a strict majority of the degree); None: default."""
    secagg_dropout: float = 0.0
    """This fraction of each secure round's clients (seeded draw) drops out at
    ``secagg_dropout_stage``: a test knob for the protocol's recovery."""
    secagg_dropout_stage: str = "mask"
    compression: str = "none"
    """The devices' update codec: none, q8 (8-bit stochastic) or topk (with error feedback)."""
    topk_fraction: float = DEFAULT_TOPK_FRACTION
    """The share of coordinates a topk update keeps."""
    dp_noise_multiplier: float | None = None
    """DP-FedAvg's noise multiplier z (the noise of the sum has stddev z * dp_clip); None:
    no differential privacy. With secure aggregation the devices add the noise."""
    dp_clip: float = 1.0
    """The L2 bound C of each client's update (the initial bound when adaptive)."""
    dp_adaptive_clip: bool = False
    """Quantile-based adaptive clipping (plain rounds only)."""
    dp_clipped_count_stddev: float | None = None
    """Adaptive clipping's noise on the count of clipped updates; None: the coordinator's
    default (clients per round / 20)."""
    dp_delta: float | None = None
    """The delta of the reported (epsilon, delta); None: the coordinator's default."""
    privacy_budget: float | None = None
    """The epsilon a round may not take the model's lineage over: the run stops there."""
    save_weights: str = "final"
    """One of :data:`SAVE_WEIGHTS`."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aggregator_options"] = dict(self.aggregator_options)
        out["server_optimizer_options"] = dict(self.server_optimizer_options)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


@contextmanager
def about(*fields: str) -> Iterator[None]:
    """A ``ConfigError`` raised in the block leaves it as a :class:`SettingsError` naming
    ``fields`` (one that already names its fields leaves unchanged)."""
    try:
        yield
    except SettingsError:
        raise
    except ConfigError as exc:
        raise SettingsError(str(exc), fields=fields) from exc


def _check_ray(s: Settings) -> None:
    """The ray engine's address, and that Ray is installed when that engine is asked for."""
    if s.ray_address is not None and s.engine != "ray":
        raise SettingsError("a Ray address needs the ray engine", fields=["ray_address", "engine"])
    if s.engine != "ray":
        return
    if s.ray_address is not None and not s.ray_address.strip():
        raise SettingsError("the Ray address is empty", fields=["ray_address"])
    try:
        importlib.import_module("ray")
    except ImportError:
        raise SettingsError(
            "the ray engine needs Ray, which is not installed: pip install 'fedge[ray]'",
            fields=["engine"],
        ) from None


@dataclass(frozen=True, eq=False)
class CheckedInputs:
    """The settings' files, read and checked (no TensorFlow): what :func:`prepare_scenario`
    builds the scenario from."""

    data: files.UserData | None
    partition: Partition | None
    schedule: Schedule | None
    init: Weights | None
    test_data: files.UserData | None = None
    """The test data file's rows: every round's evaluation set."""


def check_settings(settings: Settings) -> CheckedInputs:
    """Every check that needs no model: options, then each file, in the order they are used.

    A :class:`~simulations.errors.SettingsError` (or DataError) with a one-line message for
    the first problem found.
    """
    s = settings
    for name in ("clients", "epochs", "batch_size", "personalize_epochs"):
        with about(name):
            check_int(getattr(s, name), name, low=1)
    for name in ("rounds", "per_round", "pretrain_epochs", "workers"):
        if getattr(s, name) is not None:
            with about(name):
                check_int(getattr(s, name), name, low=1)
    for name in ("learning_rate", "personalize_lr"):
        with about(name):
            check_positive(getattr(s, name), name)
    for name, zero_ok in (
        ("proxy_fraction", False),
        ("test_fraction", False),
        ("holdout_fraction", True),
    ):
        with about(name):
            check_fraction(getattr(s, name), name, zero_ok=zero_ok)
    if s.engine not in ENGINES:
        raise SettingsError(
            f"engine must be one of {list(ENGINES)}, got {s.engine!r}", fields=["engine"]
        )
    _check_ray(s)
    strategy_fields = (
        "aggregator",
        "aggregator_options",
        "server_optimizer",
        "server_optimizer_options",
    )
    try:  # the names, their combination and the options
        strategy = build_strategy(
            s.aggregator,
            aggregator_options=s.aggregator_options,
            server_optimizer=s.server_optimizer,
            server_optimizer_options=s.server_optimizer_options,
        )
    except ConfigError as exc:
        raise SettingsError(
            f"invalid strategy (aggregator, server_optimizer and their options): {exc}",
            fields=strategy_fields,
        ) from exc
    if s.engine == "tff" and strategy != build_strategy():
        raise SettingsError(
            "the tff reference engine runs plain FedAvg: use the fedavg aggregator without "
            "options or another server optimizer",
            fields=("engine", *strategy_fields),
        )
    _check_secure(s)
    _check_privacy(s)
    if s.store not in STORES:
        raise SettingsError(
            f"store must be one of {list(STORES)}, got {s.store!r}", fields=["store"]
        )
    _check_transport(s)
    if s.data_file is None and s.task not in TASK_NAMES:
        raise SettingsError(
            f"task must be one of {list(TASK_NAMES)} (or give a data file), got {s.task!r}",
            fields=["task"],
        )
    if s.engine == "tff" and files.is_bundle(s.model_file):
        raise SettingsError(
            "the tff reference engine needs a Keras model: give the fedge-train export, not "
            "its edge bundle",
            fields=["engine", "model_file"],
        )
    if s.data_file is not None and s.model_file is None:
        raise SettingsError(
            "a data file needs a model file: there is no built-in model for your data",
            fields=["data_file", "model_file"],
        )
    if s.partition_file is None:
        with about("partition"):
            parse_partition(s.partition)
    if s.save_weights not in SAVE_WEIGHTS:
        raise SettingsError(
            f"save_weights must be one of {list(SAVE_WEIGHTS)}, got {s.save_weights!r}",
            fields=["save_weights"],
        )
    if s.save_weights == "every-round" and s.engine == "tff":
        raise SettingsError(
            "the tff reference engine does not report each round's weights: use the native "
            "or ray engine to save them every round",
            fields=["save_weights", "engine"],
        )
    if s.test_data_file is not None and s.data_file is None:
        raise SettingsError(
            "a test data file needs the data file whose columns it has; a built-in task has "
            "its own test split",
            fields=["test_data_file", "data_file"],
        )
    data = None
    if s.data_file is not None:
        with about("data_file"):
            data = files.load_data(
                s.data_file,
                label_column=s.label_column,
                schema_file=files.model_schema_file(s.model_file),
            )
    test_data = None
    if s.test_data_file is not None:
        assert data is not None
        with about("test_data_file"):
            test_data = files.load_test_data(s.test_data_file, data)
    init = None
    if s.init_file is not None:
        with about("init_file"):
            init = files.load_init(s.init_file)
    partition = None
    if s.partition_file is not None:
        rows = len(data) if data is not None else _pool_size(s)
        with about("partition_file"):
            partition = files.load_partition(
                s.partition_file, rows=rows, holdout_fraction=s.holdout_fraction, seed=s.seed
            )
    schedule = None
    if s.schedule_file is not None:
        with about("schedule_file"):
            schedule = files.load_schedule_file(s.schedule_file)
        if s.rounds is not None and s.rounds != len(schedule):
            raise SettingsError(
                f"rounds is {s.rounds} but the schedule file {s.schedule_file} has "
                f"{len(schedule)} rounds; leave rounds unset to run them all",
                fields=["rounds", "schedule_file"],
            )
    elif s.rounds is None:
        raise SettingsError(
            "rounds is required unless a schedule file is given",
            fields=["rounds", "schedule_file"],
        )
    return CheckedInputs(
        data=data, partition=partition, schedule=schedule, init=init, test_data=test_data
    )


def _check_transport(s: Settings) -> None:
    if s.transport not in TRANSPORTS:
        raise SettingsError(
            f"transport must be one of {list(TRANSPORTS)}, got {s.transport!r}",
            fields=["transport"],
        )
    if s.transport == "memory":
        return
    if s.engine == "tff":
        raise SettingsError(
            f"the {s.transport} transport needs the native engine (the tff engine has no "
            "coordinator to reach)",
            fields=["transport", "engine"],
        )
    if s.secure_aggregation:
        raise SettingsError(
            "secure aggregation runs its stages in memory only: use the memory transport",
            fields=["transport", "secure_aggregation"],
        )


def _check_secure(s: Settings) -> None:
    """The secure-aggregation and compression options, and that the engine runs them."""
    if s.compression not in COMPRESSIONS:
        raise SettingsError(
            f"compression must be one of {list(COMPRESSIONS)}, got {s.compression!r}",
            fields=["compression"],
        )
    with about("topk_fraction"):
        check_fraction(s.topk_fraction, "topk_fraction", zero_ok=False, one_ok=True)
    with about("secagg_clip"):
        check_positive(s.secagg_clip, "secagg_clip")
    for name in ("secagg_degree", "secagg_threshold"):
        if getattr(s, name) is not None:
            with about(name):
                check_int(getattr(s, name), name, low=1)
    with about("secagg_dropout"):
        check_fraction(s.secagg_dropout, "secagg_dropout", zero_ok=True)
    if s.secagg_dropout_stage not in DROPOUT_STAGES:
        raise SettingsError(
            f"secagg_dropout_stage must be one of {list(DROPOUT_STAGES)}, "
            f"got {s.secagg_dropout_stage!r}",
            fields=["secagg_dropout_stage"],
        )
    secagg_only = [
        name
        for name, default in (
            ("secagg_degree", None),
            ("secagg_threshold", None),
            ("secagg_dropout", 0.0),
        )
        if getattr(s, name) != default
    ]
    if secagg_only and not s.secure_aggregation:
        raise SettingsError(
            f"{', '.join(secagg_only)} only apply with secure aggregation",
            fields=[*secagg_only, "secure_aggregation"],
        )
    if s.engine == "tff" and (s.secure_aggregation or s.compression != "none"):
        raise SettingsError(
            "the tff reference engine runs plain, uncompressed FedAvg: secure aggregation and "
            "compressed updates need the native engine",
            fields=["engine", "secure_aggregation", "compression"],
        )
    if s.secure_aggregation:
        if s.compression == "topk":
            raise SettingsError(
                "secure aggregation cannot run top-k updates (the masks make every vector "
                "dense); use q8 or none",
                fields=["secure_aggregation", "compression"],
            )
        if PRESETS[s.aggregator].aggregator != "fedavg":
            raise SettingsError(
                f"secure aggregation reveals only the sum of the updates, so it needs the "
                f"fedavg aggregator (a server optimizer is fine), got {s.aggregator!r}",
                fields=["secure_aggregation", "aggregator"],
            )
        smallest = _smallest_round(s)
        if smallest is not None and smallest < 3:
            raise SettingsError(
                f"secure aggregation needs at least 3 clients per round, got {smallest}",
                fields=["secure_aggregation", "per_round", "clients"],
            )
        per_round = smallest if smallest is not None else s.clients
        if s.secagg_degree is not None and s.secagg_degree >= per_round:
            raise SettingsError(
                f"secagg_degree must be below the clients per round ({per_round}), "
                f"got {s.secagg_degree}",
                fields=["secagg_degree"],
            )
        with about("secagg_degree", "secagg_threshold"):  # the coordinator's own checks
            RoundConfig(
                clients_per_round=per_round,
                min_clients=1,
                secure_aggregation=True,
                secagg_clip=s.secagg_clip,
                secagg_degree=s.secagg_degree,
                secagg_threshold=s.secagg_threshold,
            )


def _check_privacy(s: Settings) -> None:
    """The differential-privacy options, and that the engine runs them."""
    if s.dp_noise_multiplier is not None:
        with about("dp_noise_multiplier"):
            check_number(s.dp_noise_multiplier, "dp_noise_multiplier", low=0.0)
    with about("dp_clip"):
        check_positive(s.dp_clip, "dp_clip")
    if s.dp_clipped_count_stddev is not None:
        with about("dp_clipped_count_stddev"):
            check_positive(s.dp_clipped_count_stddev, "dp_clipped_count_stddev")
        if not s.dp_adaptive_clip:
            raise SettingsError(
                "dp_clipped_count_stddev only applies with adaptive clipping",
                fields=["dp_clipped_count_stddev", "dp_adaptive_clip"],
            )
    if s.dp_delta is not None:
        with about("dp_delta"):
            check_fraction(s.dp_delta, "dp_delta", zero_ok=False, one_ok=False)
    if s.privacy_budget is not None:
        with about("privacy_budget"):
            check_positive(s.privacy_budget, "privacy_budget")
    dp_only = [
        name
        for name, default in (
            ("dp_clip", 1.0),
            ("dp_adaptive_clip", False),
            ("dp_clipped_count_stddev", None),
            ("dp_delta", None),
        )
        if getattr(s, name) != default
    ]
    if dp_only and s.dp_noise_multiplier is None:
        raise SettingsError(
            f"{', '.join(dp_only)} {'applies' if len(dp_only) == 1 else 'apply'} only with "
            "differential privacy: give a noise multiplier",
            fields=[*dp_only, "dp_noise_multiplier"],
        )
    if s.engine == "tff" and (s.dp_noise_multiplier is not None or s.privacy_budget is not None):
        raise SettingsError(
            "the tff reference engine runs plain FedAvg: differential privacy and a privacy "
            "budget need the native engine",
            fields=["engine", "dp_noise_multiplier", "privacy_budget"],
        )
    if s.dp_noise_multiplier is not None and PRESETS[s.aggregator].aggregator != "fedavg":
        raise SettingsError(
            "differential privacy averages clipped updates: it needs the fedavg aggregator "
            f"(a server optimizer is fine), got {s.aggregator!r}",
            fields=["dp_noise_multiplier", "aggregator"],
        )
    if s.dp_adaptive_clip and s.secure_aggregation:
        raise SettingsError(
            "adaptive clipping needs the server to count clipped updates, which secure "
            "aggregation hides: use a fixed dp_clip",
            fields=["dp_adaptive_clip", "secure_aggregation"],
        )
    if s.dp_noise_multiplier is not None:
        per_round = max(3, _smallest_round(s) or s.clients)
        rule_fields = ("dp_noise_multiplier", "dp_clip", "secagg_clip")
        if s.dp_adaptive_clip:
            rule_fields = ("dp_noise_multiplier", "dp_adaptive_clip", "dp_clipped_count_stddev")
        with about(*rule_fields):  # the coordinator's own rules
            RoundConfig(
                clients_per_round=per_round,
                min_clients=1,
                secure_aggregation=s.secure_aggregation,
                secagg_clip=s.secagg_clip,
                dp_noise_multiplier=s.dp_noise_multiplier,
                dp_clip=s.dp_clip,
                dp_adaptive_clip=s.dp_adaptive_clip,
                dp_clipped_count_stddev=s.dp_clipped_count_stddev,
                dp_delta=s.dp_delta,
            )


def _smallest_round(s: Settings) -> int | None:
    if s.schedule_file is not None:
        return None  # the schedule file's rounds are checked where it is read
    return min(s.per_round or s.clients, s.clients)


def _pool_size(settings: Settings) -> int:
    assert settings.task is not None
    rows = split_task_rows(
        settings.task,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
        proxy_fraction=settings.proxy_fraction,
    )
    return len(rows.pool)
