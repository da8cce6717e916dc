"""The ``fedge.v1.Fleet`` servicer: what devices call, over the same state as the REST
``enrollment``, ``devices`` and ``downloads`` blueprints.

Each handler reads the ``authorization`` metadata through :mod:`coordinator.access`,
converts the request with :mod:`fedge.protocol.codec`, calls the function of
:mod:`coordinator.device_api` the REST view calls, and converts the REST document it
returns back to the answer message. Errors end the call in :mod:`coordinator.rpc.errors`.

Streams: ``DownloadFile`` sends a :class:`FileHeader` (with the manifest's signature), then
the file in chunks of :attr:`GrpcLimits.chunk_bytes` (none when ``if_none_match`` is the
file's sha256). ``UploadUpdate`` takes an :class:`UpdateHeader`, then chunks at exactly the
offsets received so far adding up to the header's size; the stream must end within
:attr:`GrpcLimits.stream_seconds` with at most :attr:`GrpcLimits.chunk_seconds` between two
messages, and a size over the service's ``max_update_bytes`` is refused as soon as it is
announced or reached. An upload holds a worker while it streams, so at most
:attr:`GrpcLimits.max_uploads` stream at once (``max_uploads_per_client`` per client):
one more is refused RESOURCE_EXHAUSTED ``too_many_uploads`` with a retry-after, and the
other workers stay free for polls and downloads. Any refusal of an upload is recorded as a
rejected update, as REST records it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError, Message

from coordinator import device_api
from coordinator.access import require_client, require_enrollment, require_reader
from coordinator.errors import (
    CoordinatorError,
    PayloadTooLargeError,
    RateLimitedError,
    UnsupportedMediaTypeError,
)
from coordinator.limits import GrpcLimits
from coordinator.records import ClientRecord
from coordinator.rpc.errors import StreamTimeoutError, metadata_value, stream_errors, unary_errors
from coordinator.service import CoordinatorService
from fedge.bundle import MANIFEST_NAME
from fedge.errors import FedgeError, ProtocolError
from fedge.protocol import fleet_pb2 as pb
from fedge.protocol.codec import to_document, to_proto

if TYPE_CHECKING:
    from coordinator.rest.state import RestState

__all__ = ["SERVICE", "FleetServicer", "fleet_handler", "peer_address"]

SERVICE = "fedge.v1.Fleet"

_SECAGG_PAYLOADS = {
    "secagg_key_roster": ("roster", pb.SecAggKeyRoster),
    "secagg_share_delivery": ("delivery", pb.SecAggShareDelivery),
    "secagg_unmask_request": ("unmask", pb.SecAggUnmaskRequest),
}
_SECAGG_MESSAGES = {"advertise": "advertise", "share": "share", "unmask": "unmask"}


def peer_address(peer: str) -> str:
    """The caller's address in gRPC's ``context.peer()`` form (``ipv4:1.2.3.4:5``,
    ``ipv6:[::1]:5``, percent-encoded or not), as REST's ``remote_addr`` reads
    (``1.2.3.4``, ``::1``)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return peer or "unknown"


def parse(message_type: type[Message], data: bytes) -> Any:
    """``data`` decoded as ``message_type``; ProtocolError (INVALID_ARGUMENT) when it is
    not one."""
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise ProtocolError(
            f"the request is not a {message_type.DESCRIPTOR.full_name} message: {exc}"
        ) from exc


def _too_large(what: str, size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the {what} is {size} bytes, over the {limit}-byte limit")


class _StreamBroken(CoordinatorError):
    """The client's stream ended without a status of its own (cancelled, disconnected):
    not a rejected update."""


class _StreamReader:
    """Messages of a client stream, read by a thread of their own so that the handler can
    stop waiting at a deadline: a stalled stream then ends the call (and with it the read)
    instead of holding a worker."""

    _END = object()

    def __init__(
        self, messages: Iterator[bytes], message_type: type[Message], gap_seconds: float
    ) -> None:
        self._messages = messages
        self._type = message_type
        self._gap = gap_seconds
        self._queue: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedge-grpc-stream", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[object, BaseException | None]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for data in self._messages:
                if not self._put((parse(self._type, data), None)):
                    return
        except Exception as exc:  # undecodable, the client cancelled, or the call ended
            self._put((self._END, exc))
            return
        self._put((self._END, None))

    def next(self, deadline: float) -> Any | None:
        """The next message, None at the stream's end; StreamTimeoutError at ``deadline``
        (a ``time.monotonic()`` value) or when no message comes within the gap."""
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise queue.Empty
            message, error = self._queue.get(timeout=min(left, self._gap))
        except queue.Empty:
            if left <= self._gap:
                raise StreamTimeoutError("the upload stream did not end in time") from None
            raise StreamTimeoutError(
                f"the upload stream sent nothing for {self._gap:g} s"
            ) from None
        if isinstance(error, FedgeError):
            raise error
        if error is not None:
            raise _StreamBroken("the upload stream broke off", code="invalid_stream") from error
        return None if message is self._END else message

    def close(self) -> None:
        self._closed.set()


_UPLOAD_RETRY_SECONDS = 5


class _UploadSlots:
    """Counts the upload streams running, overall and per client (see the module
    docstring)."""

    def __init__(self, total: int, per_client: int) -> None:
        self._total = total
        self._per_client = per_client
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}

    def acquire(self, client_id: str) -> None:
        """Take a slot for ``client_id``, or RateLimitedError when none is free."""
        with self._lock:
            mine = self._running.get(client_id, 0)
            if mine >= self._per_client:
                detail = f"this client already has {mine} upload streams running"
            elif sum(self._running.values()) >= self._total:
                detail = f"{self._total} upload streams are running"
            else:
                self._running[client_id] = mine + 1
                return
        raise RateLimitedError(
            f"{detail}; retry in {_UPLOAD_RETRY_SECONDS} s",
            retry_after=_UPLOAD_RETRY_SECONDS,
            code="too_many_uploads",
        )

    def release(self, client_id: str) -> None:
        with self._lock:
            left = self._running.get(client_id, 0) - 1
            if left > 0:
                self._running[client_id] = left
            else:
                self._running.pop(client_id, None)


class FleetServicer:
    """The Fleet handlers over ``state`` (the REST app's
    :class:`~coordinator.rest.state.RestState`) with ``limits``."""

    def __init__(self, state: RestState, limits: GrpcLimits) -> None:
        self._state = state
        self._limits = limits
        self._uploads = _UploadSlots(limits.max_uploads, limits.max_uploads_per_client)

    @property
    def _service(self) -> CoordinatorService:
        return self._state.service

    def _client(self, context: grpc.ServicerContext) -> ClientRecord:
        return require_client(self._state, metadata_value(context, "authorization"), "grpc")

    def _small(self, request: Any, what: str) -> None:
        """A control message is held to REST's JSON body limit."""
        size, limit = request.ByteSize(), self._state.config.max_json_bytes
        if size > limit:
            raise _too_large(what, size, limit)

    # Enrollment and tokens ------------------------------------------------------------------

    def register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> Any:
        authorization = metadata_value(context, "authorization")
        require_enrollment(self._state, authorization, peer_address(context.peer()))
        self._small(request, "registration")
        document, _ = device_api.register(
            self._state,
            region=request.region if request.HasField("region") else None,
            metadata=dict(request.metadata),
            registration_key=request.registration_key or None,
            authorization=authorization,
        )
        return to_proto(document, pb.Registration)

    def rotate_token(self, request: pb.RotateTokenRequest, context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        self._small(request, "token rotation")
        proposed = request.token if request.HasField("token") else None
        return to_proto(device_api.rotate_token(self._service, client, proposed), pb.TokenRotation)

    def signing_keys(self, request: pb.SigningKeysRequest, context: grpc.ServicerContext) -> Any:
        return to_proto(self._service.signer.document(), pb.SigningKeys)

    # Tasks ------------------------------------------------------------------------------

    def next_task(self, request: pb.NextTaskRequest, context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        task = self._service.next_task(client)
        if task is None:
            return pb.NextTaskResponse(retry_after=device_api.retry_after_seconds(self._service))
        return pb.NextTaskResponse(task=to_proto(task.to_dict(), pb.Task))

    def decline_task(self, request: pb.DeclineRequest, context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        self._small(request, "decline")
        document = device_api.decline(self._service, client, request.task_id, request.reason)
        return to_proto(document, pb.DeclineResponse)

    # Model files ------------------------------------------------------------------------

    def download_file(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        client = require_reader(self._state, metadata_value(context, "authorization"), "grpc")
        service = self._service
        name = device_api.check_bundle_file_name(request.name)
        file = device_api.model_file(service, request.version, name)
        size = file.path.stat().st_size
        header = pb.FileHeader(
            name=name,
            model_version=file.model.version,
            sha256=file.sha256,
            size=size,
            signature=service.registry.signature(file.model) if name == MANIFEST_NAME else "",
        )
        if request.if_none_match.strip('"') == file.sha256:
            header.not_modified = True
            yield pb.FileChunk(header=header)
            return
        if client is not None and size:
            service.count_download(client, file.model.version, size)
        yield pb.FileChunk(header=header)
        offset = 0
        with file.path.open("rb") as stream:
            while data := stream.read(self._limits.chunk_bytes):
                yield pb.FileChunk(chunk=pb.Chunk(offset=offset, data=data))
                offset += len(data)

    # Updates ----------------------------------------------------------------------------

    def upload_update(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        self._uploads.acquire(client.client_id)
        try:
            return self._upload(client, requests, context)
        finally:
            self._uploads.release(client.client_id)

    def _upload(
        self, client: ClientRecord, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Any:
        service = self._service
        deadline = time.monotonic() + self._limits.stream_seconds
        reader = _StreamReader(requests, pb.UpdateChunk, self._limits.chunk_seconds)
        round_id: int | None = None
        try:
            first = reader.next(deadline)
            if first is None or first.WhichOneof("part") != "header":
                raise CoordinatorError(
                    "an upload stream starts with its header", code="invalid_stream"
                )
            header = first.header
            round_id = header.round_id
            body = self._receive(reader, header, deadline)
            submission = device_api.update_submission(
                header.round_id,
                body=body,
                codec=header.codec or "none",
                num_examples=header.num_examples,
                metrics=device_api.check_metrics_size(header.metrics),
                delta_sha256=header.delta_sha256 or None,
                task_id=header.task_id,
                idempotency_key=header.idempotency_key,
            )
        except FedgeError as exc:
            # A stream the client cancelled or dropped is no rejected update.
            if not isinstance(exc, _StreamBroken) and context.is_active():
                service.reject_update(client, round_id, exc)
            raise
        finally:
            reader.close()
        receipt = service.submit_update(client, submission)
        return to_proto(device_api.update_receipt_document(receipt), pb.UpdateReceipt)

    def _receive(self, reader: _StreamReader, header: pb.UpdateHeader, deadline: float) -> bytes:
        limit = self._service.config.max_update_bytes
        if header.size < 0:
            raise CoordinatorError("the header's size must be >= 0", code="invalid_stream")
        if header.size > limit:
            raise _too_large("update", header.size, limit)
        parts: list[bytes] = []
        received = 0
        while (message := reader.next(deadline)) is not None:
            if message.WhichOneof("part") != "chunk":
                raise CoordinatorError(
                    "an upload stream has one header, then chunks", code="invalid_stream"
                )
            chunk = message.chunk
            if chunk.offset != received:
                raise CoordinatorError(
                    f"a chunk at offset {chunk.offset}, expected {received}",
                    code="invalid_chunk",
                )
            received += len(chunk.data)
            if received > header.size:
                raise _too_large("update", received, header.size)
            parts.append(chunk.data)
        if received < header.size:
            raise CoordinatorError(
                f"the upload ended after {received} of {header.size} bytes", code="truncated"
            )
        return b"".join(parts)

    # Reports ----------------------------------------------------------------------------

    def submit_report(self, request: pb.ReportRequest, context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        size, limit = request.ByteSize(), self._state.config.max_report_bytes
        if size > limit:
            raise _too_large("report", size, limit)
        kind = request.WhichOneof("report")
        if kind is None:
            raise CoordinatorError("the request holds no report", code="invalid_request")
        document = to_document(getattr(request, kind))
        receipt = device_api.submit_report(self._service, client, kind, document)
        return to_proto(receipt, pb.ReportReceipt)

    # Secure aggregation -----------------------------------------------------------------

    def secagg_payload(
        self, request: pb.SecAggPayloadRequest, context: grpc.ServicerContext
    ) -> Any:
        client = self._client(context)
        document = self._service.secagg_payload(client, request.round_id, request.stage)
        field, message_type = _SECAGG_PAYLOADS[document["type"]]
        return pb.SecAggPayload(**{field: to_proto(document, message_type)})

    def submit_secagg(self, request: pb.SecAggSubmission, context: grpc.ServicerContext) -> Any:
        client = self._client(context)
        service = self._service
        stage, which = request.stage, request.WhichOneof("message")
        document: dict[str, Any] | None = None
        body: bytes | None = None
        with device_api.rejecting(service, client, request.round_id):
            if stage == "mask":
                if which != "masked":
                    raise UnsupportedMediaTypeError("a masked input is sent as 'masked' bytes")
                limit = service.config.max_update_bytes
                if len(request.masked) > limit:
                    raise _too_large("masked input", len(request.masked), limit)
                body = request.masked
            else:
                self._small(request, "secure-aggregation message")
                if which is None or _SECAGG_MESSAGES.get(stage) != which:
                    raise CoordinatorError(
                        f"stage {stage[:40]!r} takes its own message, got {which!r}",
                        code="invalid_request",
                    )
                document = to_document(getattr(request, which))
            metrics = device_api.check_metrics_size(request.metrics) if request.metrics else None
        receipt = device_api.submit_secagg(
            service,
            client,
            request.round_id,
            stage,
            task_id=request.task_id,
            idempotency_key=request.idempotency_key,
            document=document,
            body=body,
            metrics=metrics,
        )
        return to_proto(device_api.secagg_receipt_document(receipt), pb.SecAggReceipt)

    # Binding ----------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving ``fedge.v1.Fleet``."""

        def decoded(fn: Callable[[Any, grpc.ServicerContext], Any], request: Any) -> Any:
            def call(data: bytes, context: grpc.ServicerContext) -> Any:
                return fn(parse(request, data), context)

            call.__name__ = getattr(fn, "__name__", "handler")
            return call

        def unary(fn: Callable[..., Any], request: Any, response: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                unary_errors(decoded(fn, request)),
                response_serializer=response.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Register": unary(self.register, pb.RegisterRequest, pb.Registration),
                "RotateToken": unary(self.rotate_token, pb.RotateTokenRequest, pb.TokenRotation),
                "GetSigningKeys": unary(self.signing_keys, pb.SigningKeysRequest, pb.SigningKeys),
                "NextTask": unary(self.next_task, pb.NextTaskRequest, pb.NextTaskResponse),
                "DeclineTask": unary(self.decline_task, pb.DeclineRequest, pb.DeclineResponse),
                "DownloadFile": grpc.unary_stream_rpc_method_handler(
                    stream_errors(decoded(self.download_file, pb.DownloadRequest)),
                    response_serializer=pb.FileChunk.SerializeToString,
                ),
                "UploadUpdate": grpc.stream_unary_rpc_method_handler(
                    unary_errors(self.upload_update),
                    response_serializer=pb.UpdateReceipt.SerializeToString,
                ),
                "SubmitReport": unary(self.submit_report, pb.ReportRequest, pb.ReportReceipt),
                "GetSecAggPayload": unary(
                    self.secagg_payload, pb.SecAggPayloadRequest, pb.SecAggPayload
                ),
                "SubmitSecAgg": unary(self.submit_secagg, pb.SecAggSubmission, pb.SecAggReceipt),
            },
        )


def fleet_handler(state: RestState, limits: GrpcLimits) -> grpc.GenericRpcHandler:
    """The ``fedge.v1.Fleet`` handler over ``state``."""
    return FleetServicer(state, limits).handler()
