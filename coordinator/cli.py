"""``fedge-coordinator``: serve, and administer models and rounds.

::

    fedge-coordinator serve --task taxi --bundle DIR --db state.db --artifacts DIR \\
        [--host 127.0.0.1] [--port 8080] [--admin-token-file FILE] [round options] \
        [--min-cohort N] [--cohort-window SECONDS] [--privacy-budget EPSILON] \
        [--prediction-drift-threshold X] [--prediction-drift-min-examples N] \
        [--accuracy-drop-threshold X] [--rollback-on-accuracy-drop [--rollback-min-clients N]] \
        [--holdout FILE [--holdout-region-column COL]] [--gate-margin X] [--gate-clients N] \
        [--mode sync|async [--buffer K] [--max-staleness S]] \
        [--serving-mode dynamic|static|hybrid] [--serving-cache N] [--serving-max-instances N] \
        [--tls-cert FILE --tls-key FILE [--client-ca FILE]] [--insecure] \
        [--viewer-token-file FILE] [--ui-behind-seconds S] [--no-ui] \
        [--grpc-port N [--grpc-port-file FILE] [--grpc-* limits]] [-v|-q]
    fedge-coordinator models list|show V|promote V|rollback [--before TIME]  TARGET [--json]
    fedge-coordinator models predictions [V]                 TARGET [--json]
    fedge-coordinator models register BUNDLE --db DB --artifacts DIR [--version-file FILE] [--json]
    fedge-coordinator rounds list|show N|cancel N            TARGET [--json]
    fedge-coordinator clients list|revoke ID                 TARGET [--json]
    fedge-coordinator quarantine list [--client ID]|release ID  TARGET [--json]
    fedge-coordinator enrollment create [--label L] [--expires-in SECONDS] [--uses N] \
        | list | revoke ID                                   --coordinator URL [--json]
    fedge-coordinator certs init --out DIR [--host NAME]... [--device NAME]... [--days N]
    fedge-coordinator certs device --ca-dir DIR NAME [--days N]
    fedge-coordinator data stats|infer-schema|anomalies|schema|watch ...  (coordinator.dataval.cli)
    fedge-coordinator predict-batch --db DB --artifacts DIR --keys TABLE --key-column COL \
        [--version V] [--every SECONDS] [--json]              (coordinator.serving.cli)

TARGET is ``--coordinator URL`` (a running coordinator, with the admin token; for an
``https://`` URL, ``--ca-file FILE`` and, for mutual TLS, ``--cert FILE --key FILE``) or
``--db DB --artifacts DIR`` (an existing database, directly: admin commands never create
one, only ``serve`` does). Without TLS, ``serve`` listens only on a loopback address
unless ``--insecure`` is given.

Exit codes (the shared kit's, :mod:`fedge.cli`): 0 success; 1 the operation failed (the
server refused it, a conflict, a missing model, an unreachable coordinator, a ``--db``
whose state cannot be read: not a SQLite database, or corrupt pages); 2 a usage or input
error (bad flags, an invalid configuration, an unreadable token file or bundle, a ``--db``
that is a directory); 130 interrupted. ``serve`` stops gracefully on
SIGTERM and on SIGINT alike; SIGTERM, a service's normal stop, exits 0 and SIGINT (Ctrl-C)
exits 130. Errors are one line on stderr. The admin token is read from
``--admin-token-file`` or ``FEDGE_ADMIN_TOKEN``, never from a command-line value.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import logging
import socket
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.admin import AdminBackend, DirectAdmin
from coordinator.auth import (
    ADMIN_TOKEN_ENV,
    ENROLLMENT_TOKEN_ENV,
    VIEWER_TOKEN_ENV,
    RedactingFilter,
    hash_token,
    load_secret,
)
from coordinator.config import (
    DEFAULT_COHORT_WINDOW_SECONDS,
    DEFAULT_MIN_COHORT,
    AlertConfig,
    RoundConfig,
    ServiceConfig,
)
from coordinator.dataval.cli import add_data_parser
from coordinator.errors import StateError
from coordinator.gate import HoldoutSet
from coordinator.keys import (
    add_keys_parser,
    add_signing_arguments,
    signer_from_args,
    trusted_bundle_key,
)
from coordinator.limits import (
    MAX_JSON_BYTES,
    MAX_REPORT_BYTES,
    MIN_FREE_BYTES,
    ConnectionLimits,
    GrpcLimits,
    RateLimit,
)
from coordinator.quarantine_cli import add_quarantine_parser
from coordinator.serving.cli import add_predict_batch_parser, add_serving_flags, serving_config
from coordinator.store import Store
from coordinator.tls import TlsFiles
from fedge.cli import (
    ArgumentParser,
    ExitCode,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
)
from fedge.errors import BundleError, ConfigError, FedgeError, UsageError
from fedge.fileio import atomic_write_text
from fedge.strategy import STRATEGY_NAMES
from fedge.validation import check_int, check_positive

if TYPE_CHECKING:
    from coordinator.client import AdminClient

__all__ = ["build_parser", "main"]

logger = logging.getLogger("coordinator.cli")
PROG = "fedge-coordinator"
_LOGGERS = ("coordinator", "fedge")
_ROUND_FLAGS = {
    "clients_per_round": int, "min_clients": int, "min_available_clients": int,
    "deadline_seconds": float, "epochs": int, "batch_size": int, "learning_rate": float,
    "norm_bound": float, "max_examples": int, "dp_noise_multiplier": float, "dp_clip": float,
    "gate_margin": float, "gate_clients": int, "gate_seconds": float, "gate_min_reports": int,
    "buffer": int, "max_staleness": int,
}  # fmt: skip

# Added to the kit's table: the bundle given to ``serve`` is the caller's input (2). An admin
# call the coordinator refused or that could not reach it raises a coordinator error, which
# the kit's table already makes a failed operation (1).
_EXIT_TABLE = ((BundleError, ExitCode.USAGE),)

_EXIT_CODES = """\
exit codes:
  0    success (serve: stopped by SIGTERM, a service's normal stop)
  1    the operation failed: the coordinator refused it (a conflict, a missing model or
       round) or could not be reached, or the --db state cannot be read (not a SQLite
       database, corrupt pages: checked when it is opened)
  2    usage or input error: unknown flag, invalid configuration, unreadable token file,
       missing or tampered bundle, a --db that is a directory (or, for the admin
       commands, that does not exist)
  130  interrupted (Ctrl-C)"""

_SERVE_EPILOG = f"""\
serve stops gracefully on SIGTERM and on SIGINT alike: it stops accepting connections,
closes the socket, stops the deadline timer and closes the store. SIGTERM (the normal stop
of a service) then exits 0; SIGINT (Ctrl-C) exits 130.

{_EXIT_CODES}"""

_ADMIN_EPILOG = f"""\
TARGET is --coordinator URL (a running coordinator; the admin token comes from
--admin-token-file or ${ADMIN_TOKEN_ENV}) or --db DB --artifacts DIR (an existing database,
read directly; admin commands never create one).

{_EXIT_CODES}"""


def _option(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=NUMBER, got {text!r}") from None


def _task_option(text: str) -> tuple[str, int | float | str | bool]:
    """``KEY=VALUE``: VALUE is true/false, an integer, a number, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value in ("true", "false"):
        return key, value == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the coordinator (waitress, REST API)",
        description="Run the coordinator: the REST API on HOST:PORT, until SIGTERM or Ctrl-C.",
        epilog=_SERVE_EPILOG,
    )
    serve.add_argument("--task", required=True, help="task name; must match the bundle's")
    serve.add_argument("--bundle", required=True, type=Path, help="edge bundle directory")
    serve.add_argument("--db", required=True, help="state database: PATH, sqlite:///PATH")
    serve.add_argument("--artifacts", required=True, type=Path, help="artifact directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    serve.add_argument("--port-file", type=Path, help="write the bound port here")
    serve.add_argument("--admin-token-file", type=Path, help=f"else ${ADMIN_TOKEN_ENV}")
    serve.add_argument(
        "--enrollment-token-file",
        type=Path,
        help=f"the token devices register with; else ${ENROLLMENT_TOKEN_ENV}. serve needs one, "
        "or --open-enrollment",
    )
    serve.add_argument(
        "--open-enrollment",
        action="store_true",
        help="let anyone register without an enrollment token (still rate-limited)",
    )
    rounds = serve.add_argument_group("round options (override --round-config)")
    rounds.add_argument("--round-config", type=Path, help="JSON file of round options")
    for name, kind in _ROUND_FLAGS.items():
        rounds.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    rounds.add_argument("--aggregator", choices=STRATEGY_NAMES, default=None)
    rounds.add_argument(
        "--mode",
        choices=("sync", "async"),
        default=None,
        help="async: FedBuff (every polling client trains on production; --buffer K "
        "updates, weighted by 1/sqrt(1 + staleness), make a version; updates staler than "
        "--max-staleness S are refused)",
    )
    rounds.add_argument(
        "--holdout",
        type=Path,
        metavar="FILE",
        help="the cloud holdout (CSV or TFRecord, read with the bundle's schema): each "
        "round's candidate is scored on it, overall and per region, and promoted only when "
        "not worse than its parent by more than --gate-margin (the gate; --gate-clients N "
        "adds a federated holdout cohort)",
    )
    rounds.add_argument(
        "--holdout-region-column",
        metavar="COL",
        help="the holdout's region column (default: the schema's region column)",
    )
    rounds.add_argument(
        "--schema",
        type=Path,
        metavar="FILE",
        help="the schema (text proto, as `data schema` edits it) that each client's latest "
        "statistics are validated against before its update is aggregated; an update whose "
        "statistics show anomalies is quarantined (default: a schema inferred from the "
        "bundle's training statistics; round options quarantine, stats_every_round and the "
        "quarantine_*_threshold settings go in --round-config)",
    )
    rounds.add_argument("--aggregator-option", type=_option, action="append", default=[],
                        metavar="KEY=VALUE", help="e.g. num_byzantine=1, lr=0.01")  # fmt: skip
    rounds.add_argument(
        "--task-option",
        type=_task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option every train task carries, e.g. shuffle_seed=7 (devices reshuffle "
        "their rows each epoch); VALUE is true/false, a number or a string; repeatable, "
        "each overrides that key of the --round-config task_options",
    )
    mode = rounds.add_mutually_exclusive_group()
    mode.add_argument(
        "--continuous",
        dest="continuous",
        action="store_true",
        default=None,
        help="open the next round when one closes (the default)",
    )
    mode.add_argument(
        "--on-demand",
        dest="continuous",
        action="store_false",
        help="open rounds only on POST /v1/rounds",
    )
    promote = rounds.add_mutually_exclusive_group()
    promote.add_argument(
        "--auto-promote",
        dest="auto_promote",
        action="store_true",
        default=None,
        help="a committed round's version becomes production at once "
        "(default: on for continuous rounds, off for on-demand ones)",
    )
    promote.add_argument(
        "--no-auto-promote",
        dest="auto_promote",
        action="store_false",
        help="committed versions stay candidates until `models promote`",
    )
    secure = rounds.add_mutually_exclusive_group()
    secure.add_argument(
        "--secure-aggregation",
        dest="secure_aggregation",
        action="store_true",
        default=None,
        help="every round runs SecAgg+ unless its config says otherwise: the coordinator "
        "learns only the sum of the clipped, quantized updates (fedavg aggregator only)",
    )
    secure.add_argument(
        "--no-secure-aggregation",
        dest="secure_aggregation",
        action="store_false",
        help="plain rounds (the default)",
    )
    cohort = serve.add_argument_group(
        "cohort rule",
        "Evaluate, stats and features tasks: a request must target at least --min-cohort "
        "distinct clients (409 cohort_too_small), and a client given a task of one kind "
        "cannot be given another of that kind within --cohort-window seconds (409 "
        "cohort_window), so no answer singles out one device or one changed row.",
    )
    cohort.add_argument(
        "--min-cohort",
        type=int,
        default=DEFAULT_MIN_COHORT,
        metavar="N",
        help="the fewest clients a task request may target (default %(default)s; 1 switches "
        "the cohort rule off, the window included: unsafe outside tests and trusted fleets)",
    )
    cohort.add_argument(
        "--cohort-window",
        type=float,
        default=DEFAULT_COHORT_WINDOW_SECONDS,
        metavar="SECONDS",
        help="seconds before a client may be given another task of one kind "
        "(default %(default)s; 0 switches the window off)",
    )
    dp = serve.add_argument_group(
        "differential privacy",
        "--dp-noise-multiplier Z makes rounds DP-FedAvg (updates clipped to L2 --dp-clip, "
        "Gaussian noise of stddev Z * clip on their sum); every committed version records "
        "its lineage's (epsilon, delta) from the RDP accountant.",
    )
    dp.add_argument(
        "--privacy-budget",
        type=float,
        default=None,
        metavar="EPSILON",
        help="stop training before a round whose commit would take the production "
        "lineage's epsilon over EPSILON (a round without DP is refused outright); the round "
        "fails with 'privacy budget exhausted' and a privacy_budget_exhausted alert",
    )
    alert_defaults = AlertConfig()
    alerts = serve.add_argument_group(
        "prediction drift",
        "Per model version the coordinator sums the per-class counts of predictions and "
        "labels in the devices' evaluation reports and compares them with the previous "
        "version's (L-infinity distance; `models predictions` shows them); a distance above "
        "the threshold raises a prediction_drift alert.",
    )
    alerts.add_argument(
        "--prediction-drift-threshold",
        type=float,
        default=alert_defaults.prediction_drift_threshold,
        metavar="X",
        help="L-infinity distance in [0, 1] above which a version drifts (default %(default)s)",
    )
    alerts.add_argument(
        "--prediction-drift-min-examples",
        type=int,
        default=alert_defaults.prediction_drift_min_examples,
        metavar="N",
        help="rows both versions must count before they are compared (default %(default)s)",
    )
    policy = serve.add_argument_group(
        "accuracy drop and rollback",
        "An evaluation report whose accuracy in a region (a slice, or the device's registered "
        "region) is more than the threshold below the version's reference raises an "
        "accuracy_drop alert; with --rollback-on-accuracy-drop, an alert for the production "
        "version also rolls production back to the previous version (the alert and the "
        "rolled_back event record it; rounds on the old version fail).",
    )
    policy.add_argument(
        "--accuracy-drop-threshold",
        type=float,
        default=alert_defaults.accuracy_drop_threshold,
        metavar="X",
        help="absolute accuracy below the reference that raises the alert (default %(default)s)",
    )
    policy.add_argument(
        "--rollback-on-accuracy-drop",
        action="store_true",
        help="roll production back on an accuracy_drop alert for it (default: alert only)",
    )
    policy.add_argument(
        "--rollback-min-clients",
        type=int,
        default=alert_defaults.rollback_min_clients,
        metavar="N",
        help="distinct devices that must report the drop in one region before the rollback "
        "(default %(default)s)",
    )
    add_serving_flags(serve)
    serve.add_argument("--retry-after", type=float, default=10.0, help="poll interval, s")
    serve.add_argument("--max-upload-bytes", type=int, default=64 << 20)
    serve.add_argument("--seed", type=int, default=None, help="seeds client selection")
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--tick-seconds", type=float, default=1.0, help="deadline timer period")
    limits = serve.add_argument_group(
        "connections and bodies",
        "Slow clients cost a socket, not a thread; a request's headers and body must arrive "
        "within their timeouts. A body is read only once its headers pass its route's token "
        "rule and size limit.",
    )
    defaults, rate = ConnectionLimits(), RateLimit()
    for flag, kind, default, text in (
        ("--connection-limit", int, defaults.connection_limit, "most open connections"),
        (
            "--header-timeout",
            float,
            defaults.header_timeout,
            "seconds the headers may take",
        ),
        ("--body-timeout", float, defaults.body_timeout, "seconds a request may take to arrive"),
        ("--idle-timeout", float, defaults.idle_timeout, "seconds an idle connection stays open"),
        ("--backlog", int, defaults.backlog, "listen backlog"),
        ("--max-json-bytes", int, MAX_JSON_BYTES, "body limit of the JSON routes"),
        ("--max-report-bytes", int, MAX_REPORT_BYTES, "body limit of device reports"),
        ("--min-free-bytes", int, MIN_FREE_BYTES, "/healthz fails below this free space"),
        ("--registration-rate", float, rate.per_address, "registrations/s per source address"),
        ("--registration-burst", int, rate.per_address_burst, "burst per source address"),
        ("--registration-rate-total", float, rate.total, "registrations/s overall"),
        ("--registration-burst-total", int, rate.total_burst, "burst overall"),
    ):
        limits.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")
    tls = serve.add_argument_group(
        "TLS",
        "HTTPS (and gRPC over TLS) with --tls-cert and --tls-key; with --client-ca too, "
        "mutual TLS: a client must present a certificate of that CA. Without TLS, --host "
        "must be a loopback address unless --insecure is given.",
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--client-ca", type=Path, metavar="FILE", help="require client certificates of this CA"
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP on a non-loopback --host (tokens and updates then travel "
        "unencrypted: only behind a TLS-terminating proxy)",
    )
    dashboard = serve.add_argument_group(
        "dashboard",
        "The operator's dashboard at /ui/ (HTML pages; not part of the REST API): log in "
        "with the viewer token (read-only) or the admin token (actions too).",
    )
    dashboard.add_argument(
        "--viewer-token-file",
        type=Path,
        metavar="FILE",
        help=f"the dashboard's read-only token; else ${VIEWER_TOKEN_ENV} (none: admin only)",
    )
    dashboard.add_argument(
        "--ui-behind-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="the clients page marks a client 'falling behind' when it has made no call for "
        "more than S seconds (default 600)",
    )
    dashboard.add_argument("--no-ui", action="store_true", help="do not serve the dashboard")
    _add_grpc_arguments(serve)
    add_signing_arguments(serve)
    add_verbosity_flags(serve)
    serve.set_defaults(handler=serve_cli)


_GRPC_LIMIT_HELP = {
    "max_receive_message_bytes": "largest message a call may send",
    "max_send_message_bytes": "largest message the server sends",
    "chunk_bytes": "chunk size of model file downloads",
    "stream_seconds": "seconds an update upload stream may take",
    "chunk_seconds": "seconds an upload stream may wait between two messages",
    "max_uploads": "most upload streams at once (below --grpc-workers)",
    "max_uploads_per_client": "most upload streams at once from one client",
    "max_concurrent_streams": "most calls at once on one connection",
    "keepalive_seconds": "ping an idle connection this often",
    "keepalive_timeout_seconds": "drop a connection whose ping is unanswered this long",
    "min_ping_interval_seconds": "shortest interval between a client's pings",
    "max_connection_idle_seconds": "close a connection without calls after this long",
    "workers": "threads running calls",
}


def _add_grpc_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "gRPC",
        "With --grpc-port, the device and admin APIs are served over gRPC too (fedge.v1.Fleet "
        "and fedge.v1.Admin), beside REST, over the same state and with the same TLS.",
    )
    group.add_argument(
        "--grpc-port", type=int, metavar="N", help="serve gRPC on this port (0 picks a free one)"
    )
    group.add_argument(
        "--grpc-port-file", type=Path, metavar="FILE", help="write the bound gRPC port here"
    )
    defaults = GrpcLimits()
    for field in dataclasses.fields(GrpcLimits):
        default = getattr(defaults, field.name)
        group.add_argument(
            "--grpc-" + field.name.replace("_", "-"),
            dest="grpc_" + field.name,
            type=type(default),
            default=default,
            help=f"{_GRPC_LIMIT_HELP[field.name]} (default %(default)s)",
        )


def _grpc_limits(args: argparse.Namespace) -> GrpcLimits:
    if args.grpc_port is None:
        if args.grpc_port_file is not None:
            raise UsageError("--grpc-port-file needs --grpc-port")
    else:
        check_int(args.grpc_port, "--grpc-port", low=0, high=65535, error=UsageError)
    values = {f.name: getattr(args, "grpc_" + f.name) for f in dataclasses.fields(GrpcLimits)}
    try:
        return GrpcLimits(**values)
    except ConfigError as exc:
        raise UsageError(f"gRPC limits: {exc}") from exc


def _add_admin(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="list, show, promote, roll back model versions",
        description="List, show, promote and roll back model versions.",
        epilog=_ADMIN_EPILOG,
    )
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    _admin_verb(verbs, "list", "all versions")
    _admin_verb(verbs, "show", "one version").add_argument("version")
    _admin_verb(verbs, "promote", "make production").add_argument("version")
    register = _admin_verb(
        verbs,
        "register",
        "register an edge bundle as a candidate version (never promoted here; on the "
        "database directly, --db/--artifacts, which are created when absent)",
    )
    register.add_argument("bundle", type=Path, help="edge bundle directory")
    register.add_argument(
        "--version-file", type=Path, metavar="FILE", help="also write the version's name to FILE"
    )
    _admin_verb(
        verbs, "rollback", "restore the previous production (or, --before, an earlier one)"
    ).add_argument(
        "--before",
        metavar="TIME",
        help="restore the version that was production at TIME (ISO 8601, e.g. "
        "2026-11-30T04:00:00Z; UTC unless it names its offset): the state before a data "
        "corruption",
    )
    _admin_verb(
        verbs,
        "predictions",
        "per version: the class distribution of the devices' predictions and labels in "
        "their evaluation reports, and its L-infinity drift from the previous version "
        "(drifted: by the server's thresholds; with --db, the defaults)",
    ).add_argument("version", nargs="?", help="one version (default: every version)")
    models.set_defaults(handler=models_cli)
    rounds = sub.add_parser(
        "rounds",
        help="list, show and cancel rounds",
        description="List, show and cancel rounds.",
        epilog=_ADMIN_EPILOG,
    )
    verbs = rounds.add_subparsers(dest="verb", required=True, metavar="VERB")
    _admin_verb(verbs, "list", "all rounds")
    _admin_verb(verbs, "show", "one round with its updates").add_argument("round_id", type=int)
    _admin_verb(
        verbs, "cancel", "fail an active round now (the global model is unchanged)"
    ).add_argument("round_id", type=int)
    rounds.set_defaults(handler=rounds_cli)
    clients = sub.add_parser(
        "clients",
        help="list and revoke clients",
        description="List clients, and revoke one: its token stops working at once, it is "
        "never selected again and its pending tasks expire.",
        epilog=_ADMIN_EPILOG,
    )
    verbs = clients.add_subparsers(dest="verb", required=True, metavar="VERB")
    _admin_verb(verbs, "list", "all clients")
    _admin_verb(verbs, "revoke", "revoke one client").add_argument("client_id")
    clients.set_defaults(handler=clients_cli)
    enrollment = sub.add_parser(
        "enrollment",
        help="create, list and revoke managed enrollment tokens",
        description="Managed enrollment tokens on a running coordinator: a token registers "
        "devices until it expires, is used up or is revoked; create shows it once.",
    )
    verbs = enrollment.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = _enrollment_verb(verbs, "create", "create a token (printed once)")
    create.add_argument("--label", help="a name to recognise it by in the list")
    create.add_argument(
        "--expires-in", type=float, metavar="SECONDS", help="expire it after SECONDS"
    )
    create.add_argument("--uses", type=int, metavar="N", help="let it register N devices")
    _enrollment_verb(verbs, "list", "all tokens (never their values)")
    _enrollment_verb(verbs, "revoke", "revoke one token").add_argument("token_id")
    enrollment.set_defaults(handler=enrollment_cli)


def _enrollment_verb(verbs: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--coordinator", metavar="URL", required=True, help="URL of a running coordinator"
    )
    parser.add_argument("--admin-token-file", type=Path, help=f"else ${ADMIN_TOKEN_ENV}")
    _add_client_tls(parser)
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def _add_client_tls(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (an https:// --coordinator)")
    group.add_argument(
        "--ca-file", type=Path, metavar="FILE", help="CA of its certificate (else system roots)"
    )
    group.add_argument(
        "--cert", type=Path, metavar="FILE", help="client certificate, for mutual TLS"
    )
    group.add_argument("--key", type=Path, metavar="FILE", help="the client certificate's key")


def _admin_client(args: argparse.Namespace, token: str) -> AdminClient:
    """The HTTP admin client of ``--coordinator`` and its TLS flags."""
    from coordinator.client import AdminClient

    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    for flag in ("ca_file", "cert", "key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise UsageError(f"--{flag.replace('_', '-')} {path} is not a readable file")
    cert = None if args.cert is None else (args.cert, args.key)
    return AdminClient(args.coordinator, token, ca_file=args.ca_file, cert=cert)


def _admin_verb(verbs: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=help_text, description=help_text, epilog=_ADMIN_EPILOG
    )
    where = parser.add_argument_group("target (one of)")
    where.add_argument("--coordinator", metavar="URL", help="URL of a running coordinator")
    where.add_argument("--db", help="an existing state database (direct mode, with --artifacts)")
    where.add_argument("--artifacts", type=Path, help="artifact directory (direct mode)")
    parser.add_argument("--admin-token-file", type=Path, help=f"else ${ADMIN_TOKEN_ENV}")
    _add_client_tls(parser)
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def build_parser() -> ArgumentParser:
    """The parser of ``fedge-coordinator`` and its commands."""
    parser = ArgumentParser(
        prog=PROG, description="The fedge cloud coordinator.", epilog=_EXIT_CODES
    )
    parser.add_version()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_admin(sub)
    add_keys_parser(sub, _EXIT_CODES)
    _add_certs(sub)
    add_data_parser(sub)
    add_quarantine_parser(sub, verb=_admin_verb, backend=_backend)
    add_predict_batch_parser(sub)
    return parser


def _add_certs(sub: Any) -> None:
    from coordinator.certs import DEFAULT_DAYS

    certs = sub.add_parser(
        "certs",
        help="create development TLS certificates (a CA, the server's, devices')",
        description="Development certificates for serve --tls-cert/--tls-key/--client-ca and "
        "devices' client certificates (mutual TLS). Keys are written 0600; existing files "
        "are never overwritten.",
        epilog=_EXIT_CODES,
    )
    verbs = certs.add_subparsers(dest="verb", required=True, metavar="VERB")
    init = verbs.add_parser(
        "init",
        help="a CA, a server certificate and device certificates",
        description="Write ca.pem/ca.key, server.pem/server.key and devices/NAME.pem/.key in DIR.",
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address of the server; repeatable "
        "(default: localhost and 127.0.0.1)",
    )
    init.add_argument("--device", action="append", default=[], metavar="NAME", help="repeatable")
    init.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="validity (default %(default)s)"
    )
    add_verbosity_flags(init)
    device = verbs.add_parser(
        "device",
        help="one more device certificate from an existing CA",
        description="Write devices/NAME.pem and devices/NAME.key in DIR, signed by DIR's CA.",
    )
    device.add_argument("--ca-dir", type=Path, required=True, metavar="DIR")
    device.add_argument("name", metavar="NAME")
    device.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="validity (default %(default)s)"
    )
    add_verbosity_flags(device)
    certs.set_defaults(handler=certs_cli)


def certs_cli(args: argparse.Namespace) -> int:
    """``certs init`` and ``certs device``: print the files written."""
    from coordinator.certs import DEFAULT_HOSTS, init_certs, issue_device_cert

    try:
        if args.verb == "init":
            made = init_certs(
                args.out, hosts=args.host or DEFAULT_HOSTS, devices=args.device, days=args.days
            )
            written = [made.ca_cert, made.ca_key, made.server_cert, made.server_key]
            written += [p for pair in made.devices.values() for p in pair]
        else:
            written = list(issue_device_cert(args.ca_dir, args.name, days=args.days))
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    for path in written:
        print(path)
    return 0


def _round_config(args: argparse.Namespace) -> RoundConfig:
    options: dict[str, Any] = {}
    if args.round_config is not None:
        try:
            options = json.loads(args.round_config.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --round-config {args.round_config}: {exc}") from exc
        if not isinstance(options, dict):
            raise UsageError("--round-config must hold a JSON object")
    for name in (
        *_ROUND_FLAGS,
        "aggregator",
        "mode",
        "continuous",
        "auto_promote",
        "secure_aggregation",
    ):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.aggregator_option:
        options["aggregator_options"] = dict(args.aggregator_option)
    if args.task_option:
        base = options.get("task_options", {})
        if not isinstance(base, dict):
            raise UsageError(f"task_options in --round-config must be an object, got {base!r}")
        options["task_options"] = {**base, **dict(args.task_option)}
    return RoundConfig.from_dict(options)


def _holdout(args: argparse.Namespace) -> HoldoutSet | None:
    """``--holdout``, read with the bundle's schema (and its label names, when it has them)."""
    from fedge.bundle import read_manifest
    from fedge.data.user_table import SCHEMA_FILE, load_schema_json

    if args.holdout is None:
        if args.holdout_region_column is not None:
            raise UsageError("--holdout-region-column needs --holdout")
        return None
    manifest = read_manifest(args.bundle)
    names = None
    if SCHEMA_FILE in manifest.files:
        names = load_schema_json(args.bundle / SCHEMA_FILE)[1]
    try:
        holdout = HoldoutSet.read(
            args.holdout, manifest, label_names=names, region_column=args.holdout_region_column
        )
    except (OSError, FedgeError) as exc:
        raise UsageError(f"--holdout {args.holdout}: {exc}") from exc
    logger.info("cloud holdout %s: %d rows (the gate is on)", args.holdout, len(holdout))
    return holdout


def _quarantine_schema(args: argparse.Namespace) -> Any:
    """``--schema``: the quarantine's schema (a tensorflow-metadata ``Schema``), or None."""
    if args.schema is None:
        return None
    from coordinator.dataval.schema import load_schema

    try:
        return load_schema(args.schema)
    except FedgeError as exc:
        raise UsageError(f"--schema {args.schema}: {exc}") from exc


def serve_cli(args: argparse.Namespace) -> int:
    """``serve``: 0 once stopped by SIGTERM; SIGINT ends in KeyboardInterrupt (exit 130)."""
    from coordinator.artifacts import ArtifactStore
    from coordinator.rest import ApiConfig, create_app
    from coordinator.server import run_server
    from coordinator.service import CoordinatorService
    from coordinator.ui import UiConfig

    if not (args.bundle / "manifest.json").is_file():
        raise UsageError(f"--bundle {args.bundle} is not a bundle directory (no manifest.json)")
    _check_listener(args)
    serving = serving_config(args)
    tls = _tls_files(args)
    grpc_limits = _grpc_limits(args)
    config = ServiceConfig(
        task=args.task,
        rounds=_round_config(args),
        retry_after_seconds=args.retry_after,
        max_update_bytes=args.max_upload_bytes,
        seed=args.seed,
        min_cohort=args.min_cohort,
        cohort_window_seconds=args.cohort_window,
        privacy_budget=args.privacy_budget,
        alerts=AlertConfig(
            prediction_drift_threshold=args.prediction_drift_threshold,
            prediction_drift_min_examples=args.prediction_drift_min_examples,
            accuracy_drop_threshold=args.accuracy_drop_threshold,
            rollback_on_accuracy_drop=args.rollback_on_accuracy_drop,
            rollback_min_clients=args.rollback_min_clients,
        ),
    )
    admin = load_secret(args.admin_token_file, ADMIN_TOKEN_ENV)
    enrollment = load_secret(args.enrollment_token_file, ENROLLMENT_TOKEN_ENV)
    viewer = load_secret(args.viewer_token_file, VIEWER_TOKEN_ENV)
    if viewer is not None and viewer == admin:
        raise UsageError("the viewer token must differ from the admin token")
    if enrollment is None and not args.open_enrollment:
        raise UsageError(
            f"serve needs --enrollment-token-file (or ${ENROLLMENT_TOKEN_ENV}), or "
            "--open-enrollment to let anyone register"
        )
    if enrollment is not None and args.open_enrollment:
        raise UsageError("give an enrollment token or --open-enrollment, not both")
    quarantine_schema = _quarantine_schema(args)  # a bad file fails before the store opens
    artifacts = ArtifactStore(args.artifacts)
    # On PostgreSQL other replicas may be writing to the shared directory right now.
    shared = str(args.db).startswith(("postgresql://", "postgres://"))
    if removed := artifacts.clean_temporary(older_than_s=3600.0 if shared else 0.0):
        logger.info("removed %d temporary file(s) of unfinished artifact writes", removed)
    service = CoordinatorService(
        store=_open_store(args.db),
        artifacts=artifacts,
        config=config,
        signer=signer_from_args(args),
        holdout=_holdout(args),
        quarantine_schema=quarantine_schema,
    )
    with _database(args.db):
        model = service.import_bundle(args.bundle, trusted_key=trusted_bundle_key(args))
    if admin is None:
        logger.warning("no admin token configured: admin endpoints are disabled")
    logger.info("serving task %s; production model %s", args.task, model.version)
    app = create_app(
        service,
        ApiConfig(
            admin_token_hash=hash_token(admin) if admin else None,
            enrollment_token_hash=hash_token(enrollment) if enrollment else None,
            max_json_bytes=args.max_json_bytes,
            max_report_bytes=args.max_report_bytes,
            min_free_bytes=args.min_free_bytes,
            registration_limit=RateLimit(
                per_address=args.registration_rate,
                per_address_burst=args.registration_burst,
                total=args.registration_rate_total,
                total_burst=args.registration_burst_total,
            ),
        ),
        serving=serving,
        ui=None
        if args.no_ui
        else UiConfig(
            viewer_token_hash=hash_token(viewer) if viewer else None,
            secure_cookie=tls is not None,
            behind_seconds=args.ui_behind_seconds,
        ),
    )
    return run_server(
        app,
        service,
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        threads=args.threads,
        tick_seconds=args.tick_seconds,
        limits=_connection_limits(args),
        tls=tls,
        grpc_port=args.grpc_port,
        grpc_port_file=args.grpc_port_file,
        grpc_limits=grpc_limits,
    )


def _connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(
        connection_limit=args.connection_limit,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        idle_timeout=args.idle_timeout,
        backlog=args.backlog,
    )


def _check_listener(args: argparse.Namespace) -> None:
    """What the server and its timer are given: checked here, so that a bad value is a usage
    error rather than a server that cannot bind, never answers or spins."""
    check_int(args.port, "--port", low=0, high=65535, error=UsageError)
    check_int(args.threads, "--threads", low=1, error=UsageError)
    check_positive(args.tick_seconds, "--tick-seconds", error=UsageError)
    check_positive(args.ui_behind_seconds, "--ui-behind-seconds", error=UsageError)
    for flag in ("--connection-limit", "--backlog", "--max-json-bytes", "--max-report-bytes"):
        check_int(getattr(args, flag[2:].replace("-", "_")), flag, low=1, error=UsageError)
    check_int(args.min_free_bytes, "--min-free-bytes", low=0, error=UsageError)
    for flag in ("--registration-burst", "--registration-burst-total"):
        check_int(getattr(args, flag[2:].replace("-", "_")), flag, low=1, error=UsageError)
    for flag in ("--registration-rate", "--registration-rate-total"):
        check_positive(getattr(args, flag[2:].replace("-", "_")), flag, error=UsageError)
    for flag in ("--header-timeout", "--body-timeout", "--idle-timeout"):
        check_positive(getattr(args, flag[2:].replace("-", "_")), flag, error=UsageError)
    if args.seed is not None:
        check_int(args.seed, "--seed", low=0, error=UsageError)
    try:
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--host {args.host!r} is not an address to listen on: {exc}") from exc
    if args.tls_cert is None and not _is_loopback(args.host, args.port):
        if not args.insecure:
            raise UsageError(
                f"--host {args.host} is not a loopback address: serve it with --tls-cert and "
                "--tls-key, or give --insecure to send tokens and updates over plain HTTP"
            )
        logger.warning(
            "--insecure: serving plain HTTP on %s, beyond this machine (tokens and updates "
            "travel unencrypted unless a TLS proxy is in front)",
            args.host,
        )


def _is_loopback(host: str, port: int) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]).split("%", 1)[0] for info in found}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files of ``serve``'s flags (usage errors for an incomplete set)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.client_ca is not None:
            raise UsageError("--client-ca needs --tls-cert and --tls-key")
        return None
    try:
        return TlsFiles(args.tls_cert, args.tls_key, client_ca=args.client_ca)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _sqlite_path(db: str) -> Path | None:
    if db in ("memory:", ":memory:") or ("://" in db and not db.startswith("sqlite:///")):
        return None
    return Path(db[len("sqlite:///") :] if db.startswith("sqlite:///") else db)


def _check_db_argument(db: str) -> None:
    """A ``--db`` that cannot name a database file at all is a usage error (2); a file the
    store cannot read (not SQLite, corrupt pages) is a StateError (1) when it is opened."""
    path = _sqlite_path(db)
    if path is not None and path.is_dir():
        raise UsageError(f"--db {db} is a directory, not a database file")


@contextlib.contextmanager
def _database(db: str) -> Iterator[None]:
    """sqlite3's errors on ``--db`` as the one-line StateError they are (exit 1)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise StateError(f"--db {db}: cannot read the state database ({exc})") from exc


def _open_store(db: str) -> Store:
    from coordinator.store import open_store

    _check_db_argument(db)
    with _database(db):
        return open_store(db)


# Admin calls: the one place that picks the HTTP or the direct backend ---------------------


def _backend(args: argparse.Namespace) -> AdminBackend:
    if args.coordinator and (args.db or args.artifacts):
        raise UsageError("give either --coordinator or --db/--artifacts, not both")
    if args.coordinator:
        token = load_secret(args.admin_token_file, ADMIN_TOKEN_ENV)
        if token is None:
            raise UsageError(f"--coordinator needs --admin-token-file or ${ADMIN_TOKEN_ENV}")
        return _admin_client(args, token)
    if args.db and args.artifacts:
        _check_existing_database(args.db)
        _check_db_argument(args.db)
        if not args.artifacts.is_dir():
            raise UsageError(f"--artifacts {args.artifacts} is not a directory")
        with _database(args.db):
            return DirectAdmin(args.db, args.artifacts)
    raise UsageError("give --coordinator URL, or --db and --artifacts")


def _check_existing_database(db: str) -> None:
    """Admin commands read or change an existing database; they never create one."""
    if db in ("memory:", ":memory:"):
        raise UsageError(f"--db {db}: admin commands need an existing database")
    path = _sqlite_path(db)
    if path is None:
        return  # open_store says which URLs it supports
    if not path.exists():
        raise UsageError(
            f"--db {db}: no such database file (admin commands never create one; serve does)"
        )


_MODEL_COLUMNS = (
    "version",
    "stage",
    "parent",
    "round_id",
    "participants",
    "epsilon",
    "created_at",
    "signing_key_id",
)
_CLIENT_COLUMNS = ("client_id", "region", "registered_at", "revoked_at")
_ROUND_COLUMNS = (
    "round_id",
    "state",
    "base_version",
    "result_version",
    "num_updates",
    "bytes_up",
    "bytes_down",
    "deadline",
)


def _print(document: Any, *, as_json: bool, columns: Sequence[str] = ()) -> None:
    if as_json:
        print_json(document)
    elif isinstance(document, list):
        rows = [[str(item.get(c, "")) for c in columns] for item in document]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        for row in [list(columns), *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    else:
        for key, value in document.items():
            text = value if isinstance(value, str | int | float | None) else json.dumps(value)
            print(f"{key}: {text}")


def _register_cli(args: argparse.Namespace) -> int:
    """``models register BUNDLE``: a candidate version from a bundle, on the database
    directly. Unlike the other admin commands it creates the database and the artifact
    directory when they are absent (registering the first version is how a registry starts)."""
    if args.coordinator:
        raise UsageError(
            "models register works on the database directly (--db and --artifacts), "
            "not on --coordinator"
        )
    if not (args.db and args.artifacts):
        raise UsageError("models register needs --db and --artifacts")
    if not args.bundle.is_dir():
        raise UsageError(f"bundle {args.bundle} is not a directory")
    if args.db in ("memory:", ":memory:"):
        raise UsageError(f"--db {args.db}: models register needs a database that persists")
    _check_db_argument(args.db)
    if args.artifacts.exists() and not args.artifacts.is_dir():
        raise UsageError(f"--artifacts {args.artifacts} is not a directory")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    with _database(args.db):
        admin = DirectAdmin(args.db, args.artifacts)
    try:
        document = admin.register_candidate(args.bundle)
    finally:
        admin.close()
    if args.version_file is not None:
        atomic_write_text(args.version_file, str(document["version"]))
    _print(document, as_json=args.json)
    return 0


def models_cli(args: argparse.Namespace) -> int:
    if args.verb == "register":
        return _register_cli(args)
    backend = _backend(args)
    try:
        if args.verb == "list":
            models = backend.list_models()
            columns: tuple[str, ...] = _MODEL_COLUMNS
            if not args.json:  # the table shows each version's cumulative epsilon
                models = [{**m, "epsilon": _epsilon(m.get("privacy"))} for m in models]
                if any(m.get("gate") for m in models):  # and what the gate decided
                    models = [{**m, "gate": _gate_text(m.get("gate"))} for m in models]
                    columns = (*columns, "gate")
            _print(models, as_json=args.json, columns=columns)
        elif args.verb == "show":
            _print(backend.show_model(args.version), as_json=args.json)
        elif args.verb == "predictions":
            _print_predictions(backend, args.version, as_json=args.json)
        elif args.verb == "promote":
            _print(backend.promote(args.version), as_json=args.json)
        else:
            if args.before is not None:
                _check_time(args.before)
            _print(backend.rollback(before=args.before), as_json=args.json)
    finally:
        backend.close()
    return 0


_PREDICTION_COLUMNS = (
    "version",
    "stage",
    "reports",
    "predictions",
    "labels",
    "compared_with",
    "prediction_drift",
    "label_drift",
    "drifted",
)


def _shares(values: list[float] | None) -> str:
    return "-" if not values else " ".join(f"{v:.3f}" for v in values)


def _distance(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_predictions(backend: AdminBackend, version: str | None, *, as_json: bool) -> None:
    """``models predictions``: each version's ``predictions`` section (from its document),
    as JSON or as a table of distributions and drifts."""
    versions = [m["version"] for m in backend.list_models()] if version is None else [version]
    documents = [backend.show_model(v) for v in versions]
    if as_json:
        _print(
            [{"version": d["version"], "predictions": d["predictions"]} for d in documents],
            as_json=True,
        )
        return
    rows = []
    for document in documents:
        section = document["predictions"]
        current = section["distribution"] or {}
        rows.append(
            {
                "version": document["version"],
                "stage": document["stage"],
                "reports": current.get("reports", 0),
                "predictions": _shares(current.get("prediction_distribution")),
                "labels": _shares(current.get("label_distribution")),
                "compared_with": section["compared_with"] or "-",
                "prediction_drift": _distance(section["prediction_drift"]),
                "label_drift": _distance(section["label_drift"]),
                "drifted": "yes" if section["drifted"] else "no",
            }
        )
    _print(rows, as_json=False, columns=_PREDICTION_COLUMNS)


def _check_time(text: str) -> None:
    from coordinator.admin_api import parse_instant
    from coordinator.errors import CoordinatorError

    try:
        parse_instant(text)
    except CoordinatorError as exc:
        raise UsageError(f"--before: {exc}") from exc


def _gate_text(gate: Any) -> str:
    """What the gate decided about a version, for the table: its status, and for a
    rejected candidate the reason; ``-`` for a version no gate evaluated."""
    if not isinstance(gate, dict):
        return "-"
    status = str(gate.get("status"))
    return f"{status}: {gate.get('reason')}" if status == "rejected" else status


def _epsilon(privacy: Any) -> str:
    """A version's cumulative epsilon for the table (its delta is in ``models show``):
    ``none`` without a DP guarantee, ``-`` without a privacy record."""
    if not isinstance(privacy, dict):
        return "-"
    epsilon = privacy.get("epsilon")
    return "none" if epsilon is None else f"{epsilon:.4g}"


def rounds_cli(args: argparse.Namespace) -> int:
    backend = _backend(args)
    try:
        if args.verb == "list":
            _print(backend.list_rounds(), as_json=args.json, columns=_ROUND_COLUMNS)
        elif args.verb == "cancel":
            _print(backend.cancel_round(args.round_id), as_json=args.json)
        else:
            _print(backend.show_round(args.round_id), as_json=args.json)
    finally:
        backend.close()
    return 0


def clients_cli(args: argparse.Namespace) -> int:
    backend = _backend(args)
    try:
        if args.verb == "list":
            _print(backend.list_clients(), as_json=args.json, columns=_CLIENT_COLUMNS)
        else:
            _print(backend.revoke_client(args.client_id), as_json=args.json)
    finally:
        backend.close()
    return 0


_ENROLLMENT_COLUMNS = (
    "token_id",
    "label",
    "uses",
    "max_uses",
    "created_at",
    "expires_at",
    "revoked_at",
)


def enrollment_cli(args: argparse.Namespace) -> int:
    token = load_secret(args.admin_token_file, ADMIN_TOKEN_ENV)
    if token is None:
        raise UsageError(f"enrollment needs --admin-token-file or ${ADMIN_TOKEN_ENV}")
    if args.verb == "create":
        if args.expires_in is not None and not args.expires_in > 0:
            raise UsageError(f"--expires-in must be above 0 seconds, got {args.expires_in}")
        if args.uses is not None and args.uses < 1:
            raise UsageError(f"--uses must be at least 1, got {args.uses}")
    with _admin_client(args, token) as client:
        if args.verb == "create":
            created = client.create_enrollment_token(
                label=args.label, expires_in=args.expires_in, max_uses=args.uses
            )
            _print(created, as_json=args.json)
        elif args.verb == "list":
            tokens = client.list_enrollment_tokens()
            _print(tokens, as_json=args.json, columns=_ENROLLMENT_COLUMNS)
        else:
            _print(client.revoke_enrollment_token(args.token_id), as_json=args.json)
    return 0


# Entry point ---------------------------------------------------------------------------


def _configure_logging(args: argparse.Namespace) -> None:
    """The kit's stderr handler, and token redaction on every root handler, so that no
    library's log record can print a token."""
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=_LOGGERS)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    code: int = args.handler(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fedge-coordinator``; the exit code (see ``--help``)."""
    return run_cli(
        lambda: _run(argv), prog=PROG, extra_exit_table=_EXIT_TABLE, debug_tracebacks=True
    )


if __name__ == "__main__":
    sys.exit(main())
