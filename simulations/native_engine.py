"""The native engine: the real coordinator service and the real edge client, in memory.

One :class:`~coordinator.CoordinatorService` runs in this process over a temporary store
and artifact directory, with a simulated clock that only moves between rounds, so no
deadline fires while clients work. The store is a :class:`~coordinator.MemoryStore` by
default (it passes the same contract suite as SQLite, and a simulation needs no durability)
or :class:`~coordinator.SQLiteStore`.
It imports the scenario's bundle as ``v1``; every simulated client registers and
authenticates with its own token. Each round:

1. the service opens the round and selects its clients (the scenario's schedule, through
   the service's selection hook: see :class:`PlannedSelector`) and creates their train
   tasks;
2. each selected client asks the service for its next task, which goes, as the task
   document a transport would carry, to the worker that owns the client
   (:mod:`simulations.fleet`); the worker runs the real :func:`edge_client.handle` with a shared
   :class:`~edge_client.ModelCache` whose bundles are materialized from the service's
   registry (round versions share the ``.tflite`` files, so the interpreters are reused);
3. every encoded reply is submitted to the service the moment it arrives (the service
   aggregates the stored updates in a streaming pass when the last one is in), so no more
   than a few updates are ever held in memory; a round with ``compression`` (q8, topk)
   gets the device's compressed payload under its codec;
4. the committed version is evaluated on the test split (the round's ``seconds`` are all
   four steps, its ``eval_seconds`` this one).

A secure round (``secure_aggregation``) runs its SecAgg+ stages after training instead of
step 3 (:mod:`simulations.secure_stages`): the service sees keys, encrypted shares and
masked vectors, never an update. Each round's traffic is the round record's
``bytes_up``/``bytes_down``: the service counts the task and stage documents it serves
and the bodies it receives; the engine reports the model files each device would
download (:class:`DownloadLedger`), which the service never serves here.

After the last round the service creates ``evaluate`` tasks for every client; their
reports give each client's personalized and global holdout accuracy.

With differential privacy (``dp_noise_multiplier``) the round config carries the ``dp_*``
fields: the service's DP-FedAvg clips and noises plain rounds, and in secure rounds the
train tasks tell each device its clip and noise share (:func:`edge_client.secure.begin`).
Every round reports the privacy record of the model version after it (the cumulative
epsilon of its lineage). With a ``privacy_budget`` the service refuses to open a round that
would exceed it: the run stops there and the result says why (``stop_reason``).

With ``transport`` ``rest`` or ``grpc`` the service is also served on loopback in this process
(:mod:`simulations.loopback`) and the devices' side goes over the wire: every task poll
and every reply goes through the edge client's client for that URL
(:func:`edge_client.connect`), each device with its own token; the engine keeps opening
rounds, creating tasks and reading records on the service directly (the operator's side).
Model files still come from the registry mirror (their bytes are counted as above).

Rounds are opened on demand and their versions promoted on commit. Clients visit their rows
in stored order every epoch unless the hyperparameters shuffle: then every round's train
tasks carry the task options ``shuffle_seed`` (the scenario's ``Hyperparams.seed``) and
``shuffle_round`` (the 0-based schedule index), with which the edge client reshuffles each
epoch exactly as :func:`simulations.workload.batch_order` does (see
:func:`edge_client.batch_rng`). This engine hands the tasks over exactly as the service
made them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from coordinator import (
    ArtifactStore,
    CoordinatorService,
    MemoryStore,
    RoundConfig,
    ServiceConfig,
    SQLiteStore,
    Store,
    UpdateSubmission,
)
from coordinator.artifacts import ScratchArtifactStore
from coordinator.codecs import decode_update
from coordinator.privacy import BUDGET_EXHAUSTED
from coordinator.records import ClientRecord, RoundRecord
from edge_client import CompressedUpdate, ModelCache, PersonalizationConfig, TransportError
from edge_client.transport import OutgoingRequest, reply_request
from fedge.bundle import MANIFEST_NAME
from fedge.errors import ConfigError, FedgeError
from fedge.messages import EvalReport, ModelUpdate, Task, decode_message
from fedge.weights import Weights
from simulations.baseline import evaluate_head
from simulations.errors import SimulationError
from simulations.fleet import Fleet, FleetData, Job, Outcome, open_fleet
from simulations.report import ClientGain, EngineResult, ProgressSink, RoundStats
from simulations.scenario import Scenario
from simulations.secure_stages import Dropout, run_secure_round

if TYPE_CHECKING:
    # The device's transports (HTTP, gRPC) load only for a run that serves the coordinator.
    from edge_client import CoordinatorApi

__all__ = [
    "STORES",
    "TRANSPORTS",
    "NativeOptions",
    "PlannedSelector",
    "SimulatedClock",
    "run_native",
]

logger = logging.getLogger(__name__)

STORES = ("memory", "sqlite")
TRANSPORTS = ("memory", "rest", "grpc")
"""How the simulated devices reach the service: in memory (direct calls), REST or gRPC."""
_START_TIME = 1_700_000_000.0
_ROUND_DEADLINE = 3600.0


@dataclass(frozen=True)
class NativeOptions:
    """How the native engine runs (the scenario says what it runs)."""

    workers: int = 2
    aggregator: str = "fedavg"
    aggregator_options: Mapping[str, float] = field(default_factory=dict)
    server_optimizer: str | None = None
    """The round config's strategy fields (see :class:`~coordinator.RoundConfig`)."""
    server_optimizer_options: Mapping[str, float] = field(default_factory=dict)
    store: str = "memory"
    state_dir: Path | None = None
    """Keep the service's database and artifacts here (default: a temporary directory)."""
    personalization: bool = True
    """After the last round, send every client an ``evaluate`` task (personal vs global)."""
    personalize: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    """How each device fine-tunes its personal head (the edge client's defaults)."""
    norm_bound: float = 100.0
    secure_aggregation: bool = False
    """Every round runs SecAgg+ (see :mod:`simulations.secure_stages`)."""
    secagg_clip: float = 1.0
    secagg_degree: int | None = None
    secagg_threshold: int | None = None
    """The round config's ``secagg_*`` fields (None: the protocol's defaults)."""
    dropout: Dropout = field(default_factory=Dropout)
    """The clients of each secure round that stop early (a test knob; none by default)."""
    compression: str = "none"
    compression_options: Mapping[str, float] = field(default_factory=dict)
    """The round config's update codec and its options (``fraction`` for topk)."""
    dp_noise_multiplier: float | None = None
    dp_clip: float = 1.0
    dp_adaptive_clip: bool = False
    dp_clipped_count_stddev: float | None = None
    dp_delta: float | None = None
    """The round config's ``dp_*`` fields (no noise multiplier: no differential privacy)."""
    privacy_budget: float | None = None
    """The service's privacy budget: the run stops at the first round it refuses."""
    transport: str = "memory"
    """How the devices reach the service: ``memory`` (direct calls), ``rest`` or ``grpc``
    (served on loopback in this process; see the module docstring)."""
    round_head: Callable[[int, Weights], None] | None = None
    """Called after each round with its number (from 1) and the global head it ended with
    (``--save-weights every-round``)."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be an int >= 1, got {self.workers!r}")
        if self.store not in STORES:
            raise ConfigError(f"store must be one of {list(STORES)}, got {self.store!r}")
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"transport must be one of {list(TRANSPORTS)}, got {self.transport!r}"
            )
        if self.transport != "memory" and self.secure_aggregation:
            raise ConfigError(
                "secure aggregation runs its stages in memory only: use the memory transport"
            )


class SimulatedClock:
    """The service's clock: it moves only when the simulation advances it."""

    def __init__(self, start: float = _START_TIME) -> None:
        self.time = start

    def __call__(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


class PlannedSelector:
    """The service's :class:`~coordinator.ClientSelector`: the clients the schedule names.

    :meth:`plan` sets the participants of the next round to start; the service takes them
    (and checks them against the registered clients) when it opens that round. A round that
    starts without a plan is an error, never a silent random draw.
    """

    def __init__(self) -> None:
        self._plan: tuple[str, ...] | None = None

    def plan(self, client_ids: Sequence[str]) -> None:
        self._plan = tuple(client_ids)

    def select(
        self, round_id: int, candidates: Sequence[str], count: int, rng: np.random.Generator
    ) -> Sequence[str]:
        plan, self._plan = self._plan, None
        if plan is None:
            raise SimulationError(f"round {round_id} started without planned participants")
        return plan


class BundleMirror:
    """Model versions from the service's registry as bundle directories the clients load.

    Files are hard links into the artifact store (copies where links fail), so a round
    version costs one small weights file and a manifest. The mirror is scratch, rebuilt
    from the registry at will: a version appears by one rename, with no fsync.
    """

    def __init__(self, service: CoordinatorService, root: Path) -> None:
        self._service = service
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, dict[str, tuple[str, int]]] = {}

    def files(self, version: str) -> dict[str, tuple[str, int]]:
        """File name -> (sha256, size) of ``version`` (the manifest included)."""
        if version not in self._files:
            registry = self._service.registry
            model = self._service.get_model(version)
            entries = {}
            for name in registry.file_names(model):
                digest, path = registry.file(model, name)
                entries[name] = (digest, path.stat().st_size)
            self._files[version] = entries
        return self._files[version]

    def ensure(self, version: str) -> Path:
        target = self.root / version
        if (target / MANIFEST_NAME).is_file():
            return target
        registry = self._service.registry
        model = self._service.get_model(version)
        staging = self.root / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in registry.file_names(model):
            _, source = registry.file(model, name)
            try:
                os.link(source, staging / name)
            except OSError:
                shutil.copyfile(source, staging / name)
        os.replace(staging, target)
        return target


class DownloadLedger:
    """Bytes of model files each device downloads for a task: the manifest, and every
    bundle file whose sha256 it does not hold yet (as ``edge_client.BundleStore`` fetches).
    The service never serves these files here, so the engine reports them to it
    (:meth:`~coordinator.CoordinatorService.count_download`) as the files route would."""

    def __init__(self, mirror: BundleMirror) -> None:
        self._mirror = mirror
        self._held: dict[str, frozenset[str]] = {}

    def file_bytes(self, client_id: str, task: Task) -> int:
        size = 0
        files = self._mirror.files(task.model_version)
        held = self._held.get(client_id, frozenset())
        for name, (digest, length) in files.items():
            if name == MANIFEST_NAME or digest not in held:
                size += length
        self._held[client_id] = frozenset(digest for digest, _ in files.values())
        return size


@dataclass
class _Client:
    sim_id: str
    coordinator_id: str
    token: str


def _artifact_store(root: Path, *, keep: bool) -> ArtifactStore:
    """The service's artifacts: durable in a state directory the user chose; in a temporary
    one (removed at the end) held in memory up to a budget, written only where a path is
    needed, never fsynced."""
    return ArtifactStore(root) if keep else ScratchArtifactStore(root)


@contextlib.contextmanager
def _state_dir(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        if any(chosen.iterdir()):
            raise ConfigError(f"the state directory {chosen} must be new or empty")
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="fedge-sim-") as tmp:
        yield Path(tmp)


def run_native(
    scenario: Scenario,
    options: NativeOptions | None = None,
    *,
    progress: ProgressSink | None = None,
    open_fleet: Callable[[FleetData], Fleet] | None = None,
) -> EngineResult:
    """Run ``scenario`` on the coordinator service and the edge client (module docstring).

    ``open_fleet`` starts the fleet the clients run on (default: ``options.workers`` worker
    processes; the Ray engine passes its actors)."""
    options = options or NativeOptions()
    started = time.perf_counter()
    with _state_dir(options.state_dir) as state:
        engine = _NativeRun(scenario, options, state, progress, open_fleet)
        try:
            rounds, gains, head = engine.run()
        finally:
            engine.close()
    return EngineResult(
        engine="native",
        rounds=tuple(rounds),
        final_head=head,
        personalization=tuple(gains),
        seconds=time.perf_counter() - started,
        stop_reason=engine.stop_reason,
        details={
            "workers": options.workers,
            "store": options.store,
            "aggregator": options.aggregator,
            "aggregator_options": dict(options.aggregator_options),
            "server_optimizer": options.server_optimizer,
            "server_optimizer_options": dict(options.server_optimizer_options),
            "rejected_updates": engine.rejected,
            "secure_aggregation": options.secure_aggregation,
            "compression": options.compression,
            "compression_options": dict(options.compression_options),
            "dp_noise_multiplier": options.dp_noise_multiplier,
            "dp_clip": options.dp_clip,
            "dp_adaptive_clip": options.dp_adaptive_clip,
            "dp_clipped_count_stddev": options.dp_clipped_count_stddev,
            "dp_delta": options.dp_delta,
            "privacy_budget": options.privacy_budget,
            "transport": options.transport,
        },
    )


class _Refused(Exception):
    """The service would not open the next round (its reason is the message)."""


class _NativeRun:
    def __init__(
        self,
        scenario: Scenario,
        options: NativeOptions,
        state: Path,
        progress: ProgressSink | None,
        start_fleet: Callable[[FleetData], Fleet] | None = None,
    ) -> None:
        self.scenario = scenario
        self.options = options
        self.progress = progress
        self.rejected = 0
        self.stop_reason: str | None = None
        self.clock = SimulatedClock()
        self.selector = PlannedSelector()
        manifest = scenario.manifest()
        store: Store = MemoryStore()
        if options.store == "sqlite":
            store = SQLiteStore(state / "state.db")
        hp = scenario.hyperparams
        if hp.batch_size != manifest.train_batch_size:
            raise ConfigError(
                f"the batch size {hp.batch_size} is not the bundle's static train batch "
                f"{manifest.train_batch_size}"
            )
        self.service = CoordinatorService(
            store=store,
            artifacts=_artifact_store(state / "artifacts", keep=options.state_dir is not None),
            config=ServiceConfig(
                task=manifest.task,
                rounds=RoundConfig(
                    clients_per_round=max(len(r) for r in scenario.schedule),
                    min_clients=1,
                    deadline_seconds=_ROUND_DEADLINE,
                    epochs=hp.epochs,
                    batch_size=hp.batch_size,
                    learning_rate=hp.learning_rate,
                    aggregator=options.aggregator,
                    aggregator_options=dict(options.aggregator_options),
                    server_optimizer=options.server_optimizer,
                    server_optimizer_options=dict(options.server_optimizer_options),
                    norm_bound=options.norm_bound,
                    continuous=False,
                    auto_promote=True,
                    **self._codec_fields(),
                ),
                seed=scenario.seed,
                # Every client is simulated here and the evaluations stay in this process:
                # no cohort to protect from the operator, and fleets may have under ten.
                min_cohort=1,
                privacy_budget=options.privacy_budget,
            ),
            now=self.clock,
            selector=self.selector,
        )
        self.service.import_bundle(scenario.bundle_dir)
        self.mirror = BundleMirror(self.service, state / "bundles")
        self.downloads = DownloadLedger(self.mirror)
        self.clients: dict[str, _Client] = {}
        for sim_id in scenario.client_ids:
            registration = self.service.register_client(metadata={"simulated_id": sim_id})
            self.clients[sim_id] = _Client(sim_id, registration.client_id, registration.token)
        self.by_coordinator_id = {c.coordinator_id: c for c in self.clients.values()}
        # The engine's own view of the model, for the test split (shares no interpreter
        # with the clients: those live in the workers).
        # The engine's own evaluation reads the bundles it mirrors from its service's
        # registry; the devices' cache (the fleet's) verifies each of them as a device does.
        self.models = ModelCache(self.mirror.ensure, max_versions=2, verify=False)
        self.test_x, self.test_y = self._test_arrays()
        fleet_data = FleetData.build(
            scenario.pool,
            scenario.partition,
            self.mirror.root,
            seed=scenario.seed,
            personalization=options.personalize,
            secrets_root=state / "devices",
        )
        self.fleet = (
            open_fleet(fleet_data, workers=options.workers)
            if start_fleet is None
            else start_fleet(fleet_data)
        )
        self._serving = contextlib.ExitStack()
        self._apis: dict[str, CoordinatorApi] = {}
        self.url: str | None = None
        if options.transport != "memory":
            # Flask, waitress and the gRPC server load only for a run that serves.
            from simulations.loopback import serve_loopback

            try:
                urls = self._serving.enter_context(
                    serve_loopback(self.service, grpc=options.transport == "grpc")
                )
            except BaseException:
                self.fleet.close()
                raise
            self.url = urls.grpc if options.transport == "grpc" else urls.rest
            logger.info("devices reach the service over %s at %s", options.transport, self.url)

    def _codec_fields(self) -> dict[str, Any]:
        """The round config's secure-aggregation and compression fields (when used)."""
        o = self.options
        fields: dict[str, Any] = {}
        if o.secure_aggregation:
            fields.update(
                secure_aggregation=True,
                secagg_clip=o.secagg_clip,
                secagg_degree=o.secagg_degree,
                secagg_threshold=o.secagg_threshold,
            )
        if o.compression != "none":
            fields.update(
                compression=o.compression, compression_options=dict(o.compression_options)
            )
        if o.dp_noise_multiplier is not None:
            fields.update(
                dp_noise_multiplier=o.dp_noise_multiplier,
                dp_clip=o.dp_clip,
                dp_adaptive_clip=o.dp_adaptive_clip,
                dp_clipped_count_stddev=o.dp_clipped_count_stddev,
                dp_delta=o.dp_delta,
            )
        return fields

    def _test_arrays(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        model = self.models.model(self.service.registry.production().version)
        return model.transform(self.scenario.test.columns), np.asarray(self.scenario.test.labels)

    def close(self) -> None:
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                api.close()
        with contextlib.suppress(Exception):
            self._serving.close()
        with contextlib.suppress(Exception):
            self.fleet.close()
        with contextlib.suppress(Exception):
            self.service.store.close()

    def _record(self, client: _Client) -> ClientRecord:
        return self.service.authenticate(client.token)

    def _api(self, client: _Client) -> CoordinatorApi:
        """The device's own client of the served coordinator (rest/grpc transports)."""
        assert self.url is not None
        api = self._apis.get(client.sim_id)
        if api is None:
            from edge_client import connect

            api = connect(self.url, token=client.token)
            self._apis[client.sim_id] = api
        return api

    def _poll(self, client: _Client) -> Task | None:
        """The client's next task: asked of the service, or over the transport."""
        if self.url is None:
            return self.service.next_task(self._record(client))
        try:
            return self._api(client).next_task().task
        except TransportError as exc:
            raise SimulationError(f"the loopback coordinator failed: {exc}") from exc

    def _send(self, client: _Client, outgoing: OutgoingRequest) -> None:
        """Deliver a reply over the transport (a refusal is a FedgeError, as in memory)."""
        try:
            self._api(client).send(outgoing)
        except TransportError as exc:
            raise SimulationError(f"the loopback coordinator failed: {exc}") from exc

    def run(self) -> tuple[list[RoundStats], list[ClientGain], Weights]:
        rounds = []
        total = self.scenario.num_rounds
        for index, participants in enumerate(self.scenario.schedule):
            try:
                rounds.append(self._round(index + 1, total, participants))
            except _Refused as refusal:
                self.stop_reason = str(refusal)
                logger.warning("round %d was not started: %s", index + 1, refusal)
                break
        gains = self._personalization() if self.options.personalization else []
        production = self.service.registry.production()
        return rounds, gains, self.service.registry.weights(production)

    def _round(self, number: int, total: int, participants: Sequence[str]) -> RoundStats:
        started = time.perf_counter()
        self.selector.plan([self.clients[c].coordinator_id for c in participants])
        round_ = self.service.open_round(
            {"clients_per_round": len(participants), "task_options": self._task_options(number)}
        )
        if round_.state != "collecting":
            reason = round_.failure_reason or ""
            if reason.startswith(BUDGET_EXHAUSTED):
                raise _Refused(reason)
            raise SimulationError(
                f"round {round_.round_id} did not start: {round_.state}"
                + (f" ({reason})" if reason else "")
            )
        if self.progress is not None:
            self.progress.round_started(number, total, len(participants))
        base = str(round_.base_version)
        self.mirror.ensure(base)
        selected = [self.by_coordinator_id[c] for c in round_.selected]
        jobs = self._jobs(selected, "train")
        failures: list[str] = []
        dropped: frozenset[str] = frozenset()
        if self.options.secure_aggregation:
            rng = np.random.default_rng([self.scenario.seed, number])
            dropped = self.options.dropout.choose([c.sim_id for c in selected], rng)
            outcome = run_secure_round(
                self.service,
                self.fleet,
                round_id=round_.round_id,
                train_jobs=jobs,
                record=lambda sim_id: self._record(self.clients[sim_id]),
                dropped=dropped,
                dropout_stage=self.options.dropout.stage,
                close_stage=lambda: self.clock.advance(_ROUND_DEADLINE + 1.0),
                progress=self.progress,
            )
            failures = list(outcome.failures)
            self.rejected += outcome.rejected
        else:
            for reply in self.fleet.run(jobs):
                if self.progress is not None:
                    self.progress.client_done()
                if reply.error is not None or reply.document is None:
                    failures.append(f"{reply.client_id}: {reply.error}")
                    continue
                self._submit(self.clients[reply.client_id], round_.round_id, reply)
        if failures:
            logger.warning("round %d: %d clients failed: %s", number, len(failures), failures[0])
            if len(failures) == len(jobs):
                raise SimulationError(f"every client of round {number} failed: {failures[0]}")
        round_ = self.service.get_round(round_.round_id)
        if round_.state == "collecting":  # rejected updates: the deadline closes the round
            self.clock.advance(_ROUND_DEADLINE)
            round_ = self.service.get_round(round_.round_id)
        self.clock.advance(1.0)
        committed = round_.state == "committed"
        version = str(round_.result_version) if committed else base
        if not committed:
            logger.warning("round %d failed: %s", number, round_.failure_reason)
        evaluating = time.perf_counter()
        model = self.models.model(version)
        evaluation = evaluate_head(model, self.test_x, self.test_y)
        finished = time.perf_counter()
        if self.options.round_head is not None:
            self.options.round_head(number, model.global_weights)
        record = self.service.get_model(version)
        stats = RoundStats(
            round=number,
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            auc=evaluation.auc,
            train_loss=record.metrics.get("loss") if committed else None,
            participants=self._participants(round_, len(jobs) - len(failures)),
            failed_clients=len(failures),
            bytes_up=round_.bytes_up,
            bytes_down=round_.bytes_down,
            seconds=finished - started,
            eval_seconds=finished - evaluating,
            version=version,
            committed=committed,
            clients=tuple(c.sim_id for c in selected),
            secure=self.options.secure_aggregation,
            compression=self.options.compression,
            dropped_clients=tuple(sorted(dropped)),
            measurements={
                k: v for k, v in round_.measurements.items() if k.startswith(("secagg", "dp_"))
            },
            privacy=record.privacy or {},
        )
        if self.progress is not None:
            self.progress.round_finished(stats)
        return stats

    def _participants(self, round_: RoundRecord, answered: int) -> int:
        """Clients whose update is in the round: a secure round's survivors (those whose
        masked input was summed), else every client that answered its train task."""
        survivors = round_.measurements.get("secagg_survivors")
        return answered if survivors is None else int(survivors)

    def _task_options(self, number: int) -> dict[str, int]:
        """The train tasks' options of round ``number`` (1-based): the shuffling rule."""
        hp = self.scenario.hyperparams
        if not hp.shuffle:
            return {}
        return {"shuffle_seed": hp.seed, "shuffle_round": number - 1}

    def _jobs(self, clients: Sequence[_Client], kind: str) -> list[Job]:
        jobs = []
        for client in clients:
            record = self._record(client)
            task = self._poll(client)
            if task is None or task.kind != kind:
                raise SimulationError(f"client {client.sim_id} got {task!r}, not a {kind} task")
            self.mirror.ensure(task.model_version)
            size = self.downloads.file_bytes(client.sim_id, task)
            if size:
                self.service.count_download(record, task.model_version, size)
            jobs.append(Job(client.sim_id, task.to_dict()))
        return jobs

    def _submit(self, client: _Client, round_id: int, outcome: Outcome) -> None:
        """Hand the service what a device uploads: the body (safetensors, or a compressed
        payload under the document's ``codec``) with the update's task, count and metrics."""
        document = outcome.document
        if document is None or document.get("type") != "model_update":
            raise SimulationError(f"client {client.sim_id} answered a train task with {document!r}")
        if self.url is not None:
            try:
                self._send(client, self._update_request(document, outcome.body or b""))
            except FedgeError as exc:  # the service recorded the rejection under its code
                self.rejected += 1
                logger.warning("the service rejected %s's update: %s", client.sim_id, exc)
            return
        try:
            submission = UpdateSubmission(
                round_id=round_id,
                task_id=str(document["task_id"]),
                num_examples=int(document["num_examples"]),
                idempotency_key=f"sim-{document['task_id']}",
                body=outcome.body or b"",
                metrics=dict(document.get("metrics") or {}),
                codec=str(document.get("codec", "none")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SimulationError(f"client {client.sim_id} sent a malformed update: {exc}") from exc
        try:
            self.service.submit_update(self._record(client), submission)
        except FedgeError as exc:  # the service recorded the rejection under its code
            self.rejected += 1
            logger.warning("the service rejected %s's update: %s", client.sim_id, exc)

    def _update_request(self, document: Mapping[str, Any], body: bytes) -> OutgoingRequest:
        """The upload a device makes of the update ``document`` + ``body`` (its encoded
        reply, as the fleet returns it): the edge client's own request for it."""
        key = f"sim-{document.get('task_id')}"
        codec = str(document.get("codec", "none"))
        if codec == "none":
            update = decode_message(document, body)
            if not isinstance(update, ModelUpdate):
                raise SimulationError(f"not a model update: {document!r}")
            return reply_request(update, key)
        round_ = self.service.get_round(int(document["round_id"]))
        reference = self.service.registry.weights(self.service.get_model(str(round_.base_version)))
        compressed = CompressedUpdate(
            task_id=str(document["task_id"]),
            round_id=round_.round_id,
            num_examples=int(document["num_examples"]),
            metrics=dict(document.get("metrics") or {}),
            delta=decode_update(
                body, codec, reference, max_bytes=self.service.config.max_update_bytes
            ),
            codec=codec,
            payload=body,
        )
        return reply_request(compressed, key)

    def _personalization(self) -> list[ClientGain]:
        clients = list(self.clients.values())
        self.service.create_tasks(
            "evaluate",
            client_ids=[c.coordinator_id for c in clients],
            deadline_seconds=_ROUND_DEADLINE,
        )
        jobs = self._jobs(clients, "evaluate")
        gains = []
        for outcome in self.fleet.run(jobs):
            if outcome.error is not None or outcome.document is None:
                logger.warning(
                    "client %s failed its evaluation: %s", outcome.client_id, outcome.error
                )
                continue
            report = decode_message(outcome.document)
            if not isinstance(report, EvalReport):
                raise SimulationError(f"client {outcome.client_id} answered with {report!r}")
            owner = self.clients[outcome.client_id]
            if self.url is None:
                self.service.submit_evaluation(self._record(owner), report)
            else:
                self._send(owner, reply_request(report, f"sim-{report.task_id}"))
            personal = report.personalized_metrics.get("accuracy")
            if report.num_examples and personal is not None:
                gains.append(
                    ClientGain(
                        client_id=outcome.client_id,
                        examples=report.num_examples,
                        global_accuracy=report.metrics["accuracy"],
                        personalized_accuracy=personal,
                    )
                )
        order = {c: i for i, c in enumerate(self.scenario.client_ids)}
        return sorted(gains, key=lambda g: order[g.client_id])
