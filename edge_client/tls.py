"""The device's TLS settings, one value for both transports.

:class:`ClientTls` names the files: ``ca_file``, the CA bundle that authenticates the
coordinator (none: the default roots, the system's for REST and gRPC's own for gRPC), and
``cert``/``key``, the device's own certificate and private key (PEM), presented for mutual
TLS. REST (``https://``) builds an :class:`ssl.SSLContext` from it
(:meth:`ClientTls.ssl_context`); gRPC (``grpcs://``) channel credentials
(:mod:`edge_client.grpc_client`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from fedge.errors import ConfigError

__all__ = ["ClientTls", "client_ssl_context"]


@dataclass(frozen=True)
class ClientTls:
    """Which CA the device trusts and which certificate it presents (cert and key
    together, or neither). Each named file must be a readable file."""

    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError(
                "a client certificate needs its key: give cert and key together "
                f"(got cert={self.cert}, key={self.key})"
            )
        for what, path in (("ca_file", self.ca_file), ("cert", self.cert), ("key", self.key)):
            if path is None:
                continue
            if not isinstance(path, Path):
                raise ConfigError(f"ClientTls.{what} must be a Path, got {type(path).__name__}")
            if not path.is_file():
                raise ConfigError(f"ClientTls.{what}: {path} is not a file")

    @property
    def client_cert(self) -> tuple[str, str] | None:
        """``(certificate file, key file)`` for mutual TLS, or None."""
        if self.cert is None or self.key is None:
            return None
        return str(self.cert), str(self.key)

    @property
    def verify(self) -> bool | str:
        """The CA setting of :class:`~edge_client.transport.HttpTransport`: the CA file,
        else True (the system's roots)."""
        return str(self.ca_file) if self.ca_file is not None else True

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The PEM bytes of (CA, certificate, key); None for a file not named."""
        return _read(self.ca_file), _read(self.cert), _read(self.key)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: verifies the server against ``ca_file`` (or the system's
        roots) and presents the device's certificate when one is named."""
        return client_ssl_context(self.verify, self.client_cert)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS file {path}: {exc}") from exc


def client_ssl_context(
    verify: bool | str, client_cert: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """A TLS >= 1.2 client context. ``verify``: True (system CAs), a CA bundle path, or
    False (no verification); ``client_cert``: ``(cert file, key file)`` for mutual TLS."""
    if verify is True:
        context = ssl.create_default_context()
    elif verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {verify}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        try:
            context.load_cert_chain(client_cert[0], client_cert[1])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate {client_cert[0]} with key "
                f"{client_cert[1]}: {exc}"
            ) from exc
    return context
