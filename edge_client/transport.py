"""HTTP to the coordinator: the ONLY module of the edge client that touches the network.

:class:`Transport` is the seam: one method that sends a request and returns the status,
headers and body. :class:`HttpTransport` implements it with ``requests``; tests wrap it to
capture every byte the device sends, or replace it with a plain function. Over it,
:class:`CoordinatorClient` speaks the REST API (see ``coordinator/openapi.py``): register,
poll for a task, download bundle files, and send prepared :class:`OutgoingRequest` s (the
outbox stores those). Replies become requests in :func:`reply_request`, the one place that
knows which endpoint takes which message.

Error mapping, in one place: no connection, a timeout, 5xx and 429 are
:class:`~edge_client.errors.TransportError` (retry later); any other 4xx is
:class:`~edge_client.errors.RequestRejected` with the server's ``error`` code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import quote

import requests

from edge_client.errors import RequestRejected, TransportError
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
    "CoordinatorClient",
    "FunctionTransport",
    "HttpResponse",
    "HttpTransport",
    "NextTask",
    "OutgoingRequest",
    "Registration",
    "Transport",
    "reply_request",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 256 << 20
_CHUNK = 1 << 16


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


class HttpTransport:
    """:class:`Transport` over a ``requests.Session`` (connection reuse, no retries: the
    caller decides when to retry). Responses over ``max_response_bytes`` are refused.
    ``verify`` is ``requests``' TLS setting: True (system CAs) or a CA bundle path."""

    def __init__(
        self, *, max_response_bytes: int = MAX_RESPONSE_BYTES, verify: bool | str = True
    ) -> None:
        self._session = requests.Session()
        self._session.verify = verify
        self._max = max_response_bytes

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        try:
            with self._session.request(
                method, url, headers=dict(headers), data=body, timeout=timeout, stream=True
            ) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > self._max:
                        raise ProtocolError(f"{method} {url}: response over {self._max} bytes")
                    chunks.append(chunk)
                return HttpResponse(response.status_code, dict(response.headers), b"".join(chunks))
        except requests.RequestException as exc:
            raise TransportError(f"{method} {_path(url)}: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._session.close()


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
class Registration:
    client_id: str
    token: str


@dataclass(frozen=True)
class NextTask:
    """The answer to a poll: a task, or how long to wait before polling again."""

    task: Task | None
    retry_after: float = 0.0


@dataclass
class CoordinatorClient:
    """The coordinator's REST API for one device. ``token`` is its client token."""

    base_url: str
    transport: Transport
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    default_retry_after: float = 10.0

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

    def register(
        self,
        *,
        region: str | None = None,
        metadata: Mapping[str, str] | None = None,
        enrollment_token: str | None = None,
    ) -> Registration:
        document: dict[str, Any] = {}
        if region is not None:
            document["region"] = region
        if metadata:
            document["metadata"] = dict(metadata)
        headers = {"Content-Type": "application/json"}
        if enrollment_token:
            headers["Authorization"] = f"Bearer {enrollment_token}"
        response = self._call(
            "POST", "/v1/clients", headers=headers, body=json.dumps(document).encode()
        )
        answer = response.json()
        try:
            return Registration(str(answer["client_id"]), str(answer["token"]))
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

    def send(self, outgoing: OutgoingRequest) -> HttpResponse:
        """POST a prepared reply; 2xx returns, 4xx raises RequestRejected."""
        return self._call("POST", outgoing.path, headers=outgoing.headers, body=outgoing.body)

    def close(self) -> None:
        self.transport.close()


def _retry_after(response: HttpResponse) -> float | None:
    text = response.headers.get("retry-after")
    if text is None:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        return None
