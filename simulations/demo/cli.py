"""``python -m simulations.demo --out DIR`` (``make demo``): the end-to-end job.

The cloud pretrains on a small proxy share (``fedge-train``) and builds the edge bundle
(``fedge-quantize bundle``); a coordinator (``fedge-coordinator serve``, REST on loopback,
SQLite) runs federated rounds with several ``fedge-edge`` daemons, each a separate process
with its own partition of the rest of the data. The demo prints a round table and the
registry's lineage, leaves plots and a summary in DIR, and stops every process it
started. See :mod:`simulations.demo.job` for the steps. Thin: it parses, calls
:func:`~simulations.demo.job.run_job`, prints, and fails (exit 1) when the federated
rounds made the model worse than the pretrained one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedge.cli import (
    EXIT_CODES_HELP,
    ArgumentParser,
    ExitCode,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
    tool_version,
)
from fedge.data import TASK_NAMES
from fedge.errors import UsageError
from simulations.demo.config import LEARNING_RATES, PRETRAIN_EPOCHS, PROXY_FRACTIONS, DemoConfig
from simulations.demo.job import run_job
from simulations.demo.result import DemoResult
from simulations.errors import DemoError
from simulations.report import device_table, output_problem, round_table

__all__ = ["PROG", "build_parser", "demo_cli", "main"]

PROG = "python -m simulations.demo"
_DEFAULTS = DemoConfig()
_EPILOG = f"""\
DIR receives rounds.csv, summary.json, accuracy.png, lineage.txt, logs/ (one log per
process) and work/ (the export, the bundle, the coordinator's database and artifacts, each
device's data and state). A DIR left by an earlier demo is emptied first; an interrupted
run removes DIR.

The demo fails (exit 1) when the final model's test accuracy is below the pretrained
model's: federated rounds that make the model worse are not a working demo.

{EXIT_CODES_HELP}"""


def build_parser() -> ArgumentParser:
    d = _DEFAULTS
    epochs = ", ".join(f"{n} for {task}" for task, n in PRETRAIN_EPOCHS.items())
    shares = ", ".join(f"{f:g} for {task}" for task, f in PROXY_FRACTIONS.items())
    rates = ", ".join(f"{r:g} for {task}" for task, r in LEARNING_RATES.items())
    parser = ArgumentParser(
        prog=PROG,
        description="The fedge end-to-end demo: cloud training, edge bundle, coordinator and "
        "edge daemons on loopback.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"fedge demo {tool_version()}")
    add = parser.add_argument
    add("--out", type=Path, default=Path("demo-output"), metavar="DIR", help="(demo-output)")
    add("--task", choices=TASK_NAMES, default=d.task, help=f"({d.task})")
    add("--devices", type=int, default=d.devices, metavar="N", help=f"edge daemons ({d.devices})")
    add("--rounds", type=int, default=d.rounds, metavar="R", help=f"({d.rounds})")
    add("--clients-per-round", type=int, metavar="K", help="(every device)")
    add(
        "--local-epochs",
        type=int,
        default=d.local_epochs,
        metavar="E",
        help=f"epochs per round on a device ({d.local_epochs})",
    )
    add(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help=f"devices' SGD rate ({rates})",
    )
    add("--alpha", type=float, default=d.alpha, help=f"Dirichlet partition ({d.alpha:g})")
    add(
        "--proxy-fraction",
        type=float,
        metavar="F",
        help=f"the cloud's share of the training split ({shares})",
    )
    add(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        metavar="F",
        help=f"held-out test share ({d.test_fraction:g})",
    )
    add("--pretrain-epochs", type=int, metavar="N", help=f"fedge-train epochs ({epochs})")
    add(
        "--pretrain-learning-rate",
        type=float,
        default=d.pretrain_learning_rate,
        metavar="LR",
        help=f"fedge-train Adam rate ({d.pretrain_learning_rate:g})",
    )
    add("--seed", type=int, default=d.seed, help=f"({d.seed})")
    add("--no-evaluate", action="store_true", help="skip the devices' evaluate task round")
    add(
        "--no-secure-aggregation",
        action="store_true",
        help="plain rounds: the coordinator sees each device's update (default: SecAgg+, "
        "it sees only their sum)",
    )
    add(
        "--round-timeout",
        type=float,
        default=d.round_timeout,
        metavar="S",
        help=f"round deadline, seconds ({d.round_timeout:g})",
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        task=args.task,
        devices=args.devices,
        rounds=args.rounds,
        clients_per_round=args.clients_per_round,
        local_epochs=args.local_epochs,
        learning_rate=args.learning_rate,
        alpha=args.alpha,
        proxy_fraction=args.proxy_fraction,
        test_fraction=args.test_fraction,
        pretrain_epochs=args.pretrain_epochs,
        pretrain_learning_rate=args.pretrain_learning_rate,
        seed=args.seed,
        evaluate=not args.no_evaluate,
        round_timeout=args.round_timeout,
        secure_aggregation=not args.no_secure_aggregation,
    )


def _print_report(result: DemoResult) -> None:
    print()
    print("rounds: the global model of each version on the held-out test set (TFLite)")
    print(round_table(result.rows))
    print()
    print("registry lineage:")
    print(f"$ fedge-coordinator models list --coordinator {result.url} --admin-token-file ...")
    print(result.models_cli)
    if result.devices:
        print()
        print(f"devices: {result.final.version} on each device's own holdout (evaluate task)")
        print(device_table(result.devices, result.device_rows))
    print()
    print(f"outputs in {result.out}: rounds.csv, summary.json, accuracy.png, lineage.txt, logs/")


def _figures(result: DemoResult) -> str:
    pretrained, final = result.pretrained, result.final
    return (
        f"test accuracy {pretrained.test.accuracy:.3f} ({pretrained.version}, pretrained on "
        f"the proxy share) -> {final.test.accuracy:.3f} ({final.version}, after "
        f"{final.round} rounds with {len(result.device_rows)} edge daemons)"
    )


def _secure_note(config: DemoConfig) -> str:
    if config.secure_aggregation:
        return " with secure aggregation (SecAgg+: the coordinator sees only sums)"
    return " without secure aggregation"


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=("simulations",))
    config = config_from_args(args)
    problem = output_problem(args.out)
    if problem is not None:
        raise UsageError(f"--out: {problem}")
    # Progress goes to stdout with the tables; with --json, stdout is the document alone.
    progress = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=progress, flush=True)

    say(
        f"fedge demo: {config.task}, {config.devices} edge daemons, {config.rounds} rounds of "
        f"fedavg{_secure_note(config)}, seed {config.seed} -> {args.out}"
    )
    began = time.monotonic()
    result = run_job(config, args.out, say=say)
    if args.json:
        print_json(result.to_dict())
    else:
        _print_report(result)
    if not result.improved:
        raise DemoError(
            f"the federated rounds made the model worse: {_figures(result)} "
            f"(see {result.out / 'summary.json'})"
        )
    line = f"fedge demo OK: {_figures(result)}"
    transports = list(result.device_transports.values())
    line += f"; {transports.count('rest')} devices over REST, {transports.count('grpc')} over gRPC"
    if config.secure_aggregation:
        line += "; secure aggregation was on: the coordinator saw only each round's sum"
    pair = result.personalization()
    if pair is not None:
        line += f"; devices' holdout accuracy global {pair[0]:.3f}, personalized {pair[1]:.3f}"
    say(f"{line}; done in {time.monotonic() - began:.1f} s")
    return ExitCode.OK


def demo_cli(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit code (see ``--help``)."""
    return run_cli(lambda: _run(argv), prog=PROG, debug_tracebacks=True)


def main() -> None:
    sys.exit(demo_cli())
