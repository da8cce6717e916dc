"""The wire between the simulation and its worker processes: what travels, and its frames.

A frame is a 4-byte big-endian header length, a UTF-8 JSON header (``{"kind": ...}``), an
8-byte big-endian payload length and the payload: numeric arrays as their raw bytes, an
update as its body. Never serialized Python objects. Malformed frames raise
:class:`FleetError`; a clean end of stream before a frame raises ``EOFError``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from edge_client.personalize import PersonalizationConfig
from fedge.data import Dataset, Partition
from fedge.errors import FedgeError
from simulations.errors import FleetError

__all__ = [
    "FleetData",
    "Job",
    "Outcome",
    "decode_frame",
    "encode_frame",
    "read_frame",
    "receive_message",
    "send_message",
    "write_frame",
]


@dataclass(frozen=True)
class Job:
    """One task for one client: the task document as a transport would carry it and, for
    a secure-aggregation stage task, the stage's payload document (what the device GETs)."""

    client_id: str
    task: Mapping[str, Any]
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """A client's encoded reply (``document`` and, for an update, ``body``), or ``error``.

    A secure-aggregation reply names its ``stage`` (advertise, share, mask, unmask): then
    ``document``/``body`` are what the device POSTs for that stage and ``metrics`` its
    training metrics (sent beside the masked input)."""

    client_id: str
    task_id: str
    document: dict[str, Any] | None
    body: bytes | None
    error: str | None
    seconds: float
    stage: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


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
    secrets_root: str | None = None
    """Where each client keeps its secure-aggregation secrets (one folder per client)."""

    @classmethod
    def build(
        cls,
        pool: Dataset,
        partition: Partition,
        bundles_root: str | Path,
        *,
        seed: int,
        personalization: PersonalizationConfig | None = None,
        secrets_root: str | Path | None = None,
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
            secrets_root=None if secrets_root is None else str(secrets_root),
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
            secrets_root=self.secrets_root,
        )


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


def write_frame(
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


def read_frame(stream: IO[bytes]) -> tuple[str, dict[str, Any], bytearray]:
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


def encode_frame(kind: str, value: Any) -> tuple[dict[str, Any], list[bytes]]:
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
            "secrets_root": data.secrets_root,
            "columns": columns,
            "labels": labels,
        }
        return header, chunks
    if kind == "job":
        job: Job = value
        return {"client_id": job.client_id, "task": job.task, "payload": job.payload}, []
    if kind == "done":
        outcome: Outcome = value
        header = {
            "client_id": outcome.client_id,
            "task_id": outcome.task_id,
            "document": outcome.document,
            "error": outcome.error,
            "seconds": outcome.seconds,
            "body": outcome.body is not None,
            "stage": outcome.stage,
            "metrics": outcome.metrics,
        }
        return header, [outcome.body] if outcome.body is not None else []
    if kind == "ready":
        return {"pid": int(value)}, []
    if kind == "failed":
        return {"traceback": str(value)}, []
    if kind == "stop":
        return {}, []
    raise FleetError(f"unknown message kind {kind!r}")


def decode_frame(kind: str, header: dict[str, Any], payload: bytearray) -> Any:
    """The value a frame carries (the inverse of :func:`encode_frame`)."""
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
                secrets_root=_optional_str(header["secrets_root"]),
            )
        if kind == "job":
            stage_payload = header["payload"]
            return Job(
                client_id=str(header["client_id"]),
                task=dict(header["task"]),
                payload=None if stage_payload is None else dict(stage_payload),
            )
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
                stage=_optional_str(header["stage"]),
                metrics={str(k): float(v) for k, v in dict(header["metrics"]).items()},
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


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def send_message(stream: IO[bytes], kind: str, value: Any = None) -> None:
    header, chunks = encode_frame(kind, value)
    write_frame(stream, kind, header, chunks)


def receive_message(stream: IO[bytes]) -> tuple[str, Any]:
    """The next message's kind and value; EOFError at a clean end, FleetError if malformed."""
    kind, header, payload = read_frame(stream)
    return kind, decode_frame(kind, header, payload)
