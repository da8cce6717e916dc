"""The device daemon: poll for a task, make sure its model is here and verified, handle it,
queue the reply, deliver it; back off while the coordinator is away; stop cleanly.

One :meth:`Daemon.step` is::

    deliver the outbox -> poll GET /v1/tasks/next -> (204: wait Retry-After)
    -> fetch + verify the task's model version (a rejected download keeps the model in use)
    -> handle(task, context) -> outbox.put(reply) -> refresh the personal head

What a hostile or broken coordinator cannot do to it:

- **Retry-After** (on a 204, a 429 or a 503; delta-seconds or an HTTP-date) is obeyed
  only within [1 s, 1 h]; junk is ignored. ``Retry-After: 0`` cannot make a tight loop,
  ``1e12`` cannot put the device to sleep for ever.
- **Every failure backs off**: no connection, a timeout, 5xx, 429, a refused request, a
  rejected model, an upload the coordinator refused, a local error (disk full...). Each
  sleeps an exponentially growing, fully jittered delay (:mod:`edge_client.backoff`); the
  count resets only after a step that succeeded (a task handled, or a clean 204).
- **A rejected model is not downloaded again**: a version whose download failed
  verification (sha256, size, manifest) is remembered with its manifest's sha256 in
  ``status.json`` (``rejected_models``); a task naming it again is refused locally, with
  backoff, until a task names another version (or ``retry_rejected_after`` seconds have
  passed, an hour by default: a corruption in transit must not shut a device out of its
  fleet for good).
- **No request outlasts its deadline** (``request_timeout``, the whole request: headers
  and body, see :class:`~edge_client.transport.HttpTransport`; over gRPC the call's
  deadline), so a server that trickles its answer cannot hold the daemon.
- **SIGTERM (or SIGINT) stops it within about a second, at any point**: a sleep ends at
  once; a request in flight (poll, download, upload) is aborted; on-device work (training,
  evaluation, personalization) is interrupted between two interpreter calls. A reply is
  queued atomically or not at all, so the outbox holds whole replies only; a reply not yet
  acknowledged stays queued (a retry carries the same Idempotency-Key); a half-downloaded
  model is removed. The status then says ``stopped`` and :meth:`Daemon.run` returns 0
  (SIGTERM) or raises KeyboardInterrupt (SIGINT, as Python does for Ctrl-C, once the same
  clean stop is done).

Each queued reply goes out first on the next step, so replies queued during an outage go
out once each.

**Secure rounds** (:mod:`edge_client.secure`): a train task whose options say
``secagg: true`` is trained as usual, but what is queued is the first protocol message (the
device's public keys), the delta staying in ``STATE/secagg/``; each ``secagg_share``,
``secagg_mask`` and ``secagg_unmask`` task then fetches its stage's payload, and the reply
is queued in the same outbox. A refusal (:class:`~fedge.errors.SecAggError`: both shares of
one peer asked for, too few survivors, a bundle that does not authenticate) is recorded in
the status's ``last_error``, logged without secrets, and the task is never answered. A
round's secrets are deleted once its unmask reply is queued, or when a later round's train
task arrives.

**The owner's privacy policy** (:mod:`edge_client.policy`, ``DaemonConfig.policy``) is
checked before a task's model is downloaded (task kinds, minimum interval per kind, epsilon
budget) and again by the handler (rows behind the reply). A refusal
(:class:`~edge_client.errors.PolicyRefusal`) is recorded in the status's ``last_error``
and its ``policy`` section (``privacy``, ``epsilon_spent``, ``epsilon_budget``,
``last_answers``, ``last_refusal``), and the task is never answered. What each answer
spent is in ``STATE/policy_ledger.json``. A daemon started with ``privacy: "off"`` logs a
WARNING: that baseline is unprotected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edge_client.api import CoordinatorApi, connect
from edge_client.backoff import Backoff, BackoffPolicy
from edge_client.errors import (
    DaemonStopped,
    ModelRejected,
    PolicyRefusal,
    RequestCancelled,
    RequestRejected,
    TransportError,
)
from edge_client.grpc_client import Interceptor
from edge_client.handler import ClientConfig, ClientContext, handle, personal_head
from edge_client.local_data import DirectoryData, bundle_label_names
from edge_client.model import EdgeModel, ModelCache
from edge_client.policy import DevicePolicy
from edge_client.secure import (
    SECAGG_STAGES,
    FileSecretStore,
    SecureReply,
    begin,
    forget_before,
    is_secure,
)
from edge_client.secure import step as secure_step
from edge_client.state import ClientState, read_token
from edge_client.tls import ClientTls
from edge_client.transport import DEFAULT_TIMEOUT, Decline, Transport
from edge_client.trust import ManifestTrust
from fedge.errors import (
    BundleError,
    ConfigError,
    DataError,
    FeatureError,
    FedgeError,
    ProtocolError,
    SecAggError,
)
from fedge.messages import ModelUpdate, Reply, Task
from fedge.validation import check_number, check_positive

__all__ = ["Daemon", "DaemonConfig"]

logger = logging.getLogger(__name__)

_REMEMBERED_TASKS = 256
_REMEMBERED_REJECTIONS = 16


@dataclass(frozen=True)
class DaemonConfig:
    """Where the daemon talks to and keeps things, and how it behaves.

    ``max_tasks`` stops the daemon after that many handled tasks (once their replies are
    delivered); ``settle_seconds`` is how old a data file must be before it is read;
    ``request_timeout`` is the wall-clock budget of one whole request (headers and body);
    ``retry_rejected_after`` is how long a rejected model version is not downloaded again
    while no other version is announced; ``policy`` is the owner's privacy policy (safe
    defaults unless given). ``verify_signatures`` False turns off the manifest signature
    check (:mod:`edge_client.trust`); it exists for tests that show what the check stops,
    and no command-line option sets it. ``coordinator`` is an ``http(s)://`` (REST) or
    ``grpc(s)://`` (gRPC) URL (:func:`edge_client.api.connect`); ``tls`` the CA to trust
    and the device's certificate for mutual TLS, on either transport.
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
    retry_rejected_after: float = 3600.0
    policy: DevicePolicy = field(default_factory=DevicePolicy)
    verify_signatures: bool = True
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        check_positive(self.request_timeout, "request_timeout")
        check_number(self.retry_rejected_after, "retry_rejected_after", low=0)


class Daemon:
    """The loop of one device (see the module docstring).

    ``sleep`` replaces the interruptible wait between steps (tests pass a recorder); the
    default waits on :attr:`stop_event`, which :meth:`request_stop` sets. ``transport``
    replaces HTTP under a REST URL; ``grpc_interceptors`` wrap the channel of a gRPC URL
    (tests record what the device sends).
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        transport: Transport | None = None,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
        grpc_interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.config = config
        self.state = ClientState(config.state_dir)
        self.client: CoordinatorApi = connect(
            config.coordinator,
            token=read_token(config.token_file),
            timeout=config.request_timeout,
            token_file=config.token_file,
            tls=config.tls,
            transport=transport,
            grpc_interceptors=grpc_interceptors,
        )
        self.stop_event = threading.Event()
        self._stopped_by: int | None = None  # the signal that stopped run(), if one did
        self._interruptible = False  # inside on-device work: a stop signal raises there
        self._clock = clock
        self._wait = sleep
        self._rng = rng if rng is not None else np.random.default_rng()
        self.backoff = Backoff(config.backoff, rng=self._rng, sleep=self._sleep)
        self.models = ModelCache(self._locate, max_versions=2, num_threads=config.num_threads)
        self.secrets = FileSecretStore(config.state_dir / "secagg")
        self._context: ClientContext | None = None
        status = self.state.status()
        self.counts: Counter[str] = Counter(status.get("tasks") or {})
        self.handled = 0
        remembered = status.get("answered_tasks") or []
        self._answered: deque[str] = deque(remembered, maxlen=_REMEMBERED_TASKS)
        self.rejected_models: dict[str, dict[str, Any]] = _rejections(status)
        self.last_error: dict[str, Any] | None = status.get("last_error")
        self.next_delay: float | None = None  # the last wait decided, in seconds
        self._last_poll: float | None = None
        self._last_task: dict[str, Any] | None = status.get("last_task")
        previous_policy = status.get("policy")
        self._last_refusal: dict[str, Any] | None = (
            previous_policy.get("last_refusal") if isinstance(previous_policy, dict) else None
        )

    # Control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop soon, from any thread: sleeps end and a request in flight is aborted."""
        self.stop_event.set()
        self.client.cancel()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        self.next_delay = seconds
        if self._wait is not None:
            self._wait(seconds)
        else:
            self.stop_event.wait(seconds)

    def _locate(self, version: str) -> Path:
        verify = ManifestTrust(self.state, self.client) if self.config.verify_signatures else None
        return self.state.bundles.fetch(self.client, version, verify=verify)

    def _record_error(self, message: str) -> None:
        self.last_error = {"at": self._clock(), "message": message}

    def _done(self) -> bool:
        limit = self.config.max_tasks
        return limit is not None and self.handled >= limit

    # One step -----------------------------------------------------------------------------

    def step(self) -> str:
        """Deliver, poll, handle once. Returns what happened: ``handled``, ``idle``,
        ``done``, ``unreachable``, ``refused``, ``model_rejected``, ``no_data``,
        ``failed``, ``secagg_refused``, ``policy_refused``, ``answered_before``,
        ``local_error`` or ``stopped``. Every outcome but
        ``handled``, ``idle``, ``done`` and ``stopped`` has slept a backoff delay."""
        try:
            return self._step()
        except RequestCancelled:
            return "stopped"
        except OSError as exc:  # the device's own disk: full, read-only, removed
            if self.stopping:
                return "stopped"
            return self._fail("local_error", f"local error: {exc}", exc_info=True)

    def _step(self) -> str:
        try:
            if len(self.state.outbox):
                report = self.state.outbox.deliver(self.client)
                if report.delivered or report.dropped or report.failed:
                    self._save_status()
                if report.failed:
                    names = ", ".join(report.failed)
                    return self._fail(
                        "refused",
                        f"the coordinator refused replies: {names} (moved to outbox/failed)",
                    )
            if self._done():
                return "done"
            polled = self.client.next_task()
        except RequestCancelled:
            return "stopped"
        except TransportError as exc:
            return self._unreachable(exc)
        except (RequestRejected, ProtocolError) as exc:
            return self._fail(
                "refused",
                str(exc),
                log=f"the coordinator refused or garbled a request ({exc}); retrying later",
            )
        self._last_poll = self._clock()
        if polled.task is None:
            self.backoff.reset()
            delay = self.backoff.retry_after_delay(polled.retry_after)
            self.next_delay = delay
            self._save_status()
            self._sleep(delay)
            return "idle"
        return self._work(polled.task)

    def _unreachable(self, exc: TransportError) -> str:
        if self.stopping:
            return "stopped"
        return self._fail(
            "unreachable",
            str(exc),
            retry_after=exc.retry_after,
            log=f"coordinator unavailable ({exc})",
            level=logging.WARNING,
        )

    def _fail(
        self,
        outcome: str,
        message: str,
        *,
        retry_after: float | None = None,
        log: str | None = None,
        level: int = logging.ERROR,
        exc_info: bool = False,
    ) -> str:
        """Record ``message``, back off (at least the server's clamped Retry-After), and
        return ``outcome``."""
        self._record_error(message)
        delay = self.backoff.failure_delay(retry_after)
        self.next_delay = delay
        logger.log(
            level,
            "%s; backing off %.2f s (failure %d)",
            log or message,
            delay,
            self.backoff.failures,
            exc_info=exc_info,
        )
        self._save_status()
        self._sleep(delay)
        return outcome

    def _work(self, task: Task) -> str:
        if task.task_id in self._answered:
            refusal = self._last_refusal or {}
            if refusal.get("task_id") == task.task_id:  # keep the reason in last_error
                return self._fail(
                    "policy_refused",
                    f"task {task.task_id}: refused by the device policy: "
                    f"{refusal.get('message')}; waiting for it to close",
                    level=logging.INFO,
                )
            return self._fail(
                "answered_before",
                f"task {task.task_id} was answered before; waiting for it to close",
                level=logging.WARNING,
            )
        try:
            self.config.policy.admit(task.kind, self.state.ledger.load(), now=self._clock())
        except PolicyRefusal as exc:
            return self._policy_refused(task, exc)
        if task.kind in SECAGG_STAGES:
            return self._secure_step(task)
        if task.kind == "train" and task.round_id is not None:
            forget_before(self.secrets, task.round_id)
        version = task.model_version
        if self._quarantined(version):
            rejected = self.rejected_models[version]
            return self._fail(
                "model_rejected",
                f"model {version} was rejected before ({rejected.get('reason')}); "
                f"not downloading it again until another version is announced",
            )
        logger.info("handling %s task %s (model %s)", task.kind, task.task_id, version)
        try:
            model = self.models.model(version)
        except TransportError as exc:
            if isinstance(exc, RequestCancelled):
                return "stopped"
            return self._unreachable(exc)
        except (BundleError, RequestRejected) as exc:
            self._remember_rejection(version, exc)
            kept = self.state.current_version
            return self._fail(
                "model_rejected",
                f"model {version} rejected: {exc}",
                log=f"model {version} rejected: {exc}; keeping model {kept}",
            )
        self.state.use_version(model.version)
        context = self._context_for(model)
        try:
            with self._interruptible_work():
                reply = handle(task, context)
        except PolicyRefusal as exc:
            return self._policy_refused(task, exc)
        except (DataError, FeatureError) as exc:
            return self._fail(
                "no_data",
                f"task {task.task_id}: {exc}",
                log=f"cannot do {task.kind} task {task.task_id} yet: {exc}",
            )
        except (FedgeError, ValueError, RuntimeError) as exc:  # the TFLite runtime's errors
            self._answered.append(task.task_id)
            return self._fail(
                "failed",
                f"task {task.task_id}: {exc}",
                log=f"{task.kind} task {task.task_id} failed: {exc}",
                exc_info=True,
            )
        queued: Reply | SecureReply = reply
        if is_secure(task) and isinstance(reply, ModelUpdate):
            try:
                queued = begin(task, reply, self.secrets)
            except SecAggError as exc:
                return self._secagg_refused(task, exc)
        self._queue(task, queued)
        try:
            with self._interruptible_work():
                personal_head(model, context)
        except FedgeError as exc:
            logger.warning("personalization on %s failed: %s", model.version, exc)
        self.backoff.reset()
        self._save_status()
        return "handled"

    def _queue(self, task: Task, reply: Reply | SecureReply) -> None:
        self.state.outbox.put(reply)  # never interrupted: the reply is queued whole
        self._answered.append(task.task_id)
        self.counts[task.kind] += 1
        self.handled += 1
        self._last_task = {"task_id": task.task_id, "kind": task.kind, "at": self._clock()}
        self._save_status()

    def _secure_step(self, task: Task) -> str:
        """A secure-aggregation stage: fetch its payload, compute the reply from the
        round's secrets, queue it. A refusal is recorded and the task never answered."""
        stage = SECAGG_STAGES[task.kind]
        logger.info("handling %s task %s", task.kind, task.task_id)
        try:
            if task.round_id is None:
                raise SecAggError(f"task {task.task_id} names no round")
            payload = self.client.secagg_payload(task.round_id, stage)
        except RequestCancelled:
            return "stopped"
        except TransportError as exc:
            return self._unreachable(exc)
        except (RequestRejected, ProtocolError) as exc:
            return self._fail(
                "refused", f"task {task.task_id}: the {stage} payload was refused: {exc}"
            )
        except SecAggError as exc:
            return self._secagg_refused(task, exc)
        try:
            reply = secure_step(task, payload, self.secrets, rng=self._rng)
        except SecAggError as exc:
            return self._secagg_refused(task, exc)
        self._queue(task, reply)
        if stage == "unmask":
            self.secrets.delete(reply.round_id)
        self.backoff.reset()
        self._save_status()
        return "handled"

    def _secagg_refused(self, task: Task, exc: SecAggError) -> str:
        """Never answer ``task``: record and log the refusal (ids and counts only: the
        protocol's messages name no secret), decline it, then back off."""
        return self._refuse(task, "secagg_refused", f"secure aggregation refused: {exc}")

    def _policy_refused(self, task: Task, exc: PolicyRefusal) -> str:
        """Never answer ``task``: the owner's policy refuses it (the reason goes to the
        status; the coordinator hears only the reason's word), then back off."""
        self._last_refusal = {
            "task_id": task.task_id,
            "kind": task.kind,
            "reason": exc.reason,
            "message": str(exc),
            "at": self._clock(),
        }
        return self._refuse(
            task,
            "policy_refused",
            f"refused by the device policy: {exc}",
            declined=f"refused by the device policy ({exc.reason})",
        )

    def _refuse(self, task: Task, outcome: str, why: str, *, declined: str | None = None) -> str:
        """Mark ``task`` answered, queue its decline (``declined``, else ``why``), record
        ``why`` and back off."""
        self._answered.append(task.task_id)
        self._decline(task, declined or why)
        return self._fail(outcome, f"task {task.task_id}: {why}", level=logging.WARNING)

    def _decline(self, task: Task, reason: str) -> None:
        """Queue the task's decline in the outbox, so the coordinator stops handing it out
        (and a round stops waiting for it)."""
        self.state.outbox.put(Decline(task.task_id, task.kind, reason))

    @contextlib.contextmanager
    def _interruptible_work(self) -> Iterator[None]:
        """On-device work that a stop signal may interrupt (it raises DaemonStopped)."""
        if self.stopping:
            raise DaemonStopped("stopping")
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _quarantined(self, version: str) -> bool:
        """Whether ``version`` was rejected recently and must not be downloaded again."""
        rejected = self.rejected_models.get(version)
        if rejected is None or self.state.bundles.has(version):
            return False
        at = rejected.get("at")
        age = self._clock() - at if isinstance(at, int | float) else 0.0
        return age < self.config.retry_rejected_after

    def _remember_rejection(self, version: str, exc: Exception) -> None:
        digest = exc.manifest_sha256 if isinstance(exc, ModelRejected) else None
        self.rejected_models.pop(version, None)
        self.rejected_models[version] = {
            "manifest_sha256": digest,
            "reason": str(exc)[:300],
            "at": self._clock(),
        }
        while len(self.rejected_models) > _REMEMBERED_REJECTIONS:
            del self.rejected_models[next(iter(self.rejected_models))]

    def _context_for(self, model: EdgeModel) -> ClientContext:
        context = self._context
        names = bundle_label_names(model.directory, model.manifest)
        if (
            context is None
            or context.data.schema.to_dict() != model.schema.to_dict()
            or getattr(context.data, "label_names", None) != names
        ):
            data = DirectoryData(
                self.config.data_dir,
                model.schema,
                holdout_fraction=self.config.holdout_fraction,
                seed=self.config.seed,
                settle_seconds=self.config.settle_seconds,
                label_names=names,
            )
            client_id = str(self.state.client().get("client_id", "local"))
            context = ClientContext(
                data=data,
                models=self.models,
                heads=self.state.heads,
                feedback=self.state.feedback,
                config=self.config.client,
                rng=np.random.default_rng(self.config.seed),
                client_id=client_id,
                policy=self.config.policy,
                ledger=self.state.ledger,
                clock=self._clock,
            )
            self._context = context
        return context

    # The loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Step until stopped (SIGTERM/SIGINT, :meth:`request_stop`, or ``max_tasks``
        delivered); returns 0, or raises KeyboardInterrupt after the clean stop when SIGINT
        stopped it. Signal handlers are installed only when run in the main thread."""
        restore = self._install_signal_handlers()
        if not self.config.policy.protected:
            logger.warning(
                'privacy policy "off": replies carry exact statistics and row-level '
                "features with their true labels, with no minimum rows and no epsilon "
                "budget; this baseline is unsafe outside tests"
            )
        logger.info(
            "fedge edge daemon started (pid %d, coordinator %s)",
            os.getpid(),
            self.config.coordinator,
        )
        try:
            self._save_status(state="running")
            while not self.stopping:
                outcome = self.step()
                if outcome == "done" and not len(self.state.outbox):
                    logger.info("handled %d tasks; stopping", self.handled)
                    break
        except DaemonStopped:
            logger.info("on-device work interrupted by the stop")
        finally:
            self._interruptible = False
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
            logger.info("received %s: stopping", signal.Signals(signum).name)
            self._stopped_by = signum
            self.request_stop()
            if self._interruptible:
                self._interruptible = False
                raise DaemonStopped(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _save_status(self, state: str | None = None) -> None:
        """Write ``status.json``; a disk that refuses is logged, never fatal here."""
        try:
            self._write_status(state)
        except OSError as exc:
            logger.warning("cannot write the status: %s", exc)

    def _write_status(self, state: str | None) -> None:
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
        now = self._clock()
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
                "rejected_models": self.rejected_models,
                "last_task": self._last_task,
                "last_poll_at": self._last_poll or document.get("last_poll_at"),
                "last_error": self.last_error,
                "backoff_failures": self.backoff.failures,
                "next_poll_in": self.next_delay,
                "updated_at": now,
            }
        )
        if data:
            document["data"] = data
        policy = self.config.policy
        try:
            section = self.state.ledger.load().summary(policy)
        except ConfigError as exc:
            section = {"privacy": policy.privacy, "ledger_error": str(exc)}
        document["policy"] = {**section, "last_refusal": self._last_refusal}
        if state is not None:
            document["state"] = state
            if state == "stopped":
                document["next_poll_in"] = None
                document["stopped_by"] = (
                    None if self._stopped_by is None else signal.Signals(self._stopped_by).name
                )
        self.state.save_status(document)


def _rejections(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rejected model versions remembered in a status document."""
    stored = status.get("rejected_models")
    if not isinstance(stored, dict):
        return {}
    return {str(k): dict(v) for k, v in stored.items() if isinstance(v, dict)}
