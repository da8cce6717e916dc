"""``fedge-edge``: the device's command line.

::

    fedge-edge register --coordinator URL --token-file F [--state DIR] [--region R] [TLS]
    fedge-edge rotate-token --coordinator URL --token-file F [TLS]
    fedge-edge run      --coordinator URL --token-file F --data DIR --state DIR [options] [TLS]
    fedge-edge predict  (--bundle DIR | --state DIR) --input FILE [--global] [--json]
    fedge-edge status   --state DIR [--json]

``register`` enrolls the device and writes its token to F (mode 0600); with ``--state`` it
also pins the coordinator's manifest signing key there (:mod:`edge_client.trust`). ``run`` is the
daemon: it polls the coordinator for train/evaluate/stats/features tasks and answers them
from the data files in DIR until SIGTERM or Ctrl-C, within the owner's privacy policy
(``--policy FILE``, else ``STATE/policy.json`` when present, else the safe defaults of
:mod:`edge_client.policy`; a bad policy file exits 2 naming the file and the field).
``rotate-token`` replaces the device's token: it stores a new random token in
``F.pending`` (mode 0600), asks the coordinator to switch to it, and only then replaces F
and removes ``F.pending``; after a crash in between, the pending token is the one that
works: running ``rotate-token`` again finishes the switch, and ``run`` tries F and then
``F.pending`` whenever a call is refused 401, so a running daemon keeps working.
``predict`` scores a CSV, TFRecord or .npz file with a verified bundle (the personal head when
``--state`` holds one for that version, unless ``--global``) and says which path served
(``path``: ``int8``, ``int8-backbone+float-head`` or ``float``, see
:meth:`~edge_client.model.EdgeModel.serving_path`). ``status`` shows what the
daemon last did. Every command takes ``-v/-q``; ``fedge-edge --version`` prints the
version.

URL is ``http://`` or ``https://`` (the REST API) or ``grpc://host:port`` or
``grpcs://host:port`` (the gRPC API); the commands behave the same over either. TLS is
``--ca-file F`` (the CA that authenticates the coordinator; default the system's roots)
and ``--cert F --key F`` (the device's certificate and key, for a coordinator that asks for
client certificates), on every command that contacts the coordinator, for https:// and
grpcs:// alike.

Exit codes (the shared kit's, :mod:`fedge.cli`): 0 success; 1 the operation failed (the
coordinator refused or could not be reached, a bundle failed verification); 2 a usage or
input error (bad flags, a missing token file, an unreadable input file); 130 interrupted.
``run`` stops within about a second on SIGTERM and on SIGINT alike, whatever it is doing
(a request in flight is aborted, on-device training is interrupted, a queued reply stays
queued whole, the status says ``stopped``): SIGTERM, a daemon's normal stop, exits 0 and
SIGINT (Ctrl-C) exits 130. How ``run`` treats a coordinator that misbehaves (Retry-After
clamped to [1 s, 1 h], backoff on every failure, rejected models not downloaded again, a
deadline per request) is :data:`RUN_DESCRIPTION`, printed by ``fedge-edge run --help``.
Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.api import connect
from edge_client.backoff import BackoffPolicy
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.errors import RequestRejected
from edge_client.grpc_client import Interceptor
from edge_client.handler import ClientConfig
from edge_client.local_data import bundle_label_names, read_columns
from edge_client.model import EdgeModel
from edge_client.personalize import PersonalizationConfig
from edge_client.policy import DevicePolicy, load_policy
from edge_client.state import ClientState, read_token, registration_key, write_token
from edge_client.tls import ClientTls
from edge_client.transport import Transport, pending_token_file
from edge_client.trust import pin_at_enrollment
from fedge.cli import (
    ArgumentParser,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
)
from fedge.errors import ConfigError, DataError, FeatureError, UsageError
from fedge.validation import check_fraction, check_int, check_number, check_positive

__all__ = ["RUN_DESCRIPTION", "build_parser", "main"]

PROG = "fedge-edge"
_LOGGERS = ("edge_client", "fedge")
_EPILOG = """\
exit codes:
  0    success (run: stopped by SIGTERM, a daemon's normal stop, or after --max-tasks)
  1    the operation failed: the coordinator refused or could not be reached, or a bundle
       failed verification
  2    usage or input error: unknown flag, missing token file, unreadable input
  130  interrupted (Ctrl-C); run stops gracefully first (within about a second, the
       status written), as on SIGTERM"""
RUN_DESCRIPTION = """\
run the daemon until SIGTERM or Ctrl-C

It polls the coordinator for tasks, downloads and verifies the task's model, answers from
the data files in --data, and queues each reply on disk until the coordinator has it.

Against a coordinator that is down, slow or misbehaving:
  - Retry-After (on 204, 429 or 503; seconds or an HTTP-date) is obeyed within [1 s, 1 h];
    an unreadable value is ignored.
  - every failure (unreachable, 5xx, 429, a refused request or upload, a rejected model,
    a local disk error) waits an exponentially growing, jittered delay from
    --backoff-base up to --backoff-cap seconds; a clean 204 or a handled task resets it.
  - a model version that fails verification (sha256, size) is not downloaded again until
    the coordinator announces another version (remembered in STATE/status.json).
  - --timeout bounds each whole request (headers and body), so a server that trickles its
    answer cannot hold the daemon; responses over 256 MiB are refused.
  - SIGTERM/SIGINT stop it within about a second at any point: a sleep ends, a request in
    flight is aborted, on-device training is interrupted between two steps; a reply is
    queued whole or not at all and stays queued until acknowledged; the status says
    "stopped"."""


def _parser(
    sub: Any, name: str, help_text: str, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description or help_text, epilog=_EPILOG
    )
    add_verbosity_flags(parser)
    return parser


def _coordinator_flags(parser: argparse.ArgumentParser) -> None:
    """The coordinator's URL and the TLS files, on every command that contacts it."""
    parser.add_argument("--coordinator", required=True, metavar="URL",
                        help="http(s)://HOST:PORT (REST) or grpc(s)://HOST:PORT")  # fmt: skip
    tls = parser.add_argument_group("TLS (https:// and grpcs://)")
    tls.add_argument("--ca-file", type=Path, metavar="F",
                     help="CA bundle that authenticates the coordinator (default: the "
                     "default trusted roots)")  # fmt: skip
    tls.add_argument("--cert", type=Path, metavar="F",
                     help="this device's certificate (PEM) for mutual TLS")  # fmt: skip
    tls.add_argument("--key", type=Path, metavar="F",
                     help="the private key of --cert (PEM)")  # fmt: skip


def _tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS files the command line names (None: none named)."""
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    for flag, path in (("--ca-file", args.ca_file), ("--cert", args.cert), ("--key", args.key)):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path} is not a file")
    if args.ca_file is None and args.cert is None:
        return None
    return ClientTls(ca_file=args.ca_file, cert=args.cert, key=args.key)


def build_parser() -> ArgumentParser:
    """The parser of ``fedge-edge`` and its commands."""
    parser = ArgumentParser(
        prog=PROG,
        description="The fedge edge client: register, run the daemon, predict, status.",
        epilog=_EPILOG,
    )
    parser.add_version()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register = _parser(sub, "register", "register this device with a coordinator")
    _coordinator_flags(register)
    register.add_argument("--token-file", required=True, type=Path, metavar="F")
    register.add_argument("--state", type=Path, metavar="DIR", help="records the client id")
    register.add_argument("--region", help="this device's region (for per-slice metrics)")
    register.add_argument("--enrollment-token-file", type=Path, metavar="F")
    add_json_flag(register)
    register.set_defaults(handler=register_cli)

    rotate = _parser(sub, "rotate-token", "replace this device's client token")
    _coordinator_flags(rotate)
    rotate.add_argument("--token-file", required=True, type=Path, metavar="F")
    add_json_flag(rotate)
    rotate.set_defaults(handler=rotate_token_cli)

    run = _parser(sub, "run", "run the daemon until SIGTERM or Ctrl-C", RUN_DESCRIPTION)
    _coordinator_flags(run)
    run.add_argument("--token-file", required=True, type=Path, metavar="F")
    run.add_argument("--data", required=True, type=Path, metavar="DIR", help="local data files")
    run.add_argument("--state", required=True, type=Path, metavar="DIR")
    run.add_argument("--max-tasks", type=int, metavar="N", help="stop after N tasks")
    run.add_argument("--holdout-fraction", type=float, default=0.2, metavar="F")
    run.add_argument("--seed", type=int, default=0, help="holdout split and personalization")
    run.add_argument("--settle-seconds", type=float, default=1.0, metavar="S",
                     help="read a data file once it is this old")  # fmt: skip
    run.add_argument("--min-count", type=int, default=5, metavar="K",
                     help="privacy: values behind fewer rows are never reported")  # fmt: skip
    run.add_argument("--backoff-base", type=float, default=1.0, metavar="S",
                     help="the first failure's longest wait")  # fmt: skip
    run.add_argument("--backoff-cap", type=float, default=60.0, metavar="S",
                     help="the longest wait after any number of failures")  # fmt: skip
    run.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="wall-clock budget of one whole request (headers and body)")  # fmt: skip
    run.add_argument("--threads", type=int, metavar="N", help="TFLite interpreter threads")
    run.add_argument("--policy", type=Path, metavar="FILE",
                     help="the privacy policy (JSON; default STATE/policy.json, else "
                     "safe defaults)")  # fmt: skip
    personal = run.add_argument_group("personalization")
    personal.add_argument("--no-personalize", action="store_true", help="no personal head")
    personal.add_argument("--personal-epochs", type=int, default=5, metavar="N")
    personal.add_argument("--personal-learning-rate", type=float, default=0.05, metavar="R")
    run.set_defaults(handler=daemon_cli)

    predict = _parser(sub, "predict", "score a CSV, TFRecord or .npz file with a bundle")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", type=Path, metavar="DIR", help="a bundle directory")
    source.add_argument("--state", type=Path, metavar="DIR", help="the daemon's model in use")
    predict.add_argument("--input", required=True, type=Path, metavar="FILE")
    predict.add_argument("--personal-state", type=Path, metavar="DIR",
                         help="with --bundle: take the personal head from this state")  # fmt: skip
    predict.add_argument("--global", dest="use_global", action="store_true",
                         help="ignore any personal head")  # fmt: skip
    add_json_flag(predict)
    predict.set_defaults(handler=predict_cli)

    status = _parser(sub, "status", "show what the daemon last did")
    status.add_argument("--state", required=True, type=Path, metavar="DIR")
    add_json_flag(status)
    status.set_defaults(handler=status_cli)
    return parser


# Commands ---------------------------------------------------------------------------------


def register_cli(
    args: argparse.Namespace,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    enrollment = None
    if args.enrollment_token_file is not None:
        enrollment = read_token(args.enrollment_token_file)
    client = connect(
        args.coordinator,
        tls=_tls(args),
        transport=transport,
        grpc_interceptors=grpc_interceptors,
    )
    try:
        registration = client.register(
            region=args.region,
            enrollment_token=enrollment,
            registration_key=registration_key(args.token_file),
        )
    finally:
        client.close()
    write_token(args.token_file, registration.token)
    if args.state is not None:
        pin_at_enrollment(ClientState(args.state), registration.signing_key)
        ClientState(args.state).save_client(
            client_id=registration.client_id,
            coordinator=args.coordinator,
            registered_at=time.time(),
        )
    document = {"client_id": registration.client_id, "token_file": str(args.token_file)}
    _print(document, as_json=args.json)
    return 0


def rotate_token_cli(
    args: argparse.Namespace,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    """``rotate-token``: the new token is stored in ``F.pending`` before the coordinator is
    asked, and replaces F only after it answered (see the module docstring)."""
    current = read_token(args.token_file)
    pending = pending_token_file(args.token_file)
    try:
        proposed = read_token(pending)  # an earlier rotation that did not finish
    except ConfigError:
        proposed = "fedge_" + secrets.token_urlsafe(32)
        write_token(pending, proposed)
    client = connect(
        args.coordinator,
        token=current,
        tls=_tls(args),
        transport=transport,
        grpc_interceptors=grpc_interceptors,
    )
    try:
        try:
            client.rotate_token(proposed)
        except RequestRejected as exc:
            if exc.status != 401:
                raise
            client.token = proposed  # the coordinator switched before the answer was stored
            client.rotate_token(proposed)
    finally:
        client.close()
    write_token(args.token_file, proposed)
    pending.unlink(missing_ok=True)
    _print({"token_file": str(args.token_file), "rotated": True}, as_json=args.json)
    return 0


def daemon_cli(
    args: argparse.Namespace,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    """``run``: 0 once stopped by SIGTERM or ``--max-tasks``; SIGINT ends in
    KeyboardInterrupt (exit 130) after the same clean stop."""
    if args.max_tasks is not None:
        check_int(args.max_tasks, "--max-tasks", low=1, error=UsageError)
    check_fraction(args.holdout_fraction, "--holdout-fraction", error=UsageError)
    check_int(args.seed, "--seed", low=0, error=UsageError)
    check_number(args.settle_seconds, "--settle-seconds", low=0.0, error=UsageError)
    check_positive(args.timeout, "--timeout", error=UsageError)
    if args.threads is not None:
        check_int(args.threads, "--threads", low=1, error=UsageError)
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data} is not a directory")
    policy_file = args.policy
    if policy_file is None and (args.state / "policy.json").is_file():
        policy_file = args.state / "policy.json"
    policy = DevicePolicy() if policy_file is None else load_policy(policy_file)
    config = DaemonConfig(
        coordinator=args.coordinator,
        token_file=args.token_file,
        data_dir=args.data,
        state_dir=args.state,
        backoff=BackoffPolicy(base=args.backoff_base, cap=args.backoff_cap),
        client=ClientConfig(
            min_count=args.min_count,
            personalization=PersonalizationConfig(
                enabled=not args.no_personalize,
                epochs=args.personal_epochs,
                learning_rate=args.personal_learning_rate,
            ),
        ),
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        settle_seconds=args.settle_seconds,
        max_tasks=args.max_tasks,
        request_timeout=args.timeout,
        num_threads=args.threads,
        policy=policy,
        tls=_tls(args),
    )
    return Daemon(config, transport=transport, grpc_interceptors=grpc_interceptors).run()


def predict_cli(
    args: argparse.Namespace,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    state_dir = args.state or args.personal_state
    if not args.input.is_file():
        raise UsageError(f"--input {args.input} is not a file")
    if args.bundle is not None:
        if not (args.bundle / "manifest.json").is_file():
            raise UsageError(f"--bundle {args.bundle} is not a bundle directory (no manifest.json)")
        bundle = args.bundle
    else:
        found = ClientState(args.state).current_bundle()
        if found is None:
            raise UsageError(f"{args.state} holds no model yet: run the daemon first")
        bundle = found
    model = EdgeModel.load(bundle)
    try:
        names = bundle_label_names(model.directory, model.manifest)
        columns = read_columns(args.input, model.schema, label="optional", label_names=names)
        x = model.transform(columns)
    except (DataError, FeatureError) as exc:
        raise UsageError(f"{args.input}: {exc}") from exc
    head = None
    if state_dir is not None and not args.use_global:
        stored = ClientState(state_dir).heads.get()
        if stored is not None and stored.base_version == model.version:
            head = stored
    weights = None if head is None else head.weights
    path = model.serving_path(weights)
    scores = model.predict_scores(x, head=weights)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    classes = probabilities.argmax(axis=1)
    used = "personal" if head is not None else ("int8" if model.int8_current else "global")
    rows: list[dict[str, Any]] = [
        {"class": int(c), "probability": round(float(p[c]), 6)}
        for c, p in zip(classes, probabilities, strict=True)
    ]
    if names is not None:  # a fedge-train --data model: the label texts too
        for row in rows:
            row["label"] = names[row["class"]]
    if args.json:
        document = {"model_version": model.version, "head": used, "path": path,
                    "count": len(rows), "predictions": rows}  # fmt: skip
        print_json(document)
    else:
        columns_line = "row class probability" + (" label" if names is not None else "")
        print(f"# model {model.version}, {used} head, path {path}, {len(rows)} rows: "
              f"{columns_line}")  # fmt: skip
        for i, row in enumerate(rows):
            label = f"\t{row['label']}" if "label" in row else ""
            print(f"{i}\t{row['class']}\t{row['probability']:.4f}{label}")
    return 0


def status_cli(
    args: argparse.Namespace,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    if not args.state.is_dir():
        raise UsageError(f"--state {args.state} is not a directory")
    state = ClientState(args.state)
    document: dict[str, Any] = {
        "client_id": state.client().get("client_id"),
        "coordinator": state.client().get("coordinator"),
        **state.status(),
        "model_version": state.current_version,
        "previous_version": state.previous_version,
        "outbox_pending": len(state.outbox),
    }
    document.pop("answered_tasks", None)
    if document.get("state") == "running" and not _alive(document.get("pid")):
        document["state"] = "dead"
    _print(document, as_json=args.json)
    return 0


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _print(document: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(document)
        return
    for key, value in document.items():
        text = value if isinstance(value, str | int | float | None) else json.dumps(value)
        print(f"{key}: {text}")


# Entry point -------------------------------------------------------------------------------


def _run(
    argv: Sequence[str] | None,
    transport: Transport | None,
    grpc_interceptors: Sequence[Interceptor],
) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=_LOGGERS)
    code: int = args.handler(args, transport=transport, grpc_interceptors=grpc_interceptors)
    return code


def main(
    argv: Sequence[str] | None = None,
    *,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> int:
    """Run ``fedge-edge``; ``transport`` replaces HTTP under an ``http(s)://`` coordinator
    URL and ``grpc_interceptors`` wrap the channel of a ``grpc(s)://`` one (tests capture
    what is sent)."""
    return run_cli(
        lambda: _run(argv, transport, grpc_interceptors), prog=PROG, debug_tracebacks=True
    )


if __name__ == "__main__":
    sys.exit(main())
