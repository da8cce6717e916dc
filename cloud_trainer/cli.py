"""``fedge-train``: train a task's model under a tf.distribute strategy and export it.

Thin: it parses arguments, then calls :func:`run_training`, which returns data, and prints.
TensorFlow is imported only once the arguments are valid, and never by the launcher of a
local multi-worker cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cloud_trainer.cluster import TF_CONFIG, cluster_role
from cloud_trainer.config import STRATEGY_NAMES, TrainConfig
from cloud_trainer.launcher import WorkerOutcome, launch_local_cluster, watch_launcher
from cloud_trainer.record import TrainingRecord, load_training_record, prepare_out_dir
from fedge.data import TASK_NAMES
from fedge.errors import ConfigError, DataError, FeatureError, FedgeError

__all__ = ["RunOutcome", "build_parser", "main", "run_training", "train_cli"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_TRAINING_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = """\
strategies:
  default       one device (tf.distribute.get_strategy())
  mirrored      every GPU, or --workers (default 2) logical CPU devices when there is none
  multi-worker  MultiWorkerMirroredStrategy; with --workers N and no TF_CONFIG, N local
                worker processes on 127.0.0.1 (worker 0 is the chief); with TF_CONFIG set,
                this process joins that cluster

A killed run restarted with the same arguments resumes after its last completed epoch
(state in OUT/backup). OUT receives saved_model/, feature_spec.json, training_record.json,
checkpoints/ and logs/ (TensorBoard), written by the chief only.

exit codes:
  0    training finished and the model was exported
  1    training failed (a worker failed or timed out, TensorFlow error, NaN loss)
  2    usage or input error (unknown task/strategy, bad number, unwritable --out)
  130  interrupted (Ctrl-C); local workers are killed
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


@dataclass(frozen=True)
class RunOutcome:
    """What a run produced: the exported record, and the worker processes if it launched any."""

    out_dir: str
    record: TrainingRecord
    workers: tuple[WorkerOutcome, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "record": self.record.to_dict(),
            "workers": [asdict(w) for w in self.workers],
        }


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedge-train",
        description="Train a fedge task's model under a tf.distribute strategy and export it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASK_NAMES)}")
    parser.add_argument(
        "--strategy", default="default", help=f"one of {', '.join(STRATEGY_NAMES)} (default)"
    )
    parser.add_argument("--workers", type=int, help="workers (multi-worker) or CPU replicas")
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
        help="seconds to wait for local multi-worker processes before killing them (3600)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, tracebacks")
    return parser


def run_training(
    config: TrainConfig, *, worker_timeout_s: float = 3600.0, chief_stderr: IO[str] | None = None
) -> RunOutcome:
    """Train as ``config`` says: in this process, or as a launched local cluster."""
    out = prepare_out_dir(config.out_dir)
    role = cluster_role()
    if config.strategy == "multi-worker" and role.task_type is not None:
        watch_launcher()
        if config.workers is not None and config.workers != role.num_workers:
            raise ConfigError(
                f"workers={config.workers} but {TF_CONFIG} describes {role.num_workers} workers"
            )
    elif config.strategy == "multi-worker" and config.workers is not None:
        return _launch(config, out, worker_timeout_s=worker_timeout_s, chief_stderr=chief_stderr)
    # Imported here: TensorFlow takes seconds to load and bad arguments should not wait.
    import tensorflow as tf

    from cloud_trainer.train import train

    tf.get_logger().setLevel(logging.ERROR)
    result = train(config)
    return RunOutcome(out_dir=result.out_dir, record=result.record)


def _launch(
    config: TrainConfig, out: str, *, worker_timeout_s: float, chief_stderr: IO[str] | None
) -> RunOutcome:
    assert config.workers is not None
    command = [sys.executable, "-m", "cloud_trainer.cli", *_worker_args(config, out)]
    logger.info("launching %d local workers", config.workers)
    with tempfile.TemporaryDirectory(prefix="fedge-train-workers-") as log_dir:
        workers = launch_local_cluster(
            command,
            num_workers=config.workers,
            log_dir=log_dir,
            timeout_s=worker_timeout_s,
            chief_stderr=chief_stderr,
        )
    return RunOutcome(out_dir=out, record=load_training_record(out), workers=tuple(workers))


def _worker_args(config: TrainConfig, out: str) -> list[str]:
    args = [
        f"--task={config.task}",
        f"--strategy={config.strategy}",
        f"--workers={config.workers}",
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
    return args


def train_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, train, print the result; the exit code (see ``--help``)."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see fedge-train --help)", EXIT_USAGE)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = TrainConfig(
            task=args.task,
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
        )
        if not args.worker_timeout > 0:
            raise ConfigError(f"--worker-timeout must be > 0, got {args.worker_timeout}")
        outcome = run_training(
            config, worker_timeout_s=args.worker_timeout, chief_stderr=_stderr_or_none()
        )
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except (ConfigError, DataError, FeatureError) as exc:
        return _fail(str(exc), EXIT_USAGE, verbose=args.verbose)
    except FedgeError as exc:
        return _fail(str(exc), EXIT_TRAINING_FAILED, verbose=args.verbose)
    except Exception as exc:
        return _fail(f"training failed: {type(exc).__name__}: {exc}", 1, verbose=args.verbose)
    if args.json:
        print(json.dumps(outcome.to_dict(), sort_keys=True))
    else:
        print(_summary(outcome))
    return EXIT_OK


def _summary(outcome: RunOutcome) -> str:
    record = outcome.record
    metrics = " ".join(
        f"{k}={'n/a' if v is None else f'{v:.4f}'}" for k, v in sorted(record.metrics.items())
    )
    return (
        f"trained {record.task} ({record.strategy}, {record.workers} worker(s), "
        f"{record.replicas} replica(s), {record.epochs} epochs): {metrics} -> {outcome.out_dir}"
    )


def _fail(message: str, code: int, *, verbose: bool = False) -> int:
    if verbose:
        logger.exception("details")
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr)
    return code


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
