"""HTTP to the coordinator: the ONLY module of the edge client that touches the network.

:class:`Transport` is the seam: one method that sends a request and returns the status,
headers and body. :class:`HttpTransport` implements it with :mod:`http.client`, under an
overall deadline per request and a response size limit, and can be cancelled from a signal
handler; tests wrap it to capture every byte the device sends, or replace it with a plain
function. Over it, :class:`CoordinatorClient` speaks the REST API (see
``coordinator/openapi.py``): register, poll for a task, download bundle files, and send
prepared :class:`OutgoingRequest` s (the outbox stores those). Replies become requests in
:func:`reply_request`, the one place that knows which endpoint takes which message
(secure-aggregation messages in :func:`secure_request`).

Error mapping, in one place: no connection, a timeout or a spent deadline, 5xx and 429 are
:class:`~edge_client.errors.TransportError` (retry later; ``retry_after`` from the
server's Retry-After, read by :func:`parse_retry_after`: seconds or an HTTP-date, clamped to
[1 s, 1 h], junk ignored); any other 4xx is :class:`~edge_client.errors.RequestRejected`
with the server's ``error`` code.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

from edge_client.backoff import RETRY_AFTER_MAX, RETRY_AFTER_MIN
from edge_client.compress import CODEC_HEADER, COMPRESSED_MEDIA_TYPE, CompressedUpdate
from edge_client.errors import RequestCancelled, RequestRejected, TransportError
from edge_client.secure import SecureReply
from edge_client.tls import client_ssl_context
from fedge.errors import ProtocolError
from fedge.messages import (
    EvalReport,
    FeatureBatch,
    ModelUpdate,
    Reply,
    StatsReport,
    Task,
    encode_message,
)

__all__ = [
    "Cancellable",
    "CoordinatorClient",
    "Decline",
    "FunctionTransport",
    "HttpResponse",
    "HttpTransport",
    "NextTask",
    "OutgoingRequest",
    "Registration",
    "Transport",
    "decline_request",
    "parse_retry_after",
    "pending_token_file",
    "reply_request",
    "rotated_token",
    "secure_request",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
"""Seconds one request may take in all (connect, send, headers, body)."""
MAX_RESPONSE_BYTES = 256 << 20
_CHUNK = 1 << 16
_TICK = 0.05  # how often the caller's thread looks at the clock and at cancel()


@dataclass(frozen=True)
class HttpResponse:
    """A response as the client sees it; header names are lower-case."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __post_init__(self) -> None:
        lowered = {str(k).lower(): str(v) for k, v in self.headers.items()}
        object.__setattr__(self, "headers", MappingProxyType(lowered))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(f"the coordinator sent invalid JSON: {exc}") from exc

    def error_code(self) -> tuple[str, str]:
        """The ``{error, detail}`` of an error response (best effort)."""
        try:
            document = json.loads(self.body)
        except ValueError:
            return f"http_{self.status}", self.body[:200].decode("utf-8", "replace")
        if isinstance(document, dict):
            return str(document.get("error", f"http_{self.status}")), str(
                document.get("detail", "")
            )
        return f"http_{self.status}", ""


class Transport(Protocol):
    """Sends one HTTP request. Raises TransportError when no response arrived."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse: ...

    def close(self) -> None: ...


@runtime_checkable
class Cancellable(Protocol):
    """A transport whose request in flight can be aborted (the daemon's stop uses it)."""

    def cancel(self) -> None: ...


class HttpTransport:
    """:class:`Transport` over :mod:`http.client`, one connection per request, no retries
    (the caller decides when to retry).

    ``timeout`` is the whole request's wall-clock budget: connecting, sending, waiting for
    the headers and reading the body together. A server that trickles its answer (a byte
    every few seconds resets any per-read timeout) is cut off when the budget is spent:
    the exchange runs in a worker thread, the caller's thread watches the clock and shuts
    the socket down. Bodies are read in chunks and refused past ``max_response_bytes``
    (before reading, when Content-Length says so). :meth:`cancel` aborts the request in
    flight and every later one (the daemon calls it on SIGTERM) with
    :class:`~edge_client.errors.RequestCancelled`. ``verify`` is the TLS setting: True
    (system CAs), a CA bundle path, or False (no verification); ``client_cert`` is the
    device's ``(certificate file, key file)``, presented to a server that asks (mutual
    TLS)."""

    def __init__(
        self,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        verify: bool | str = True,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        self._max = max_response_bytes
        self._verify = verify
        self._client_cert = client_cert
        self._ssl: ssl.SSLContext | None = None
        self._cancelled = threading.Event()
        self._lock = threading.RLock()  # cancel() may run in a signal handler of this thread
        self._active: set[http.client.HTTPConnection] = set()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        where = f"{method} {_path(url)}"
        if self._cancelled.is_set():
            raise RequestCancelled(f"{where}: cancelled, the daemon is stopping")
        started = time.monotonic()
        deadline = started + timeout
        connection, target = self._connection(url, timeout)
        outcome: list[HttpResponse | BaseException] = []
        worker = threading.Thread(
            target=self._exchange,
            args=(connection, method, target, dict(headers), body, deadline, outcome),
            name="fedge-http",
            daemon=True,
        )
        with self._lock:
            self._active.add(connection)
        try:
            worker.start()
            while worker.is_alive():
                if self._cancelled.is_set():
                    _abort(connection, worker)
                    raise RequestCancelled(f"{where}: cancelled, the daemon is stopping")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _abort(connection, worker)
                    raise TransportError(
                        f"{where}: no complete response within {timeout:g} s (deadline)"
                    )
                worker.join(min(remaining, _TICK))
        finally:
            with self._lock:
                self._active.discard(connection)
            connection.close()
        result = outcome[0] if outcome else TransportError(f"{where}: no response")
        if isinstance(result, HttpResponse):
            return result
        if self._cancelled.is_set():
            raise RequestCancelled(f"{where}: cancelled, the daemon is stopping") from result
        if isinstance(result, ProtocolError | TransportError):
            raise result
        raise TransportError(
            f"{where}: {_category(result)} ({type(result).__name__}: {result})"
        ) from result

    def _connection(self, url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProtocolError(f"not an http(s) URL: {url!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            if self._ssl is None:
                self._ssl = client_ssl_context(self._verify, self._client_cert)
            return (
                http.client.HTTPSConnection(
                    parts.hostname, parts.port, timeout=timeout, context=self._ssl
                ),
                target,
            )
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), target

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: float,
        outcome: list[HttpResponse | BaseException],
    ) -> None:
        """Runs in the worker thread: send, then read the answer in chunks."""
        response: http.client.HTTPResponse | None = None
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            outcome.append(self._read(response, f"{method} {target}", deadline))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            outcome.append(exc)
        finally:
            if response is not None:
                response.close()  # releases the socket: the server sees the hang-up

    def _read(
        self, response: http.client.HTTPResponse, where: str, deadline: float
    ) -> HttpResponse:
        header = response.getheader("content-length")
        length = int(header) if header is not None and header.isdigit() else None
        if length is not None and length > self._max:
            raise ProtocolError(f"{where}: response over {self._max} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TransportError(f"{where}: the body outlasted the deadline")
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self._max:
                raise ProtocolError(f"{where}: response over {self._max} bytes")
            chunks.append(chunk)
        if length is not None and size != length and response.status not in (204, 304):
            raise TransportError(f"{where}: the body ended after {size} of {length} bytes")
        return HttpResponse(response.status, dict(response.getheaders()), b"".join(chunks))

    def cancel(self) -> None:
        """Abort the request in flight (if any) and refuse every later one. Safe to call
        from a signal handler or another thread."""
        self._cancelled.set()
        with self._lock:
            active = list(self._active)
        for connection in active:
            _shutdown(connection)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        """Nothing stays open between requests; kept for the :class:`Transport` protocol."""


def _category(exc: BaseException) -> str:
    """What kind of network failure ``exc`` is, in the words of the log and the CLI."""
    if isinstance(exc, ssl.SSLError):
        return "SSLError"
    if isinstance(exc, ConnectionError):
        return "ConnectionError"
    if isinstance(exc, TimeoutError):
        return "Timeout"
    if isinstance(exc, http.client.HTTPException):
        return "BadResponse"
    return "NetworkError"


def _shutdown(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _abort(connection: http.client.HTTPConnection, worker: threading.Thread) -> None:
    """Shut the socket down under the worker (its read returns at once) and let it end."""
    _shutdown(connection)
    worker.join(_TICK)


Handler = Callable[[str, str, Mapping[str, str], bytes | None], HttpResponse]


class FunctionTransport:
    """A :class:`Transport` whose server is a plain function ``(method, url, headers, body)``
    (for tests and in-memory fleets)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        return self._handler(method, url, headers, body)

    def close(self) -> None:
        pass


def _path(url: str) -> str:
    """A URL without its host, for log lines."""
    head, sep, rest = url.partition("://")
    return "/" + rest.partition("/")[2] if sep else head


@dataclass(frozen=True)
class OutgoingRequest:
    """A reply ready to send: POST ``path`` with ``headers`` (no Authorization: the token is
    added when sending) and ``body``."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    kind: str
    task_id: str
    idempotency_key: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "headers": dict(self.headers),
            "kind": self.kind,
            "task_id": self.task_id,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], body: bytes) -> OutgoingRequest:
        try:
            headers = data["headers"]
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise TypeError("headers must map names to strings")
            return cls(
                path=str(data["path"]),
                headers=MappingProxyType(dict(headers)),
                body=body,
                kind=str(data["kind"]),
                task_id=str(data["task_id"]),
                idempotency_key=str(data["idempotency_key"]),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"not an outgoing request record: {exc!r}") from exc


def reply_request(reply: Reply, idempotency_key: str) -> OutgoingRequest:
    """The POST that delivers ``reply`` (the one mapping of reply type to endpoint)."""
    document, body = encode_message(reply)
    key = {"Idempotency-Key": idempotency_key}
    if isinstance(reply, ModelUpdate):
        assert body is not None
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Fedge-Task-Id": reply.task_id,
            "X-Fedge-Num-Examples": str(reply.num_examples),
            "X-Fedge-Metrics": json.dumps(dict(reply.metrics), sort_keys=True, allow_nan=False),
            "X-Fedge-Delta-Sha256": hashlib.sha256(body).hexdigest(),
            **key,
        }
        if isinstance(reply, CompressedUpdate):
            headers.update({"Content-Type": COMPRESSED_MEDIA_TYPE, CODEC_HEADER: reply.codec})
        path = f"/v1/rounds/{reply.round_id}/updates"
        return OutgoingRequest(path, headers, body, "train", reply.task_id, idempotency_key)
    paths: dict[type, tuple[str, str]] = {
        StatsReport: ("/v1/stats", "stats"),
        EvalReport: ("/v1/evaluations", "evaluate"),
        FeatureBatch: ("/v1/features", "features"),
    }
    path, kind = paths[type(reply)]
    text = json.dumps(document, sort_keys=True, allow_nan=False, separators=(",", ":"))
    headers = {"Content-Type": "application/json", **key}
    return OutgoingRequest(
        path, headers, text.encode("utf-8"), kind, reply.task_id, idempotency_key
    )


@dataclass(frozen=True)
class Decline:
    """The device will not do task ``task_id``; ``reason`` says why (no data in it)."""

    task_id: str
    kind: str
    reason: str


MAX_DECLINE_REASON = 500
"""The longest reason the coordinator takes."""


def decline_request(decline: Decline, idempotency_key: str) -> OutgoingRequest:
    """The POST that declines a task (``/v1/tasks/{id}/decline``)."""
    reason = decline.reason[:MAX_DECLINE_REASON] or "declined"
    text = json.dumps({"reason": reason}, sort_keys=True, separators=(",", ":"))
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    path = f"/v1/tasks/{quote(decline.task_id, safe='')}/decline"
    return OutgoingRequest(
        path, headers, text.encode("utf-8"), "decline", decline.task_id, idempotency_key
    )


def secure_request(reply: SecureReply, idempotency_key: str) -> OutgoingRequest:
    """The POST that delivers one secure-aggregation message (``/v1/rounds/{r}/secagg/
    {stage}``): JSON, or for the masked input the packed vector with the training metrics
    in ``X-Fedge-Metrics``."""
    headers = {"X-Fedge-Task-Id": reply.task_id, "Idempotency-Key": idempotency_key}
    if reply.body is not None:
        body = reply.body
        headers["Content-Type"] = "application/octet-stream"
        headers["X-Fedge-Metrics"] = json.dumps(
            dict(reply.metrics), sort_keys=True, allow_nan=False
        )
    else:
        text = json.dumps(
            dict(reply.document or {}), sort_keys=True, allow_nan=False, separators=(",", ":")
        )
        body = text.encode("utf-8")
        headers["Content-Type"] = "application/json"
    path = f"/v1/rounds/{reply.round_id}/secagg/{reply.stage}"
    return OutgoingRequest(
        path, headers, body, f"secagg_{reply.stage}", reply.task_id, idempotency_key
    )


@dataclass(frozen=True)
class Registration:
    """A registration answer; ``signing_key`` is the coordinator's manifest signing key
    (``{key_id, public_key, algorithm}``) when it sends one, for the device to pin."""

    client_id: str
    token: str
    signing_key: Mapping[str, Any] | None = None


def pending_token_file(token_file: Path) -> Path:
    """Where ``fedge-edge rotate-token`` keeps the token it proposes until the coordinator
    has answered and the token file holds it."""
    return token_file.with_name(token_file.name + ".pending")


def rotated_token(token_file: Path, current: str | None) -> str | None:
    """Another token than ``current`` in ``token_file`` or its ``.pending`` companion (a
    rotation under way), or None: what a client tries after a call was refused 401."""
    for path in (token_file, pending_token_file(token_file)):
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token and token != current:
            logger.info("the client token changed; using the one in %s", path.name)
            return token
    return None


@dataclass(frozen=True)
class NextTask:
    """The answer to a poll: a task, or how long to wait before polling again."""

    task: Task | None
    retry_after: float = 0.0


@dataclass
class CoordinatorClient:
    """The coordinator's REST API for one device. ``token`` is its client token; with
    ``token_file`` a call refused 401 reads that file (then its ``.pending`` companion, a
    token ``fedge-edge rotate-token`` proposed) and, when either holds another token,
    repeats the call once with it, so a running daemon picks up a rotated token."""

    base_url: str
    transport: Transport
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    default_retry_after: float = 10.0
    token_file: Path | None = None

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ProtocolError(f"the coordinator URL must be http(s)://..., got {self.base_url!r}")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> HttpResponse:
        response = self.transport.request(
            method,
            self.base_url + path,
            headers={**self._auth(), **(headers or {})},
            body=body,
            timeout=self.timeout,
        )
        if response.status == 401 and self._reload_token():
            response = self.transport.request(
                method,
                self.base_url + path,
                headers={**self._auth(), **(headers or {})},
                body=body,
                timeout=self.timeout,
            )
        if response.status >= 500 or response.status == 429:
            code, detail = response.error_code()
            raise TransportError(
                f"{method} {path}: {response.status} {code} {detail}".strip(),
                retry_after=_retry_after(response),
            )
        if response.status >= 400:
            code, detail = response.error_code()
            raise RequestRejected(
                f"{method} {path}: {response.status} {code}: {detail}",
                status=response.status,
                code=code,
            )
        return response

    def _reload_token(self) -> bool:
        """Take another token from ``token_file`` or its ``.pending`` companion, if one is
        there; whether the token changed."""
        if self.token_file is None:
            return False
        token = rotated_token(self.token_file, self.token)
        if token is None:
            return False
        self.token = token
        return True

    def rotate_token(self, proposed: str) -> str:
        """``POST /v1/clients/me/token`` proposing ``proposed``: the token the coordinator
        now holds for this device (its old one stops working at once)."""
        body = json.dumps({"token": proposed}).encode()
        headers = {"Content-Type": "application/json"}
        answer = self._call("POST", "/v1/clients/me/token", headers=headers, body=body).json()
        token = answer.get("token") if isinstance(answer, dict) else None
        if token != proposed:
            raise ProtocolError("unexpected token rotation answer")
        self.token = proposed
        return proposed

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
        document: dict[str, Any] = {}
        if region is not None:
            document["region"] = region
        if metadata:
            document["metadata"] = dict(metadata)
        headers = {"Content-Type": "application/json"}
        if enrollment_token:
            headers["Authorization"] = f"Bearer {enrollment_token}"
        if registration_key:
            headers["Idempotency-Key"] = registration_key
        response = self._call(
            "POST", "/v1/clients", headers=headers, body=json.dumps(document).encode()
        )
        answer = response.json()
        try:
            key = answer.get("signing_key")
            return Registration(
                str(answer["client_id"]),
                str(answer["token"]),
                key if isinstance(key, dict) else None,
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"unexpected registration answer: {exc!r}") from exc

    def next_task(self) -> NextTask:
        response = self._call("GET", "/v1/tasks/next")
        if response.status == 204:
            wait = _retry_after(response)
            return NextTask(None, self.default_retry_after if wait is None else wait)
        return NextTask(Task.from_dict(response.json()))

    def download(self, version: str, name: str) -> HttpResponse:
        """A bundle file of model ``version`` (``manifest.json`` included)."""
        if name == "manifest.json":
            path = f"/v1/models/{quote(version, safe='')}/manifest"
        else:
            path = f"/v1/models/{quote(version, safe='')}/files/{quote(name, safe='')}"
        return self._call("GET", path)

    def signing_keys(self) -> dict[str, Any]:
        """``GET /v1/keys``: the coordinator's manifest signing key and rotation statements."""
        document = self._call("GET", "/v1/keys").json()
        if not isinstance(document, dict):
            raise ProtocolError("unexpected /v1/keys answer: not a JSON object")
        return document

    def secagg_payload(self, round_id: int, stage: str) -> dict[str, Any]:
        """The secure-aggregation payload of ``stage`` (share, mask or unmask) of round
        ``round_id`` for this device (a 409 ``secagg_stage`` while the stage is not open is
        a RequestRejected)."""
        if stage not in ("share", "mask", "unmask"):
            raise ProtocolError(f"no secure-aggregation payload for stage {stage!r}")
        document = self._call("GET", f"/v1/rounds/{int(round_id)}/secagg/{stage}").json()
        if not isinstance(document, dict):
            raise ProtocolError(f"the {stage} payload is not a JSON object")
        return document

    def send(self, outgoing: OutgoingRequest) -> HttpResponse:
        """POST a prepared reply; 2xx returns, 4xx raises RequestRejected."""
        return self._call("POST", outgoing.path, headers=outgoing.headers, body=outgoing.body)

    def cancel(self) -> None:
        """Abort the request in flight and refuse later ones, when the transport can
        (:class:`Cancellable`); the daemon's stop calls it."""
        if isinstance(self.transport, Cancellable):
            self.transport.cancel()

    def close(self) -> None:
        self.transport.close()


def _retry_after(response: HttpResponse) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def parse_retry_after(text: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110
    10.2.3), clamped to [RETRY_AFTER_MIN, RETRY_AFTER_MAX]; None when absent or junk (not
    a number, NaN, a date that does not parse). ``now`` (epoch seconds) is for tests."""
    if text is None:
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, seconds))
