"""Synchronous rounds against FedBuff on a simulated clock, with slow devices (digits).

The fleet is the digits training split shared out among ``num_clients`` devices (label skew
from a Dirichlet draw). Every device trains the bundle's head with the on-device train step
(:meth:`edge_client.EdgeModel.train`: the bundle's ``trainable.tflite``, backbone frozen)
from the head of the version its task names. A task's simulated duration is
``seconds_per_example * examples * epochs`` times the device's speed factor (``slow_factor``
for a ``slow_fraction`` of the devices drawn from ``seed``, or the factors of a trace)
and a log-normal jitter (``jitter`` is its sigma); nothing waits on the real clock.

Devices are online only part of the time when the config says so (default: always
online). With ``online_fraction`` P below 1, each device's time is cut into sessions of
``session_seconds`` and each session is online with probability P, drawn independently
per device and session from ``seed``; a trace's ``online`` windows (``[start, end)`` in
simulated seconds, per device) replace that, and a device is offline after its last
window. An offline device does not poll; one that finishes training while offline
delivers its update when it next comes online (an update whose device never comes back
is lost: the sync run stops with an error, the async run counts it as dropped). Both
modes see the same schedule.

Both modes run the real :class:`~coordinator.CoordinatorService` (a memory store, the
pretrained bundle as ``v1``, a registered client per device, the simulated clock): devices
poll :meth:`~coordinator.CoordinatorService.next_task`, train the task's version with the
task's epochs and learning rate, and submit the delta as an update.

- **sync**: the service's rounds select ``concurrency`` devices, all train on the current
  model, and the round ends when the slowest of them is done; the commit is FedAvg.
- **async** (the service's ``mode`` ``async``, FedBuff): ``concurrency`` devices train at any
  time; an idle device that polls gets a task on the current production version, and its
  update names that task, so the service knows its staleness when it arrives. The service
  buffers ``buffer_size`` updates weighted by ``1/sqrt(1 + staleness)``, refuses those
  staler than ``max_staleness`` (counted as dropped) and commits the buffered mean. A
  device that finishes is replaced by an idle one the service gives a task.

Both runs record the test accuracy of every new model against simulated time, so they are
compared on time to a target accuracy (:func:`compare`: the sync run's final accuracy).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.data import split_task
from coordinator import (
    ArtifactStore,
    CoordinatorService,
    MemoryStore,
    RoundConfig,
    ServiceConfig,
    UpdateSubmission,
)
from coordinator.errors import CoordinatorError
from edge_client import EdgeModel
from fedge.data import load_task
from fedge.data.partition import dirichlet
from fedge.errors import ConfigError
from fedge.fedbuff import FedBuffConfig
from fedge.messages import Task, TaskConfig
from fedge.validation import check_fraction, check_int, check_number
from fedge.weights import Weights
from simulations.baseline import evaluate_head
from simulations.errors import SimulationError
from simulations.native_engine import SimulatedClock
from simulations.pretrain import Pretrained

__all__ = [
    "MODES",
    "AsyncSimConfig",
    "Availability",
    "Comparison",
    "Device",
    "SimRun",
    "compare",
    "load_speed_trace",
    "load_trace",
    "run_simulated",
]

MODES = ("sync", "async")
_DEADLINE = 30 * 86400.0  # no task expires in a simulated run


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
    slow_fraction: float = 0.3
    slow_factor: float = 5.0
    speeds: tuple[float, ...] | None = None
    """Per-device speed factors from a trace (overrides slow_fraction/slow_factor)."""
    online: tuple[tuple[tuple[float, float], ...], ...] | None = None
    """Per-device online windows ``(start, end)`` in simulated seconds, from a trace
    (overrides online_fraction/session_seconds)."""
    online_fraction: float = 1.0
    """Chance that a device is online in each of its sessions (1: always online)."""
    session_seconds: float = 60.0
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
        FedBuffConfig(self.buffer_size, self.max_staleness)
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
        check_fraction(self.online_fraction, "online_fraction", zero_ok=False, one_ok=True)
        check_number(self.session_seconds, "session_seconds", low=0.0, low_inclusive=False)
        if self.online is not None:
            _check_windows(self.online, self.num_clients, "the online trace")


def _check_windows(online: object, num_clients: int, where: str) -> None:
    """Refuse online windows that are not one list a device of sorted, non-overlapping
    ``[start, end]`` pairs with ``0 <= start < end``."""
    if not isinstance(online, (list, tuple)) or len(online) != num_clients:
        count = len(online) if isinstance(online, (list, tuple)) else "no"
        raise ConfigError(
            f"{where} has {count} devices' online windows, expected one list a device "
            f"({num_clients})"
        )
    for i, windows in enumerate(online):
        if not isinstance(windows, (list, tuple)):
            raise ConfigError(f"{where}: device {i}'s online windows are not a list")
        last = 0.0
        for window in windows:
            if (
                not isinstance(window, (list, tuple))
                or len(window) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
            ):
                raise ConfigError(
                    f"{where}: device {i}'s online window {window!r} is not [start, end]"
                )
            start, end = float(window[0]), float(window[1])
            if not (last <= start < end < float("inf")):
                raise ConfigError(
                    f"{where}: device {i}'s online window {window!r} must have "
                    f"0 <= start < end and come after the previous one"
                )
            last = end


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


def load_trace(
    path: str | Path,
) -> tuple[tuple[float, ...], tuple[tuple[tuple[float, float], ...], ...] | None]:
    """The speed factors and, when the file has them, the online windows of a JSON trace:
    ``{"speeds": [1.0, 5.0, ...], "online": [[[0, 300], [900, 1200]], ...]}`` (``online``:
    a list a device of ``[start, end]`` windows in simulated seconds, sorted)."""
    speeds = load_speed_trace(path)
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if "online" not in document:
        return speeds, None
    online = document["online"]
    _check_windows(online, len(speeds), str(path))
    return speeds, tuple(tuple((float(a), float(b)) for a, b in windows) for windows in online)


class Availability:
    """When each device is online (see the module's docstring)."""

    _LOOKAHEAD = 100_000  # sessions searched for the next online one

    def __init__(self, config: AsyncSimConfig) -> None:
        self.config = config
        self.always = config.online is None and config.online_fraction == 1.0
        self._sessions: dict[tuple[int, int], bool] = {}

    def _session(self, device: int, k: int) -> bool:
        key = (device, k)
        if key not in self._sessions:
            rng = np.random.default_rng([self.config.seed, 5, device, k])
            self._sessions[key] = bool(rng.random() < self.config.online_fraction)
        return self._sessions[key]

    def next_online(self, device: int, t: float) -> float | None:
        """The first time at or after ``t`` when ``device`` is online (None: never)."""
        if self.always:
            return t
        if self.config.online is not None:
            for start, end in self.config.online[device]:
                if t < end:
                    return max(t, start)
            return None
        length = self.config.session_seconds
        first = int(t // length)
        for k in range(first, first + self._LOOKAHEAD):
            if self._session(device, k):
                return max(t, k * length)
        return None

    def online(self, device: int, t: float) -> bool:
        """Whether ``device`` is online at simulated time ``t``."""
        return self.next_online(device, t) == t


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
    events: tuple[tuple[float, int, str], ...] = ()
    """``(simulated seconds, device, "poll" | "deliver")``: each poll that got a task and
    each update's delivery."""

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
        self.bundle_dir = pretrained.bundle_dir
        self.availability = Availability(config)

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

    def train(self, device: Device, start: Weights, task: int, config: TaskConfig) -> Weights:
        """The device's on-device training as its task configures it."""
        trained, _ = self.model.train(
            device.x,
            device.y,
            start=start,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            rng=np.random.default_rng([self.config.seed, 2, task, device.index]),
        )
        return trained

    def accuracy(self, head: Weights) -> float:
        return evaluate_head(self.model, self.test_x, self.test_y, head=head).accuracy


class _Service:
    """The coordinator service in one mode over a memory store, on the simulated clock, with
    the pretrained bundle as v1 and a registered client per device."""

    def __init__(self, fleet: _Fleet, workdir: Path, mode: str) -> None:
        config = fleet.config
        self.clock = SimulatedClock()
        self.start = self.clock.time
        rounds: dict[str, object] = {
            "clients_per_round": config.concurrency,
            "min_clients": config.concurrency,
            "deadline_seconds": _DEADLINE,
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "continuous": True,
            "quarantine": False,
        }
        if mode == "async":
            rounds.update(
                mode="async", buffer=config.buffer_size, max_staleness=config.max_staleness
            )
        self.service = CoordinatorService(
            store=MemoryStore(),
            artifacts=ArtifactStore(workdir / mode / "artifacts"),
            config=ServiceConfig(
                task="digits",
                rounds=RoundConfig.from_dict(rounds),
                seed=config.seed,
                min_cohort=1,
            ),
            now=self.clock,
        )
        self.service.import_bundle(fleet.bundle_dir)
        self.clients = [
            self.service.authenticate(self.service.register_client().token) for _ in fleet.devices
        ]
        self.device_of = {c.client_id: i for i, c in enumerate(self.clients)}
        self._weights: dict[str, Weights] = {}

    def at(self, seconds: float) -> None:
        self.clock.time = self.start + seconds

    def weights(self, version: str) -> Weights:
        if version not in self._weights:
            self._weights[version] = self.service.registry.weights(self.service.get_model(version))
        return self._weights[version]

    def production(self) -> Weights:
        return self.weights(self.service.get_model("current").version)

    def submit(self, fleet: _Fleet, device: int, task: Task, number: int) -> None:
        """Train ``task`` on ``device`` and submit the delta (what a device's reply is)."""
        assert task.round_id is not None
        base = self.weights(task.model_version)
        trained = fleet.train(fleet.devices[device], base, number, task.config)
        self.service.submit_update(
            self.clients[device],
            UpdateSubmission(
                round_id=task.round_id,
                task_id=task.task_id,
                num_examples=len(fleet.devices[device].y),
                idempotency_key=f"update-{number}",
                body=trained.delta(base).to_bytes(),
            ),
        )


def _run_sync(fleet: _Fleet, workdir: Path) -> SimRun:
    config = fleet.config
    rng = np.random.default_rng([config.seed, 3])
    sim = _Service(fleet, workdir, "sync")
    clock = 0.0
    curve = [(0.0, fleet.accuracy(sim.production()))]
    used = 0
    events: list[tuple[float, int, str]] = []
    availability = fleet.availability
    for _ in range(config.rounds):
        sim.service.tick()  # opens the next round and selects its clients
        (round_,) = sim.service.store.list_rounds(("collecting",))
        end = clock
        for client_id in round_.selected:
            device = sim.device_of[client_id]
            poll = availability.next_online(device, clock)
            if poll is None:
                raise SimulationError(
                    f"sync round {round_.round_id} selected device {device}, which is never "
                    f"online after {clock:.1f} s"
                )
            task = sim.service.next_task(sim.clients[device])
            assert task is not None
            finish = poll + fleet.duration(fleet.devices[device], rng)
            deliver = availability.next_online(device, finish)
            if deliver is None:
                raise SimulationError(
                    f"sync round {round_.round_id} waits on device {device}, which is never "
                    f"online after {finish:.1f} s"
                )
            events += [(poll, device, "poll"), (deliver, device, "deliver")]
            end = max(end, deliver)
            sim.submit(fleet, device, task, used)
            used += 1
        if sim.service.get_round(round_.round_id).state != "committed":
            raise SimulationError(f"sync round {round_.round_id} did not commit")
        clock = end
        sim.at(clock)
        curve.append((clock, fleet.accuracy(sim.production())))
    return SimRun("sync", tuple(curve), used, 0, 0.0, 0, tuple(sorted(events)))


def _run_async(fleet: _Fleet, workdir: Path, *, until: float, target: float | None) -> SimRun:
    config = fleet.config
    rng = np.random.default_rng([config.seed, 4])
    sim = _Service(fleet, workdir, "async")
    sim.service.tick()  # opens the first buffer
    curve = [(0.0, fleet.accuracy(sim.production()))]
    used, dropped, staleness_sum, staleness_max = 0, 0, 0.0, 0
    tasks = 0
    availability = fleet.availability
    events: list[tuple[float, int, str]] = []
    # (delivery time, task number, device, task): an update, delivered when its device is
    # online after training (task None: a lost update, or number -1: a wake-up for the
    # slots no online device could take)
    running: list[tuple[float, int, int, Task | None]] = []
    busy: set[int] = set()
    waiting = 0  # slots waiting for an idle device to come online

    def start(now: float) -> None:
        """Hand the current version to an idle online device (one that has no update in
        the collecting buffer yet: the service gives it a task)."""
        nonlocal tasks, waiting
        idle = [i for i in range(len(fleet.devices)) if i not in busy]
        online = [i for i in idle if availability.online(i, now)]
        if not online and idle:
            waiting += 1
            wake = [t for i in idle if (t := availability.next_online(i, now)) is not None]
            if wake:
                heapq.heappush(running, (min(wake), -1, -1, None))
            return
        for i in rng.permutation(online).tolist():
            task = sim.service.next_task(sim.clients[i])
            if task is not None:
                busy.add(i)
                finish = now + fleet.duration(fleet.devices[i], rng)
                deliver = availability.next_online(i, finish)
                events.append((now, i, "poll"))
                if deliver is None:
                    heapq.heappush(running, (finish, tasks, i, None))
                else:
                    heapq.heappush(running, (deliver, tasks, i, task))
                tasks += 1
                return

    for _ in range(config.concurrency):
        start(0.0)
    while running:
        now, number, i, task = heapq.heappop(running)
        if now > until:
            break
        sim.at(now)
        if number == -1:
            slots, waiting = waiting, 0
            for _ in range(slots):
                start(now)
            continue
        if task is None:  # trained, but its device never comes back online
            dropped += 1
            start(now)
            continue
        busy.discard(i)
        events.append((now, i, "deliver"))
        version = sim.service.get_model("current").version
        try:
            sim.submit(fleet, i, task, number)
        except CoordinatorError as exc:
            # too stale, or the device's update already in this buffer came from the
            # task of an earlier one (a late delivery)
            if exc.code not in ("too_stale", "duplicate_update"):
                raise
            dropped += 1
        committed = sim.service.get_model("current").version
        if committed != version:
            round_ = next(r for r in sim.service.list_rounds() if r.result_version == committed)
            count = int(round_.measurements["count"])
            used += count
            staleness_sum += count * round_.measurements["staleness_mean"]
            staleness_max = max(staleness_max, int(round_.measurements["staleness_max"]))
            accuracy = fleet.accuracy(sim.production())
            curve.append((now, accuracy))
            if target is not None and accuracy >= target:
                break
        start(now)
    mean = staleness_sum / used if used else 0.0
    return SimRun("async", tuple(curve), used, dropped, mean, staleness_max, tuple(events))


@contextlib.contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        yield Path(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="fedge-async-") as temporary:
        yield Path(temporary)


def run_simulated(
    config: AsyncSimConfig,
    pretrained: Pretrained,
    mode: str,
    *,
    until: float = float("inf"),
    target: float | None = None,
    workdir: Path | None = None,
) -> SimRun:
    """One run in ``mode`` (``sync``: ``config.rounds`` rounds; ``async``: until simulated
    time ``until`` or the first commit reaching ``target``, whichever comes first); the
    service's artifacts go under ``workdir`` (default: a temporary directory)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "async" and until == float("inf") and target is None:
        raise ConfigError("an async run needs a time limit or a target accuracy")
    fleet = _Fleet(config, pretrained)
    with _workdir(workdir) as root:
        if mode == "sync":
            return _run_sync(fleet, root)
        return _run_async(fleet, root, until=until, target=target)


def compare(
    config: AsyncSimConfig, pretrained: Pretrained, *, workdir: Path | None = None
) -> Comparison:
    """The sync run, then FedBuff on the same fleet with the same simulated time at most,
    each one's time to the sync run's final accuracy."""
    fleet = _Fleet(config, pretrained)
    with _workdir(workdir) as root:
        sync = _run_sync(fleet, root)
        target = sync.final_accuracy
        fedbuff = _run_async(fleet, root, until=sync.seconds, target=target)
    sync_seconds = sync.time_to(target)
    assert sync_seconds is not None  # its own final model reached it
    return Comparison(sync, fedbuff, target, sync_seconds, fedbuff.time_to(target))
