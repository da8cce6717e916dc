"""``fedge-train``: train a task's model under a tf.distribute strategy and export it.

Thin: it parses arguments, then calls :func:`run_training`, which returns data, and prints.
TensorFlow is imported only once the arguments are valid, and never by the launcher of a
local multi-worker cluster. Exit codes, error lines, ``-v/-q``, ``--json`` and ``--version``
come from the shared kit (:mod:`fedge.cli`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cloud_trainer.cluster import TF_CONFIG, cluster_role
from cloud_trainer.config import STRATEGY_NAMES, TABLE_TASK, TrainConfig
from cloud_trainer.launcher import (
    WorkerOutcome,
    launch_local_cluster,
    launch_local_ps_cluster,
    watch_launcher,
)
from cloud_trainer.record import TrainingRecord, load_training_record, prepare_out_dir
from fedge.cli import (
    ArgumentParser,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
)
from fedge.data import TASK_NAMES
from fedge.data.user_table import table_format
from fedge.errors import ConfigError, UsageError

__all__ = ["RunOutcome", "build_parser", "main", "run_training", "train_cli"]

logger = logging.getLogger(__name__)

PROG = "fedge-train"
_LOGGERS = ("cloud_trainer", "fedge")

_EPILOG = """\
strategies:
  default       one device (tf.distribute.get_strategy())
  mirrored      every GPU, or --workers (default 2) logical CPU devices when there is none
  multi-worker  MultiWorkerMirroredStrategy; with --workers N and no TF_CONFIG, N local
                worker processes on 127.0.0.1 (worker 0 is the chief); with TF_CONFIG set,
                this process joins that cluster
  parameter-server
                ParameterServerStrategy; with --workers N [--ps M] (default 1) and no
                TF_CONFIG, a chief (the coordinator: it trains and exports), N workers and M
                parameter servers as local processes on 127.0.0.1; with TF_CONFIG set, this
                process is that cluster's chief, or serves as its worker or ps task. An
                epoch is one pass over the training split in global batches

OUT receives saved_model/, feature_spec.json, training_record.json, checkpoints/ and logs/
(TensorBoard), written by the chief only; with --data also schema.json (the inferred
columns and label names every later tool reads) and, with --ablation, ablation.json.

--data FILE trains on your own table instead of a bundled --task: .csv, .csv.gz (a header
row) or .tfrecord, .tfrecord.gz (tf.train.Example records). A column whose values are all
numbers is numeric (z-scored), any other categorical (one-hot with an out-of-vocabulary
bucket); --numeric/--categorical/--exclude override. The label column's distinct values,
sorted, are the classes; rows without a label are dropped. Warnings about the data (empty
or constant columns, empty fields, unscaled numbers) go to stderr.

A killed run restarted with the same arguments resumes after its last completed epoch
(state in OUT/backup).

Ctrl-C (SIGINT) stops training, kills any local workers and removes what the run created:
OUT (when it did not exist before, or was empty) and the --to-tfrecord file. SIGTERM stops
the same way but keeps OUT as it is, so that the same command resumes (a preempted job).

exit codes:
  0    training finished and the model was exported
  1    training failed (a worker or server failed or timed out, TensorFlow error, NaN loss)
  2    usage or input error (unknown flag, task or strategy, bad number, unwritable --out)
  130  interrupted (SIGINT or SIGTERM): stopped cleanly, local workers killed
"""


@dataclass(frozen=True)
class RunOutcome:
    """What a run produced: the exported record, and the worker processes if it launched any."""

    out_dir: str
    record: TrainingRecord
    workers: tuple[WorkerOutcome, ...] = field(default=())
    ablation: dict[str, Any] | None = None
    """The ``ablation.json`` report of an ``--ablation`` run."""

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "out_dir": self.out_dir,
            "record": self.record.to_dict(),
            "workers": [asdict(w) for w in self.workers],
        }
        if self.ablation is not None:
            doc["ablation"] = self.ablation
        return doc


def build_parser() -> ArgumentParser:
    """The parser of ``fedge-train``."""
    parser = ArgumentParser(
        prog=PROG,
        description="Train a fedge task's model under a tf.distribute strategy and export it.",
        epilog=_EPILOG,
    )
    parser.add_version()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help=f"a bundled task: one of {', '.join(TASK_NAMES)}")
    source.add_argument("--data", metavar="FILE", help="your own table (.csv[.gz], .tfrecord[.gz])")
    parser.add_argument("--label-column", metavar="COL", help="the label column of --data")
    for kind in ("numeric", "categorical"):
        parser.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            metavar="COL",
            help=f"treat COL of --data as {kind} (repeatable)",
        )
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="COL", help="leave COL out (repeatable)"
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="with --data: also retrain without each feature and report the accuracy drop",
    )
    parser.add_argument(
        "--strategy", default="default", help=f"one of {', '.join(STRATEGY_NAMES)} (default)"
    )
    parser.add_argument(
        "--workers", type=int, help="workers (multi-worker, parameter-server) or CPU replicas"
    )
    parser.add_argument(
        "--ps", type=int, help="parameter servers of a local parameter-server cluster (1)"
    )
    parser.add_argument("--epochs", type=int, required=True, help="epochs to train, >= 1")
    parser.add_argument("--out", required=True, help="export directory (created if needed)")
    parser.add_argument("--batch-size", type=int, default=32, help="per-replica batch (32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, shuffle, init (0)")
    parser.add_argument(
        "--data-fraction", type=float, default=1.0, help="seeded share of the training split (1.0)"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out share, fixed by --seed (0.2)"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam rate (0.001)")
    parser.add_argument("--to-tfrecord", metavar="PATH", help="also write training examples here")
    parser.add_argument(
        "--worker-timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for a local cluster's processes before killing them (3600)",
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def run_training(
    config: TrainConfig,
    *,
    worker_timeout_s: float = 3600.0,
    chief_stderr: IO[str] | None = None,
    verbose: int = 0,
) -> RunOutcome:
    """Train as ``config`` says: in this process, or as a launched local cluster.

    ``verbose`` is passed on to launched workers (their ``-v`` count).
    """
    role = cluster_role()
    if config.strategy == "parameter-server" and role.task_type is None and not config.workers:
        raise ConfigError(
            "the parameter-server strategy needs --workers (a local cluster) or TF_CONFIG"
        )
    out = prepare_out_dir(config.out_dir)
    if config.strategy == "parameter-server":
        if role.task_type is None:
            return _launch(
                config,
                out,
                worker_timeout_s=worker_timeout_s,
                chief_stderr=chief_stderr,
                verbose=verbose,
            )
        if role.task_type != "chief" or role.num_ps < 1:
            raise ConfigError(
                f"{TF_CONFIG} must name the chief of a cluster with ps tasks to train with "
                "the parameter-server strategy (workers and ps tasks serve)"
            )
        watch_launcher()
        if config.workers is not None and config.workers != role.num_workers:
            raise ConfigError(
                f"workers={config.workers} but {TF_CONFIG} describes {role.num_workers} workers"
            )
        if config.ps is not None and config.ps != role.num_ps:
            raise ConfigError(f"ps={config.ps} but {TF_CONFIG} describes {role.num_ps} ps tasks")
    elif config.strategy == "multi-worker" and role.task_type is not None:
        watch_launcher()
        if config.workers is not None and config.workers != role.num_workers:
            raise ConfigError(
                f"workers={config.workers} but {TF_CONFIG} describes {role.num_workers} workers"
            )
    elif config.strategy == "multi-worker" and config.workers is not None:
        return _launch(
            config,
            out,
            worker_timeout_s=worker_timeout_s,
            chief_stderr=chief_stderr,
            verbose=verbose,
        )
    # Imported here: TensorFlow takes seconds to load and bad arguments should not wait.
    import tensorflow as tf

    from cloud_trainer.train import train

    tf.get_logger().setLevel(logging.ERROR)
    result = train(config)
    ablation = None
    if config.ablation:
        from cloud_trainer.ablation import ABLATION_FILE

        with open(os.path.join(result.out_dir, ABLATION_FILE), encoding="utf-8") as stream:
            ablation = json.load(stream)
    return RunOutcome(out_dir=result.out_dir, record=result.record, ablation=ablation)


def _launch(
    config: TrainConfig,
    out: str,
    *,
    worker_timeout_s: float,
    chief_stderr: IO[str] | None,
    verbose: int,
) -> RunOutcome:
    assert config.workers is not None
    command = [sys.executable, "-m", "cloud_trainer.cli", *_worker_args(config, out, verbose)]
    with tempfile.TemporaryDirectory(prefix="fedge-train-workers-") as log_dir:
        if config.strategy == "parameter-server":
            num_ps = config.ps or 1
            logger.info("launching a chief, %d workers and %d ps", config.workers, num_ps)
            workers = launch_local_ps_cluster(
                command,
                num_workers=config.workers,
                num_ps=num_ps,
                log_dir=log_dir,
                timeout_s=worker_timeout_s,
                chief_stderr=chief_stderr,
            )
        else:
            logger.info("launching %d local workers", config.workers)
            workers = launch_local_cluster(
                command,
                num_workers=config.workers,
                log_dir=log_dir,
                timeout_s=worker_timeout_s,
                chief_stderr=chief_stderr,
            )
    return RunOutcome(out_dir=out, record=load_training_record(out), workers=tuple(workers))


def _worker_args(config: TrainConfig, out: str, verbose: int = 0) -> list[str]:
    if config.data_path is not None:
        args = [f"--data={os.path.abspath(config.data_path)}"]
        args.append(f"--label-column={config.label_column}")
        for kind in ("numeric", "categorical", "exclude"):
            args += [f"--{kind}={name}" for name in getattr(config, kind)]
    else:
        args = [f"--task={config.task}"]
    args += [
        f"--strategy={config.strategy}",
        f"--workers={config.workers}",
        *([f"--ps={config.ps}"] if config.ps is not None else []),
        f"--epochs={config.epochs}",
        f"--out={out}",
        f"--batch-size={config.batch_size}",
        f"--seed={config.seed}",
        f"--data-fraction={config.data_fraction!r}",
        f"--test-fraction={config.test_fraction!r}",
        f"--learning-rate={config.learning_rate!r}",
    ]
    if config.tfrecord_path:
        args.append(f"--to-tfrecord={os.path.abspath(config.tfrecord_path)}")
    if not config.progress:
        args.append("--quiet")
    elif verbose:
        args.append("-" + "v" * verbose)
    return args


def train_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, train, print the result; the exit code (see ``--help``)."""
    return run_cli(lambda: _train(argv), prog=PROG, debug_tracebacks=True)


def _train(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=_LOGGERS)
    if args.data is None and (
        args.label_column or args.numeric or args.categorical or args.exclude or args.ablation
    ):
        raise UsageError(
            "--label-column, --numeric, --categorical, --exclude and --ablation need --data"
        )
    if args.ps is not None and args.strategy != "parameter-server":
        raise UsageError("--ps needs --strategy parameter-server")
    if args.data is not None and not args.label_column:
        raise UsageError("--data needs --label-column")
    if args.data is not None:
        # Checked before TensorFlow loads; the columns are checked when the file is read.
        table_format(args.data)
        if not os.path.isfile(args.data):
            raise UsageError(f"--data {args.data}: no such file")
    config = TrainConfig(
        task=TABLE_TASK if args.data is not None else args.task,
        data_path=args.data,
        label_column=args.label_column,
        numeric=tuple(args.numeric),
        categorical=tuple(args.categorical),
        exclude=tuple(args.exclude),
        ablation=args.ablation,
        out_dir=args.out,
        strategy=args.strategy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        test_fraction=args.test_fraction,
        data_fraction=args.data_fraction,
        workers=args.workers,
        learning_rate=args.learning_rate,
        tfrecord_path=args.to_tfrecord,
        progress=not args.quiet,
        ps=args.ps,
    )
    if not args.worker_timeout > 0:
        raise UsageError(f"--worker-timeout must be > 0, got {args.worker_timeout}")
    if config.strategy == "parameter-server" and cluster_role().is_server:
        # A worker or ps task of a parameter-server cluster: it serves until stopped, and
        # creates no output, so an interrupt has nothing to remove.
        watch_launcher()
        from cloud_trainer.strategies import serve

        serve()
    created = _Created.before(config)
    interrupt: KeyboardInterrupt | None = None
    try:
        outcome = run_training(
            config,
            worker_timeout_s=args.worker_timeout,
            chief_stderr=_stderr_or_none(),
            verbose=args.verbose,
        )
    except KeyboardInterrupt as exc:
        # Kept outside the handler: leaving it frees the traceback, and with it the model and
        # the TensorBoard writers, before their files are removed.
        interrupt = KeyboardInterrupt(*exc.args)
    if interrupt is not None:
        if interrupt.args[:1] != (signal.SIGTERM.name,):
            with _signals_ignored():
                gc.collect()
                created.remove()
        raise interrupt
    _print(outcome, as_json=args.json)
    return 0


def _print(outcome: RunOutcome, *, as_json: bool) -> None:
    if as_json:
        print_json(outcome.to_dict())
        return
    record = outcome.record
    metrics = " ".join(
        f"{k}={'n/a' if v is None else f'{v:.4f}'}" for k, v in sorted(record.metrics.items())
    )
    what = record.data_file or record.task
    print(
        f"trained {what} ({record.strategy}, {record.workers} worker(s), "
        f"{record.replicas} replica(s), {record.epochs} epochs): {metrics} -> {outcome.out_dir}"
    )
    if outcome.ablation is not None:
        report = outcome.ablation
        print(f"ablation ({report['metric']}, all features {report['all_features']:.4f}):")
        for row in report["features"]:
            print(
                f"  {row['feature']}: {row[report['metric']]:.4f} without it, "
                f"drop {row['drop']:+.4f}"
            )


@dataclass(frozen=True)
class _Created:
    """What a run is about to create, noted before it starts, so an interrupt can undo it."""

    out: str
    out_state: str  # "absent", "empty" or "kept" (it holds output: a run to resume)
    new_parents: tuple[str, ...]  # innermost first
    tfrecord: str | None  # the --to-tfrecord file, when it does not exist yet

    @classmethod
    def before(cls, config: TrainConfig) -> _Created:
        out = os.path.abspath(config.out_dir)
        missing = _missing_dirs(out)
        if missing:
            state = "absent"
        elif os.path.isdir(out) and not os.listdir(out):
            state = "empty"
        else:
            state = "kept"
        tfrecord = None
        if config.tfrecord_path and not os.path.lexists(config.tfrecord_path):
            tfrecord = os.path.abspath(config.tfrecord_path)
        return cls(out, state, tuple(missing[1:]), tfrecord)

    def remove(self) -> None:
        if self.tfrecord is not None:
            with contextlib.suppress(OSError):
                os.remove(self.tfrecord)
        if self.out_state == "absent":
            shutil.rmtree(self.out, ignore_errors=True)
        elif self.out_state == "empty":
            for name in os.listdir(self.out):
                path = os.path.join(self.out, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.remove(path)
        for parent in self.new_parents:
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def _missing_dirs(path: str) -> list[str]:
    """``path`` and its missing ancestors, innermost first; empty when ``path`` exists."""
    missing: list[str] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the removal of partial output short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stderr_or_none() -> IO[str] | None:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return sys.stderr


def main() -> None:
    """Console-script entry point."""
    sys.exit(train_cli())


if __name__ == "__main__":
    main()
