"""Configuration of rounds and of the service: frozen, validated when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from fedge.dp import DPConfig
from fedge.errors import ConfigError, ProtocolError
from fedge.messages import TaskConfig
from fedge.strategy import ComposedStrategy, build_strategy
from fedge.validation import check_fraction, check_int, check_number, check_positive

__all__ = [
    "COMPRESSIONS",
    "GATE_METRICS",
    "ROUND_LIMITS",
    "ROUND_MODES",
    "AlertConfig",
    "RoundConfig",
    "ServiceConfig",
]

COMPRESSIONS = ("none", "q8", "topk")
"""The update codecs a round may ask for (:mod:`fedge.compression`; ``none``: safetensors)."""
_COMPRESSION_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {"none": frozenset(), "q8": frozenset({"block"}), "topk": frozenset({"fraction"})}
)
DEFAULT_TOPK_FRACTION = 0.01
ROUND_MODES = ("sync", "async")
"""``sync``: rounds of selected clients; ``async``: FedBuff buffers (:mod:`fedge.fedbuff`)."""
_MAX_STALENESS = 1_000_000
DEFAULT_MIN_COHORT = 10
"""The fewest clients an evaluate, stats or features request may target."""
DEFAULT_COHORT_WINDOW_SECONDS = 3600.0
"""How long a client targeted by a task of one kind cannot be targeted by another."""
MAX_MIN_COHORT = 100_000
_MAX_Q8_BLOCK = 1 << 24

ROUND_LIMITS: Mapping[str, float] = MappingProxyType(
    {
        "clients_per_round": 100_000,
        "min_clients": 100_000,
        "min_available_clients": 100_000,
        "deadline_seconds": 30 * 86400.0,
        "epochs": 1000,
        "batch_size": 65_536,
        "learning_rate": 100.0,
        "norm_bound": 1e6,
        "max_examples": 1_000_000_000,
        "option_magnitude": 1e9,
    }
)
"""The upper bound of every round setting (``option_magnitude``: of any number in
``aggregator_options``/``server_optimizer_options``): a value above it is refused before
anything is stored, so no setting can overflow a deadline, a weighted sum or a JSON dump."""


def _number_map(value: object, what: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be an object of numbers, got {value!r}")
    out: dict[str, float] = {}
    for key, number in value.items():
        bound = ROUND_LIMITS["option_magnitude"]
        check_number(number, f"{what}[{key!r}]", low=-bound, high=bound)
        out[str(key)] = number  # an int stays an int: some options are counts
    return out


@dataclass(frozen=True)
class RoundConfig:
    """How one round runs.

    - The round waits (state open) until ``min_available_clients`` clients are registered
      (``None``: ``clients_per_round``), then selects up to ``clients_per_round`` of them
      with the service's client selector (by default at random from the seeded
      generator); it collects until every selected client reported or
      ``deadline_seconds`` passed, and fails with fewer than ``min_clients`` updates.
    - ``epochs``/``batch_size``/``learning_rate`` go to the clients in the task
      (``batch_size`` ``None``: the bundle's static ``train_batch_size``), and so do the
      ``task_options`` (``TaskConfig.options``: scalars under identifier names, e.g.
      ``shuffle_seed``, which asks the edge client to reshuffle its rows every epoch).
    - The strategy (:mod:`fedge.strategy`) is composed of ``aggregator`` (``fedavg``,
      ``median``, ``trimmed_mean``, ``krum``) with ``aggregator_options``,
      ``server_optimizer`` (``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``; ``None``: the
      aggregator's preset, plain ``fedavg`` for the four above) with
      ``server_optimizer_options``, and ``metrics_aggregation`` (``weighted_mean``, ``mean``,
      ``median``) of the clients' metrics. ``aggregator`` also takes the presets
      ``fedavgm``, ``fedadam`` and ``fedyogi`` (FedAvg with that server optimizer), whose
      server optimizer options may sit in ``aggregator_options`` as in earlier versions
      (see :func:`fedge.strategy.build_strategy`). The combination is checked when built.
    - Intake refuses a delta whose L2 norm exceeds ``norm_bound`` and example counts outside
      ``1..max_examples``.
    - ``compression`` names the codec every update of the round must use: ``none`` (the
      safetensors delta), ``q8`` (8-bit stochastic quantization; ``compression_options``
      ``block``: values per quantization block, default one block per tensor) or ``topk``
      (the largest ``fraction`` of the values, default 0.01, with error feedback on the
      device). The train task carries it (:meth:`compression_task_options`).
    - Every setting has an upper bound (:data:`ROUND_LIMITS`): e.g. ``deadline_seconds`` at
      most 30 days, ``clients_per_round`` at most 100,000, ``max_examples`` at most 10^9.
    - ``continuous``: the next round opens when one closes (committed or failed); otherwise
      rounds open on demand.
    - ``auto_promote``: a committed round's version becomes production at once; ``None``
      means "when continuous" (a continuous deployment keeps serving its newest model, an
      on-demand one leaves promotion to an operator).
    - ``quarantine``: when the round closes, an update whose client's latest statistics
      report shows anomalies against the base version's training statistics (and the
      service's schema) is quarantined: kept, not aggregated (:mod:`coordinator.quarantine`).
      The skew thresholds of an inferred schema are ``quarantine_numeric_threshold``
      (Jensen-Shannon divergence of a numeric feature's histogram) and
      ``quarantine_categorical_threshold`` (L-infinity distance of a categorical feature's
      value shares). ``stats_every_round``: the round also gives each selected client a
      ``stats`` task (before its train task), so every update has fresh statistics.
    - ``secure_aggregation``: the round runs SecAgg+ (:mod:`coordinator.secagg`): the
      coordinator learns only the sum of the clipped (``secagg_clip`` per coordinate),
      quantized (``secagg_quantization_bits``; 8 with ``compression`` ``q8``) deltas and of
      the example counts (each capped at ``secagg_example_cap``; with ``q8`` at most 255,
      :attr:`secagg_cap`). ``secagg_degree`` and
      ``secagg_threshold`` set the neighbourhood size k and the shares t needed (``None``:
      the defaults of :mod:`fedge.secagg.graph`); ``secagg_stage_seconds`` bounds each stage
      after the first (``None``: ``deadline_seconds``). It needs the ``fedavg`` aggregator
      (any server optimizer), no ``topk`` compression and at least 3 clients per round.
    - ``dp_noise_multiplier`` (``None``: no differential privacy): DP-FedAvg
      (:class:`fedge.strategy.DPFedAvg`, :meth:`dp_config`): each update clipped to L2
      ``dp_clip``, summed with weight 1, N(0, (z * clip)^2) per coordinate added, divided
      by ``clients_per_round``; it needs the ``fedavg`` aggregator. With
      ``dp_adaptive_clip`` the clip follows the ``dp_target_quantile`` of the update norms
      (a clipped count noised with ``dp_clipped_count_stddev``, default
      ``clients_per_round`` / 20), carried in the server state. In a secure round the
      clients clip and noise their own updates (the task options ``dp_clip`` and
      ``dp_noise_stddev`` = z * clip / sqrt(clients_per_round), :meth:`dp_task_options`),
      every client weighs 1 (``secagg_example_cap`` is 1) and the server adds nothing;
      adaptive clipping is refused there and ``secagg_clip`` (per coordinate) must be >=
      ``dp_clip`` so that no clipped update is cut again. ``dp_delta`` is the accountant's
      delta (``None``: 1 / n^1.1 for the n registered clients when the round starts,
      :mod:`coordinator.privacy`).
    - The gate (:mod:`coordinator.gate`): ``gate`` ``None`` means on when the round
      promotes on commit and a holdout exists (the service's cloud holdout, or
      ``gate_clients`` > 0); a gated round evaluates its candidate before promoting it and
      keeps it as a rejected candidate when it is worse than its parent by more than
      ``gate_margin`` (absolute ``gate_metric``, overall or in any region). ``gate_clients``
      is the federated holdout cohort (clients not selected for the round; half evaluate
      the candidate, half its parent); the gate waits ``gate_seconds`` (``None``:
      ``deadline_seconds``) for their reports and needs ``gate_min_reports`` reports for
      each version. A gated round that does not promote on commit (``gate`` true,
      ``auto_promote`` false) leaves a candidate that passed a candidate.
    - ``mode`` ``async`` (FedBuff, :mod:`fedge.fedbuff`): a round is a buffer. It selects
      nobody; any client that polls without a pending train task gets one on the current
      production version, at any time. An update names its task, so its base version and
      its staleness (versions committed since that base) are known: an update staler than
      ``max_staleness`` is refused with 409 (``too_stale``) and never stored; an update of
      an earlier buffer's task goes into the collecting buffer. When ``buffer`` updates
      are in, the buffer commits ``base + sum(delta / sqrt(1 + staleness)) / buffer`` and
      the next buffer opens; it has no deadline. Async mode refuses secure aggregation,
      DP, the gate, statistics every round and any aggregator or server optimizer but
      ``fedavg``.
    """

    clients_per_round: int = 10
    min_clients: int = 2
    min_available_clients: int | None = None
    deadline_seconds: float = 600.0
    epochs: int = 1
    batch_size: int | None = None
    learning_rate: float = 0.01
    aggregator: str = "fedavg"
    aggregator_options: Mapping[str, float] = field(default_factory=dict)
    server_optimizer: str | None = None
    server_optimizer_options: Mapping[str, float] = field(default_factory=dict)
    metrics_aggregation: str = "weighted_mean"
    task_options: Mapping[str, int | float | str | bool] = field(default_factory=dict)
    norm_bound: float = 100.0
    max_examples: int = 1_000_000
    compression: str = "none"
    compression_options: Mapping[str, float] = field(default_factory=dict)
    continuous: bool = True
    auto_promote: bool | None = None
    quarantine: bool = True
    quarantine_numeric_threshold: float = 0.3
    quarantine_categorical_threshold: float = 0.3
    stats_every_round: bool = False
    secure_aggregation: bool = False
    secagg_clip: float = 1.0
    secagg_quantization_bits: int = 16
    secagg_example_cap: int = 1000
    secagg_degree: int | None = None
    secagg_threshold: int | None = None
    secagg_stage_seconds: float | None = None
    dp_noise_multiplier: float | None = None
    dp_clip: float = 1.0
    dp_adaptive_clip: bool = False
    dp_target_quantile: float = 0.5
    dp_clipped_count_stddev: float | None = None
    dp_delta: float | None = None
    gate: bool | None = None
    gate_margin: float = 0.0
    gate_metric: str = "accuracy"
    gate_clients: int = 0
    gate_seconds: float | None = None
    gate_min_reports: int = 1
    mode: str = "sync"
    buffer: int = 10
    max_staleness: int = 10

    def __post_init__(self) -> None:
        limit = ROUND_LIMITS
        check_int(self.min_clients, "min_clients", low=1, high=int(limit["min_clients"]))
        check_int(
            self.clients_per_round,
            "clients_per_round",
            low=1,
            high=int(limit["clients_per_round"]),
        )
        if self.clients_per_round < self.min_clients:
            raise ConfigError(
                f"clients_per_round ({self.clients_per_round}) must be >= "
                f"min_clients ({self.min_clients})"
            )
        if self.min_available_clients is not None:
            check_int(
                self.min_available_clients,
                "min_available_clients",
                low=self.min_clients,
                high=int(limit["min_available_clients"]),
            )
        deadline = check_number(
            self.deadline_seconds,
            "deadline_seconds",
            low=0.0,
            low_inclusive=False,
            high=limit["deadline_seconds"],
        )
        object.__setattr__(self, "deadline_seconds", deadline)
        check_int(self.epochs, "epochs", low=1, high=int(limit["epochs"]))
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", low=1, high=int(limit["batch_size"]))
        rate = check_number(
            self.learning_rate,
            "learning_rate",
            low=0.0,
            low_inclusive=False,
            high=limit["learning_rate"],
        )
        object.__setattr__(self, "learning_rate", rate)
        for name in ("aggregator_options", "server_optimizer_options"):
            object.__setattr__(self, name, MappingProxyType(_number_map(getattr(self, name), name)))
        self.strategy()  # the names, their combination and the options, checked now
        if not isinstance(self.task_options, Mapping):
            raise ConfigError(f"task_options must be an object, got {self.task_options!r}")
        try:  # the rules of the task document that carries them
            task_options = TaskConfig(options=self.task_options).options
        except ProtocolError as exc:
            raise ConfigError(f"invalid task_options: {exc}") from exc
        object.__setattr__(self, "task_options", task_options)
        norm = check_number(
            self.norm_bound, "norm_bound", low=0.0, low_inclusive=False, high=limit["norm_bound"]
        )
        object.__setattr__(self, "norm_bound", norm)
        check_int(self.max_examples, "max_examples", low=1, high=int(limit["max_examples"]))
        self._check_compression()
        for name in ("continuous", "quarantine", "stats_every_round"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")
        for name in ("quarantine_numeric_threshold", "quarantine_categorical_threshold"):
            object.__setattr__(self, name, check_number(getattr(self, name), name, low=0, high=1))
        if self.auto_promote is not None and not isinstance(self.auto_promote, bool):
            raise ConfigError("auto_promote must be true, false or null")
        _check_secure(self)
        _check_dp(self)
        _check_gate(self)
        _check_async(self)

    @property
    def buffered(self) -> bool:
        """An asynchronous (FedBuff) round: a buffer of ``buffer`` updates."""
        return self.mode == "async"

    def _check_compression(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"compression must be one of {list(COMPRESSIONS)}, got {self.compression!r}"
            )
        options = _number_map(self.compression_options, "compression_options")
        unknown = sorted(set(options) - _COMPRESSION_OPTIONS[self.compression])
        if unknown:
            known = sorted(_COMPRESSION_OPTIONS[self.compression]) or "none"
            raise ConfigError(
                f"compression_options {unknown} do not apply to compression "
                f"{self.compression!r} (it takes: {known})"
            )
        if "fraction" in options:
            options["fraction"] = check_fraction(
                options["fraction"], "compression_options['fraction']", zero_ok=False, one_ok=True
            )
        if "block" in options:
            check_int(options["block"], "compression_options['block']", low=1, high=_MAX_Q8_BLOCK)
        object.__setattr__(self, "compression_options", MappingProxyType(options))
        taken = sorted(k for k in self.task_options if k.startswith("compression"))
        if taken:
            raise ConfigError(
                f"task_options {taken} are reserved: set compression and compression_options"
            )

    def compression_task_options(self) -> dict[str, int | float | str]:
        """What a train task carries about the codec: ``compression`` with
        ``compression_fraction`` (topk) or ``compression_block`` (q8, when set); empty for
        ``none`` and in a secure round, where the field quantization is the compression
        (``q8``: 8 bits, :attr:`secagg_bits`) and no second codec runs."""
        if self.compression == "none" or self.secure_aggregation:
            return {}
        out: dict[str, int | float | str] = {"compression": self.compression}
        if self.compression == "topk":
            out["compression_fraction"] = float(
                self.compression_options.get("fraction", DEFAULT_TOPK_FRACTION)
            )
        elif "block" in self.compression_options:
            out["compression_block"] = int(self.compression_options["block"])
        return out

    @property
    def secagg_cap(self) -> int:
        """The example cap a secure round uses: ``secagg_example_cap``, at most 255 with
        ``q8`` compression (so that its 8-bit values keep the modulus small); 1 in a DP round,
        where every client weighs 1."""
        if self.dp_noise_multiplier is not None:
            return 1
        if self.compression == "q8":
            return min(self.secagg_example_cap, 255)
        return self.secagg_example_cap

    @property
    def secagg_bits(self) -> tuple[int, int]:
        """``(quantization_bits, modulus_bits)`` of a secure round: ``q8`` compression
        quantizes to 8 bits; the modulus is the smallest multiple of 8 (at least 16) with
        ``2^b > clients_per_round * max(2^q - 1, secagg_cap)``, so no sum wraps."""
        quantization = 8 if self.compression == "q8" else self.secagg_quantization_bits
        largest = self.clients_per_round * max((1 << quantization) - 1, self.secagg_cap)
        bits = 16
        while (1 << bits) <= largest:
            bits += 8
        return quantization, bits

    @property
    def clients_to_start(self) -> int:
        """Registered clients needed before a round selects and starts collecting."""
        if self.min_available_clients is None:
            return self.clients_per_round
        return self.min_available_clients

    @property
    def promotes_on_commit(self) -> bool:
        return self.continuous if self.auto_promote is None else self.auto_promote

    def gated(self, *, cloud_holdout: bool) -> bool:
        """Whether a committed candidate goes through the gate: ``gate`` when set, else
        when the round promotes on commit and a holdout exists (``cloud_holdout``: the
        service has one; or ``gate_clients`` > 0). An async buffer is never gated."""
        if self.buffered:
            return False
        if self.gate is not None:
            return self.gate
        return self.promotes_on_commit and (cloud_holdout or self.gate_clients > 0)

    @property
    def gate_deadline_seconds(self) -> float:
        """How long the gate's cohort has to report."""
        return self.deadline_seconds if self.gate_seconds is None else self.gate_seconds

    def strategy(self) -> ComposedStrategy:
        """The round's strategy, built from the names above."""
        return build_strategy(
            self.aggregator,
            aggregator_options=self.aggregator_options,
            server_optimizer=self.server_optimizer,
            server_optimizer_options=self.server_optimizer_options,
            metrics_aggregation=self.metrics_aggregation,
        )

    @property
    def dp(self) -> bool:
        """Whether the round is differentially private (DP-FedAvg)."""
        return self.dp_noise_multiplier is not None

    def dp_config(self) -> DPConfig | None:
        """DP-FedAvg's settings for this round (``None`` without DP)."""
        if self.dp_noise_multiplier is None:
            return None
        return DPConfig(
            noise_multiplier=self.dp_noise_multiplier,
            clip=self.dp_clip,
            expected_clients=self.clients_per_round,
            adaptive=self.dp_adaptive_clip,
            target_quantile=self.dp_target_quantile,
            clipped_count_stddev=self.dp_clipped_count_stddev,
        )

    def dp_task_options(self) -> dict[str, float]:
        """What a secure DP round's train task carries for the device: ``dp_clip`` (the L2
        bound of its delta) and ``dp_noise_stddev`` (its share of the noise, per
        coordinate); empty otherwise (a plain DP round clips and noises on the server)."""
        config = self.dp_config()
        if config is None or not self.secure_aggregation:
            return {}
        return {"dp_clip": config.clip, "dp_noise_stddev": config.client_noise_stddev()}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (
            "aggregator_options",
            "server_optimizer_options",
            "task_options",
            "compression_options",
        ):
            out[name] = dict(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a round config must be an object, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown round config keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"invalid round config: {exc}") from exc

    def merged(self, overrides: Mapping[str, Any]) -> RoundConfig:
        """A copy with ``overrides`` applied (validated like :meth:`from_dict`)."""
        return RoundConfig.from_dict({**self.to_dict(), **dict(overrides)})


_SECAGG_MAX_MODULUS_BITS = 56  # a multiple of 8 that fedge.secagg's 62-bit limit admits
_SECAGG_AGGREGATORS = frozenset({"fedavg"})


def _check_secure(config: RoundConfig) -> None:
    """The secure-aggregation settings: types and bounds always, the combination rules
    when ``secure_aggregation`` is on."""
    if not isinstance(config.secure_aggregation, bool):
        raise ConfigError("secure_aggregation must be true or false")
    clip = check_number(config.secagg_clip, "secagg_clip", low=0.0, low_inclusive=False, high=1e6)
    object.__setattr__(config, "secagg_clip", clip)
    check_int(config.secagg_quantization_bits, "secagg_quantization_bits", low=1, high=32)
    check_int(
        config.secagg_example_cap,
        "secagg_example_cap",
        low=1,
        high=int(ROUND_LIMITS["max_examples"]),
    )
    if config.secagg_degree is not None:
        check_int(config.secagg_degree, "secagg_degree", low=2, high=config.clients_per_round)
        if config.secagg_degree % 2:
            raise ConfigError(f"secagg_degree must be even, got {config.secagg_degree}")
    if config.secagg_threshold is not None:
        check_int(config.secagg_threshold, "secagg_threshold", low=2, high=config.clients_per_round)
        degree = config.secagg_degree
        if degree is not None and not degree // 2 < config.secagg_threshold <= degree:
            raise ConfigError(
                f"secagg_threshold {config.secagg_threshold} must be a strict majority of "
                f"secagg_degree {degree}: in {degree // 2 + 1}..{degree}"
            )
    if config.secagg_stage_seconds is not None:
        seconds = check_number(
            config.secagg_stage_seconds,
            "secagg_stage_seconds",
            low=0.0,
            low_inclusive=False,
            high=ROUND_LIMITS["deadline_seconds"],
        )
        object.__setattr__(config, "secagg_stage_seconds", seconds)
    if not config.secure_aggregation:
        return
    aggregator = config.strategy().aggregator.name
    if aggregator not in _SECAGG_AGGREGATORS:
        raise ConfigError(
            f"secure_aggregation needs the fedavg aggregator (any server optimizer), not "
            f"{aggregator!r}: it sees only the sum of the updates, never one of them"
        )
    if config.compression == "topk":
        raise ConfigError(
            "secure_aggregation cannot use compression 'topk': the masks make every vector "
            "dense (use 'q8' or 'none')"
        )
    if config.clients_per_round < 3:
        raise ConfigError(
            f"secure_aggregation needs clients_per_round >= 3, got {config.clients_per_round}"
        )
    if config.secagg_degree is not None and config.secagg_degree >= config.clients_per_round:
        raise ConfigError(
            f"secagg_degree {config.secagg_degree} must be below clients_per_round "
            f"{config.clients_per_round}"
        )
    bits = config.secagg_bits[1]
    if bits > _SECAGG_MAX_MODULUS_BITS:
        raise ConfigError(
            f"secure_aggregation needs a {bits}-bit modulus for {config.clients_per_round} "
            f"clients, over the {_SECAGG_MAX_MODULUS_BITS}-bit limit: lower clients_per_round, "
            "secagg_quantization_bits or secagg_example_cap"
        )


GATE_METRICS = ("accuracy",)
"""The metrics the gate compares (higher is better)."""


def _check_async(config: RoundConfig) -> None:
    """The FedBuff settings: bounds always, the combination rules in async mode."""
    if config.mode not in ROUND_MODES:
        raise ConfigError(f"mode must be one of {list(ROUND_MODES)}, got {config.mode!r}")
    check_int(config.buffer, "buffer", low=1, high=int(ROUND_LIMITS["clients_per_round"]))
    check_int(config.max_staleness, "max_staleness", low=0, high=_MAX_STALENESS)
    if not config.buffered:
        return
    refused = [
        (config.secure_aggregation, "secure_aggregation"),
        (config.dp_noise_multiplier is not None, "dp_noise_multiplier"),
        (config.gate is True or config.gate_clients > 0, "the gate (gate, gate_clients)"),
        (config.aggregator != "fedavg", f"aggregator {config.aggregator!r}"),
        (config.server_optimizer is not None, "server_optimizer"),
        (config.stats_every_round, "stats_every_round"),
    ]
    for on, what in refused:
        if on:
            raise ConfigError(
                f"mode async (FedBuff) cannot be combined with {what}: its buffered, "
                "staleness-weighted commits are plain FedBuff over fedavg"
            )


def _check_gate(config: RoundConfig) -> None:
    """The gate's settings: types and bounds."""
    if config.gate is not None and not isinstance(config.gate, bool):
        raise ConfigError("gate must be true, false or null")
    margin = check_number(config.gate_margin, "gate_margin", low=0.0, high=1.0)
    object.__setattr__(config, "gate_margin", margin)
    if config.gate_metric not in GATE_METRICS:
        raise ConfigError(
            f"gate_metric must be one of {list(GATE_METRICS)}, got {config.gate_metric!r}"
        )
    check_int(
        config.gate_clients, "gate_clients", low=0, high=int(ROUND_LIMITS["clients_per_round"])
    )
    if config.gate_clients == 1:
        raise ConfigError(
            "gate_clients must be 0 (no federated holdout) or at least 2: half the cohort "
            "evaluates the candidate, half its parent"
        )
    if config.gate_seconds is not None:
        seconds = check_number(
            config.gate_seconds,
            "gate_seconds",
            low=0.0,
            low_inclusive=False,
            high=ROUND_LIMITS["deadline_seconds"],
        )
        object.__setattr__(config, "gate_seconds", seconds)
    check_int(
        config.gate_min_reports, "gate_min_reports", low=1, high=max(1, config.gate_clients // 2)
    )


def _check_dp(config: RoundConfig) -> None:
    """The differential-privacy settings: types and bounds always, the combination rules
    when ``dp_noise_multiplier`` is set."""
    if config.dp_noise_multiplier is not None:
        z = check_number(config.dp_noise_multiplier, "dp_noise_multiplier", low=0.0, high=1e6)
        object.__setattr__(config, "dp_noise_multiplier", z)
    clip = check_number(config.dp_clip, "dp_clip", low=0.0, low_inclusive=False, high=1e6)
    object.__setattr__(config, "dp_clip", clip)
    if not isinstance(config.dp_adaptive_clip, bool):
        raise ConfigError("dp_adaptive_clip must be true or false")
    quantile = check_fraction(config.dp_target_quantile, "dp_target_quantile", zero_ok=False)
    object.__setattr__(config, "dp_target_quantile", quantile)
    if config.dp_clipped_count_stddev is not None:
        stddev = check_number(
            config.dp_clipped_count_stddev, "dp_clipped_count_stddev", low=0.0, high=1e6
        )
        object.__setattr__(config, "dp_clipped_count_stddev", stddev)
    if config.dp_delta is not None:
        delta = check_fraction(config.dp_delta, "dp_delta", zero_ok=False)
        object.__setattr__(config, "dp_delta", delta)
    taken = sorted(k for k in config.task_options if k.startswith("dp_"))
    if taken:
        raise ConfigError(f"task_options {taken} are reserved: set the round's dp_* settings")
    if config.dp_noise_multiplier is None:
        return
    aggregator = config.strategy().aggregator.name
    if aggregator != "fedavg":
        raise ConfigError(
            f"dp_noise_multiplier needs the fedavg aggregator (any server optimizer), not "
            f"{aggregator!r}: the noise is calibrated to a sum of clipped updates"
        )
    if config.secure_aggregation and config.dp_adaptive_clip:
        raise ConfigError(
            "dp_adaptive_clip cannot run in a secure round: it needs each update's norm, "
            "which only the client sees (use a fixed dp_clip)"
        )
    if config.secure_aggregation and config.secagg_clip < config.dp_clip:
        raise ConfigError(
            f"a secure DP round needs secagg_clip (per coordinate, {config.secagg_clip:g}) >= "
            f"dp_clip (L2, {config.dp_clip:g}): a coordinate of an update within the L2 clip "
            "may reach it"
        )
    config.dp_config()  # the adaptive rule (clipped-count noise) checked now


@dataclass(frozen=True)
class AlertConfig:
    """Thresholds of the alert rules (see :mod:`coordinator.alerts`; the prediction drift
    ones: :mod:`coordinator.predictions`).

    ``rollback_on_accuracy_drop``: an ``accuracy_drop`` alert for the production version
    rolls production back to the previous version, once ``rollback_min_clients`` distinct
    clients reported a drop of that version in one region (off by default).
    """

    rejection_burst_threshold: int = 20
    rejection_burst_window_seconds: float = 60.0
    accuracy_drop_threshold: float = 0.1
    accuracy_metric: str = "accuracy"
    drift_psi_threshold: float = 0.25
    drift_mean_shift_threshold: float = 1.0
    drift_min_rows: int = 30
    prediction_drift_threshold: float = 0.1
    prediction_drift_min_examples: int = 100
    rollback_on_accuracy_drop: bool = False
    rollback_min_clients: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.rollback_on_accuracy_drop, bool):
            raise ConfigError(
                "rollback_on_accuracy_drop must be true or false, "
                f"got {self.rollback_on_accuracy_drop!r}"
            )
        check_int(self.rollback_min_clients, "rollback_min_clients", low=1)
        check_int(self.rejection_burst_threshold, "rejection_burst_threshold", low=1)
        check_positive(self.rejection_burst_window_seconds, "rejection_burst_window_seconds")
        check_positive(self.accuracy_drop_threshold, "accuracy_drop_threshold")
        check_positive(self.drift_psi_threshold, "drift_psi_threshold")
        check_positive(self.drift_mean_shift_threshold, "drift_mean_shift_threshold")
        check_int(self.drift_min_rows, "drift_min_rows", low=1)
        check_number(self.prediction_drift_threshold, "prediction_drift_threshold", low=0, high=1)
        check_int(self.prediction_drift_min_examples, "prediction_drift_min_examples", low=1)


@dataclass(frozen=True)
class ServiceConfig:
    """The service's settings: the task it serves, round defaults, limits, alert rules.

    ``retry_after_seconds`` is what a client polling for work is told to wait;
    ``max_update_bytes`` bounds an update body; ``seed`` seeds client selection.

    The cohort rule of evaluate, stats and features tasks (:meth:`CoordinatorService.
    create_tasks`): one request must target at least ``min_cohort`` distinct clients, and no
    client may be targeted by two tasks of one kind created less than
    ``cohort_window_seconds`` apart, so that no answer can be singled out by asking one
    device, or by asking the same cohort again after one device changed. ``min_cohort`` 1
    switches the whole rule off (the window included); ``cohort_window_seconds`` 0 switches
    off the window alone.

    ``privacy_budget`` (epsilon; ``None``: none): a round whose commit would take the
    production lineage's epsilon over it, or any round without DP, is not started
    (:mod:`coordinator.privacy`).
    """

    task: str
    rounds: RoundConfig = field(default_factory=RoundConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    retry_after_seconds: float = 10.0
    max_update_bytes: int = 64 << 20
    seed: int | None = None
    min_cohort: int = DEFAULT_MIN_COHORT
    cohort_window_seconds: float = DEFAULT_COHORT_WINDOW_SECONDS
    privacy_budget: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a non-empty name, got {self.task!r}")
        check_positive(self.retry_after_seconds, "retry_after_seconds")
        check_int(self.max_update_bytes, "max_update_bytes", low=1)
        check_int(self.min_cohort, "min_cohort", low=1, high=MAX_MIN_COHORT)
        check_number(
            self.cohort_window_seconds, "cohort_window_seconds", low=0.0, high=30 * 86400.0
        )
        if self.privacy_budget is not None:
            check_number(
                self.privacy_budget, "privacy_budget", low=0.0, low_inclusive=False, high=1e6
            )
