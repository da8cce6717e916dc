"""The on-disk outbox: every reply is written durably before it is sent, and sent until the
coordinator has it.

:meth:`Outbox.put` turns a reply into its POST (:func:`~edge_client.transport.
reply_request`, or :func:`~edge_client.transport.secure_request` for a secure-aggregation
message) with a fresh idempotency key and writes it atomically (temporary file,
fsync, rename, fsync of the directory): after a crash an entry is either complete or
absent. :meth:`Outbox.deliver` sends the entries oldest first, each with its stored key, so
a retry after an outage (or after a response lost in transit) is one update to the
coordinator, which acknowledges the same key and body again without counting it twice.

An entry leaves the outbox on a 2xx; on a 409 (the round or task closed, already
answered) it is dropped with a log line, as resending cannot succeed; on another 4xx it is
moved to ``failed/`` for inspection. A transport failure stops the pass: the entry stays,
and the caller backs off.

File format: one JSON line (the request without its body, plus ``body_size``), then the
body bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_client.api import CoordinatorApi
from edge_client.errors import RequestRejected
from edge_client.secure import SecureReply
from edge_client.transport import (
    Decline,
    OutgoingRequest,
    decline_request,
    reply_request,
    secure_request,
)
from fedge.errors import ProtocolError
from fedge.fileio import atomic_write_bytes, fsync_directory
from fedge.messages import Reply

__all__ = ["DeliveryReport", "Outbox", "OutboxEntry"]

logger = logging.getLogger(__name__)

_SUFFIX = ".reply"


@dataclass(frozen=True)
class OutboxEntry:
    """One stored reply: its file and the request that delivers it."""

    path: Path
    request: OutgoingRequest

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class DeliveryReport:
    """What one :meth:`Outbox.deliver` pass did."""

    delivered: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    pending: int = 0


class Outbox:
    """The queue in ``directory`` (created if needed)."""

    def __init__(self, directory: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.failed_directory = self.directory / "failed"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock

    def put(self, reply: Reply | SecureReply | Decline) -> OutboxEntry:
        """Store ``reply`` (or a task's decline) durably with a new idempotency key;
        returns its entry."""
        key = uuid.uuid4().hex
        if isinstance(reply, Decline):
            request = decline_request(reply, key)
        elif isinstance(reply, SecureReply):
            request = secure_request(reply, key)
        else:
            request = reply_request(reply, key)
        header = {**request.to_dict(), "body_size": len(request.body), "queued_at": self._clock()}
        data = json.dumps(header, sort_keys=True).encode("utf-8") + b"\n" + request.body
        name = f"{time.time_ns():020d}-{key}{_SUFFIX}"
        path = self.directory / name
        atomic_write_bytes(path, data)
        logger.info("queued %s reply to task %s (%s)", request.kind, request.task_id, name)
        return OutboxEntry(path, request)

    def entries(self) -> list[OutboxEntry]:
        """Stored entries, oldest first; unreadable files are moved to ``failed/``."""
        out = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                out.append(OutboxEntry(path, _read(path)))
            except (OSError, ValueError, ProtocolError) as exc:
                logger.error("outbox entry %s is unreadable (%s); moving it aside", path.name, exc)
                self._move_aside(path)
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"*{_SUFFIX}"))

    def remove(self, entry: OutboxEntry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        fsync_directory(self.directory)

    def _move_aside(self, path: Path) -> None:
        self.failed_directory.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, self.failed_directory / path.name)

    def deliver(self, client: CoordinatorApi) -> DeliveryReport:
        """Send every entry, oldest first. TransportError propagates (the entry stays)."""
        delivered: list[str] = []
        dropped: list[str] = []
        failed: list[str] = []
        for entry in self.entries():
            request = entry.request
            try:
                response = client.send(request)
            except RequestRejected as exc:
                if exc.status == 401:
                    raise  # the token is wrong: every entry would fail the same way
                if exc.status == 409:
                    logger.warning(
                        "dropping %s reply to task %s: the coordinator refused it as %s (%s)",
                        request.kind,
                        request.task_id,
                        exc.code,
                        exc,
                    )
                    self.remove(entry)
                    dropped.append(entry.name)
                else:
                    logger.error(
                        "%s reply to task %s was rejected (%s); moved to %s",
                        request.kind,
                        request.task_id,
                        exc,
                        self.failed_directory,
                    )
                    self._move_aside(entry.path)
                    failed.append(entry.name)
                continue
            logger.info(
                "delivered %s reply to task %s (HTTP %d)",
                request.kind,
                request.task_id,
                response.status,
            )
            self.remove(entry)
            delivered.append(entry.name)
        return DeliveryReport(tuple(delivered), tuple(dropped), tuple(failed), len(self))


def _read(path: Path) -> OutgoingRequest:
    data = path.read_bytes()
    line, sep, body = data.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    header = json.loads(line)
    if not isinstance(header, dict) or header.get("body_size") != len(body):
        raise ValueError(f"the body is {len(body)} bytes, the header says otherwise")
    return OutgoingRequest.from_dict(header, body)
