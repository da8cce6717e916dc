"""Synchronous rounds against FedBuff on a simulated clock, with slow devices (digits).

The fleet is the digits training split shared out among ``num_clients`` devices (label skew
from a Dirichlet draw). Every device trains the bundle's head with the on-device train step
(:meth:`edge_client.EdgeModel.train`: the bundle's ``trainable.tflite``, backbone frozen)
from the head of the version it was given. A task's simulated duration is
``seconds_per_example * examples * epochs`` times the device's speed factor (``slow_factor``
for a ``slow_fraction`` of the devices drawn from ``seed``, or the factors of a trace)
and a log-normal jitter (``jitter`` is its sigma); nothing waits on the real clock.

- **sync**: each round draws ``concurrency`` devices, all train on the current model, and
  the round ends when the slowest of them is done; the new model is the example-weighted
  mean of their heads (FedAvg).
- **async** (:mod:`fedge.fedbuff`): ``concurrency`` devices train at any time; each is handed
  the current server version when it starts and its update names that base version, so the
  server knows its staleness when it arrives. The server buffers ``buffer_size`` updates,
  each weighted by ``1/sqrt(1 + staleness)``, drops those staler than ``max_staleness``, and
  commits the buffered mean with ``server_learning_rate``. A device that finishes is
  replaced by a device drawn among the idle ones.

Both runs record the test accuracy of every new model against simulated time, so they are
compared on time to a target accuracy (:func:`compare`: the sync run's final accuracy).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.data import split_task
from edge_client import EdgeModel
from fedge.data import load_task
from fedge.data.partition import dirichlet
from fedge.errors import ConfigError
from fedge.fedbuff import FedBuffBuffer, FedBuffConfig
from fedge.validation import check_fraction, check_int, check_number
from fedge.weights import Weights
from simulations.baseline import evaluate_head
from simulations.pretrain import Pretrained

__all__ = [
    "MODES",
    "AsyncSimConfig",
    "Comparison",
    "Device",
    "SimRun",
    "compare",
    "load_speed_trace",
    "run_simulated",
]

MODES = ("sync", "async")


@dataclass(frozen=True)
class AsyncSimConfig:
    """The fleet, its speeds and both modes' settings."""

    num_clients: int = 30
    alpha: float = 5.0
    """Dirichlet concentration of the devices' label mix."""
    min_rows: int = 20
    epochs: int = 2
    learning_rate: float = 0.02
    concurrency: int = 10
    """Devices training at once: a sync round's cohort, async's parallelism."""
    rounds: int = 15
    """Sync rounds (the async run gets the same simulated time at most)."""
    buffer_size: int = 5
    max_staleness: int = 10
    server_learning_rate: float = 1.0
    slow_fraction: float = 0.3
    slow_factor: float = 5.0
    speeds: tuple[float, ...] | None = None
    """Per-device speed factors from a trace (overrides slow_fraction/slow_factor)."""
    seconds_per_example: float = 0.05
    jitter: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.num_clients, "num_clients", low=2)
        check_number(self.alpha, "alpha", low=0.0, low_inclusive=False)
        check_int(self.min_rows, "min_rows", low=1)
        check_int(self.epochs, "epochs", low=1)
        check_number(self.learning_rate, "learning_rate", low=0.0, low_inclusive=False)
        check_int(self.concurrency, "concurrency", low=1, high=self.num_clients)
        check_int(self.rounds, "rounds", low=1)
        FedBuffConfig(self.buffer_size, self.max_staleness, self.server_learning_rate)
        check_fraction(self.slow_fraction, "slow_fraction", zero_ok=True, one_ok=True)
        check_number(self.slow_factor, "slow_factor", low=1.0)
        check_number(self.seconds_per_example, "seconds_per_example", low=0.0, low_inclusive=False)
        check_number(self.jitter, "jitter", low=0.0)
        if self.speeds is not None:
            if len(self.speeds) != self.num_clients:
                raise ConfigError(
                    f"the speed trace has {len(self.speeds)} devices, num_clients is "
                    f"{self.num_clients}"
                )
            for i, speed in enumerate(self.speeds):
                check_number(speed, f"speed of device {i}", low=0.0, low_inclusive=False)


def load_speed_trace(path: str | Path) -> tuple[float, ...]:
    """Per-device speed factors from a JSON file: ``{"speeds": [1.0, 5.0, ...]}`` (a task
    on a device with factor 5 takes five times as long as on one with factor 1)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the speed trace {path}: {exc}") from exc
    speeds = document.get("speeds") if isinstance(document, dict) else None
    if not isinstance(speeds, list) or not speeds:
        raise ConfigError(f"{path}: expected {{'speeds': [factor, ...]}} with one factor a device")
    return tuple(check_number(s, f"{path}: speed", low=0.0, low_inclusive=False) for s in speeds)


@dataclass(frozen=True)
class Device:
    index: int
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    speed: float

    @property
    def slow(self) -> bool:
        return self.speed > 1.0


@dataclass(frozen=True)
class SimRun:
    """One mode's run: ``(simulated seconds, test accuracy)`` after every new model, the
    updates it used and dropped, and the staleness of the async commits."""

    mode: str
    curve: tuple[tuple[float, float], ...]
    updates_used: int
    updates_dropped: int
    mean_staleness: float
    max_staleness: int

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1][1]

    @property
    def seconds(self) -> float:
        return self.curve[-1][0]

    def time_to(self, accuracy: float) -> float | None:
        """Simulated seconds until a model first reached ``accuracy`` (None: never)."""
        for seconds, value in self.curve:
            if value >= accuracy:
                return seconds
        return None


@dataclass(frozen=True)
class Comparison:
    """Both runs and each one's time to the sync run's final accuracy."""

    sync: SimRun
    fedbuff: SimRun
    target: float
    sync_seconds: float
    async_seconds: float | None

    def table(self) -> str:
        def when(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f}"

        rows = [
            ("", "sync", "async (FedBuff)"),
            (
                "final accuracy",
                f"{self.sync.final_accuracy:.4f}",
                f"{self.fedbuff.final_accuracy:.4f}",
            ),
            (
                f"time to {self.target:.4f} (sim s)",
                when(self.sync_seconds),
                when(self.async_seconds),
            ),
            ("models committed", str(len(self.sync.curve) - 1), str(len(self.fedbuff.curve) - 1)),
            (
                "updates used / dropped",
                f"{self.sync.updates_used} / {self.sync.updates_dropped}",
                f"{self.fedbuff.updates_used} / {self.fedbuff.updates_dropped}",
            ),
            (
                "staleness mean / max",
                "0 / 0",
                f"{self.fedbuff.mean_staleness:.2f} / {self.fedbuff.max_staleness}",
            ),
        ]
        return "\n".join(f"{a:<28}{b:>14}{c:>18}" for a, b, c in rows)


class _Fleet:
    def __init__(self, config: AsyncSimConfig, pretrained: Pretrained) -> None:
        if pretrained.config.task != "digits":
            raise ConfigError("the asynchronous simulation runs the digits task")
        self.config = config
        self.model = EdgeModel.load(pretrained.bundle_dir)
        dataset = load_task("digits")
        train, test = split_task(
            dataset, test_fraction=pretrained.config.test_fraction, seed=pretrained.config.seed
        )
        self.test_x = self.model.transform(test.columns)
        self.test_y = np.asarray(test.labels, dtype=np.int64)
        x = self.model.transform(train.columns)
        y = np.asarray(train.labels, dtype=np.int64)
        partition = dirichlet(
            np.arange(len(train)),
            y,
            num_clients=config.num_clients,
            alpha=config.alpha,
            seed=config.seed,
            min_size=config.min_rows,
        )
        speeds = self._speeds()
        self.devices = [
            Device(i, x[split.train], y[split.train], speeds[i])
            for i, split in enumerate(partition.values())
        ]
        self.initial = self.model.global_weights

    def _speeds(self) -> tuple[float, ...]:
        config = self.config
        if config.speeds is not None:
            return config.speeds
        rng = np.random.default_rng([config.seed, 1])
        slow = set(
            rng.choice(
                config.num_clients,
                size=round(config.slow_fraction * config.num_clients),
                replace=False,
            ).tolist()
        )
        return tuple(config.slow_factor if i in slow else 1.0 for i in range(config.num_clients))

    def duration(self, device: Device, rng: np.random.Generator) -> float:
        config = self.config
        base = config.seconds_per_example * len(device.y) * config.epochs * device.speed
        return float(base * np.exp(rng.normal(0.0, config.jitter)))

    def train(self, device: Device, start: Weights, task: int) -> Weights:
        trained, _ = self.model.train(
            device.x,
            device.y,
            start=start,
            epochs=self.config.epochs,
            learning_rate=self.config.learning_rate,
            rng=np.random.default_rng([self.config.seed, 2, task, device.index]),
        )
        return trained

    def accuracy(self, head: Weights) -> float:
        return evaluate_head(self.model, self.test_x, self.test_y, head=head).accuracy


def _run_sync(fleet: _Fleet) -> SimRun:
    config = fleet.config
    rng = np.random.default_rng([config.seed, 3])
    head = fleet.initial
    clock = 0.0
    curve = [(0.0, fleet.accuracy(head))]
    used = 0
    for round_index in range(config.rounds):
        cohort = rng.choice(len(fleet.devices), size=config.concurrency, replace=False)
        total = np.zeros(1)
        sums = {name: np.zeros(t.shape, dtype=np.float64) for name, t in head.items()}
        slowest = 0.0
        for i in sorted(cohort.tolist()):
            device = fleet.devices[i]
            slowest = max(slowest, fleet.duration(device, rng))
            trained = fleet.train(device, head, round_index * config.num_clients + i)
            n = float(len(device.y))
            for name in sums:
                sums[name] += n * (trained[name].astype(np.float64) - head[name])
            total += n
            used += 1
        head = Weights(
            {name: (head[name] + sums[name] / total[0]).astype(np.float32) for name in sums}
        )
        clock += slowest
        curve.append((clock, fleet.accuracy(head)))
    return SimRun("sync", tuple(curve), used, 0, 0.0, 0)


def _run_async(fleet: _Fleet, *, until: float, target: float | None) -> SimRun:
    config = fleet.config
    rng = np.random.default_rng([config.seed, 4])
    server = FedBuffBuffer(
        FedBuffConfig(config.buffer_size, config.max_staleness, config.server_learning_rate),
        fleet.initial,
    )
    curve = [(0.0, fleet.accuracy(server.global_weights))]
    staleness: list[int] = []
    dropped = 0
    tasks = 0
    # (finish time, task number, device, base version, base weights)
    running: list[tuple[float, int, int, int, Weights]] = []
    busy: set[int] = set()

    def start(now: float) -> None:
        nonlocal tasks
        idle = [i for i in range(len(fleet.devices)) if i not in busy]
        i = int(rng.choice(idle))
        busy.add(i)
        finish = now + fleet.duration(fleet.devices[i], rng)
        heapq.heappush(running, (finish, tasks, i, server.version, server.global_weights))
        tasks += 1

    for _ in range(config.concurrency):
        start(0.0)
    while running:
        now, task, i, base_version, base = heapq.heappop(running)
        if now > until:
            break
        busy.discard(i)
        trained = fleet.train(fleet.devices[i], base, task)
        admission, commit = server.offer(f"task-{task}", trained.delta(base), base_version)
        if not admission.accepted:
            dropped += 1
        if commit is not None:
            staleness.extend(commit.staleness)
            accuracy = fleet.accuracy(commit.weights)
            curve.append((now, accuracy))
            if target is not None and accuracy >= target:
                break
        start(now)
    return SimRun(
        "async",
        tuple(curve),
        len(staleness),
        dropped,
        float(np.mean(staleness)) if staleness else 0.0,
        max(staleness, default=0),
    )


def run_simulated(
    config: AsyncSimConfig,
    pretrained: Pretrained,
    mode: str,
    *,
    until: float = float("inf"),
    target: float | None = None,
) -> SimRun:
    """One run in ``mode`` (``sync``: ``config.rounds`` rounds; ``async``: until simulated
    time ``until`` or the first commit reaching ``target``, whichever comes first)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    fleet = _Fleet(config, pretrained)
    if mode == "sync":
        return _run_sync(fleet)
    if until == float("inf") and target is None:
        raise ConfigError("an async run needs a time limit or a target accuracy")
    return _run_async(fleet, until=until, target=target)


def compare(config: AsyncSimConfig, pretrained: Pretrained) -> Comparison:
    """The sync run, then FedBuff on the same fleet with the same simulated time at most,
    each one's time to the sync run's final accuracy."""
    fleet = _Fleet(config, pretrained)
    sync = _run_sync(fleet)
    target = sync.final_accuracy
    fedbuff = _run_async(fleet, until=sync.seconds, target=target)
    sync_seconds = sync.time_to(target)
    assert sync_seconds is not None  # its own final model reached it
    return Comparison(sync, fedbuff, target, sync_seconds, fedbuff.time_to(target))
