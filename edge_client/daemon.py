"""The device daemon: poll for a task, make sure its model is here and verified, handle it,
queue the reply, deliver it; back off while the coordinator is away; stop cleanly.

One :meth:`Daemon.step` is::

    deliver the outbox -> poll GET /v1/tasks/next -> (204: wait Retry-After)
    -> fetch + verify the task's model version (a rejected download keeps the model in use)
    -> handle(task, context) -> outbox.put(reply) -> refresh the personal head

Any transport failure (no connection, timeout, 5xx) sleeps an exponentially growing,
fully jittered delay (:mod:`edge_client.backoff`) and the next step starts over with the
outbox, so replies queued during an outage go out first, once each. SIGTERM (or SIGINT)
sets a flag: a sleep ends at once, a step in progress finishes, then the status is
written and :meth:`Daemon.run` returns 0 (SIGTERM) or raises KeyboardInterrupt (SIGINT,
as Python does for Ctrl-C, once the same clean stop is done).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edge_client.backoff import Backoff, BackoffPolicy
from edge_client.errors import RequestRejected, TransportError
from edge_client.handler import ClientConfig, ClientContext, handle, personal_head
from edge_client.local_data import DirectoryData
from edge_client.model import EdgeModel, ModelCache
from edge_client.state import ClientState, read_token
from edge_client.transport import DEFAULT_TIMEOUT, CoordinatorClient, HttpTransport, Transport
from fedge.errors import BundleError, DataError, FeatureError, FedgeError, ProtocolError
from fedge.messages import Task

__all__ = ["Daemon", "DaemonConfig"]

logger = logging.getLogger(__name__)

_REMEMBERED_TASKS = 256


@dataclass(frozen=True)
class DaemonConfig:
    """Where the daemon talks to and keeps things, and how it behaves.

    ``max_tasks`` stops the daemon after that many handled tasks (once their replies are
    delivered); ``settle_seconds`` is how old a data file must be before it is read.
    """

    coordinator: str
    token_file: Path
    data_dir: Path
    state_dir: Path
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    client: ClientConfig = field(default_factory=ClientConfig)
    holdout_fraction: float = 0.2
    seed: int = 0
    settle_seconds: float = 1.0
    max_tasks: int | None = None
    request_timeout: float = DEFAULT_TIMEOUT
    num_threads: int | None = None


class Daemon:
    """The loop of one device (see the module docstring)."""

    def __init__(
        self,
        config: DaemonConfig,
        *,
        transport: Transport | None = None,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = ClientState(config.state_dir)
        self.client = CoordinatorClient(
            config.coordinator,
            transport if transport is not None else HttpTransport(),
            token=read_token(config.token_file),
            timeout=config.request_timeout,
        )
        self.stop_event = threading.Event()
        self._stopped_by: int | None = None  # the signal that stopped run(), if one did
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng()
        self.backoff = Backoff(config.backoff, rng=self._rng, sleep=self._sleep)
        self.models = ModelCache(self._locate, max_versions=2, num_threads=config.num_threads)
        self._context: ClientContext | None = None
        status = self.state.status()
        self.counts: Counter[str] = Counter(status.get("tasks") or {})
        self.handled = 0
        remembered = status.get("answered_tasks") or []
        self._answered: deque[str] = deque(remembered, maxlen=_REMEMBERED_TASKS)
        self.last_error: dict[str, Any] | None = status.get("last_error")
        self._last_poll: float | None = None
        self._last_task: dict[str, Any] | None = status.get("last_task")

    # Control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def _locate(self, version: str) -> Path:
        return self.state.bundles.fetch(self.client, version)

    def _record_error(self, message: str) -> None:
        self.last_error = {"at": self._clock(), "message": message}

    def _done(self) -> bool:
        limit = self.config.max_tasks
        return limit is not None and self.handled >= limit

    # One step -----------------------------------------------------------------------------

    def step(self) -> str:
        """Deliver, poll, handle once. Returns what happened: ``handled``, ``idle``,
        ``done``, ``unreachable``, ``refused``, ``model_rejected``, ``no_data``,
        ``failed`` or ``answered_before``."""
        try:
            if len(self.state.outbox):
                report = self.state.outbox.deliver(self.client)
                if report.delivered or report.dropped or report.failed:
                    self._save_status()
            if self._done():
                return "done"
            polled = self.client.next_task()
        except TransportError as exc:
            return self._unreachable(exc)
        except (RequestRejected, ProtocolError) as exc:
            self._record_error(str(exc))
            logger.error("the coordinator refused or garbled a request (%s); retrying later", exc)
            self._save_status()
            self.backoff.failure()
            return "refused"
        self.backoff.reset()
        self._last_poll = self._clock()
        if polled.task is None:
            self.backoff.wait_retry_after(polled.retry_after)
            return "idle"
        return self._work(polled.task)

    def _unreachable(self, exc: TransportError) -> str:
        self._record_error(str(exc))
        delay = self.backoff.next_delay()
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        logger.warning(
            "coordinator unavailable (%s); backing off %.2f s (failure %d)",
            exc,
            delay,
            self.backoff.failures,
        )
        self._save_status()
        self._sleep(delay)
        return "unreachable"

    def _work(self, task: Task) -> str:
        if task.task_id in self._answered:
            logger.warning("task %s was answered before; waiting for it to close", task.task_id)
            self.backoff.failure()
            return "answered_before"
        logger.info("handling %s task %s (model %s)", task.kind, task.task_id, task.model_version)
        try:
            model = self.models.model(task.model_version)
        except TransportError as exc:
            return self._unreachable(exc)
        except (BundleError, RequestRejected) as exc:
            kept = self.state.current_version
            self._record_error(f"model {task.model_version} rejected: {exc}")
            logger.error("model %s rejected: %s; keeping model %s", task.model_version, exc, kept)
            self._save_status()
            self.backoff.failure()
            return "model_rejected"
        self.state.use_version(model.version)
        context = self._context_for(model)
        try:
            reply = handle(task, context)
        except (DataError, FeatureError) as exc:
            self._record_error(f"task {task.task_id}: {exc}")
            logger.error("cannot do %s task %s yet: %s", task.kind, task.task_id, exc)
            self._save_status()
            self.backoff.failure()
            return "no_data"
        except (FedgeError, ValueError, RuntimeError) as exc:  # the TFLite runtime's errors
            self._record_error(f"task {task.task_id}: {exc}")
            logger.error("%s task %s failed: %s", task.kind, task.task_id, exc, exc_info=True)
            self._answered.append(task.task_id)
            self._save_status()
            return "failed"
        self.state.outbox.put(reply)
        self._answered.append(task.task_id)
        self.counts[task.kind] += 1
        self.handled += 1
        self._last_task = {"task_id": task.task_id, "kind": task.kind, "at": self._clock()}
        try:
            personal_head(model, context)
        except FedgeError as exc:
            logger.warning("personalization on %s failed: %s", model.version, exc)
        self._save_status()
        return "handled"

    def _context_for(self, model: EdgeModel) -> ClientContext:
        context = self._context
        if context is None or context.data.schema.to_dict() != model.schema.to_dict():
            data = DirectoryData(
                self.config.data_dir,
                model.schema,
                holdout_fraction=self.config.holdout_fraction,
                seed=self.config.seed,
                settle_seconds=self.config.settle_seconds,
            )
            client_id = str(self.state.client().get("client_id", "local"))
            context = ClientContext(
                data=data,
                models=self.models,
                heads=self.state.heads,
                config=self.config.client,
                rng=np.random.default_rng(self.config.seed),
                client_id=client_id,
            )
            self._context = context
        return context

    # The loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Step until stopped (SIGTERM/SIGINT, or ``max_tasks`` delivered); returns 0, or
        raises KeyboardInterrupt after the clean stop when SIGINT stopped it."""
        restore = self._install_signal_handlers()
        logger.info(
            "fedge edge daemon started (pid %d, coordinator %s)",
            os.getpid(),
            self.config.coordinator,
        )
        self._save_status(state="running")
        try:
            while not self.stopping:
                outcome = self.step()
                if outcome == "done" and not len(self.state.outbox):
                    logger.info("handled %d tasks; stopping", self.handled)
                    break
        finally:
            self._save_status(state="stopped")
            self.client.close()
            restore()
            logger.info("fedge edge daemon stopped")
        if self._stopped_by == signal.SIGINT:
            raise KeyboardInterrupt(signal.SIGINT.name)
        return 0

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def stop(signum: int, frame: FrameType | None) -> None:
            logger.info("received %s: stopping after the current step", signal.Signals(signum).name)
            self._stopped_by = signum
            self.request_stop()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _save_status(self, state: str | None = None) -> None:
        document = self.state.status()
        head = self.state.heads.get()
        data: dict[str, Any] = {}
        if self._context is not None and isinstance(self._context.data, DirectoryData):
            local = self._context.data
            data = {
                "spans": [s.name for s in local.spans],
                "train_rows": sum(len(s.train) for s in local.spans),
                "holdout_rows": sum(len(s.holdout) for s in local.spans),
            }
        document.update(
            {
                "pid": os.getpid(),
                "coordinator": self.config.coordinator,
                "client_id": self.state.client().get("client_id"),
                "model_version": self.state.current_version,
                "previous_version": self.state.previous_version,
                "personal_head": None
                if head is None
                else {"base_version": head.base_version, "metrics": dict(head.metrics)},
                "outbox_pending": len(self.state.outbox),
                "tasks": dict(self.counts),
                "answered_tasks": list(self._answered),
                "last_task": self._last_task,
                "last_poll_at": self._last_poll or document.get("last_poll_at"),
                "last_error": self.last_error,
                "backoff_failures": self.backoff.failures,
                "updated_at": self._clock(),
            }
        )
        if data:
            document["data"] = data
        if state is not None:
            document["state"] = state
        self.state.save_status(document)
