"""``fedge-simulate``: a federated run on an in-memory fleet, with its metrics and plots.

Thin: it parses arguments into :class:`~simulations.runner.Settings`, checks every input
file before any training (:func:`~simulations.runner.check_settings`), calls
:func:`~simulations.runner.simulate`, writes the outputs (:mod:`simulations.report`) and
prints the summary table (or, with ``--json``, the metrics document). TensorFlow's native
chatter is held back unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fedge.aggregation import STRATEGY_NAMES
from fedge.data import TASK_NAMES
from fedge.errors import BundleError, ConfigError, DataError, FeatureError, FedgeError
from quantize.quiet import capture_native_stderr
from simulations.native_engine import STORES
from simulations.processes import exit_after_tff
from simulations.report import RoundStats, summary_table, write_report
from simulations.runner import (
    DEFAULT_DEVICE_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    ENGINES,
    Settings,
    check_settings,
    simulate,
)

# None of the imports above loads TensorFlow; pretraining, bundling and the TFF engine do,
# later, and read this first.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main", "simulate_cli"]

PROG = "fedge-simulate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_INPUT_ERRORS = (ConfigError, DataError, FeatureError, BundleError)

_DESCRIPTION = """\
Simulate federated training of the on-device head: N virtual clients, each holding its own
partition of the data, run the real edge client (TFLite) against the real coordinator
service, in memory. The cloud first pretrains the model on a small proxy share of the data
(cached); the rest of the training rows exist only on the clients."""

_EPILOG = """\
outputs (in --out): metrics.json, metrics.csv (round, accuracy, loss, participants,
bytes_up, bytes_down, seconds, train_loss, auc), accuracy.png, personalization.png,
summary.txt and final_head.safetensors; the summary table is printed to stdout.

bring your own:
  --model FILE        a Keras model (.keras, .h5 or a SavedModel directory). The layers
                      left trainable are the part devices train (Dense only; relu is
                      rewritten for the device); the frozen layers below are the backbone.
  --init FILE         safetensors weights of that trainable part (its variable names).
  --data FILE         .npz with arrays x (model-ready inputs) and y (class ids), or a CSV
                      with numeric feature columns and --label-column.
  --partition-file F  JSON {"client id": [row indices], ...}: rows of --data (or, with a
                      built-in task, of its client pool); non-empty, in range, disjoint.
  --schedule-file F   JSON {"rounds": [["client id", ...], ...]}: who trains each round.
Every file is checked before any training; a problem is one error line and exit code 2.

engines:
  native  the coordinator service + edge clients in worker processes (--workers).
  tff     tff.learning.algorithms.build_weighted_fed_avg on the same initial weights,
          client rows, schedule and hyperparameters: a reference (FedAvg only).

exit codes:
  0    success
  1    the simulation failed (a worker crashed, every client of a round failed, ...)
  2    usage or input error (bad option, unreadable or inconsistent file)
  130  interrupted"""


def _options(text: str) -> dict[str, float]:
    """``a=1,b=0.5`` -> ``{"a": 1, "b": 0.5}`` (integers stay ints: krum counts clients)."""
    out: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key.strip()}={value!r} is not a number") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("the federation")
    run.add_argument("--task", choices=TASK_NAMES, default="digits", help="built-in task")
    run.add_argument("--clients", type=int, default=10, metavar="N", help="clients (default 10)")
    run.add_argument(
        "--per-round", type=int, default=None, metavar="K", help="clients per round (default: all)"
    )
    run.add_argument("--rounds", type=int, default=None, metavar="R", help="rounds (default 10)")
    run.add_argument(
        "--partition",
        default="iid",
        metavar="SPEC",
        help="iid | dirichlet:ALPHA | by:COLUMN (by: keeps the N largest groups)",
    )
    run.add_argument("--aggregator", choices=STRATEGY_NAMES, default="fedavg")
    run.add_argument(
        "--aggregator-options",
        type=_options,
        default={},
        metavar="K=V,...",
        help="e.g. lr=0.01 for fedadam, num_byzantine=1 for krum",
    )
    run.add_argument("--engine", choices=ENGINES, default="native")
    run.add_argument("--seed", type=int, default=0, help="seeds splits, partition and schedule")
    train = parser.add_argument_group("local training")
    train.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        metavar="E",
        help=f"local epochs ({DEFAULT_EPOCHS})",
    )
    train.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LEARNING_RATE,
        help=f"client SGD learning rate ({DEFAULT_LEARNING_RATE})",
    )
    train.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_DEVICE_BATCH,
        metavar="B",
        help=f"the on-device static batch ({DEFAULT_DEVICE_BATCH})",
    )
    train.add_argument(
        "--personalize-epochs",
        type=int,
        default=5,
        metavar="N",
        help="epochs of each device's personal-head fine-tuning (5)",
    )
    train.add_argument(
        "--personalize-lr", type=float, default=0.05, metavar="LR", help="its rate (0.05)"
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--proxy-fraction", type=float, default=0.1, metavar="F", help="the cloud's share (0.1)"
    )
    data.add_argument(
        "--test-fraction", type=float, default=0.2, metavar="F", help="test split (0.2)"
    )
    data.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="each client's local holdout (0.2)",
    )
    data.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        metavar="N",
        help="pretraining on the proxy share (digits 20, taxi 5)",
    )
    byo = parser.add_argument_group("bring your own (see below)")
    byo.add_argument("--model", type=Path, default=None, metavar="FILE")
    byo.add_argument("--init", type=Path, default=None, metavar="FILE")
    byo.add_argument("--data", type=Path, default=None, metavar="FILE")
    byo.add_argument("--label-column", default="label", metavar="NAME")
    byo.add_argument("--partition-file", type=Path, default=None, metavar="FILE")
    byo.add_argument("--schedule-file", type=Path, default=None, metavar="FILE")
    out = parser.add_argument_group("execution and output")
    out.add_argument(
        "--workers", type=int, default=2, metavar="W", help="worker processes (2; 1: in-process)"
    )
    out.add_argument(
        "--store",
        choices=STORES,
        default="memory",
        help="the coordinator's state store (memory; sqlite: durable, slower)",
    )
    out.add_argument(
        "--out",
        type=Path,
        default=Path("simulation-output"),
        metavar="DIR",
        help="where the outputs go (simulation-output)",
    )
    out.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help="pretrained models (OUT/cache)"
    )
    out.add_argument("--no-baseline", action="store_true", help="skip the centralized baseline")
    out.add_argument(
        "--no-personalization", action="store_true", help="skip the final evaluate tasks"
    )
    out.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--verbose", action="store_true", help="log details and TensorFlow output")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    rounds = args.rounds
    if rounds is None and args.schedule_file is None:
        rounds = 10
    return Settings(
        task=None if args.data is not None else args.task,
        clients=args.clients,
        per_round=args.per_round,
        rounds=rounds,
        partition=args.partition,
        aggregator=args.aggregator,
        aggregator_options=args.aggregator_options,
        engine=args.engine,
        seed=args.seed,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        workers=args.workers,
        proxy_fraction=args.proxy_fraction,
        test_fraction=args.test_fraction,
        holdout_fraction=args.holdout_fraction,
        pretrain_epochs=args.pretrain_epochs,
        cache_dir=args.cache_dir if args.cache_dir is not None else args.out / "cache",
        model_file=args.model,
        init_file=args.init,
        data_file=args.data,
        label_column=args.label_column,
        partition_file=args.partition_file,
        schedule_file=args.schedule_file,
        store=args.store,
        baseline=not args.no_baseline,
        personalization=not args.no_personalization,
        personalize_epochs=args.personalize_epochs,
        personalize_lr=args.personalize_lr,
    )


class _RoundBars:
    """One progress bar per round on ``stream`` (tqdm), with the round's accuracy at the end."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: Any = None

    def round_started(self, round_number: int, rounds: int, clients: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=clients,
            desc=f"round {round_number}/{rounds}",
            unit="client",
            file=self._stream,
            mininterval=0.5,
            leave=True,
            dynamic_ncols=True,
        )

    def client_done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def round_finished(self, stats: RoundStats) -> None:
        if self._bar is None:
            return
        self._bar.n = self._bar.total
        self._bar.set_postfix_str(f"accuracy {stats.accuracy:.4f}", refresh=False)
        self._bar.close()
        self._bar = None


def _configure_logging(stream: TextIO, verbose: bool) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Per-client chatter and TensorFlow's conversion notes stay out of the way.
        for name in ("edge_client", "coordinator"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)


def simulate_cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    with capture_native_stderr(enabled=not args.verbose) as captured:
        err = captured.original
        _configure_logging(err, args.verbose)

        def say(message: str) -> None:
            if not args.quiet:
                print(f"{PROG}: {message}", file=err, flush=True)

        try:
            inputs = check_settings(settings)
            report = simulate(
                settings,
                progress=None if args.quiet else _RoundBars(err),
                step=say,
                inputs=inputs,
            )
            paths = write_report(report, args.out)
        except _INPUT_ERRORS as exc:
            print(f"{PROG}: error: {exc}", file=err, flush=True)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=err, flush=True)
            return EXIT_INTERRUPTED
        except FedgeError as exc:
            print(f"{PROG}: failed: {exc}", file=err, flush=True)
            return EXIT_FAILED
        say(f"wrote {', '.join(sorted(paths))} to {args.out}")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print(summary_table(report))
    return EXIT_OK


def main() -> None:
    code = simulate_cli()
    if "tensorflow_federated" in sys.modules:
        exit_after_tff(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
