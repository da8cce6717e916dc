"""``fedge-simulate``: a federated run on an in-memory fleet, with its metrics and plots.

Thin, on :mod:`fedge.cli`: it parses arguments into :class:`~simulations.settings.Settings`,
checks the output location and every input file before any training
(:func:`~simulations.settings.check_settings`), calls :func:`~simulations.runner.simulate`,
writes the outputs (:mod:`simulations.report`) through a staging folder and prints the
summary table (or, with ``--json``, the metrics document). TensorFlow's native chatter is
held back unless ``--verbose``. A :class:`~simulations.errors.SettingsError` names
``Settings`` fields; its error line ends with their flags (:func:`setting_flag`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fedge import processes
from fedge.cli import (
    EXIT_CODES_HELP,
    ArgumentParser,
    ExitCode,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
)
from fedge.data import TASK_NAMES
from fedge.errors import BundleError, ConfigError, UsageError
from fedge.server_optimizers import SERVER_OPTIMIZER_NAMES
from fedge.strategy import STRATEGY_NAMES
from quantize.quiet import capture_native_stderr
from simulations.errors import SettingsError
from simulations.native_engine import STORES, TRANSPORTS
from simulations.plotter import start_plotter
from simulations.report import RoundStats, output_problem, summary_table, write_report
from simulations.runner import simulate
from simulations.settings import (
    COMPRESSIONS,
    DEFAULT_DEVICE_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_TOPK_FRACTION,
    DROPOUT_STAGES,
    ENGINES,
    SAVE_WEIGHTS,
    Settings,
    check_settings,
)

if TYPE_CHECKING:
    from simulations.continuous import ContinuousConfig, ContinuousResult, RoundOutcome

# None of the imports above loads TensorFlow; pretraining, bundling and the TFF engine do,
# later, and read this first.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = [
    "CONTINUOUS",
    "PROG",
    "build_continuous_parser",
    "build_parser",
    "continuous_report",
    "main",
    "setting_flag",
    "simulate_cli",
]

PROG = "fedge-simulate"
WEIGHTS_DIR = "weights"
"""``--save-weights every-round`` writes ``OUT/weights/round-0001.safetensors``, ..."""
# A bundle the user's model produced is the user's input to fix.
_EXIT_TABLE = ((BundleError, ExitCode.USAGE),)

_DESCRIPTION = """\
Simulate federated training of the on-device head: N virtual clients, each holding its own
partition of the data, run the real edge client (TFLite) against the real coordinator
service, in memory. The cloud first pretrains the model on a small proxy share of the data
(cached); the rest of the training rows exist only on the clients."""

_EPILOG = (
    """\
outputs (in --out): metrics.json, metrics.csv (round, accuracy, loss, participants,
bytes_up, bytes_down, seconds (the whole round, its evaluation included), eval_seconds,
train_loss, auc, secure, compression, epsilon, delta),
accuracy.png,
personalization.png, summary.txt and final_head.safetensors; the summary table is printed to stdout.
With --save-weights every-round also weights/round-0001.safetensors, ... (see below).

bring your own:
  --model FILE        a Keras model (.keras, .h5 or a SavedModel directory). The layers
                      left trainable are the part devices train (Dense only; relu is
                      rewritten for the device); the frozen layers below are the backbone.
                      A fully trainable model (every layer trainable) trains whole on the
                      devices: its backbone is the identity. A trainable layer whose
                      gradient is no TFLite builtin (Conv2D, ...) is refused: freeze it
                      (layer.trainable = False).
                      Or a fedge-train export (its head_* layers train, its feature spec
                      and schema.json read the data), or its edge bundle (native engine).
  --init FILE         safetensors initial weights, either
                        plain: keyed by the Keras model's weight names (variable name
                          without ':0'), all of the model's weights or only its trainable
                          ones, e.g. written by
                          safetensors.numpy.save_file(
                              {w.name[:-2]: w.numpy() for w in model.weights}, "init.safetensors")
                          -> {"dense/kernel": [64, 32], "dense/bias": [32], "dense_1/kernel": ...}
                        or fedge weights (final_head.safetensors of an earlier run).
                      A missing, extra or mis-shaped name is one error line naming it.
  --data FILE         .npz with arrays x (model-ready inputs) and y (class ids), or a
                      table (.csv[.gz], .tfrecord[.gz]) with numeric and categorical columns,
                      empty fields as missing, and --label-column (the model's schema.json
                      when it has one); warnings about the data on stderr.
  --test-data FILE    the evaluation set of every round: a file like --data (same format,
                      columns and label values). Without it the test set is the rows of
                      --data no client holds (with --partition-file), else a --test-fraction
                      split of --data.
  --partition-file F  which rows of --data (or, with a built-in task, of its client pool)
                      each client holds; non-empty, in range, disjoint. Each client trains
                      on its rows in exactly the order given: every epoch's batches are
                      consecutive slices of that list (no shuffling). Two forms:
                        {"alice": [5, 3, 9, 1], "bob": [0, 2, 4]}
                          a seeded --holdout-fraction of each client's rows is held out
                          for its local evaluation (--holdout-fraction 0: none), the
                          others train in the order listed;
                        {"format": "fedge.partition/1",
                         "clients": {"alice": {"train": [5, 3, 9], "holdout": [1]}},
                         "unassigned": [6, 7]}
                          the train and holdout rows exactly as given.
  --schedule-file F   JSON {"rounds": [["alice", "bob"], ["bob"], ...]}: who trains in
                      each round (--rounds: as many as it lists).
  --save-weights final|every-round
                      final (default): final_head.safetensors only. every-round: also
                      OUT/weights/round-0001.safetensors, ... the global weights after each
                      round, plain safetensors named as your model's weights (loadable back
                      as --init).
Every file is checked before any training; a problem is one error line and exit code 2.

engines:
  native  the coordinator service + edge clients in worker processes (--workers; without
          it, in this process when the clients' training is estimated under 3 s of CPU
          from the initial test evaluation's: starting workers would cost more).
  ray     the same, the edge clients on Ray actors (--workers of them): a local Ray with
          --workers CPUs, started and shut down by the run, or an existing cluster with
          --ray-address (needs Ray: pip install 'fedge[ray]').
  tff     tff.learning.algorithms.build_weighted_fed_avg on the same initial weights,
          client rows, schedule and hyperparameters: a reference (FedAvg only).

outputs appear in --out only when the run succeeds: they are written to a staging folder
inside it and moved in at the end; an interrupted or failed run leaves no partial output
(and removes --out if it created it).

continuous training:
  fedge-simulate continuous [options]
                      rounds that open on their own on digits, with the quarantine, a
                      corruption schedule, a region shift and the cloud holdout gate; see
                      'fedge-simulate continuous --help'.

asynchronous FL:
  fedge-simulate async [options]
                      sync rounds against FedBuff on digits on a simulated clock, with a
                      slow fraction of the devices or a speed trace; see
                      'fedge-simulate async --help'.

"""
    + EXIT_CODES_HELP
)


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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_version()
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
    run.add_argument(
        "--aggregator",
        choices=STRATEGY_NAMES,
        default="fedavg",
        help="an aggregator (fedavg, median, trimmed_mean, krum) or a preset (fedavgm, fedadam, "
        "fedyogi: fedavg with that server optimizer)",
    )
    run.add_argument(
        "--aggregator-options",
        type=_options,
        default={},
        metavar="K=V,...",
        help="e.g. num_byzantine=1 for krum, trim_fraction=0.2 for trimmed_mean (and, with a "
        "preset and no --server-optimizer, its server options: lr=0.01 for fedadam)",
    )
    run.add_argument(
        "--server-optimizer",
        choices=SERVER_OPTIMIZER_NAMES,
        default=None,
        help="applies the aggregate to the model (default: the aggregator's preset, fedavg)",
    )
    run.add_argument(
        "--server-optimizer-options",
        type=_options,
        default={},
        metavar="K=V,...",
        help="e.g. lr=0.01 for fedadam or fedyogi, momentum=0.9 for fedavgm",
    )
    run.add_argument("--engine", choices=ENGINES, default="native")
    run.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="the ray engine on this Ray cluster (ray://HOST:10001 or HOST:PORT) instead of "
        "a local Ray",
    )
    run.add_argument("--seed", type=int, default=0, help="seeds splits, partition and schedule")
    secure = parser.add_argument_group("secure aggregation and compressed updates")
    secure.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="run every round as SecAgg+: the coordinator learns only the sum of the updates",
    )
    secure.add_argument(
        "--secagg-clip",
        type=float,
        default=1.0,
        metavar="C",
        help="per-coordinate clip of each secure delta (1.0)",
    )
    secure.add_argument(
        "--secagg-degree",
        type=int,
        default=None,
        metavar="K",
        help="neighbours per client, even (default: 2*ceil(log2 n))",
    )
    secure.add_argument(
        "--secagg-threshold",
        type=int,
        default=None,
        metavar="T",
        help="shares that recover a secret, a strict majority of K (default: K/2+1)",
    )
    secure.add_argument(
        "--secagg-dropout",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="this share of each round's clients (seeded) drops out at --secagg-dropout-stage",
    )
    secure.add_argument(
        "--secagg-dropout-stage",
        choices=DROPOUT_STAGES,
        default="mask",
        help="mask: they never send their masked input; unmask: they never answer the "
        "unmask stage (mask)",
    )
    secure.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="the devices' update codec: q8 (8-bit, unbiased) or topk (with error feedback); "
        "with --secure-aggregation, q8 is the field's 8-bit quantization (none)",
    )
    secure.add_argument(
        "--topk-fraction",
        type=float,
        default=DEFAULT_TOPK_FRACTION,
        metavar="F",
        help=f"share of coordinates a topk update keeps ({DEFAULT_TOPK_FRACTION:g})",
    )
    private = parser.add_argument_group("differential privacy (DP-FedAvg)")
    private.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        metavar="Z",
        help="turn DP-FedAvg on: each round's sum gets Gaussian noise of stddev Z * C (with "
        "--secure-aggregation the devices add it, in shares); off by default",
    )
    private.add_argument(
        "--dp-clip",
        type=float,
        default=1.0,
        metavar="C",
        help="L2 bound of each client's update (1.0; the starting bound with --dp-adaptive-clip)",
    )
    private.add_argument(
        "--dp-adaptive-clip",
        action="store_true",
        help="adapt the bound to a quantile of the update norms (plain rounds only)",
    )
    private.add_argument(
        "--dp-clipped-count-stddev",
        type=float,
        default=None,
        metavar="S",
        help="with --dp-adaptive-clip: the noise on the count of clipped updates, which must "
        "exceed Z/2 (default: clients per round / 20)",
    )
    private.add_argument(
        "--dp-delta",
        type=float,
        default=None,
        metavar="D",
        help="the delta of the reported (epsilon, delta) (default: the coordinator's)",
    )
    private.add_argument(
        "--privacy-budget",
        type=float,
        default=None,
        metavar="EPS",
        help="stop before a round would take the model's epsilon over EPS (the report says so)",
    )
    train = parser.add_argument_group("local training")
    train.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        metavar="E",
        help=f"local epochs ({DEFAULT_EPOCHS})",
    )
    train.add_argument(
        "--learning-rate",
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
        "--personal-epochs",
        type=int,
        default=5,
        metavar="N",
        help="epochs of each device's personal-head fine-tuning (5)",
    )
    train.add_argument(
        "--personal-learning-rate",
        type=float,
        default=0.05,
        metavar="LR",
        help="its rate (0.05)",
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
    byo.add_argument("--test-data", type=Path, default=None, metavar="FILE")
    byo.add_argument("--label-column", default="label", metavar="NAME")
    byo.add_argument("--partition-file", type=Path, default=None, metavar="FILE")
    byo.add_argument("--schedule-file", type=Path, default=None, metavar="FILE")
    out = parser.add_argument_group("execution and output")
    out.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="W",
        help="worker processes (1: in-process; default: in-process when the clients' "
        "training is small, else 2)",
    )
    out.add_argument(
        "--store",
        choices=STORES,
        default="memory",
        help="the coordinator's state store (memory; sqlite: durable, slower)",
    )
    out.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="memory",
        help="how devices reach the coordinator (memory: direct calls; rest, grpc: the "
        "service served on loopback, every poll and reply over that protocol)",
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
    out.add_argument(
        "--save-weights",
        choices=SAVE_WEIGHTS,
        default="final",
        help="final: final_head.safetensors (default); every-round: also the global weights "
        "after each round in OUT/weights/ (see below)",
    )
    out.add_argument("--no-baseline", action="store_true", help="skip the centralized baseline")
    out.add_argument(
        "--no-personalization", action="store_true", help="skip the final evaluate tasks"
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


# The Settings fields whose flag is not ``--`` + the field name with dashes.
_FLAGS = {
    "model_file": "--model",
    "init_file": "--init",
    "data_file": "--data",
    "test_data_file": "--test-data",
    "personalize_epochs": "--personal-epochs",
    "personalize_lr": "--personal-learning-rate",
    "baseline": "--no-baseline",
    "personalization": "--no-personalization",
}


def setting_flag(field: str) -> str:
    """The flag that sets the ``Settings`` field ``field``."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


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
        server_optimizer=args.server_optimizer,
        server_optimizer_options=args.server_optimizer_options,
        engine=args.engine,
        ray_address=args.ray_address,
        seed=args.seed,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
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
        test_data_file=args.test_data,
        label_column=args.label_column,
        partition_file=args.partition_file,
        schedule_file=args.schedule_file,
        store=args.store,
        transport=args.transport,
        baseline=not args.no_baseline,
        personalization=not args.no_personalization,
        personalize_epochs=args.personal_epochs,
        personalize_lr=args.personal_learning_rate,
        secure_aggregation=args.secure_aggregation,
        secagg_clip=args.secagg_clip,
        secagg_degree=args.secagg_degree,
        secagg_threshold=args.secagg_threshold,
        secagg_dropout=args.secagg_dropout,
        secagg_dropout_stage=args.secagg_dropout_stage,
        compression=args.compression,
        topk_fraction=args.topk_fraction,
        dp_noise_multiplier=args.dp_noise_multiplier,
        dp_clip=args.dp_clip,
        dp_adaptive_clip=args.dp_adaptive_clip,
        dp_clipped_count_stddev=args.dp_clipped_count_stddev,
        dp_delta=args.dp_delta,
        privacy_budget=args.privacy_budget,
        save_weights=args.save_weights,
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


def _configure_logging(verbose: int, quiet: bool) -> None:
    # Without -v, per-client chatter and TensorFlow's conversion notes stay out of the way.
    ours = ("simulations", "edge_client", "coordinator", "fedge") if verbose else ()
    configure_logging(verbose=verbose, quiet=quiet, loggers=ours)
    if not verbose:
        # absl resets its logger's level when TensorFlow loads (after this), so a filter.
        for name in ("tensorflow", "absl", "h5py"):
            library = logging.getLogger(name)
            library.setLevel(logging.ERROR)
            if _errors_only not in library.filters:
                library.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _check_output(args: argparse.Namespace) -> None:
    """UsageError before any work when --out or --cache-dir cannot be written."""
    for flag, path in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        problem = None if path is None else output_problem(path)
        if problem is not None:
            raise UsageError(f"{flag}: {problem}")


class _Output:
    """``--out`` as a transaction: files are written to a staging folder inside it and
    moved in by :meth:`publish`; :meth:`discard` removes the staging folder, and ``--out``
    itself when this run created it (with the cache it put there)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created = not out.exists()
        self.staging = out / f".partial-{secrets.token_hex(4)}"

    def publish(self, names: Sequence[str]) -> None:
        with processes.deferred_interrupts():  # all of the files or none of them
            for name in names:
                if (self.staging / name).is_dir() and (self.out / name).is_dir():
                    shutil.rmtree(self.out / name)  # a folder of outputs: this run's alone
                os.replace(self.staging / name, self.out / name)
            shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        with processes.deferred_interrupts():
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)


def _simulate(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == [CONTINUOUS]:
        return _continuous(words[1:])
    if words[:1] == ["async"]:
        from simulations.async_cli import run_async_cli

        return run_async_cli(words[1:], PROG)
    try:
        return _run(argv)
    except SettingsError as exc:
        flags = ", ".join(setting_flag(field) for field in exc.fields)
        raise UsageError(f"{exc} ({flags})" if flags else str(exc)) from exc


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _check_output(args)
    settings = settings_from_args(args)
    output = _Output(args.out)
    # matplotlib loads in the helper while the run goes on (simulations.plotter).
    plotter = start_plotter()
    with (
        contextlib.ExitStack() as helper,
        capture_native_stderr(enabled=not args.verbose) as captured,
    ):
        helper.callback(plotter.close)
        err = captured.original
        _configure_logging(args.verbose, args.quiet)

        def say(message: str) -> None:
            if not args.quiet:
                print(f"{PROG}: {message}", file=err, flush=True)

        try:
            inputs = check_settings(settings)
            every_round = settings.save_weights == "every-round"
            report = simulate(
                settings,
                progress=None if args.quiet else _RoundBars(err),
                step=say,
                inputs=inputs,
                weights_dir=output.staging / WEIGHTS_DIR if every_round else None,
            )
            paths = dict(write_report(report, output.staging, draw=plotter.draw))
            if every_round:
                paths[WEIGHTS_DIR] = output.staging / WEIGHTS_DIR
            output.publish(sorted(paths))
        except BaseException:
            output.discard()
            raise
        say(f"wrote {', '.join(sorted(paths))} to {args.out}")
    if args.json:
        print_json(report.to_dict())
    else:
        print(summary_table(report))
    return ExitCode.OK


# fedge-simulate continuous ------------------------------------------------------------------

CONTINUOUS = "continuous"

_CONTINUOUS_DESCRIPTION = """\
Continuous training on digits: the coordinator service (in memory, on a simulated clock)
opens round after round on its own while part of the fleet's data goes bad. Every selected
client sends fresh statistics with its update, and the quarantine holds back the updates
whose statistics drift from the training data's. The model is the digits model pretrained
on the cloud's proxy share (cached in --cache-dir); the devices run the real edge client.

schedules:
  corruption    from --corrupt-from-round, --corrupt-fraction of the clients (seeded) read
                their pixels through a sensor whose gain went up 16-fold: their statistics
                show it, so their updates are quarantined.
  region shift  from --shift-from-round, the clients of --shift-region see their digits
                mirrored left to right: the statistics cannot see it; --gate is what keeps
                a worse model out of production.

output: a line per round as it closes (on stderr), then on stdout every round (the version
committed, or the candidate rejected and why; the clients quarantined; production and its
accuracy on the holdout through the device's serving path), the quarantined updates with
their reasons and a summary (versions promoted, candidates rejected, updates quarantined);
with --json, one JSON document instead."""

# The ContinuousConfig fields whose flag is not ``--`` + the field name with dashes.
_CONTINUOUS_FLAGS = {
    "num_clients": "--clients",
    "clients_per_round": "--per-round",
    "stats_epsilon": "--stats-epsilon",
}


def _regions(text: str) -> tuple[str, ...]:
    regions = tuple(r.strip() for r in text.split(","))
    if not all(regions) or len(set(regions)) != len(regions):
        raise argparse.ArgumentTypeError(f"expected distinct names A,B,..., got {text!r}")
    return regions


def build_continuous_parser() -> ArgumentParser:
    """The parser of ``fedge-simulate continuous``."""
    from simulations.continuous import ContinuousConfig

    default = ContinuousConfig()
    parser = ArgumentParser(
        prog=f"{PROG} {CONTINUOUS}",
        description=_CONTINUOUS_DESCRIPTION,
        epilog=EXIT_CODES_HELP,
    )
    parser.add_version()
    fleet = parser.add_argument_group("the fleet and its rounds")
    fleet.add_argument(
        "--rounds", type=int, default=default.rounds, metavar="R", help=f"rounds ({default.rounds})"
    )
    fleet.add_argument(
        "--clients",
        type=int,
        default=default.num_clients,
        metavar="N",
        help=f"clients ({default.num_clients})",
    )
    fleet.add_argument(
        "--per-round",
        type=int,
        default=None,
        metavar="K",
        help=f"clients per round ({default.clients_per_round}, or --clients when fewer)",
    )
    fleet.add_argument(
        "--regions",
        type=_regions,
        default=default.regions,
        metavar="A,B,...",
        help=f"clients take these regions in turn ({','.join(default.regions)})",
    )
    fleet.add_argument(
        "--alpha",
        type=float,
        default=default.alpha,
        help=f"Dirichlet concentration of the clients' label mix ({default.alpha:g})",
    )
    fleet.add_argument(
        "--epochs",
        type=int,
        default=default.epochs,
        metavar="E",
        help=f"local epochs ({default.epochs})",
    )
    fleet.add_argument(
        "--learning-rate",
        type=float,
        default=default.learning_rate,
        help=f"client SGD learning rate ({default.learning_rate:g})",
    )
    fleet.add_argument(
        "--seed",
        type=int,
        default=default.seed,
        help="seeds the partition and the corrupted clients",
    )
    bad = parser.add_argument_group("what goes wrong")
    bad.add_argument(
        "--corrupt-fraction",
        type=float,
        default=None,
        metavar="F",
        help=f"share of the clients whose sensor breaks ({default.corrupt_fraction:g}; 0: none)",
    )
    bad.add_argument(
        "--corrupt-from-round",
        type=int,
        default=None,
        metavar="R",
        help=f"the first round they send corrupted data from ({default.corrupt_from_round})",
    )
    bad.add_argument(
        "--shift-region",
        default=None,
        metavar="REGION",
        help="a region of --regions whose digits are mirrored (off by default)",
    )
    bad.add_argument(
        "--shift-from-round",
        type=int,
        default=None,
        metavar="R",
        help="the first round of the shift (1)",
    )
    guard = parser.add_argument_group("what guards production")
    guard.add_argument(
        "--gate",
        action="store_true",
        help="promote a candidate only when its accuracy on the cloud holdout (the test "
        "split) is not below its parent's by more than --gate-margin (off by default)",
    )
    guard.add_argument(
        "--gate-margin",
        type=float,
        default=None,
        metavar="M",
        help="with --gate: the accuracy a candidate may lose (0)",
    )
    guard.add_argument(
        "--stats-epsilon",
        type=float,
        default=default.stats_epsilon,
        metavar="EPS",
        help=f"the devices' privacy budget per statistics report ({default.stats_epsilon:g})",
    )
    out = parser.add_argument_group("execution and output")
    out.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("simulation-output") / "cache",
        metavar="DIR",
        help="pretrained models (simulation-output/cache, as fedge-simulate's default)",
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def _continuous_config(args: argparse.Namespace) -> ContinuousConfig:
    """The :class:`~simulations.continuous.ContinuousConfig` of ``args``; a bad combination
    or value is a :class:`UsageError` naming its flags."""
    from simulations.continuous import ContinuousConfig

    if args.gate_margin is not None and not args.gate:
        raise UsageError("--gate-margin needs --gate")
    if args.shift_from_round is not None and args.shift_region is None:
        raise UsageError("--shift-from-round needs --shift-region")
    if args.corrupt_from_round is not None and args.corrupt_fraction == 0:
        raise UsageError("--corrupt-from-round needs a --corrupt-fraction above 0")
    for flag, start in (
        ("--corrupt-from-round", args.corrupt_from_round),
        ("--shift-from-round", args.shift_from_round),
    ):
        if start is not None and start > args.rounds:
            raise UsageError(f"{flag} {start} is after the last round ({args.rounds}, --rounds)")
    changes = {
        "corrupt_fraction": args.corrupt_fraction,
        "corrupt_from_round": args.corrupt_from_round,
        "shift_from_round": args.shift_from_round,
        "gate_margin": args.gate_margin,
    }
    try:
        return ContinuousConfig(
            rounds=args.rounds,
            num_clients=args.clients,
            clients_per_round=(
                min(ContinuousConfig().clients_per_round, args.clients)
                if args.per_round is None
                else args.per_round
            ),
            regions=args.regions,
            alpha=args.alpha,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            seed=args.seed,
            shift_region=args.shift_region,
            gate=args.gate,
            stats_epsilon=args.stats_epsilon,
            **{k: v for k, v in changes.items() if v is not None},
        )
    except ConfigError as exc:
        fields = [f for f in ContinuousConfig.__dataclass_fields__ if str(exc).startswith(f)]
        field = max(fields, key=len, default=None)
        if field is None:
            raise UsageError(str(exc)) from exc
        flag = _CONTINUOUS_FLAGS.get(field, "--" + field.replace("_", "-"))
        raise UsageError(f"{exc} ({flag})") from exc


def _round_line(outcome: RoundOutcome, rounds: int) -> str:
    if outcome.state == "committed":
        what = f"committed {outcome.version}"
    elif outcome.version is not None:
        what = f"rejected {outcome.version}: {outcome.failure_reason}"
    else:
        what = f"failed: {outcome.failure_reason}"
    quarantined = ", ".join(outcome.quarantined) or "none"
    return (
        f"round {outcome.round_id}/{rounds}: {what}; quarantined: {quarantined}; "
        f"production {outcome.production} (holdout accuracy {outcome.production_accuracy:.4f})"
    )


def continuous_report(result: ContinuousResult, rounds: int) -> str:
    """The text ``fedge-simulate continuous`` prints for a
    :class:`~simulations.continuous.ContinuousResult`."""
    lines = [_round_line(outcome, rounds) for outcome in result.rounds]
    if result.quarantined:
        lines += ["", "quarantined updates:"]
        lines += [
            f"  round {u.round_id}, client {u.client_id}: {u.quarantine}"
            for u in result.quarantined
        ]
    lines += [
        "",
        f"summary: {len(result.promoted())} promoted, {len(result.rejected())} rejected, "
        f"{len(result.quarantined)} quarantined ({len(result.rounds)} rounds, "
        f"{result.seconds:.1f} s); production {result.rounds[-1].production}",
    ]
    return "\n".join(lines)


def _continuous(argv: Sequence[str]) -> int:
    import tempfile

    from simulations.continuous import run_continuous
    from simulations.pretrain import PretrainConfig, pretrain

    args = build_continuous_parser().parse_args(argv)
    problem = output_problem(args.cache_dir)
    if problem is not None:
        raise UsageError(f"--cache-dir: {problem}")
    config = _continuous_config(args)
    with capture_native_stderr(enabled=not args.verbose) as captured:
        err = captured.original
        _configure_logging(args.verbose, args.quiet)
        if not args.verbose:  # the round lines say what the service's warnings say
            for name in ("coordinator", "edge_client", "simulations"):
                logging.getLogger(name).setLevel(logging.ERROR)

        def say(message: str) -> None:
            if not args.quiet:
                print(f"{PROG}: {message}", file=err, flush=True)

        pretrained = pretrain(PretrainConfig(task="digits"), args.cache_dir, progress=say)
        with tempfile.TemporaryDirectory(prefix="fedge-continuous-") as workdir:
            result = run_continuous(
                config,
                pretrained,
                workdir,
                on_round=lambda outcome: say(_round_line(outcome, config.rounds)),
            )
    if args.json:
        print_json(result.to_dict())
    else:
        print(continuous_report(result, config.rounds))
    return ExitCode.OK


def simulate_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the simulation, write and print its results; the exit code."""
    return run_cli(
        lambda: _simulate(argv), prog=PROG, extra_exit_table=_EXIT_TABLE, debug_tracebacks=True
    )


def main() -> None:
    code = simulate_cli()
    if "tensorflow_federated" in sys.modules:
        processes.hard_exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
