"""TLS for the coordinator's listeners: the files, the REST server's SSL context and the
gRPC server's credentials, made from the same :class:`TlsFiles`.

::

    tls = TlsFiles(Path("server.pem"), Path("server.key"), client_ca=Path("ca.pem"))
    context = server_ssl_context(tls)          # REST (waitress, coordinator.server)
    credentials = grpc_server_credentials(tls)  # gRPC

With ``client_ca`` the servers require a client certificate signed by that CA (mutual
TLS): a client without one, or with one from another CA, is refused at the handshake.
The protocol is TLS 1.2 or later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedge.errors import ConfigError

if TYPE_CHECKING:
    import grpc

__all__ = ["TlsFiles", "grpc_server_credentials", "server_ssl_context"]


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise ConfigError(f"the {what} {path} is empty")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate chain and private key (PEM), and the CA whose client
    certificates it requires (``None``: no client certificate is asked for).

    Checked on creation: every file is readable, the key matches the certificate and the
    client CA file holds certificates (ConfigError otherwise).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cert", Path(self.cert))
        object.__setattr__(self, "key", Path(self.key))
        if self.client_ca is not None:
            object.__setattr__(self, "client_ca", Path(self.client_ca))
        server_ssl_context(self)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The PEM bytes of the certificate chain, the key and the client CA."""
        ca = None if self.client_ca is None else _read(self.client_ca, "client CA file")
        return (
            _read(self.cert, "TLS certificate"),
            _read(self.key, "TLS key"),
            ca,
        )


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """A server-side context of ``tls``: TLS >= 1.2; with a client CA, CERT_REQUIRED."""
    tls.read()  # every file readable and not empty, else a clear message
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"the TLS certificate {tls.cert} and key {tls.key} do not load as a pair: "
            f"{exc.reason or exc}"
        ) from exc
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"the client CA file {tls.client_ca} holds no usable certificate: {exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials of ``tls`` (with a client CA: the client certificate is
    required and verified)."""
    import grpc

    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
