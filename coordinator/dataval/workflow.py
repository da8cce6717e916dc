"""``fedge-coordinator data schema`` (edit a schema in place) and ``data watch`` (a watched
location of spans: validate, then retrain a candidate or quarantine).

:func:`add_schema_parser` and :func:`add_watch_parser` add the two commands to the ``data``
command group; their handlers return the exit code. tensorflow-metadata and the watcher are
imported when a command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.cli import add_json_flag, add_verbosity_flags
from fedge.errors import FedgeError, UsageError

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

    from coordinator.dataval.watch import SpanCheck

_COMPARATOR_KINDS = ("infinity_norm", "jensen_shannon_divergence")  # edit.COMPARATOR_KINDS

__all__ = ["add_schema_parser", "add_watch_parser", "check_span", "schema_cli", "watch_cli"]

logger = logging.getLogger(__name__)

_EDIT_HELP = {
    "add-domain-value": ("VALUE", str, "add VALUE to FEATURE's string domain"),
    "set-min-domain-mass": (
        "MASS",
        float,
        "set distribution_constraints.min_domain_mass of FEATURE (0..1)",
    ),
    "set-drift": (
        "THRESHOLD",
        float,
        "set FEATURE's drift_comparator threshold (infinity_norm for categorical, "
        "jensen_shannon_divergence for numeric features)",
    ),
    "set-skew": (
        "THRESHOLD",
        float,
        "set FEATURE's skew_comparator threshold (kind as for set-drift)",
    ),
    "set-presence": ("MIN_FRACTION", float, "set FEATURE's presence.min_fraction (0..1)"),
}


def add_schema_parser(verbs: Any) -> argparse.ArgumentParser:
    """``data schema SCHEMA EDIT FEATURE VALUE``."""
    parser: argparse.ArgumentParser = verbs.add_parser(
        "schema",
        help="edit a schema text proto in place (one edit, written atomically)",
        description="Edit a tensorflow-metadata schema text proto in place, as TFDV users fix "
        "anomalies: the file is rewritten atomically, and the edit is printed.",
    )
    parser.add_argument("schema_path", type=Path, metavar="SCHEMA", help="schema.pbtxt to edit")
    edits = parser.add_subparsers(dest="edit", required=True, metavar="EDIT")
    for name, (metavar, kind, text) in _EDIT_HELP.items():
        edit = edits.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        edit.add_argument("feature", metavar="FEATURE")
        edit.add_argument("value", metavar=metavar, type=kind)
        if name in ("set-drift", "set-skew"):
            edit.add_argument(
                "--kind",
                choices=_COMPARATOR_KINDS,
                help="the comparator (default: from the feature's type)",
            )
    add_verbosity_flags(parser)
    parser.set_defaults(handler=schema_cli)
    return parser


def schema_cli(args: argparse.Namespace) -> int:
    from coordinator.dataval.edit import EDITS
    from coordinator.dataval.schema import load_schema, save_schema

    schema = load_schema(args.schema_path)
    options = {"kind": args.kind} if args.edit in ("set-drift", "set-skew") else {}
    message = EDITS[args.edit](schema, args.feature, args.value, **options)
    save_schema(schema, args.schema_path)
    print(f"{args.schema_path}: {message}")
    return 0


def add_watch_parser(verbs: Any) -> argparse.ArgumentParser:
    """``data watch --dir DIR --schema S --label-column C --workdir W --db DB --artifacts A``."""
    parser: argparse.ArgumentParser = verbs.add_parser(
        "watch",
        help="validate spans dropped in a folder; retrain a candidate or quarantine",
        description="Watch DIR for span files (.csv, .csv.gz, .tfrecord, .tfrecord.gz). A "
        "file is ready when NAME.done exists beside it or its size and modification time "
        "are unchanged over two scans. Each ready span is validated against SCHEMA (drift "
        "against the previous accepted span); a valid span is trained on (fedge-train "
        "--data), bundled (fedge-quantize bundle) and registered as a candidate version, "
        "never promoted; an invalid one is moved to DIR/quarantine/ with anomalies.pbtxt "
        "and a data_quarantined alert is stored. WORKDIR/state.json remembers every span, "
        "so a restarted watcher resumes where it stopped. Exit 1 when a span's retraining "
        "failed (recorded as failed, not retried).",
    )
    parser.add_argument("--dir", type=Path, required=True, help="the watched folder")
    parser.add_argument("--schema", type=Path, required=True, help="schema.pbtxt")
    parser.add_argument("--label-column", required=True, help="the label column of the spans")
    parser.add_argument(
        "--workdir", type=Path, required=True, help="state, statistics, exports and bundles"
    )
    parser.add_argument("--db", required=True, help="the coordinator's state database")
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="the coordinator's artifact directory"
    )
    parser.add_argument(
        "--once", action="store_true", help="handle what is ready (or settles) now, then exit"
    )
    parser.add_argument(
        "--interval", type=float, default=10.0, metavar="S", help="seconds between scans (10)"
    )
    train = parser.add_argument_group("retraining (passed to fedge-train / fedge-quantize)")
    train.add_argument("--epochs", type=int, default=5, help="fedge-train --epochs (5)")
    train.add_argument("--seed", type=int, help="fedge-train --seed")
    train.add_argument("--learning-rate", type=float, help="fedge-train --learning-rate")
    for flag in ("--numeric", "--categorical", "--exclude"):
        train.add_argument(
            flag, action="append", default=[], metavar="COL", help=f"fedge-train {flag}"
        )
    train.add_argument(
        "--representative", type=int, metavar="N", help="fedge-quantize bundle --representative"
    )
    add_json_flag(parser)
    add_verbosity_flags(parser)
    parser.set_defaults(handler=watch_cli)
    return parser


def check_span(
    path: Path,
    schema: schema_pb2.Schema,
    previous: statistics_pb2.DatasetFeatureStatisticsList | None,
    *,
    label_column: str,
    columns: dict[str, tuple[str, ...]] | None = None,
) -> SpanCheck:
    """Statistics of the span at ``path`` and its anomalies against ``schema`` (drift vs
    ``previous``); a span that cannot be read is one dataset-level anomaly. ``columns``:
    the ``numeric``/``categorical``/``exclude`` overrides of :func:`infer_table`."""
    from coordinator.dataval.anomalies import validate
    from coordinator.dataval.statistics import dataset_statistics
    from coordinator.dataval.watch import SpanCheck, unreadable
    from fedge.data.user_table import infer_table

    try:
        table = infer_table(path, label_column=label_column, **(columns or {}))
        stats = dataset_statistics(
            table.dataset, name=path.name, label=label_column, label_names=table.label_names
        )
    except (FedgeError, OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as exc:
        # A truncated or corrupt file surfaces as whatever its decoder raises.
        logger.warning("span %s cannot be read: %s", path.name, exc)
        return SpanCheck(None, unreadable(exc))
    return SpanCheck(stats, validate(stats, schema, previous=previous))


def watch_cli(args: argparse.Namespace) -> int:
    from coordinator.dataval.schema import load_schema
    from coordinator.dataval.watch import WatchConfig, Watcher

    if args.interval <= 0:
        raise UsageError(f"the scan interval must be > 0 seconds, got {args.interval!r}")
    if not args.artifacts.is_dir():
        raise UsageError(f"artifact directory {args.artifacts} is not a directory")
    db = Path(args.db[len("sqlite:///") :] if args.db.startswith("sqlite:///") else args.db)
    if ("://" not in args.db or args.db.startswith("sqlite:///")) and not db.is_file():
        raise UsageError(f"database {args.db}: no such database file (serve creates one)")
    load_schema(args.schema)  # a bad schema fails now, not at the first span
    train_args = [f"--epochs={args.epochs}"]
    for flag in ("seed", "learning_rate"):
        if getattr(args, flag) is not None:
            train_args.append(f"--{flag.replace('_', '-')}={getattr(args, flag)!r}")
    for flag in ("numeric", "categorical", "exclude"):
        train_args += [f"--{flag}={column}" for column in getattr(args, flag)]
    bundle_args = []
    if args.representative is not None:
        bundle_args.append(f"--representative={args.representative}")
    label = args.label_column
    columns = {flag: tuple(getattr(args, flag)) for flag in ("numeric", "categorical", "exclude")}
    watcher = Watcher(
        WatchConfig(
            directory=args.dir,
            schema=args.schema,
            label_column=label,
            workdir=args.workdir,
            db=args.db,
            artifacts=args.artifacts,
            train_args=tuple(train_args),
            bundle_args=tuple(bundle_args),
        ),
        validator=lambda p, s, prev: check_span(p, s, prev, label_column=label, columns=columns),
        load_schema=load_schema,
    )
    handled = watcher.run(once=args.once, interval=args.interval)
    if args.json:
        json.dump(handled, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        for entry in handled:
            detail = entry.get("version") or entry.get("quarantine") or entry.get("error", "")
            print(f"{entry['file']}: {entry['status']} {detail}".rstrip())
    return 1 if any(e["status"] == "failed" for e in handled) else 0
