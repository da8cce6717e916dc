"""``fedge-coordinator quarantine list|release``: the updates held out of aggregation because
their client's latest statistics showed anomalies (:mod:`coordinator.quarantine`), and
releasing a client's.

::

    fedge-coordinator quarantine list [--client ID]   TARGET [--json]
    fedge-coordinator quarantine release ID           TARGET [--json]

TARGET is a running coordinator (``--coordinator URL`` with the admin token) or its
database (``--db DB --artifacts DIR``), as for the other admin commands; the command
group is added by :func:`add_quarantine_parser` with the main CLI's target flags and backend.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import Any

from coordinator.admin import AdminBackend
from fedge.cli import print_json

__all__ = ["add_quarantine_parser", "quarantine_cli"]

VerbFactory = Callable[[Any, str, str], argparse.ArgumentParser]
"""Adds an admin verb with the target flags: ``(subparsers, name, help) -> parser``."""
BackendFactory = Callable[[argparse.Namespace], AdminBackend]

_COLUMNS = ("round_id", "client_id", "task_id", "num_examples", "received_at", "quarantine")


def add_quarantine_parser(sub: Any, *, verb: VerbFactory, backend: BackendFactory) -> None:
    """Add the ``quarantine`` command group to ``sub``; ``verb`` builds each verb's parser
    with the target flags, ``backend`` opens the target."""
    quarantine = sub.add_parser(
        "quarantine",
        help="list and release quarantined updates",
        description="Updates from clients whose latest statistics showed anomalies are kept "
        "but not aggregated (quarantined); list them with their reasons, or release a "
        "client's: they count again, in their round when it is still to be aggregated, and "
        "the client's later updates are judged by its next statistics.",
    )
    verbs = quarantine.add_subparsers(dest="verb", required=True, metavar="VERB")
    verb(verbs, "list", "the quarantined updates, with their reasons").add_argument(
        "--client", metavar="ID", help="only this client's"
    )
    verb(verbs, "release", "release one client's quarantined updates").add_argument(
        "client_id", metavar="ID"
    )
    quarantine.set_defaults(handler=functools.partial(quarantine_cli, backend=backend))


def quarantine_cli(args: argparse.Namespace, *, backend: BackendFactory) -> int:
    target = backend(args)
    try:
        if args.verb == "list":
            updates = target.list_quarantined(args.client)
            if args.json:
                print_json(updates)
            else:
                _table(updates)
        else:
            released = target.release_quarantine(args.client_id)
            if args.json:
                print_json(released)
            else:
                count = len(released["released"])
                print(f"released {count} update(s) of client {released['client_id']}")
                if count:
                    _table(released["released"])
    finally:
        target.close()
    return 0


def _table(updates: list[dict[str, Any]]) -> None:
    rows = [
        [v if isinstance(v, str) else json.dumps(v) for v in (u.get(c, "") for c in _COLUMNS)]
        for u in updates
    ]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS), *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
