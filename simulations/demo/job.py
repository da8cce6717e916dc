"""The end-to-end demo job: every fedge tool as its own process, on loopback.

1. ``fedge-train`` trains the task's model on the cloud's proxy share of the training
   split (the rest of it, the pool, exists only on the devices);
2. ``fedge-quantize bundle`` builds the edge bundle (int8 inference model, trainable head);
3. ``fedge-coordinator serve`` imports it as ``v1`` (REST and gRPC on 127.0.0.1, SQLite
   state);
4. the pool is split among the devices (Dirichlet over labels); each device gets its part
   as a data file, ``fedge-edge register`` enrolls it and ``fedge-edge run`` starts its
   daemon, a separate process with no TensorFlow; every second device (edge-2, edge-4...)
   reaches the coordinator with its ``grpc://`` URL, the others with its ``http://`` one;
5. the demo opens the rounds one at a time over the admin API; each committed version is
   downloaded and verified like a device would, and scored on the held-out test set with
   the TFLite runtime;
6. an ``evaluate`` task round has each device report global and personalized accuracy on
   its own holdout, and ``fedge-coordinator models list`` / ``rounds list`` show the
   registry's lineage.

Every process is stopped in a ``finally`` (daemons, then the coordinator: SIGTERM, a
bounded wait, SIGKILL) and psutil confirms that none is left. :func:`run_job` returns
data; :mod:`simulations.demo` prints it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedge import processes
from fedge.errors import ConfigError
from simulations.demo.config import DemoConfig
from simulations.demo.coordinator import (
    AdminApi,
    CoordinatorPaths,
    serve_command,
    wait_for_grpc,
    wait_until_serving,
)
from simulations.demo.data import (
    DemoData,
    check_trainer_split,
    split_demo_data,
    write_device_files,
)
from simulations.demo.evaluation import (
    VersionScorer,
    device_evaluation,
    wait_for_evaluations,
)
from simulations.demo.result import DemoResult
from simulations.demo.tools import (
    admin_list_command,
    bundle_command,
    child_environment,
    daemon_command,
    register_command,
    status_command,
    train_command,
)
from simulations.errors import DemoError
from simulations.report import (
    RoundRow,
    lineage_table,
    output_problem,
    plot_demo_accuracy,
    write_json,
    write_rounds_csv,
    write_text,
)

__all__ = ["OUTPUT_MARKER", "prepare_output", "run_job"]

Say = Callable[[str], None]
STEPS = 6
OUTPUT_MARKER = ".fedge-demo"
_OUTPUT_NAMES = {
    OUTPUT_MARKER,
    "summary.json",
    "rounds.csv",
    "accuracy.png",
    "lineage.txt",
    "logs",
    "work",
}
_MARKER_TEXT = "a fedge demo output: the next `make demo` empties this folder\n"
_START_TIMEOUT = 60.0
_CLI_TIMEOUT = 60.0


def prepare_output(out: Path) -> Path:
    """``out`` made empty (a previous demo output is removed; anything else is refused
    with a ConfigError before anything is touched)."""
    out = out.resolve()
    problem = output_problem(out)
    if problem is not None:
        raise ConfigError(f"output directory {problem}")
    if out.is_dir():
        entries = list(out.iterdir())
        ours = (out / OUTPUT_MARKER).is_file() or all(e.name in _OUTPUT_NAMES for e in entries)
        if entries and not ours:
            raise ConfigError(
                f"output directory {out} is not empty and holds no demo output: "
                "refusing to clean it"
            )
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text(_MARKER_TEXT)
    return out


class _Job:
    """One run's processes, paths and results (see the module docstring)."""

    def __init__(self, config: DemoConfig, out: Path, say: Say) -> None:
        self.config = config
        self.say = say
        self.out = out
        self.work = out / "work"
        self.logs = out / "logs"
        self.work.mkdir()
        self.supervisor = processes.Supervisor(
            log_dir=self.logs, cwd=self.work, env=child_environment(), stop_timeout=15.0
        )
        self.paths = CoordinatorPaths(self.work / "coordinator")
        self.result = DemoResult(config, out)
        self.coordinator: processes.Child | None = None
        self.daemons: list[processes.Child] = []
        self.api: AdminApi | None = None
        self.scorer: VersionScorer | None = None
        self.token = ""
        self.client_ids: dict[str, str] = {}

    # Steps --------------------------------------------------------------------------------

    def step(self, number: int, text: str) -> None:
        self.say(f"[{number}/{STEPS}] {text} ...")

    def detail(self, text: str) -> None:
        self.say(f"      {text}")

    def pretrain(self, data: DemoData) -> None:
        config = self.config
        # resolved in __post_init__
        assert config.pretrain_epochs is not None
        assert config.proxy_fraction is not None
        self.step(
            1,
            f"training the initial model on the proxy share ({len(data.proxy):,} examples, "
            f"{config.pretrain_epochs} epochs) with fedge-train",
        )
        began = time.monotonic()
        export = self.work / "export"
        command = train_command(
            task=config.task,
            epochs=config.pretrain_epochs,
            proxy_fraction=config.proxy_fraction,
            test_fraction=config.test_fraction,
            learning_rate=config.pretrain_learning_rate,
            seed=config.seed,
            out=export,
        )
        self.supervisor.run("fedge-train", command, timeout=config.tool_timeout, what="fedge-train")
        record = json.loads((export / "training_record.json").read_text())
        check_trainer_split(data, record)
        accuracy = record.get("metrics", {}).get("test_accuracy", float("nan"))
        self.detail(
            f"{record.get('training_job')}: Keras test accuracy {accuracy:.3f} on "
            f"{len(data.test)} held-out examples ({time.monotonic() - began:.1f} s)"
        )

    def bundle(self) -> Path:
        self.step(2, "building the edge bundle with fedge-quantize bundle")
        began = time.monotonic()
        bundle = self.work / "bundle"
        command = bundle_command(
            self.work / "export", bundle, batch_size=self.config.device_batch_size
        )
        process = self.supervisor.run(
            "fedge-quantize",
            command,
            timeout=self.config.tool_timeout,
            what="fedge-quantize bundle",
            stdout=True,
        )
        summary = process.read_stdout().strip().splitlines()
        self.detail(f"{summary[-1] if summary else bundle} ({time.monotonic() - began:.1f} s)")
        return bundle

    def start_coordinator(self, bundle: Path, data: DemoData) -> None:
        config = self.config
        # resolved in __post_init__
        assert config.clients_per_round is not None
        assert config.learning_rate is not None
        self.step(
            3,
            "starting the coordinator (fedge-coordinator serve: REST and gRPC on 127.0.0.1, "
            "SQLite)",
        )
        self.token = self.paths.write_admin_token()
        self.paths.write_enrollment_token()
        command = serve_command(
            self.paths,
            task=config.task,
            bundle=bundle,
            clients_per_round=config.clients_per_round,
            epochs=config.local_epochs,
            learning_rate=config.learning_rate,
            round_timeout=config.round_timeout,
            seed=config.seed,
            secure_aggregation=config.secure_aggregation,
        )
        self.coordinator = self.supervisor.start("coordinator", command)
        url = wait_until_serving(self.coordinator, self.paths.port_file, timeout=_START_TIMEOUT)
        self.result.url = url
        self.result.grpc_url = wait_for_grpc(
            self.coordinator, self.paths.grpc_port_file, timeout=_START_TIMEOUT
        )
        self.api = AdminApi(url, self.token)
        self.scorer = VersionScorer(url, self.token, self.work / "registry", data.test)
        production = [m for m in self.api.list_models() if m["stage"] == "production"]
        if not production:
            raise DemoError("the coordinator registered no production model")
        first = production[-1]
        score = self.scorer.score(first["version"])
        int8 = "" if score.int8_accuracy is None else f", int8 model {score.int8_accuracy:.3f}"
        self.detail(
            f"serving at {url} and {self.result.grpc_url}; the bundle is {first['version']} "
            f"(production), TFLite test accuracy {score.accuracy:.3f}{int8}"
        )
        self.result.rows.append(
            RoundRow(
                round=0,
                version=first["version"],
                parent=first.get("parent"),
                participants=None,
                examples=len(data.proxy),
                train_loss=None,
                train_accuracy=None,
                test=score,
                seconds=None,
            )
        )

    def start_devices(self, data: DemoData) -> None:
        config = self.config
        assert self.api is not None
        self.step(
            4,
            f"starting {config.devices} edge daemons (fedge-edge run), each with its own "
            f"Dirichlet({config.alpha:g}) partition of the other {len(data.pool):,} training "
            "examples",
        )
        names = [f"edge-{i + 1}" for i in range(config.devices)]
        roots = {name: self.work / "devices" / name for name in names}
        # Every second device speaks gRPC, the others REST: both transports in every round.
        self.result.device_transports = {
            name: "grpc" if i % 2 else "rest" for i, name in enumerate(names)
        }
        urls = {
            name: self.result.grpc_url if transport == "grpc" else self.api.url
            for name, transport in self.result.device_transports.items()
        }
        sizes = write_device_files(data, [roots[n] / "data" for n in names])
        self.result.device_rows = dict(zip(names, sizes, strict=True))
        registering = [
            self.supervisor.start(
                f"{name}-register",
                register_command(
                    urls[name],
                    token_file=roots[name] / "token",
                    state=roots[name] / "state",
                    enrollment_token_file=self.paths.enrollment_token_file,
                ),
                stdout=True,
            )
            for name in names
        ]
        for name, process in zip(names, registering, strict=True):
            what = f"{name}: fedge-edge register"
            processes.wait(process, timeout=_START_TIMEOUT, what=what)
            self.client_ids[name] = json.loads(process.read_stdout())["client_id"]
        for name in names:
            command = daemon_command(
                urls[name],
                token_file=roots[name] / "token",
                data=roots[name] / "data",
                state=roots[name] / "state",
                seed=config.seed,
            )
            self.daemons.append(self.supervisor.start(name, command))
        rows = ", ".join(f"{n} {s}" for n, s in self.result.device_rows.items())
        self.detail(f"registered {len(names)} devices; examples per device: {rows}")
        by_transport = {
            transport: [n for n, t in self.result.device_transports.items() if t == transport]
            for transport in ("rest", "grpc")
        }
        self.detail(
            f"{_names(by_transport['rest'])} over REST ({self.api.url}), "
            f"{_names(by_transport['grpc'])} over gRPC ({self.result.grpc_url})"
        )

    def check_alive(self, doing: str) -> Callable[[], None]:
        running = [p for p in [self.coordinator, *self.daemons] if p is not None]
        return lambda: self.supervisor.check_running(running, doing=doing)

    def run_rounds(self) -> None:
        config = self.config
        assert self.api is not None
        assert self.scorer is not None
        self.step(
            5,
            f"running {config.rounds} rounds of fedavg{_mode(config)} ({config.clients_per_round} "
            f"clients per round, {config.local_epochs} local epochs, learning rate "
            f"{config.learning_rate:g})",
        )
        for number in range(1, config.rounds + 1):
            began = time.monotonic()
            opened = self.api.open_round()
            done = self.api.wait_round(
                opened["round_id"],
                timeout=config.round_timeout + 30,
                check=self.check_alive(f"round {number} ran"),
            )
            seconds = time.monotonic() - began
            version = str(done["result_version"])
            model = self.api.show_model(version)
            score = self.scorer.score(version)
            participants, examples = _participation(done)
            metrics = model.get("metrics", {})
            self.result.rows.append(
                RoundRow(
                    round=number,
                    version=version,
                    parent=model.get("parent"),
                    participants=participants,
                    examples=examples,
                    train_loss=metrics.get("loss"),
                    train_accuracy=metrics.get("accuracy"),
                    test=score,
                    seconds=seconds,
                )
            )
            source = (
                f"the secure sum of {participants} masked updates"
                if config.secure_aggregation
                else f"{participants} updates ({examples:,} examples)"
            )
            self.detail(
                f"round {number}/{config.rounds}: {version} from {source}, test accuracy "
                f"{score.accuracy:.3f} ({seconds:.1f} s)"
            )

    def evaluate_and_list(self) -> None:
        assert self.api is not None
        final = self.result.final.version
        if self.config.evaluate:
            self.step(
                6,
                f"asking every device to evaluate {final} on its own holdout "
                "(evaluate task), then listing the registry",
            )
            tasks = self.api.create_tasks("evaluate", deadline_seconds=self.config.round_timeout)
            reports = wait_for_evaluations(
                self.api,
                {t["task_id"] for t in tasks},
                timeout=self.config.round_timeout,
                check=self.check_alive("the devices evaluated"),
            )
            device_of = {cid: name for name, cid in self.client_ids.items()}
            evaluations = [
                device_evaluation(r, device_of.get(r["client_id"], r["client_id"])) for r in reports
            ]
            self.result.devices = sorted(evaluations, key=lambda d: d.device)
            pair = self.result.personalization()
            if pair is not None:
                self.detail(
                    f"holdout accuracy over {len(evaluations)} devices: global "
                    f"{pair[0]:.3f}, personalized {pair[1]:.3f}"
                )
        else:
            self.step(6, "listing the registry (device evaluation skipped)")
        self.result.models = self.api.list_models()
        listed = {}
        for what in ("models", "rounds"):
            command = admin_list_command(
                what, self.api.url, admin_token_file=self.paths.admin_token_file
            )
            process = self.supervisor.run(
                f"{what}-list",
                command,
                timeout=_CLI_TIMEOUT,
                what=f"fedge-coordinator {what} list",
                stdout=True,
            )
            listed[what] = process.read_stdout().rstrip()
        self.result.models_cli, self.result.rounds_cli = listed["models"], listed["rounds"]

    # Shutdown -----------------------------------------------------------------------------

    def shutdown(self, *, read_status: bool) -> None:
        """Stop the daemons, then the coordinator; with ``read_status`` read what each device
        says it did; then make sure no process this job started is left (always runs)."""
        for closing in (self.api, self.scorer):
            if closing is not None:
                closing.close()
        try:
            self.supervisor.stop(self.daemons)
            if self.coordinator is not None:
                self.supervisor.stop([self.coordinator])
            if read_status:
                self._device_status()
        finally:
            self.result.leftovers = self.supervisor.close()
            self.result.processes = [p.to_dict() for p in self.supervisor.children]

    def _device_status(self) -> None:
        started = [
            self.supervisor.start(
                f"{d.name}-status",
                status_command(self.work / "devices" / d.name / "state"),
                stdout=True,
            )
            for d in self.daemons
        ]
        for process in started:
            processes.wait(process, timeout=_CLI_TIMEOUT, what="fedge-edge status")
            name = process.name.removesuffix("-status")
            self.result.device_status[name] = json.loads(process.read_stdout())

    # Outputs ------------------------------------------------------------------------------

    def write_outputs(self, data: DemoData) -> None:
        result, out = self.result, self.out
        result.data = {
            "task": self.config.task,
            "test_examples": len(data.test),
            "proxy_examples": len(data.proxy),
            "proxy_fingerprint": data.proxy.fingerprint(),
            "pool_examples": len(data.pool),
            "partition": f"dirichlet:{self.config.alpha:g}",
            "device_rows": result.device_rows,
        }
        files = {
            "rounds": out / "rounds.csv",
            "summary": out / "summary.json",
            "plot": out / "accuracy.png",
            "lineage": out / "lineage.txt",
            "logs": self.logs,
            "work": self.work,
        }
        result.files = {k: str(v) for k, v in files.items()}
        write_rounds_csv(files["rounds"], result.rows)
        server = f"--coordinator {result.url} --admin-token-file ..."
        sections = [
            f"$ fedge-coordinator models list {server}\n{result.models_cli}",
            f"$ fedge-coordinator rounds list {server}\n{result.rounds_cli}",
            f"lineage (GET /v1/models)\n{lineage_table(result.models)}",
        ]
        write_text(files["lineage"], "\n\n".join(sections))
        plot_demo_accuracy(
            files["plot"],
            result.rows,
            result.devices,
            title=f"{self.config.task}: global model, {len(self.daemons)} edge daemons",
        )
        write_json(files["summary"], result.to_dict())


def run_job(config: DemoConfig, out: Path, *, say: Say) -> DemoResult:
    """Run the demo into ``out`` (emptied first); progress lines go to ``say``.

    Raises ConfigError for an unusable ``out`` (before any work), :class:`DemoError`
    (or ProcessError) when a step fails (``out/summary.json`` then says why); every process
    started is stopped before this returns or raises. On KeyboardInterrupt, once they are
    stopped, ``out`` is removed: an interrupted run leaves no partial output.
    """
    began = time.monotonic()
    out = prepare_output(out)
    assert config.proxy_fraction is not None  # resolved in __post_init__
    job: _Job | None = None
    try:
        data = split_demo_data(
            config.task,
            seed=config.seed,
            test_fraction=config.test_fraction,
            proxy_fraction=config.proxy_fraction,
            devices=config.devices,
            alpha=config.alpha,
        )
        job = _Job(config, out, say)
        finished = False
        try:
            job.pretrain(data)
            bundle = job.bundle()
            job.start_coordinator(bundle, data)
            job.start_devices(data)
            job.run_rounds()
            job.evaluate_and_list()
            finished = True
        finally:
            job.shutdown(read_status=finished)
        say(_stop_report(job))
        job.result.elapsed = time.monotonic() - began
        job.write_outputs(data)
    except KeyboardInterrupt:
        with processes.deferred_interrupts():
            shutil.rmtree(out, ignore_errors=True)
        raise
    except BaseException as exc:
        with contextlib.suppress(OSError):
            write_json(
                out / "summary.json",
                {
                    "status": "failed",
                    "error": str(exc) or type(exc).__name__,
                    "settings": config.to_dict(),
                    "processes": [] if job is None else job.result.processes,
                    "leftover_processes": [] if job is None else job.result.leftovers,
                    "logs": str(out / "logs"),
                },
            )
        raise
    return job.result


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "no device"


def _mode(config: DemoConfig) -> str:
    return " under secure aggregation (SecAgg+)" if config.secure_aggregation else ""


def _participation(round_document: Mapping[str, Any]) -> tuple[int, int | None]:
    """A committed round's contributing clients and their examples. A secure round stores
    no update: its survivors are a measurement, and its examples are only in the sum."""
    updates = round_document.get("updates") or []
    if updates:
        return len(updates), sum(int(u["num_examples"]) for u in updates)
    measurements = round_document.get("measurements") or {}
    return int(measurements.get("secagg_survivors", 0)), None


def _stop_report(job: _Job) -> str:
    started = job.result.processes
    stopped = [p for p in started if p["outcome"] in ("terminated", "killed")]
    killed = [p["name"] for p in started if p["outcome"] == "killed"]
    text = (
        f"stopped {len(stopped)} running processes (the daemons, then the coordinator) of "
        f"{len(started)} started"
    )
    if killed:
        text += f"; SIGKILL needed for {', '.join(killed)}"
    if job.result.leftovers:
        return text + f"; killed leftover processes {', '.join(job.result.leftovers)}"
    return text + "; psutil finds no child process left"
