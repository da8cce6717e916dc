"""``python -m simulations.demo --out DIR`` (``make demo``): the end-to-end job.

The cloud pretrains on a small proxy share (``fedge-train``) and builds the edge bundle
(``fedge-quantize bundle``); a coordinator (``fedge-coordinator serve``, REST on loopback,
SQLite) runs federated rounds with several ``fedge-edge`` daemons, each a separate process
with its own partition of the rest of the data. The demo prints a round table and the
registry's lineage, leaves plots and a summary in DIR, and stops every process it
started. See :mod:`simulations.e2e` for the steps. Thin: it parses, calls
:func:`simulations.e2e.run_job` and prints.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from fedge.data import TASK_NAMES
from fedge.errors import FedgeError
from simulations.e2e import DemoConfig, DemoError, DemoResult, run_job
from simulations.e2e_config import PRETRAIN_EPOCHS
from simulations.e2e_report import device_table, round_table

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DEFAULTS = DemoConfig()
_EPILOG = """\
DIR receives rounds.csv, summary.json, accuracy.png, lineage.txt, logs/ (one log per
process) and work/ (the export, the bundle, the coordinator's database and artifacts, each
device's data and state). A DIR left by an earlier demo is emptied first.

exit codes:
  0    every step finished and every process was stopped
  1    a step failed (the reason is one line on stderr; the logs are in DIR/logs)
  2    usage error
  130  interrupted (Ctrl-C or SIGTERM); every process was stopped"""


def build_parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    per_task = ", ".join(f"{n} for {task}" for task, n in PRETRAIN_EPOCHS.items())
    parser = argparse.ArgumentParser(
        prog="python -m simulations.demo",
        description="The fedge end-to-end demo: cloud training, edge bundle, coordinator and "
        "edge daemons on loopback.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        default=d.learning_rate,
        metavar="LR",
        help=f"devices' SGD rate ({d.learning_rate:g})",
    )
    add("--alpha", type=float, default=d.alpha, help=f"Dirichlet partition ({d.alpha:g})")
    add(
        "--proxy-fraction",
        type=float,
        default=d.proxy_fraction,
        metavar="F",
        help=f"the cloud's share of the training split ({d.proxy_fraction:g})",
    )
    add(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        metavar="F",
        help=f"held-out test share ({d.test_fraction:g})",
    )
    add(
        "--pretrain-epochs",
        type=int,
        metavar="N",
        help=f"fedge-train epochs ({per_task})",
    )
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
        "--round-timeout",
        type=float,
        default=d.round_timeout,
        metavar="S",
        help=f"round deadline, seconds ({d.round_timeout:g})",
    )
    add("-v", "--verbose", action="store_true", help="debug logs of the demo itself")
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that every ``finally`` runs."""


@contextmanager
def _interruptible_once() -> Iterator[None]:
    """SIGINT and SIGTERM interrupt the job once; a second signal does not cut short the
    shutdown that the first one started (children are stopped in ``finally``)."""
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            print("still stopping the demo's processes ...", file=sys.stderr, flush=True)
            return
        if signum == signal.SIGTERM:
            raise _Terminated("SIGTERM")
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(text: str) -> None:
    print(text, flush=True)


def _report(result: DemoResult) -> None:
    print()
    print("rounds: the global model of each version on the held-out test set (TFLite)")
    print(round_table(result.rows))
    print()
    print("registry lineage:")
    print(f"$ fedge-coordinator models list --server {result.url} --admin-token-file ...")
    print(result.models_cli)
    if result.devices:
        print()
        print(f"devices: {result.final.version} on each device's own holdout (evaluate task)")
        print(device_table(result.devices, result.device_rows))
    print()
    print(f"outputs in {result.out}: rounds.csv, summary.json, accuracy.png, lineage.txt, logs/")
    pretrained, final = result.pretrained, result.final
    line = (
        f"fedge demo OK: test accuracy {pretrained.test.accuracy:.3f} ({pretrained.version}, "
        f"pretrained on the proxy share) -> {final.test.accuracy:.3f} ({final.version}, after "
        f"{final.round} rounds with {len(result.device_rows)} edge daemons)"
    )
    pair = result.personalization()
    if pair is not None:
        line += f"; devices' holdout accuracy global {pair[0]:.3f}, personalized {pair[1]:.3f}"
    print(f"{line}; done in {result.elapsed:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit code (see ``--help``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = DemoConfig(
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
        )
    except FedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    began = time.monotonic()
    logs = args.out.resolve() / "logs"
    _say(
        f"fedge demo: {config.task}, {config.devices} edge daemons, {config.rounds} rounds of "
        f"fedavg, seed {config.seed} -> {args.out}"
    )
    try:
        with _interruptible_once():
            result = run_job(config, args.out, say=_say)
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(
            f"fedge demo {what} after {time.monotonic() - began:.1f} s; every process it "
            f"started was stopped (logs in {logs})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except DemoError as exc:
        where = "" if "(see " in str(exc) else f" (logs in {logs})"
        print(f"fedge demo FAILED: {exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        logging.getLogger(__name__).debug("details", exc_info=True)
        print(f"fedge demo FAILED: {type(exc).__name__}: {exc} (logs in {logs})", file=sys.stderr)
        return EXIT_FAILED
    _report(result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
