"""The simulated devices: the real edge client's ``handle`` over each client's own rows.

A :class:`ClientRunner` holds the clients of one worker: the raw rows they own (loaded once),
one :class:`~edge_client.ModelCache` that all of them share (so the TFLite interpreters are
loaded once per worker, whatever the number of clients or model versions) and, built on a
client's first task, its :class:`~edge_client.ClientContext` (local data, personal head,
generator). Tasks arrive as :meth:`fedge.messages.Task.to_dict` documents and replies leave
encoded by :func:`fedge.messages.encode_message`, exactly what a transport would carry.

:class:`ProcessFleet` runs one runner per worker process. Clients are owned by one worker
each, so a device's state lives in one place. Jobs stream: each worker has at most
``window`` jobs in flight and every outcome is handed to the caller as soon as it arrives,
so the caller can submit one update before the next is even computed.

Workers are fresh interpreters started with :mod:`subprocess` (like multiprocessing's
*spawn*, but without its resource-tracker helper process, so after :meth:`ProcessFleet.close`
this process has no children left). They talk over their stdin/stdout in explicit frames
(a JSON header, then raw bytes: numeric arrays as their bytes, an update as its body; see
:func:`_write_frame`), never as serialized Python objects; a worker's own stray output goes
to stderr. :class:`LocalFleet` runs the same runner in this process (``--workers 1``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_client import ClientConfig, ClientContext, MemoryData, ModelCache, handle
from edge_client.personalize import PersonalizationConfig
from fedge.data import Dataset, Partition
from fedge.errors import FedgeError
from fedge.messages import Task, encode_message
from fedge.schema import Schema

__all__ = [
    "ClientRunner",
    "Fleet",
    "FleetData",
    "FleetError",
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


class FleetError(FedgeError, RuntimeError):
    """A worker process failed to start, crashed, or broke the protocol."""


@dataclass(frozen=True)
class Job:
    """One task for one client: the task document as a transport would carry it."""

    client_id: str
    task: Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """A client's encoded reply (``document`` and, for an update, ``body``), or ``error``."""

    client_id: str
    task_id: str
    document: dict[str, Any] | None
    body: bytes | None
    error: str | None
    seconds: float


@dataclass(frozen=True, eq=False)
class FleetData:
    """What a worker loads once: the raw columns of its clients' rows, who owns which, where
    the bundles are. Plain arrays and JSON-able dicts, so it travels to a worker as one frame:
    JSON for the dicts and str/None columns, raw bytes for the numeric arrays."""

    name: str
    schema: dict[str, Any]
    columns: dict[str, npt.NDArray[Any]]
    labels: npt.NDArray[np.int64]
    partition: dict[str, Any]
    bundles_root: str
    seed: int
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)

    @classmethod
    def build(
        cls,
        pool: Dataset,
        partition: Partition,
        bundles_root: str | Path,
        *,
        seed: int,
        personalization: PersonalizationConfig | None = None,
    ) -> FleetData:
        return cls(
            name=pool.name,
            schema=pool.schema.to_dict(),
            columns={name: np.asarray(column) for name, column in pool.columns.items()},
            labels=np.asarray(pool.labels),
            partition=partition.to_dict(),
            bundles_root=str(bundles_root),
            seed=seed,
            personalization=personalization or PersonalizationConfig(),
        )

    def client_ids(self) -> list[str]:
        return list(self.partition["clients"])

    def only(self, client_ids: Sequence[str]) -> FleetData:
        """The rows of ``client_ids`` alone (one worker's share), partition re-indexed."""
        clients = {c: self.partition["clients"][c] for c in client_ids}
        parts = [np.asarray(s[k], np.int64) for s in clients.values() for k in ("train", "holdout")]
        rows = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

        def moved(indices: list[int]) -> list[int]:
            return [int(i) for i in np.searchsorted(rows, np.asarray(indices, np.int64))]

        partition = {
            **self.partition,
            "clients": {
                c: {"train": moved(s["train"]), "holdout": moved(s["holdout"])}
                for c, s in clients.items()
            },
            "unassigned": [],
        }
        return FleetData(
            name=self.name,
            schema=self.schema,
            columns={name: column[rows] for name, column in self.columns.items()},
            labels=self.labels[rows],
            partition=partition,
            bundles_root=self.bundles_root,
            seed=self.seed,
            personalization=self.personalization,
        )


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


_MAX_HEADER = 1 << 31
"""A frame's JSON header is at most this long (it carries a pool's str/None columns)."""
_MAX_PAYLOAD = 1 << 40
_CHUNK = 1 << 24
"""Bytes read at a time, so a bogus length fails at the stream's end, not in an allocation."""
_ALIGN = 16


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in a frame")


def _write_frame(
    stream: IO[bytes],
    kind: str,
    header: Mapping[str, Any],
    payload: bytes | bytearray | memoryview | Sequence[bytes] = b"",
) -> None:
    """One frame: 4-byte big-endian header length, the UTF-8 JSON header ``{"kind": kind,
    **header}``, 8-byte big-endian payload length, the payload (bytes or a list of chunks)."""
    if "kind" in header:
        raise FleetError("a frame header must not set 'kind' itself")
    try:
        text = json.dumps(
            {"kind": kind, **header},
            allow_nan=False,
            ensure_ascii=False,
            separators=(",", ":"),
            default=_json_default,
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FleetError(f"cannot encode a {kind!r} frame: {exc}") from exc
    chunks = [payload] if isinstance(payload, bytes | bytearray | memoryview) else list(payload)
    size = sum(memoryview(chunk).nbytes for chunk in chunks)
    if len(text) > _MAX_HEADER or size > _MAX_PAYLOAD:
        raise FleetError(f"a {kind!r} frame is too large ({len(text)} + {size} bytes)")
    stream.write(len(text).to_bytes(4, "big"))
    stream.write(text)
    stream.write(size.to_bytes(8, "big"))
    for chunk in chunks:
        stream.write(chunk)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int, what: str, start: bytes = b"") -> bytearray:
    buffer = bytearray(start)
    while len(buffer) < size:
        chunk = stream.read(min(size - len(buffer), _CHUNK))
        if not chunk:
            raise FleetError(f"truncated frame: {what} ends after {len(buffer)} of {size} bytes")
        buffer += chunk
    return buffer


def _read_frame(stream: IO[bytes]) -> tuple[str, dict[str, Any], bytearray]:
    """The next frame's kind, header (without ``kind``) and payload (a writable buffer).

    Raises EOFError where the stream ends cleanly before a frame, FleetError on a
    malformed one."""
    first = stream.read(4)
    if not first:
        raise EOFError("the frame stream ended")
    length = int.from_bytes(_read_exact(stream, 4, "the header length", first), "big")
    if not 0 < length <= _MAX_HEADER:
        raise FleetError(f"malformed frame: bad header length {length}")
    text = _read_exact(stream, length, "the header")
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise FleetError(f"malformed frame: the header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise FleetError("malformed frame: the header is not an object with a string 'kind'")
    size = int.from_bytes(_read_exact(stream, 8, "the payload length"), "big")
    if size > _MAX_PAYLOAD:
        raise FleetError(f"malformed frame: bad payload length {size}")
    payload = _read_exact(stream, size, "the payload")
    kind = header.pop("kind")
    return kind, header, payload


def _encode_array(
    array: npt.NDArray[Any], chunks: list[bytes], offset: int
) -> tuple[dict[str, Any], int]:
    """The header entry of ``array``; its raw bytes (if numeric) go to ``chunks``."""
    array = np.asarray(array)
    shape = list(array.shape)
    if array.dtype == object:
        values = array.ravel().tolist()
        bad = next((v for v in values if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise FleetError(
                f"an object column holds {type(bad).__name__} {bad!r}; expected str or None"
            )
        return {"dtype": "object", "shape": shape, "values": values}, offset
    if array.dtype.hasobject or array.dtype.fields is not None or array.dtype.kind == "V":
        raise FleetError(f"cannot send an array of dtype {array.dtype}")
    pad = -offset % _ALIGN
    if pad:
        chunks.append(bytes(pad))
        offset += pad
    data = np.ascontiguousarray(array).tobytes()
    chunks.append(data)
    entry = {"dtype": array.dtype.str, "shape": shape, "offset": offset, "nbytes": len(data)}
    return entry, offset + len(data)


def _decode_array(entry: Mapping[str, Any], payload: bytearray) -> npt.NDArray[Any]:
    shape = tuple(int(n) for n in entry["shape"])
    if entry["dtype"] == "object":
        values = entry["values"]
        if not isinstance(values, list) or any(
            v is not None and not isinstance(v, str) for v in values
        ):
            raise ValueError("an object column must be a list of str/None")
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = np.dtype(entry["dtype"])
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} cannot travel as raw bytes")
    offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
    count = int(np.prod(shape, dtype=np.int64))
    if offset < 0 or nbytes != count * dtype.itemsize or offset + nbytes > len(payload):
        raise ValueError(f"array bytes {offset}+{nbytes} do not fit shape {shape} and the payload")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    # The payload is a bytearray of this frame alone, so the array is writable, no copy.
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)


def _encode_message(kind: str, value: Any) -> tuple[dict[str, Any], list[bytes]]:
    """A message's frame header and payload chunks."""
    if kind == "init":
        data: FleetData = value
        chunks: list[bytes] = []
        offset = 0
        columns = []
        for name, column in data.columns.items():
            entry, offset = _encode_array(column, chunks, offset)
            columns.append({"name": name, **entry})
        labels, offset = _encode_array(data.labels, chunks, offset)
        header = {
            "name": data.name,
            "schema": data.schema,
            "partition": data.partition,
            "bundles_root": data.bundles_root,
            "seed": data.seed,
            "personalization": dataclasses.asdict(data.personalization),
            "columns": columns,
            "labels": labels,
        }
        return header, chunks
    if kind == "job":
        job: Job = value
        return {"client_id": job.client_id, "task": job.task}, []
    if kind == "done":
        outcome: Outcome = value
        header = {
            "client_id": outcome.client_id,
            "task_id": outcome.task_id,
            "document": outcome.document,
            "error": outcome.error,
            "seconds": outcome.seconds,
            "body": outcome.body is not None,
        }
        return header, [outcome.body] if outcome.body is not None else []
    if kind == "ready":
        return {"pid": int(value)}, []
    if kind == "failed":
        return {"traceback": str(value)}, []
    if kind == "stop":
        return {}, []
    raise FleetError(f"unknown message kind {kind!r}")


def _decode_message(kind: str, header: dict[str, Any], payload: bytearray) -> Any:
    """The value a frame carries (the inverse of :func:`_encode_message`)."""
    try:
        if kind == "init":
            return FleetData(
                name=str(header["name"]),
                schema=dict(header["schema"]),
                columns={
                    str(entry["name"]): _decode_array(entry, payload) for entry in header["columns"]
                },
                labels=_decode_array(header["labels"], payload),
                partition=dict(header["partition"]),
                bundles_root=str(header["bundles_root"]),
                seed=int(header["seed"]),
                personalization=PersonalizationConfig(**header["personalization"]),
            )
        if kind == "job":
            return Job(client_id=str(header["client_id"]), task=dict(header["task"]))
        if kind == "done":
            document = header["document"]
            error = header["error"]
            return Outcome(
                client_id=str(header["client_id"]),
                task_id=str(header["task_id"]),
                document=None if document is None else dict(document),
                body=bytes(payload) if header["body"] else None,
                error=None if error is None else str(error),
                seconds=float(header["seconds"]),
            )
        if kind == "ready":
            return int(header["pid"])
        if kind == "failed":
            return str(header["traceback"])
        if kind == "stop":
            return None
    except (KeyError, TypeError, ValueError, FedgeError) as exc:
        raise FleetError(f"malformed {kind!r} frame: {type(exc).__name__}: {exc}") from None
    raise FleetError(f"malformed frame: unknown kind {kind!r}")


def _write(stream: IO[bytes], kind: str, value: Any = None) -> None:
    header, chunks = _encode_message(kind, value)
    _write_frame(stream, kind, header, chunks)


def _read(stream: IO[bytes]) -> tuple[str, Any]:
    """The next message's kind and value; EOFError at a clean end, FleetError if malformed."""
    kind, header, payload = _read_frame(stream)
    return kind, _decode_message(kind, header, payload)


def serve() -> None:
    """A worker process's main loop: ``init`` once, then ``job`` messages until ``stop``."""
    import signal

    # The parent stops its workers itself; a Ctrl-C in the terminal must not kill them first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray output must not hit the channel
    inbox = sys.stdin.buffer
    logging.basicConfig(level=logging.WARNING, format="fedge-sim worker: %(message)s")
    try:
        kind, data = _read(inbox)
        if kind != "init":
            raise FleetError(f"expected init, got {kind!r}")
        runner = ClientRunner(data, num_threads=1)
    except Exception:
        _write(channel, "failed", traceback.format_exc())
        return
    _write(channel, "ready", os.getpid())
    while True:
        try:
            kind, job = _read(inbox)
        except EOFError:
            return  # the parent went away
        except Exception:
            _write(channel, "failed", traceback.format_exc())
            return
        if kind == "stop":
            return
        try:
            if kind != "job":
                raise FleetError(f"expected job or stop, got {kind!r}")
            # Encoded before anything is written, so a failure cannot leave half a frame.
            header, chunks = _encode_message("done", runner.run(job))
        except Exception:
            _write(channel, "failed", traceback.format_exc())
            return
        _write_frame(channel, "done", header, chunks)


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
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", "from simulations.fleet import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
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
                kind, value = _read(stream)
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
            _write(self._stdin, kind, value)
        except (BrokenPipeError, OSError) as exc:
            raise FleetError(
                f"worker {self.index} is gone (exit code {self.process.poll()})"
            ) from exc

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            _write(self._stdin, "stop")
        with contextlib.suppress(OSError):
            self._stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("worker %d did not stop; killing it", self.index)
            self.process.kill()
            self.process.wait(timeout=timeout)
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


def open_fleet(data: FleetData, *, workers: int) -> LocalFleet | ProcessFleet:
    """``workers`` worker processes (no more than there are clients), or this process
    alone for ``workers == 1``."""
    workers = min(workers, len(data.client_ids()))
    if workers <= 1:
        return LocalFleet(data)
    return ProcessFleet(data, workers=workers)
