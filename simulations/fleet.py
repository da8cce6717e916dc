"""The simulated devices: the real edge client's ``handle`` over each client's own rows.

A :class:`ClientRunner` holds the clients of one worker: the raw rows they own (loaded once),
one :class:`~edge_client.ModelCache` that all of them share (so the TFLite interpreters are
loaded once per worker, whatever the number of clients or model versions) and, built on a
client's first task, its :class:`~edge_client.ClientContext` (local data, personal head,
generator). Tasks arrive as :meth:`fedge.messages.Task.to_dict` documents and replies leave
encoded by :func:`fedge.messages.encode_message`, exactly what a transport would carry.
A secure round's tasks run :mod:`edge_client.secure` instead: after training ``begin``,
then ``step`` with the stage payload the job carries, over the client's own
:class:`~edge_client.FileSecretStore` (a folder per client under the fleet's
``secrets_root``); the outcome is the reply the device would POST for that stage.

:class:`ProcessFleet` runs one runner per worker process. Clients are owned by one worker
each, so a device's state lives in one place. Jobs stream: each worker has at most
``window`` jobs in flight and every outcome is handed to the caller as soon as it arrives,
so the caller can submit one update before the next is even computed.

Workers are fresh interpreters started with :func:`fedge.processes.start` (like
multiprocessing's *spawn*, but without its resource-tracker helper process, so after
:meth:`ProcessFleet.close` this process has no children left). They talk over their
stdin/stdout in explicit frames (a JSON header, then raw bytes: numeric arrays as their
bytes, an update as its body; see :func:`write_frame`), never as serialized Python objects;
a worker's own stray output goes to stderr. :class:`LocalFleet` runs the same runner in this
process (``--workers 1``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from edge_client import ClientConfig, ClientContext, MemoryData, ModelCache, handle, secure
from fedge import processes
from fedge.cli import configure_logging
from fedge.data import Dataset, Partition
from fedge.messages import ModelUpdate, Task, encode_message
from fedge.schema import Schema
from simulations.errors import FleetError
from simulations.fleet_wire import (
    FleetData,
    Job,
    Outcome,
    encode_frame,
    receive_message,
    send_message,
    write_frame,
)

__all__ = [
    "ClientRunner",
    "Fleet",
    "FleetData",
    "Job",
    "LocalFleet",
    "Outcome",
    "ProcessFleet",
    "open_fleet",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 4
"""Jobs in flight per worker: enough to keep it busy, few enough to bound memory."""
_START_TIMEOUT = 120.0
_STOP_TIMEOUT = 10.0
_POLL = 1.0


def _client_seed(seed: int, client_id: str) -> list[int]:
    key = int.from_bytes(hashlib.sha256(client_id.encode("utf-8")).digest()[:8], "little")
    return [seed, key]


class ClientRunner:
    """The clients of one worker, each a real edge client over its own rows."""

    def __init__(self, data: FleetData, *, num_threads: int | None = None) -> None:
        schema = Schema.from_dict(data.schema)
        self._pool = Dataset(
            name=data.name, schema=schema, columns=data.columns, labels=data.labels
        )
        self._partition = Partition.from_dict(data.partition)
        self._root = Path(data.bundles_root)
        self._seed = data.seed
        self._config = ClientConfig(personalization=data.personalization)
        # Every client shares this cache: one set of interpreters per worker.
        self._models = ModelCache(self._locate, max_versions=2, num_threads=num_threads)
        self._contexts: dict[str, ClientContext] = {}
        self._secrets = None if data.secrets_root is None else Path(data.secrets_root)

    def _locate(self, version: str) -> Path:
        return self._root / version

    def context(self, client_id: str) -> ClientContext:
        """The client's context, built on its first task."""
        context = self._contexts.get(client_id)
        if context is None:
            if client_id not in self._partition:
                raise FleetError(f"this worker holds no client {client_id!r}")
            split = self._partition[client_id]
            context = ClientContext(
                data=MemoryData(self._pool.take(split.train), self._pool.take(split.holdout)),
                models=self._models,
                config=self._config,
                rng=np.random.default_rng(_client_seed(self._seed, client_id)),
                client_id=client_id,
            )
            self._contexts[client_id] = context
        return context

    def run(self, job: Job) -> Outcome:
        """``handle`` the job's task on its client; a client-side failure becomes ``error``."""
        started = time.perf_counter()
        task_id = str(job.task.get("task_id", "?"))
        try:
            task = Task.from_dict(job.task)
            if secure.is_secure(task) or task.kind in secure.SECAGG_STAGES:
                return self._run_secure(job, task, started)
            reply = handle(task, self.context(job.client_id))
            document, body = encode_message(reply)
        except FleetError:
            raise
        except Exception as exc:  # a device fails its task; the fleet carries on
            logger.debug("client %s failed task %s", job.client_id, task_id, exc_info=True)
            return Outcome(
                job.client_id, task_id, None, None, f"{type(exc).__name__}: {exc}",
                time.perf_counter() - started,
            )  # fmt: skip
        return Outcome(job.client_id, task_id, document, body, None, time.perf_counter() - started)

    def _run_secure(self, job: Job, task: Task, started: float) -> Outcome:
        """A secure round's task: train then advertise keys, or one later stage."""
        store = self._secret_store(job.client_id)
        if task.kind == "train":
            update = handle(task, self.context(job.client_id))
            if not isinstance(update, ModelUpdate):
                raise TypeError(f"a train task answered with {type(update).__name__}")
            reply = secure.begin(task, update, store)
        else:
            if job.payload is None:
                raise FleetError(f"the {task.kind} task {task.task_id} came without its payload")
            # Seeded per client and round: a rerun rounds the update the same way.
            rng = np.random.default_rng(
                [*_client_seed(self._seed, job.client_id), task.round_id or 0]
            )
            reply = secure.step(task, job.payload, store, rng=rng)
        return Outcome(
            job.client_id,
            task.task_id,
            None if reply.document is None else dict(reply.document),
            reply.body,
            None,
            time.perf_counter() - started,
            stage=reply.stage,
            metrics=dict(reply.metrics),
        )

    def _secret_store(self, client_id: str) -> secure.FileSecretStore:
        if self._secrets is None:
            raise FleetError("a secure-aggregation task, but the fleet has no secrets folder")
        return secure.FileSecretStore(self._secrets / _folder_name(client_id))


def _folder_name(client_id: str) -> str:
    """A file-system-safe folder name for ``client_id`` (any string)."""
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:32]


class Fleet(Protocol):
    """Runs jobs on the simulated clients and yields each outcome as soon as it exists."""

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class LocalFleet:
    """Every client in this process, one job after the other."""

    def __init__(self, data: FleetData) -> None:
        self._runner = ClientRunner(data)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield self._runner.run(job)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Worker processes ----------------------------------------------------------------------------


def serve() -> None:
    """A worker process's main loop: ``init`` once, then ``job`` messages until ``stop``."""
    import signal

    # The parent stops its workers itself; a Ctrl-C in the terminal must not kill them first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output must not hit the channel
    inbox = sys.stdin.buffer
    configure_logging(quiet=True, fmt="fedge-sim worker: %(message)s")
    try:
        kind, data = receive_message(inbox)
        if kind != "init":
            raise FleetError(f"expected init, got {kind!r}")
        runner = ClientRunner(data, num_threads=1)
    except Exception:
        send_message(channel, "failed", traceback.format_exc())
        return
    send_message(channel, "ready", os.getpid())
    while True:
        try:
            kind, job = receive_message(inbox)
        except EOFError:
            return  # the parent went away
        except Exception:
            send_message(channel, "failed", traceback.format_exc())
            return
        if kind == "stop":
            return
        try:
            if kind != "job":
                raise FleetError(f"expected job or stop, got {kind!r}")
            # Encoded before anything is written, so a failure cannot leave half a frame.
            header, chunks = encode_frame("done", runner.run(job))
        except Exception:
            send_message(channel, "failed", traceback.format_exc())
            return
        write_frame(channel, "done", header, chunks)


class _Worker:
    """One worker process, the thread that reads its frames, and its stdin."""

    def __init__(self, index: int, events: queue.Queue[tuple[Any, ...]]) -> None:
        self.index = index
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        # -P: the working directory stays off sys.path (a stray module there cannot shadow).
        # No parent-death signal: the worker sees its stdin end when this process dies, and a
        # preexec hook is unsafe here (TensorFlow's threads are running).
        self.child = processes.start(
            [sys.executable, "-P", "-c", "from simulations.fleet import serve; serve()"],
            name=f"simulation worker {index}",
            env=env,
            pipes=True,
            die_with_parent=False,
        )
        self.process = self.child.popen
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._stdin = self.process.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout, events), daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes], events: queue.Queue[tuple[Any, ...]]) -> None:
        while True:
            try:
                kind, value = receive_message(stream)
            except FleetError as exc:
                logger.warning("worker %d broke the protocol: %s", self.index, exc)
                events.put(("exit", self.index, None))
                return
            except (EOFError, OSError):
                events.put(("exit", self.index, None))
                return
            events.put((kind, self.index, value))

    def send(self, kind: str, value: Any = None) -> None:
        try:
            send_message(self._stdin, kind, value)
        except (BrokenPipeError, OSError) as exc:
            raise FleetError(
                f"worker {self.index} is gone (exit code {self.process.poll()})"
            ) from exc

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            send_message(self._stdin, "stop")
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("worker %d did not stop; stopping it", self.index)
        processes.stop([self.child], timeout=timeout)
        self._reader.join(timeout=timeout)
        if self.process.stdout is not None:
            with contextlib.suppress(OSError):
                self.process.stdout.close()


class ProcessFleet:
    """``workers`` processes, each owning every ``workers``-th client (partition order)."""

    def __init__(self, data: FleetData, *, workers: int, window: int = DEFAULT_WINDOW) -> None:
        if workers < 1 or window < 1:
            raise FleetError(f"workers and window must be >= 1, got {workers} and {window}")
        ids = data.client_ids()
        self._owner = {client_id: i % workers for i, client_id in enumerate(ids)}
        self._window = window
        self._in_flight = [0] * workers
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._workers: list[_Worker] = []
        try:
            # Start every interpreter first: they import in parallel while each gets its data.
            self._workers = [_Worker(index, self._events) for index in range(workers)]
            for worker in self._workers:
                owned = [c for c in ids if self._owner[c] == worker.index]
                worker.send("init", data.only(owned))
            self._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    @property
    def in_flight(self) -> int:
        """Jobs sent to a worker whose outcome has not been yielded yet."""
        return sum(self._in_flight)

    def _await_ready(self) -> None:
        waiting = set(range(len(self._workers)))
        deadline = time.monotonic() + _START_TIMEOUT
        while waiting:
            kind, index, payload = self._next_event(deadline)
            if kind != "ready":
                raise FleetError(f"worker {index} failed to start:\n{payload or kind}")
            waiting.discard(index)
        logger.info("%d simulation workers ready: pids %s", len(self._workers), self.pids)

    def _next_event(self, deadline: float | None = None) -> tuple[Any, ...]:
        while True:
            try:
                return self._events.get(timeout=_POLL)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    raise FleetError("the simulation workers did not start in time") from None
                dead = [w for w in self._workers if w.process.poll() is not None]
                if dead and self._events.empty():
                    worker = dead[0]
                    raise FleetError(
                        f"worker {worker.index} died (exit code {worker.process.returncode})"
                    ) from None

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Yield every job's outcome, in completion order, as each arrives."""
        pending: list[collections.deque[Job]] = [collections.deque() for _ in self._workers]
        for job in jobs:
            if job.client_id not in self._owner:
                raise FleetError(f"no simulated client {job.client_id!r}")
            pending[self._owner[job.client_id]].append(job)
        in_flight = self._in_flight

        def refill(index: int) -> None:
            while in_flight[index] < self._window and pending[index]:
                self._workers[index].send("job", pending[index].popleft())
                in_flight[index] += 1

        for index in range(len(self._workers)):
            refill(index)
        remaining = len(jobs)
        try:
            while remaining:
                index, outcome = self._outcome()
                in_flight[index] -= 1
                remaining -= 1
                refill(index)
                yield outcome
        finally:
            # A caller that stops early leaves jobs in flight: collect (and drop) their
            # outcomes so the next run does not receive them.
            for queued in pending:
                queued.clear()
            while sum(in_flight) and self._workers:
                index, _ = self._outcome()
                in_flight[index] -= 1

    def _outcome(self) -> tuple[int, Outcome]:
        kind, index, payload = self._next_event()
        if kind != "done":
            detail = payload if kind == "failed" else "its output ended"
            raise FleetError(f"worker {index} crashed: {detail}")
        return index, payload

    def close(self) -> None:
        """Stop every worker (and kill any that does not stop); idempotent."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(_STOP_TIMEOUT)

    def __enter__(self) -> ProcessFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_fleet(data: FleetData, *, workers: int) -> Fleet:
    """``workers`` worker processes (no more than there are clients), or this process
    alone for ``workers == 1``; the engine sees only the :class:`Fleet` interface."""
    workers = min(workers, len(data.client_ids()))
    if workers <= 1:
        return LocalFleet(data)
    return ProcessFleet(data, workers=workers)
