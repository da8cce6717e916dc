"""The coordinator's gRPC device API (service ``fedge.v1.Fleet``, ``fedge/protocol/
fleet.proto``) for one device: the same methods and answers as the REST
:class:`~edge_client.transport.CoordinatorClient`, so the daemon, the outbox, the bundle
store and the key pinning work unchanged over either.

- URLs: ``grpc://host:port`` (plaintext) and ``grpcs://host[:port]`` (TLS, port 443 by
  default; the CA of :class:`~edge_client.tls.ClientTls`, else gRPC's default roots, and
  the device's certificate for mutual TLS).
- A model file arrives as a header message and chunks (:meth:`download` assembles them and
  answers with an :class:`~edge_client.transport.HttpResponse` carrying the REST headers the
  bundle store reads: ``x-fedge-sha256``, ``x-fedge-signature``, ``x-fedge-model-version``,
  ``etag``); an update goes up as a header and chunks of ``chunk_bytes``.
- :meth:`send` takes the outbox's REST-shaped :class:`~edge_client.transport.
  OutgoingRequest` and makes the matching call (updates -> UploadUpdate, reports ->
  SubmitReport, secure aggregation -> SubmitSecAgg, declines -> DeclineTask): the outbox
  records stay as they are, whichever transport delivers them.
- Every call has a deadline of ``timeout`` seconds; :meth:`cancel` aborts the calls in
  flight and refuses later ones (the daemon's stop).

Errors are mapped back in one place (:func:`rpc_error`): UNAVAILABLE, DEADLINE_EXCEEDED,
INTERNAL, CANCELLED, an unknown failure, and any refusal whose ``fedge-status`` is 429 or
5xx are :class:`~edge_client.errors.TransportError` (``retry_after`` from the
``retry-after`` metadata); any other refusal is :class:`~edge_client.errors.RequestRejected`
with the REST status (``fedge-status``) and code (``fedge-error``), so the daemon's 401,
409 and 410 logic holds over gRPC too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypeVar
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf.message import Message

from edge_client.backoff import RETRY_AFTER_MAX, RETRY_AFTER_MIN
from edge_client.compress import CODEC_HEADER
from edge_client.errors import RequestCancelled, RequestRejected, TransportError
from edge_client.tls import ClientTls
from edge_client.transport import (
    DEFAULT_TIMEOUT,
    MAX_RESPONSE_BYTES,
    HttpResponse,
    NextTask,
    OutgoingRequest,
    Registration,
    parse_retry_after,
    rotated_token,
)
from fedge.errors import ProtocolError
from fedge.messages import Task
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto

__all__ = [
    "UPLOAD_CHUNK_BYTES",
    "GrpcCoordinatorClient",
    "Interceptor",
    "grpc_target",
    "rpc_error",
]

logger = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1 << 20
"""The size of an update's chunks (the coordinator's default chunk size)."""

_SERVICE = "/fedge.v1.Fleet/"
_TICK = 0.05  # how often a waiting call looks at cancel()
_DEFAULT_PORTS = {"grpcs": 443}
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
# The REST status of a refusal that carries no ``fedge-status`` (one the gRPC runtime made,
# such as a message over the size limit).
_STATUS_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
# Client keepalive pings stay well above the coordinator's minimum ping interval (10 s by
# default): a client that pings more often is told to go away.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 32 << 20),
    ("grpc.max_send_message_length", 32 << 20),
)

_UPDATES = re.compile(r"/v1/rounds/(\d{1,18})/updates")
_SECAGG = re.compile(r"/v1/rounds/(\d{1,18})/secagg/(advertise|share|mask|unmask)")
_DECLINE = re.compile(r"/v1/tasks/([^/]+)/decline")
_REPORTS: dict[str, tuple[str, type[Message]]] = {
    "/v1/stats": ("stats", pb.StatsReport),
    "/v1/evaluations": ("evaluation", pb.EvalReport),
    "/v1/features": ("features", pb.FeatureBatch),
}
_SECAGG_MESSAGES: dict[str, type[Message]] = {
    "advertise": pb.SecAggAdvertiseKeys,
    "share": pb.SecAggShareKeys,
    "unmask": pb.SecAggUnmaskResponse,
}

Interceptor: TypeAlias = (
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
_T = TypeVar("_T")


def grpc_target(url: str) -> tuple[str, bool]:
    """``(host:port, secure)`` of a ``grpc://host:port`` or ``grpcs://host[:port]`` URL;
    anything else is a ProtocolError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ProtocolError(f"not a grpc(s) URL: {url!r} ({exc})") from exc
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
        raise ProtocolError(f"not a grpc(s) URL: {url!r} (expected grpc://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ProtocolError(f"a grpc(s) URL names a host and a port only, got {url!r}")
    port = port if port is not None else _DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise ProtocolError(f"a grpc:// URL needs a port, got {url!r}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}", parts.scheme == "grpcs"


def _credentials(tls: ClientTls | None) -> Any:
    if tls is None:
        return grpc.ssl_channel_credentials()
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _trailers(error: grpc.RpcError) -> dict[str, str]:
    trailing: Callable[[], Any] | None = getattr(error, "trailing_metadata", None)
    items = (trailing() if trailing is not None else None) or ()
    out: dict[str, str] = {}
    for key, value in items:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[str(key).lower()] = str(value)
    return out


def rpc_error(method: str, error: grpc.RpcError) -> TransportError | RequestRejected:
    """The edge client's error for a failed call of ``method`` (see the module docstring)."""
    code_of: Callable[[], Any] | None = getattr(error, "code", None)
    details_of: Callable[[], Any] | None = getattr(error, "details", None)
    code = code_of() if code_of is not None else None
    details = str((details_of() if details_of is not None else None) or "")
    trailers = _trailers(error)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    fedge_code = trailers.get("fedge-error") or f"grpc_{name.lower()}"
    status_text = trailers.get("fedge-status", "")
    status = int(status_text) if status_text.isdigit() else _STATUS_OF_CODE.get(code)
    retry_after = parse_retry_after(trailers.get("retry-after"))
    if code in _TRANSIENT or status is None or status >= 500 or status == 429:
        shown = f"{status} {fedge_code}" if status_text.isdigit() else name
        return TransportError(f"{method}: {shown}: {details}".strip(), retry_after=retry_after)
    return RequestRejected(
        f"{method}: {status} {fedge_code}: {details}", status=status, code=fedge_code
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return document


def _metrics(headers: Mapping[str, str]) -> dict[str, float]:
    raw = _header(headers, "X-Fedge-Metrics")
    if not raw:
        return {}
    metrics = _json_object(raw, "X-Fedge-Metrics")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(f"metric {key!r} is not a number", field="metrics")
        out[key] = float(value)
    return out


class GrpcCoordinatorClient:
    """The coordinator's gRPC device API for one device. ``token`` is its client token;
    with ``token_file`` a call refused UNAUTHENTICATED (REST 401) reads that file (then
    its ``.pending`` companion) and, when either holds another token, repeats the call
    once with it, as :class:`~edge_client.transport.CoordinatorClient` does.
    ``interceptors`` wrap the channel (tests record every message a device sends)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        default_retry_after: float = 10.0,
        token_file: Path | None = None,
        tls: ClientTls | None = None,
        interceptors: Sequence[Interceptor] = (),
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = url.rstrip("/")
        target, secure = grpc_target(self.base_url)
        self.token = token
        self.timeout = timeout
        self.default_retry_after = default_retry_after
        self.token_file = token_file
        self._chunk = int(chunk_bytes)
        self._max = int(max_response_bytes)
        if self._chunk < 1:
            raise ProtocolError(f"chunk_bytes must be positive, got {chunk_bytes}")
        if secure:
            self._channel = grpc.secure_channel(target, _credentials(tls), _CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, _CHANNEL_OPTIONS)
        channel = (
            grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        )
        self._cancelled = threading.Event()
        self._lock = threading.RLock()  # cancel() may run in a signal handler of this thread
        self._active: set[Any] = set()

        def unary(name: str, reply: type[Message]) -> Any:
            return channel.unary_unary(
                _SERVICE + name,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString,
            )

        self._register = unary("Register", pb.Registration)
        self._rotate = unary("RotateToken", pb.TokenRotation)
        self._keys = unary("GetSigningKeys", pb.SigningKeys)
        self._next = unary("NextTask", pb.NextTaskResponse)
        self._decline = unary("DeclineTask", pb.DeclineResponse)
        self._report = unary("SubmitReport", pb.ReportReceipt)
        self._payload = unary("GetSecAggPayload", pb.SecAggPayload)
        self._secagg = unary("SubmitSecAgg", pb.SecAggReceipt)
        self._download = channel.unary_stream(
            _SERVICE + "DownloadFile",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.FileChunk.FromString,
        )
        self._upload = channel.stream_unary(
            _SERVICE + "UploadUpdate",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.UpdateReceipt.FromString,
        )

    # Calls --------------------------------------------------------------------------------

    def _metadata(self, token: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _invoke(
        self,
        method: str,
        call: Callable[[tuple[tuple[str, str], ...]], _T],
        *,
        token: str | None = None,
    ) -> _T:
        """Run ``call(metadata)``; a 401 with another token in ``token_file`` runs it once
        more. ``token`` replaces the client token (registration's enrollment token)."""
        try:
            return self._attempt(method, call, token)
        except RequestRejected as exc:
            if token is None and exc.status == 401 and self._reload_token():
                return self._attempt(method, call, None)
            raise

    def _attempt(
        self,
        method: str,
        call: Callable[[tuple[tuple[str, str], ...]], _T],
        token: str | None,
    ) -> _T:
        if self._cancelled.is_set():
            raise RequestCancelled(f"{method}: cancelled, the daemon is stopping")
        try:
            return call(self._metadata(token if token is not None else self.token))
        except grpc.FutureCancelledError as exc:
            raise RequestCancelled(f"{method}: cancelled, the daemon is stopping") from exc
        except grpc.RpcError as exc:
            if self._cancelled.is_set():
                raise RequestCancelled(f"{method}: cancelled, the daemon is stopping") from exc
            raise rpc_error(method, exc) from exc

    def _unary(self, method: str, stub: Any, request: Message, token: str | None = None) -> Any:
        return self._invoke(method, self._unary_call(stub, request), token=token)

    def _wait(self, future: Any) -> Any:
        """The answer of a call in flight, watching :meth:`cancel` meanwhile."""
        with self._lock:
            self._active.add(future)
        try:
            while True:
                if self._cancelled.is_set():
                    future.cancel()
                try:
                    return future.result(timeout=_TICK)
                except grpc.FutureTimeoutError:
                    continue
        finally:
            with self._lock:
                self._active.discard(future)

    def _reload_token(self) -> bool:
        if self.token_file is None:
            return False
        found = rotated_token(self.token_file, self.token)
        if found is None:
            return False
        self.token = found
        return True

    # The device API -----------------------------------------------------------------------

    def register(
        self,
        *,
        region: str | None = None,
        metadata: Mapping[str, str] | None = None,
        enrollment_token: str | None = None,
        registration_key: str | None = None,
    ) -> Registration:
        """Register; with ``registration_key`` (persisted before the first attempt) a retry
        gets the same client and token back."""
        request = pb.RegisterRequest(
            region=region,
            metadata=dict(metadata or {}),
            registration_key=registration_key or "",
        )
        answer = self._unary("Register", self._register, request, token=enrollment_token or "")
        document = to_document(answer)
        key = document.get("signing_key")
        return Registration(
            str(document.get("client_id", "")),
            str(document.get("token", "")),
            key if isinstance(key, dict) and key else None,
        )

    def rotate_token(self, proposed: str) -> str:
        """Switch this device to the token ``proposed``: the coordinator's token for it from
        now on (its old one stops working at once)."""
        answer = self._unary("RotateToken", self._rotate, pb.RotateTokenRequest(token=proposed))
        if answer.token != proposed:
            raise ProtocolError("unexpected token rotation answer")
        self.token = proposed
        return proposed

    def next_task(self) -> NextTask:
        answer = self._unary("NextTask", self._next, pb.NextTaskRequest())
        if answer.HasField("task"):
            return NextTask(Task.from_dict(to_document(answer.task)))
        wait = answer.retry_after
        if not wait > 0:  # none said (or NaN): the client's default
            return NextTask(None, self.default_retry_after)
        return NextTask(None, min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, wait)))

    def download(self, version: str, name: str) -> HttpResponse:
        """A bundle file of model ``version`` (``manifest.json`` included), assembled from
        its chunks, with the headers a REST download carries."""
        request = pb.DownloadRequest(version=version, name=name)
        where = f"DownloadFile {version}/{name}"

        def call(metadata: tuple[tuple[str, str], ...]) -> HttpResponse:
            stream = self._download(request, timeout=self.timeout, metadata=metadata)
            with self._lock:
                self._active.add(stream)
            try:
                if self._cancelled.is_set():
                    stream.cancel()
                return self._assemble(where, stream)
            finally:
                stream.cancel()  # ends a stream left early (nothing for one that finished)
                with self._lock:
                    self._active.discard(stream)

        return self._invoke("DownloadFile", call)

    def _assemble(self, where: str, stream: Iterator[Any]) -> HttpResponse:
        header: Any = None
        parts: list[bytes] = []
        size = 0
        for message in stream:
            part = message.WhichOneof("part")
            if header is None:
                if part != "header":
                    raise TransportError(f"{where}: the stream did not start with a header")
                header = message.header
                if header.size > self._max:
                    raise TransportError(f"{where}: the file is over {self._max} bytes")
                continue
            if part != "chunk" or message.chunk.offset != size:
                raise TransportError(f"{where}: a chunk out of order (expected offset {size})")
            size += len(message.chunk.data)
            if size > header.size:
                raise TransportError(f"{where}: more than the {header.size} bytes announced")
            parts.append(message.chunk.data)
        if header is None:
            raise TransportError(f"{where}: the stream ended without a header")
        headers = {
            "x-fedge-sha256": header.sha256,
            "x-fedge-model-version": header.model_version,
            "etag": f'"{header.sha256}"',
        }
        if header.signature:
            headers["x-fedge-signature"] = header.signature
        if header.not_modified:
            return HttpResponse(304, headers, b"")
        if size != header.size:
            raise TransportError(f"{where}: the file ended after {size} of {header.size} bytes")
        headers["content-length"] = str(size)
        return HttpResponse(200, headers, b"".join(parts))

    def signing_keys(self) -> dict[str, Any]:
        """The coordinator's manifest signing key and rotation statements (REST
        ``GET /v1/keys``'s document)."""
        return to_document(self._unary("GetSigningKeys", self._keys, pb.SigningKeysRequest()))

    def secagg_payload(self, round_id: int, stage: str) -> dict[str, Any]:
        """The secure-aggregation payload of ``stage`` (share, mask or unmask) of round
        ``round_id`` for this device, as the REST document (a stage not open yet is a
        RequestRejected 409 ``secagg_stage``)."""
        if stage not in ("share", "mask", "unmask"):
            raise ProtocolError(f"no secure-aggregation payload for stage {stage!r}")
        request = pb.SecAggPayloadRequest(round_id=int(round_id), stage=stage)
        answer = self._unary("GetSecAggPayload", self._payload, request)
        which = answer.WhichOneof("payload")
        if which is None:
            raise ProtocolError(f"the {stage} payload is empty")
        return to_document(getattr(answer, which))

    def send(self, outgoing: OutgoingRequest) -> HttpResponse:
        """Deliver a prepared reply (an outbox record) with the RPC its REST path names;
        2xx-like answers return (200 for a duplicate, else 201), refusals raise. A record
        that cannot be expressed in the gRPC API is refused as a 400 ``invalid_request``,
        as the REST coordinator would refuse it."""
        try:
            method, call = self._prepare(outgoing)
        except ProtocolError as exc:
            raise RequestRejected(
                f"{outgoing.kind} reply to task {outgoing.task_id} cannot be sent over gRPC: {exc}",
                status=400,
                code="invalid_request",
            ) from exc
        answer = self._invoke(method, call)
        document = to_document(answer)
        status = 200 if document.get("duplicate") is True or method == "DeclineTask" else 201
        body = json.dumps(document, sort_keys=True).encode("utf-8")
        return HttpResponse(status, {"content-type": "application/json"}, body)

    def _prepare(
        self, outgoing: OutgoingRequest
    ) -> tuple[str, Callable[[tuple[tuple[str, str], ...]], Any]]:
        path, headers, body = outgoing.path, outgoing.headers, outgoing.body
        key = _header(headers, "Idempotency-Key") or outgoing.idempotency_key
        if match := _UPDATES.fullmatch(path):
            chunks = self._update_chunks(int(match.group(1)), headers, body, key)
            return "UploadUpdate", self._streamed(chunks)
        if path in _REPORTS:
            field, message = _REPORTS[path]
            report = to_proto(_json_object(body, f"the {field} report"), message)
            request: Message = pb.ReportRequest(idempotency_key=key, **{field: report})
            return "SubmitReport", self._unary_call(self._report, request)
        if match := _SECAGG.fullmatch(path):
            request = self._secagg_submission(
                int(match.group(1)), match.group(2), headers, body, key
            )
            return "SubmitSecAgg", self._unary_call(self._secagg, request)
        if match := _DECLINE.fullmatch(path):
            reason = _json_object(body, "the decline").get("reason")
            if not isinstance(reason, str):
                raise ProtocolError("a decline needs a text reason", field="reason")
            request = pb.DeclineRequest(
                task_id=unquote(match.group(1)), reason=reason, idempotency_key=key
            )
            return "DeclineTask", self._unary_call(self._decline, request)
        raise ProtocolError(f"no gRPC call delivers POST {path}")

    def _unary_call(
        self, stub: Any, request: Message
    ) -> Callable[[tuple[tuple[str, str], ...]], Any]:
        def call(metadata: tuple[tuple[str, str], ...]) -> Any:
            return self._wait(stub.future(request, timeout=self.timeout, metadata=metadata))

        return call

    def _streamed(self, chunks: list[Any]) -> Callable[[tuple[tuple[str, str], ...]], Any]:
        def call(metadata: tuple[tuple[str, str], ...]) -> Any:
            future = self._upload.future(iter(chunks), timeout=self.timeout, metadata=metadata)
            return self._wait(future)

        return call

    def _update_chunks(
        self, round_id: int, headers: Mapping[str, str], body: bytes, key: str
    ) -> list[Any]:
        """The UploadUpdate stream of an update POST: its header, then the body's chunks."""
        task_id = _header(headers, "X-Fedge-Task-Id") or ""
        examples = _header(headers, "X-Fedge-Num-Examples") or ""
        if not examples.isdigit():
            raise ProtocolError(f"X-Fedge-Num-Examples {examples!r} is not an integer")
        codec = _header(headers, CODEC_HEADER) or "none"
        header = pb.UpdateHeader(
            round_id=round_id,
            task_id=task_id,
            num_examples=int(examples),
            metrics=_metrics(headers),
            delta_sha256=_header(headers, "X-Fedge-Delta-Sha256")
            or hashlib.sha256(body).hexdigest(),
            codec=codec,
            size=len(body),
            idempotency_key=key,
        )
        chunks: list[Any] = [pb.UpdateChunk(header=header)]
        for offset in range(0, len(body), self._chunk):
            data = body[offset : offset + self._chunk]
            chunks.append(pb.UpdateChunk(chunk=pb.Chunk(offset=offset, data=data)))
        return chunks

    def _secagg_submission(
        self, round_id: int, stage: str, headers: Mapping[str, str], body: bytes, key: str
    ) -> Message:
        request = pb.SecAggSubmission(
            round_id=round_id,
            stage=stage,
            task_id=_header(headers, "X-Fedge-Task-Id") or "",
            idempotency_key=key,
            metrics=_metrics(headers),
        )
        if stage == "mask":
            request.masked = body
        else:
            document = _json_object(body, f"the {stage} message")
            getattr(request, stage).CopyFrom(to_proto(document, _SECAGG_MESSAGES[stage]))
        return request

    # Lifetime -----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Abort the calls in flight and refuse every later one. Safe to call from a signal
        handler or another thread."""
        self._cancelled.set()
        with self._lock:
            active = list(self._active)
        for call in active:
            call.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        self._channel.close()
