"""``fedge-simulate async``: sync rounds against FedBuff on a simulated clock (digits).

::

    fedge-simulate async [--buffer K] [--max-staleness S] [--slow-fraction F]
        [--slow-factor X | --trace FILE] [--online-fraction P] [--session-seconds S]
        [--clients N] [--concurrency C] [--rounds R] [--seed N] [--cache-dir DIR] [--json]

See :mod:`simulations.async_engine`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from fedge.cli import ArgumentParser, ExitCode, add_json_flag, print_json
from fedge.errors import ConfigError, UsageError
from simulations.async_engine import (
    AsyncSimConfig,
    Comparison,
    SimRun,
    compare,
    load_trace,
)

__all__ = ["ASYNC", "build_async_parser", "run_async_cli"]

ASYNC = "async"

_DESCRIPTION = """\
Synchronous rounds against FedBuff (buffered asynchronous aggregation) on digits, on a
simulated clock: a slow fraction of the devices (or the speed factors of a trace) take
longer per task, and devices may be online only part of the time (--online-fraction, or a
trace's online windows): an offline device does not poll, and one that finishes training
offline delivers its update when it next comes online. Sync rounds wait for their
slowest device; FedBuff hands the current version to any idle online device, weights
each update by 1/sqrt(1 + staleness), drops updates staler than --max-staleness and
commits every --buffer updates. Prints both runs side by
side: final accuracy, simulated seconds to the sync run's final accuracy, commits, updates
used and dropped, staleness. Both runs go through the coordinator service (sync rounds, or
its async mode) and the devices train with the bundle's on-device train step; the
model is the digits model pretrained on the cloud's proxy share (cached in --cache-dir)."""


def build_async_parser(prog: str) -> ArgumentParser:
    """The parser of ``fedge-simulate async``."""
    default = AsyncSimConfig()
    parser = ArgumentParser(prog=f"{prog} {ASYNC}", description=_DESCRIPTION)
    parser.add_version()
    add = parser.add_argument
    add(
        "--buffer",
        type=int,
        default=default.buffer_size,
        metavar="K",
        help=f"updates per FedBuff commit ({default.buffer_size})",
    )
    add(
        "--max-staleness",
        type=int,
        default=default.max_staleness,
        metavar="S",
        help=f"drop updates staler than this ({default.max_staleness})",
    )
    add(
        "--slow-fraction",
        type=float,
        default=default.slow_fraction,
        metavar="F",
        help=f"fraction of slow devices ({default.slow_fraction:g})",
    )
    add(
        "--slow-factor",
        type=float,
        default=default.slow_factor,
        metavar="X",
        help=f"how many times longer a slow device takes ({default.slow_factor:g})",
    )
    add(
        "--trace",
        type=Path,
        default=None,
        metavar="FILE",
        help='per-device speed factors, JSON {"speeds": [1.0, 5.0, ...]} (one per device; '
        "replaces --slow-fraction/--slow-factor), and optionally per-device online windows "
        'in simulated seconds, "online": [[[0, 300], [900, 1200]], ...] (sorted; offline '
        "after the last one; replaces --online-fraction/--session-seconds)",
    )
    add(
        "--online-fraction",
        type=float,
        default=default.online_fraction,
        metavar="P",
        help="each device's time is cut into sessions of --session-seconds, each online "
        f"with probability P, seeded ({default.online_fraction:g}: always online)",
    )
    add(
        "--session-seconds",
        type=float,
        default=default.session_seconds,
        metavar="S",
        help=f"simulated seconds per on/off session ({default.session_seconds:g})",
    )
    add(
        "--clients",
        type=int,
        default=default.num_clients,
        metavar="N",
        help=f"devices ({default.num_clients})",
    )
    add(
        "--concurrency",
        type=int,
        default=default.concurrency,
        metavar="C",
        help=f"devices training at once: a sync round's cohort ({default.concurrency})",
    )
    add(
        "--rounds",
        type=int,
        default=default.rounds,
        metavar="R",
        help=f"sync rounds; FedBuff gets as much simulated time ({default.rounds})",
    )
    add("--seed", type=int, default=default.seed, metavar="N", help="seed (0)")
    add(
        "--cache-dir",
        type=Path,
        default=Path("simulation-output") / "cache",
        metavar="DIR",
        help="pretrained models (simulation-output/cache, as fedge-simulate's default)",
    )
    add_json_flag(parser)
    return parser  # fmt: skip


def _config(args: object) -> AsyncSimConfig:
    values = vars(args)
    speeds, online = None, None
    try:
        if values["trace"] is not None:
            speeds, online = load_trace(values["trace"])
        clients = values["clients"] if speeds is None else len(speeds)
        return AsyncSimConfig(
            num_clients=clients,
            concurrency=values["concurrency"],
            rounds=values["rounds"],
            buffer_size=values["buffer"],
            max_staleness=values["max_staleness"],
            slow_fraction=values["slow_fraction"],
            slow_factor=values["slow_factor"],
            speeds=speeds,
            online=online,
            online_fraction=values["online_fraction"],
            session_seconds=values["session_seconds"],
            seed=values["seed"],
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _run(run: SimRun) -> dict[str, object]:
    document = dataclasses.asdict(run)
    del document["events"]
    return document


def _document(result: Comparison) -> dict[str, object]:
    return {
        "target_accuracy": result.target,
        "sync_seconds_to_target": result.sync_seconds,
        "async_seconds_to_target": result.async_seconds,
        "sync": _run(result.sync),
        "async": _run(result.fedbuff),
    }


def run_async_cli(argv: Sequence[str], prog: str) -> int:
    """Run ``fedge-simulate async`` with ``argv`` (the words after ``async``)."""
    from simulations.pretrain import PretrainConfig, pretrain

    args = build_async_parser(prog).parse_args(argv)
    config = _config(args)
    pretrained = pretrain(PretrainConfig(task="digits"), args.cache_dir)
    result = compare(config, pretrained)
    if args.json:
        print_json(_document(result))
    else:
        print(result.table())
    return ExitCode.OK
