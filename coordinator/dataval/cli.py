"""``fedge-coordinator data``: TFDV-compatible statistics, schema inference and anomalies.

::

    fedge-coordinator data stats (--data FILE --label-column C [--numeric C]... \\
        [--categorical C]... [--exclude C]... | --task taxi [--data FILE] \\
        | --db DB [--model-version V] | --coordinator URL [--model-version V] \\
        [--admin-token-file F] [--ca-file F] [--cert F --key F]) --out stats.pb|stats.pbtxt \\
        [--name NAME] [--json]
    fedge-coordinator data infer-schema --stats S --out schema.pbtxt [--max-domain-size N]
    fedge-coordinator data anomalies --stats S --schema SCHEMA [--previous S] [--serving S] \\
        [--out anomalies.pbtxt] [--plots DIR] [--json]
    fedge-coordinator data schema SCHEMA add-domain-value|set-min-domain-mass|set-drift|\\
        set-skew|set-presence FEATURE VALUE     (coordinator.dataval.workflow)
    fedge-coordinator data watch --dir DIR --schema SCHEMA --label-column C --workdir W \\
        --db DB --artifacts A [--once] [--interval S] [trainer flags]

``data anomalies`` exits 1 when it finds an anomaly (so a pipeline step can gate on it), 0
when there is none. Heavy imports (tensorflow-metadata, matplotlib, the table readers) wait
until a command runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.auth import ADMIN_TOKEN_ENV, load_secret
from coordinator.dataval.workflow import add_schema_parser, add_watch_parser
from fedge.cli import ExitCode, add_json_flag, add_verbosity_flags, print_json
from fedge.errors import DataError, UsageError

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import statistics_pb2

__all__ = ["add_data_parser"]

_LOG = logging.getLogger(__name__)

_DATA_EPILOG = """\
exit codes:
  0    success (anomalies: none found)
  1    the operation failed (anomalies: at least one anomaly found; stats --db or
       --coordinator: no statistics reports to merge, a database that cannot be read, a
       coordinator that refused or could not be reached)
  2    usage or input error: unknown flag, unreadable data, statistics or schema file
  130  interrupted (Ctrl-C)"""


def add_data_parser(sub: Any) -> Any:
    """Add the ``data`` command group to ``sub``; its verbs' subparsers (more verbs go there)."""
    data = sub.add_parser(
        "data",
        help="data statistics, schemas and anomalies (tensorflow-metadata formats)",
        description="Statistics of a table or of the devices' merged reports as a "
        "tensorflow-metadata DatasetFeatureStatisticsList, a Schema inferred from them, and "
        "anomalies (schema violations, drift against a previous span, skew against serving "
        "data) with TensorFlow Data Validation's semantics.",
        epilog=_DATA_EPILOG,
    )
    data.set_defaults(verbose=0, quiet=False)
    verbs = data.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_stats(verbs)
    _add_infer_schema(verbs)
    _add_anomalies(verbs)
    add_schema_parser(verbs)
    add_watch_parser(verbs)
    return verbs


def _verb(verbs: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=help_text, description=description, epilog=_DATA_EPILOG
    )
    add_verbosity_flags(parser)
    return parser


def _add_stats(verbs: Any) -> None:
    parser = _verb(
        verbs,
        "stats",
        "statistics of a table or of the devices' reports",
        "Compute the statistics of a CSV or TFRecord table (--data with --label-column; "
        "--task taxi for the taxi format, the bundled sample without --data), or merge the "
        "devices' statistics reports of a coordinator (its database --db, or a running one "
        "--coordinator with the admin token), and write them "
        "as a tensorflow-metadata DatasetFeatureStatisticsList: a text proto for .pbtxt/.txt, "
        "binary otherwise.",
    )
    parser.add_argument("--data", type=Path, metavar="FILE", help="a .csv/.csv.gz/.tfrecord[.gz]")
    parser.add_argument("--label-column", metavar="C", help="the label column of --data")
    parser.add_argument("--task", choices=("taxi",), help="read --data in the taxi task's format")
    parser.add_argument("--db", help="a coordinator state database: merge its stats reports")
    parser.add_argument(
        "--coordinator", metavar="URL", help="a running coordinator: merge its stats reports"
    )
    parser.add_argument(
        "--model-version", metavar="V", help="with --db or --coordinator: reports for V only"
    )
    parser.add_argument(
        "--admin-token-file", type=Path, help=f"with --coordinator (else ${ADMIN_TOKEN_ENV})"
    )
    tls = parser.add_argument_group("TLS (an https:// --coordinator)")
    tls.add_argument("--ca-file", type=Path, metavar="FILE", help="CA of its certificate")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="client certificate (mutual TLS)")
    tls.add_argument("--key", type=Path, metavar="FILE", help="the client certificate's key")
    for flag, text in (
        ("--numeric", "read C as numeric"),
        ("--categorical", "read C as categorical"),
        ("--exclude", "leave C out"),
    ):
        parser.add_argument(flag, action="append", default=[], metavar="C", help=text)
    parser.add_argument("--out", type=Path, required=True, help="stats.pb or stats.pbtxt")
    parser.add_argument("--name", help="the dataset's name in the statistics")
    add_json_flag(parser)
    parser.set_defaults(handler=stats_cli)


def _add_infer_schema(verbs: Any) -> None:
    parser = _verb(
        verbs,
        "infer-schema",
        "infer a schema from statistics",
        "Infer a tensorflow-metadata Schema from statistics as TFDV does (type, presence, "
        "value count, string domains of at most --max-domain-size values) and write it as a "
        "text proto. No drift or skew comparator is inferred.",
    )
    parser.add_argument("--stats", type=Path, required=True, help="statistics file")
    parser.add_argument("--out", type=Path, required=True, help="schema.pbtxt")
    parser.add_argument(
        "--max-domain-size", type=int, default=100, metavar="N", help="(default 100)"
    )
    parser.set_defaults(handler=infer_schema_cli)


def _add_anomalies(verbs: Any) -> None:
    parser = _verb(
        verbs,
        "anomalies",
        "validate statistics against a schema; drift and skew",
        "Validate statistics against a schema, with drift against --previous (a previous "
        "span's statistics) and skew against --serving (serving data's statistics) where the "
        "schema sets drift_comparator / skew_comparator thresholds. Exits 1 when an anomaly "
        "is found.",
    )
    parser.add_argument("--stats", type=Path, required=True, help="statistics file")
    parser.add_argument("--schema", type=Path, required=True, help="schema.pbtxt")
    parser.add_argument("--previous", type=Path, metavar="S", help="previous span's statistics")
    parser.add_argument("--serving", type=Path, metavar="S", help="serving data's statistics")
    parser.add_argument("--out", type=Path, help="write the Anomalies text proto here")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into DIR")
    add_json_flag(parser)
    parser.set_defaults(handler=anomalies_cli)


# Handlers ---------------------------------------------------------------------------------


def _make_parent(path: Path) -> None:
    """An output's folder is created, as ``--plots DIR`` is."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot create its folder: {exc.strerror or exc}") from exc


def _table_statistics(args: argparse.Namespace) -> statistics_pb2.DatasetFeatureStatisticsList:
    from coordinator.dataval.statistics import dataset_statistics

    if args.task == "taxi":
        from fedge.data.taxi import TAXI_SCHEMA, load_taxi

        if args.label_column or args.numeric or args.categorical or args.exclude:
            raise UsageError("--task taxi has its own columns: no --label-column/--numeric/...")
        dataset = load_taxi(args.data)
        return dataset_statistics(dataset, name=args.name, label=TAXI_SCHEMA.label)
    if args.data is None or not args.label_column:
        raise UsageError("give --data FILE with --label-column C, --task taxi, or --db DB")
    from fedge.data.user_table import infer_table

    table = infer_table(
        args.data,
        label_column=args.label_column,
        numeric=args.numeric,
        categorical=args.categorical,
        exclude=args.exclude,
    )
    for warning in table.warnings:
        _LOG.warning("%s", warning)
    return dataset_statistics(
        table.dataset,
        name=args.name or args.data.name,
        label=args.label_column,
        label_names=table.label_names,
    )


def _report_statistics(args: argparse.Namespace) -> statistics_pb2.DatasetFeatureStatisticsList:
    from coordinator.dataval.statistics import merge_reports, to_tfmd
    from coordinator.errors import StateError
    from coordinator.store import open_store

    path = Path(args.db[len("sqlite:///") :] if args.db.startswith("sqlite:///") else args.db)
    if ("://" not in args.db or args.db.startswith("sqlite:///")) and not path.is_file():
        raise UsageError(f"--db {args.db}: no such database file")
    import sqlite3

    try:
        store = open_store(args.db)
        try:
            reports = store.list_reports(kind="stats", model_version=args.model_version)
        finally:
            store.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"--db {args.db}: cannot read the state database ({exc})") from exc
    try:
        merged = merge_reports(r.document for r in reports)
    except DataError as exc:
        raise StateError(f"--db {args.db}: {exc}") from exc
    _LOG.info("merged %d device statistics reports", len(reports))
    return to_tfmd(merged, name=args.name or "devices")


def _remote_statistics(args: argparse.Namespace) -> statistics_pb2.DatasetFeatureStatisticsList:
    from coordinator.client import AdminClient
    from coordinator.dataval.statistics import merge_reports, to_tfmd
    from coordinator.errors import CoordinatorError
    from fedge.messages import StatsReport, decode_message

    token = load_secret(args.admin_token_file, ADMIN_TOKEN_ENV)
    if token is None:
        raise UsageError(f"--coordinator needs --admin-token-file or ${ADMIN_TOKEN_ENV}")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    for flag in ("ca_file", "cert", "key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {path} is not a readable file")
    cert = None if args.cert is None else (args.cert, args.key)
    with AdminClient(args.coordinator, token, ca_file=args.ca_file, cert=cert) as client:
        reports = client.list_reports("stats", model_version=args.model_version)
    documents = []
    for report in reports:
        message = decode_message(report["document"])
        if not isinstance(message, StatsReport):
            raise CoordinatorError(f"report {report.get('report_id')} is not a stats report")
        documents.append(message.stats.to_dict())
    try:
        merged = merge_reports(documents)
    except DataError as exc:
        raise CoordinatorError(f"--coordinator {args.coordinator}: {exc}") from exc
    _LOG.info("merged %d device statistics reports", len(documents))
    return to_tfmd(merged, name=args.name or "devices")


def stats_cli(args: argparse.Namespace) -> int:
    from coordinator.dataval.statistics import save_statistics

    if args.db is not None and args.coordinator is not None:
        raise UsageError("give either --db or --coordinator, not both")
    remote_flags = ("admin_token_file", "ca_file", "cert", "key")
    if args.coordinator is None and any(getattr(args, f) is not None for f in remote_flags):
        raise UsageError("--admin-token-file, --ca-file, --cert and --key go with --coordinator")
    if args.db is not None or args.coordinator is not None:
        if args.data is not None or args.task is not None or args.label_column:
            raise UsageError(
                "--db/--coordinator merge device reports: no --data, --task or --label-column"
            )
        stats = _report_statistics(args) if args.db else _remote_statistics(args)
    else:
        if args.model_version is not None:
            raise UsageError("--model-version goes with --db or --coordinator")
        stats = _table_statistics(args)
    _make_parent(args.out)
    save_statistics(stats, args.out)
    summary = _stats_summary(stats)
    if args.json:
        print_json({"out": str(args.out), "num_examples": stats.datasets[0].num_examples,
                    "features": summary})  # fmt: skip
    else:
        print(f"{stats.datasets[0].num_examples} examples -> {args.out}")
        _table(summary, ("feature", "type", "present", "missing", "summary"))
    return int(ExitCode.OK)


def _stats_summary(stats: statistics_pb2.DatasetFeatureStatisticsList) -> list[dict[str, Any]]:
    from coordinator.dataval.schema import feature_name

    rows = []
    for feature in stats.datasets[0].features:
        if feature.HasField("string_stats"):
            string = feature.string_stats
            common = string.common_stats
            top = ", ".join(f"{t.value}={t.frequency:g}" for t in string.top_values[:3])
            text = f"unique {string.unique}; top {top}"
        else:
            num = feature.num_stats
            common = num.common_stats
            text = f"mean {num.mean:.4g} std {num.std_dev:.4g} min {num.min:.4g} max {num.max:.4g}"
        rows.append(
            {
                "feature": feature_name(feature),
                "type": type(feature).Type.Name(feature.type),
                "present": int(common.num_non_missing),
                "missing": int(common.num_missing),
                "summary": text,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for row in [list(columns), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def infer_schema_cli(args: argparse.Namespace) -> int:
    from coordinator.dataval.schema import infer_schema, save_schema
    from coordinator.dataval.statistics import load_statistics

    if args.max_domain_size < 0:
        raise UsageError(f"--max-domain-size must be >= 0, got {args.max_domain_size}")
    schema = infer_schema(load_statistics(args.stats), max_string_domain_size=args.max_domain_size)
    _make_parent(args.out)
    save_schema(schema, args.out)
    print(f"{len(schema.feature)} features, {len(schema.string_domain)} string domains -> "
          f"{args.out}")  # fmt: skip
    return int(ExitCode.OK)


def anomalies_cli(args: argparse.Namespace) -> int:
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from coordinator.dataval.anomalies import validate
    from coordinator.dataval.schema import load_schema
    from coordinator.dataval.statistics import load_statistics
    from fedge.fileio import atomic_write_text

    stats = load_statistics(args.stats)
    previous = load_statistics(args.previous) if args.previous else None
    serving = load_statistics(args.serving) if args.serving else None
    anomalies = validate(stats, load_schema(args.schema), previous=previous, serving=serving)
    if args.out is not None:
        _make_parent(args.out)
        atomic_write_text(args.out, text_format.MessageToString(anomalies))
    if args.plots is not None:
        from coordinator.dataval.plots import plot_distances, plot_features

        plot_features(stats, args.plots, other=previous or serving,
                      names=("current", "previous" if previous else "serving"))  # fmt: skip
        plot_distances(anomalies, args.plots / "drift_skew.png")
    found = [
        {
            "feature": name,
            "short_description": info.short_description,
            "description": info.description,
            "types": [anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason],
        }
        for name, info in sorted(anomalies.anomaly_info.items())
    ]
    distances = [
        {"feature": ".".join(info.path.step), "check": check,
         "measure": type(m).Type.Name(m.type), "value": m.value, "threshold": m.threshold}
        for info in anomalies.drift_skew_info
        for check, measured in (("drift", info.drift_measurements),
                                ("skew", info.skew_measurements))
        for m in measured
    ]  # fmt: skip
    if args.json:
        print_json({"anomalies": found, "drift_skew": distances})
    else:
        for row in found:
            print(f"{row['feature']}: {row['short_description']}: {row['description']}")
        for row in distances:
            print(f"{row['feature']} {row['check']} {row['measure']} {row['value']:.6g} "
                  f"(threshold {row['threshold']:g})")  # fmt: skip
        if not found:
            print("no anomalies")
    return int(ExitCode.FAILED if found else ExitCode.OK)
