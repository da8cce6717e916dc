"""The Ray engine: the native engine's rounds with the simulated clients on Ray actors.

Everything but the fleet is the native engine (:func:`simulations.native_engine.run_native`):
the same coordinator service, rounds, selection and evaluation. The clients run on
:class:`RayFleet`: ``actors`` Ray actors, each holding a
:class:`~simulations.fleet.ClientRunner` (the real :func:`edge_client.handle` over its
clients' own rows, as a native worker process does) and owning every ``actors``-th client,
so a device's state lives in one actor. Jobs stream as in the native fleet: each actor has
at most ``window`` jobs in flight and every outcome is handed back as soon as it is ready.

Without an address, :func:`ray_session` starts a local Ray for the run (``num_cpus`` CPUs,
no dashboard, its logs in a temporary directory) and shuts it down at the end, so no Ray
process outlives the run. With an address (``ray://host:10001`` or ``host:6379``) it
connects to that cluster instead and leaves it running: that is the only change to scale
out. Each model version's bundle travels to the actors through Ray's object store (once
per version), and every actor keeps its bundles and its clients' secure-aggregation
secrets in a temporary folder of its own, so the nodes share no file system with this
process; they need fedge (and its edge dependencies) installed.

Ray is imported only here, and only when this engine runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError
from fedge.fileio import publish_directory
from simulations.errors import FleetError, SimulationError
from simulations.fleet import DEFAULT_WINDOW, ClientRunner, Fleet
from simulations.fleet_wire import FleetData, Job, Outcome
from simulations.native_engine import NativeOptions, run_native
from simulations.report import EngineResult, ProgressSink
from simulations.scenario import Scenario

__all__ = ["RayFleet", "RayOptions", "ray_available", "ray_session", "run_ray"]

logger = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 10.0
_INSTALL_HINT = "the ray engine needs Ray: pip install 'fedge[ray]'"


def ray_available() -> bool:
    """Whether Ray can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class RayOptions:
    """Where the Ray engine runs its actors."""

    address: str | None = None
    """An existing cluster (``ray://host:10001`` or ``host:port``); None: a local Ray."""
    num_cpus: int = 2
    """CPUs of the local Ray (ignored with an address)."""
    actors: int = 2
    """Client actors (no more than there are clients)."""
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        for name in ("num_cpus", "actors", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if self.address is not None and not self.address.strip():
            raise ConfigError("the Ray address is empty")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise SimulationError(_INSTALL_HINT) from exc
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Ray, started locally (and shut down at the end) or connected to ``options.address``."""
    ray = _import_ray()
    if ray.is_initialized():
        raise SimulationError("Ray is already initialized in this process")
    package_root = str(Path(__file__).resolve().parents[1])
    runtime_env = {
        "env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    }
    with contextlib.ExitStack() as stack:
        if options.address is None:
            logs = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedge-ray-"))
            runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            )
            ray.init(
                num_cpus=options.num_cpus,
                include_dashboard=False,
                _temp_dir=logs,
                log_to_driver=False,
                configure_logging=False,
                runtime_env=runtime_env,
            )
            logger.info("local Ray started with %d CPUs (logs in %s)", options.num_cpus, logs)
        else:
            try:
                ray.init(
                    address=options.address,
                    log_to_driver=False,
                    configure_logging=False,
                    runtime_env=runtime_env,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SimulationError(
                    f"cannot connect to the Ray cluster at {options.address}: {exc}"
                ) from exc
            logger.info("connected to the Ray cluster at %s", options.address)
        try:
            yield ray
        finally:
            ray.shutdown()


class _ClientActor:
    """One Ray actor: a :class:`ClientRunner` over the clients it owns, with its bundles and
    its clients' secure-aggregation secrets in a folder of its own on its node."""

    def __init__(self, data: FleetData) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="fedge-ray-actor-"))
        self._bundles = self._dir / "bundles"
        self._bundles.mkdir()
        local = dataclasses.replace(
            data,
            bundles_root=str(self._bundles),
            secrets_root=None if data.secrets_root is None else str(self._dir / "devices"),
        )
        self._runner = ClientRunner(local, num_threads=1)

    def ready(self) -> int:
        return os.getpid()

    def install(self, version: str, files: dict[str, bytes]) -> None:
        """Write the bundle ``version`` (file name -> bytes) where the clients load it."""
        target = self._bundles / version
        if target.is_dir():
            return
        staging = self._bundles / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name, content in files.items():
            (staging / name).write_bytes(content)
        publish_directory(staging, target)

    def run(self, job: Job) -> Outcome:
        return self._runner.run(job)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


class RayFleet:
    """The :class:`~simulations.fleet.Fleet` interface over Ray actors (module docstring)."""

    def __init__(self, ray: Any, data: FleetData, *, actors: int, window: int) -> None:
        ids = data.client_ids()
        actors = max(1, min(actors, len(ids)))
        self._ray = ray
        self._bundles = Path(data.bundles_root)
        self._shipped: set[str] = set()
        self._owner = {client_id: i % actors for i, client_id in enumerate(ids)}
        self._window = window
        remote = ray.remote(num_cpus=1, max_restarts=0)(_ClientActor)
        self._actors: list[Any] = []
        try:
            for index in range(actors):
                owned = [c for c in ids if self._owner[c] == index]
                self._actors.append(remote.remote(data.only(owned)))
            pids = ray.get([actor.ready.remote() for actor in self._actors])
        except ray.exceptions.RayError as exc:
            self.close()
            raise FleetError(f"the Ray client actors failed to start: {exc}") from exc
        except BaseException:
            self.close()
            raise
        logger.info("%d Ray client actors ready: pids %s", actors, pids)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield every job's outcome, in completion order, as each is ready."""
        ray = self._ray
        pending: list[collections.deque[Job]] = [collections.deque() for _ in self._actors]
        for job in jobs:
            if job.client_id not in self._owner:
                raise FleetError(f"no simulated client {job.client_id!r}")
            pending[self._owner[job.client_id]].append(job)
            self._ship(job)
        in_flight: dict[Any, int] = {}
        counts = [0] * len(self._actors)

        def refill(index: int) -> None:
            while counts[index] < self._window and pending[index]:
                ref = self._actors[index].run.remote(pending[index].popleft())
                in_flight[ref] = index
                counts[index] += 1

        for index in range(len(self._actors)):
            refill(index)
        try:
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                ref = ready[0]
                index = in_flight.pop(ref)
                counts[index] -= 1
                try:
                    outcome: Outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise FleetError(f"Ray client actor {index} failed: {exc}") from exc
                refill(index)
                yield outcome
        finally:
            # A caller that stops early: drop what is still queued and wait out what runs,
            # so the next run sees none of it.
            for queued in pending:
                queued.clear()
            if in_flight:
                with contextlib.suppress(Exception):
                    ray.wait(list(in_flight), num_returns=len(in_flight))

    def _ship(self, job: Job) -> None:
        """Send the bundle of the job's model version to every actor, once: the actors may
        run on other machines, which do not see this one's files."""
        version = job.task.get("model_version")
        if not isinstance(version, str) or version in self._shipped:
            return
        folder = self._bundles / version
        if not folder.is_dir():
            return
        files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
        ref = self._ray.put(files)
        for actor in self._actors:
            actor.install.remote(version, ref)  # runs before the actor's later calls
        self._shipped.add(version)

    def close(self) -> None:
        """Stop every actor (each removes its folder first); idempotent."""
        actors, self._actors = self._actors, []
        with contextlib.suppress(Exception):
            self._ray.wait(
                [actor.close.remote() for actor in actors],
                num_returns=len(actors),
                timeout=_CLOSE_TIMEOUT,
            )
        for actor in actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)

    def __enter__(self) -> RayFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_ray(
    scenario: Scenario,
    options: NativeOptions | None = None,
    ray_options: RayOptions | None = None,
    *,
    progress: ProgressSink | None = None,
) -> EngineResult:
    """Run ``scenario`` as :func:`~simulations.native_engine.run_native` does, its clients
    on Ray actors (``ray_options``; a local Ray by default). Its ``seconds`` include
    starting and stopping Ray."""
    ray_options = ray_options or RayOptions()
    started = time.perf_counter()
    with ray_session(ray_options) as ray:

        def open_fleet(data: FleetData) -> Fleet:
            return RayFleet(ray, data, actors=ray_options.actors, window=ray_options.window)

        result = run_native(scenario, options, progress=progress, open_fleet=open_fleet)
    details = {
        **dict(result.details),
        "ray_address": ray_options.address,
        "ray_actors": ray_options.actors,
    }
    details.pop("workers", None)
    if ray_options.address is None:
        details["ray_num_cpus"] = ray_options.num_cpus
    # The engine's time includes starting and stopping Ray (the fleet's set-up).
    seconds = time.perf_counter() - started
    return dataclasses.replace(result, engine="ray", details=details, seconds=seconds)
