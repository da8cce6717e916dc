"""One device's view of the coordinator, whatever the transport.

:class:`CoordinatorApi` lists what the daemon, the outbox, the bundle store and the key
pinning use; :class:`~edge_client.transport.CoordinatorClient` (REST) and
:class:`~edge_client.grpc_client.GrpcCoordinatorClient` (gRPC) both provide it.
:func:`connect` picks one from the URL's scheme: ``http://``/``https://`` REST,
``grpc://``/``grpcs://`` gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from edge_client.grpc_client import GrpcCoordinatorClient, Interceptor
from edge_client.tls import ClientTls
from edge_client.transport import (
    DEFAULT_TIMEOUT,
    CoordinatorClient,
    HttpResponse,
    HttpTransport,
    NextTask,
    OutgoingRequest,
    Registration,
    Transport,
)
from fedge.errors import ConfigError, ProtocolError

__all__ = ["CoordinatorApi", "connect"]

_REST = ("http", "https")
_GRPC = ("grpc", "grpcs")


class CoordinatorApi(Protocol):
    """The coordinator's device API as one device uses it (see :class:`~edge_client.
    transport.CoordinatorClient` for each method's meaning). ``token`` is the client token
    the next call carries."""

    token: str | None

    def register(
        self,
        *,
        region: str | None = None,
        metadata: Mapping[str, str] | None = None,
        enrollment_token: str | None = None,
        registration_key: str | None = None,
    ) -> Registration: ...

    def rotate_token(self, proposed: str) -> str: ...

    def next_task(self) -> NextTask: ...

    def download(self, version: str, name: str) -> HttpResponse: ...

    def signing_keys(self) -> dict[str, Any]: ...

    def secagg_payload(self, round_id: int, stage: str) -> dict[str, Any]: ...

    def send(self, outgoing: OutgoingRequest) -> HttpResponse: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


def connect(
    url: str,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    token_file: Path | None = None,
    tls: ClientTls | None = None,
    transport: Transport | None = None,
    grpc_interceptors: Sequence[Interceptor] = (),
) -> CoordinatorClient | GrpcCoordinatorClient:
    """A client of the coordinator at ``url``: REST for ``http(s)://`` (over ``transport``,
    else an :class:`~edge_client.transport.HttpTransport` with ``tls``'s CA and client
    certificate), gRPC for ``grpc(s)://`` (with ``tls`` and ``grpc_interceptors``). Any
    other scheme is a ProtocolError; a ``transport`` (HTTP only) with a gRPC URL, or
    interceptors with a REST URL, a ConfigError."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in _REST:
        if grpc_interceptors:
            raise ConfigError(f"gRPC interceptors apply to grpc(s):// URLs, not {url!r}")
        if transport is None:
            transport = HttpTransport(
                verify=tls.verify if tls is not None else True,
                client_cert=tls.client_cert if tls is not None else None,
            )
        return CoordinatorClient(
            url, transport, token=token, timeout=timeout, token_file=token_file
        )
    if scheme in _GRPC:
        if transport is not None:
            raise ConfigError(f"an HTTP transport cannot carry gRPC: {url!r} takes no transport")
        return GrpcCoordinatorClient(
            url,
            token=token,
            timeout=timeout,
            token_file=token_file,
            tls=tls,
            interceptors=grpc_interceptors,
        )
    raise ProtocolError(f"the coordinator URL must be http(s)://... or grpc(s)://..., got {url!r}")
