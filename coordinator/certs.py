"""Development certificates: a CA, a server certificate and device (client) certificates.

::

    made = init_certs(Path("pki"), hosts=["coordinator.lan", "10.0.0.5"], devices=["pump-1"])
    serve --tls-cert pki/server.pem --tls-key pki/server.key --client-ca pki/ca.pem
    issue_device_cert(Path("pki"), "pump-2")  # pki/devices/pump-2.pem and .key

Layout of the directory: ``ca.pem`` and ``ca.key`` (the CA), ``server.pem`` and
``server.key`` (the coordinator: its hosts as DNS or IP subject alternative names,
``localhost`` and ``127.0.0.1`` by default), ``devices/NAME.pem`` and ``devices/NAME.key``
(one client certificate per device, common name NAME). Keys are ECDSA P-256, PEM,
unencrypted and created 0600; nothing existing is ever overwritten. These are for
development and test fleets: a production fleet's certificates come from its own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.errors import ConfigError

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "CertificateSet",
    "init_certs",
    "issue_device_cert",
]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertificateSet:
    """The files :func:`init_certs` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    devices: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    """Each device's (certificate, key)."""


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days must be an integer >= 1, got {days!r}")


def _check_device_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"device name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode``, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            descriptor = -1
            handle.write(data)
    finally:
        if descriptor != -1:
            os.close(descriptor)


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: _Key) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedge development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: _Key, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca_cert: x509.Certificate,
    ca_key: _Key,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    alt_names: Sequence[x509.GeneralName] = (),
) -> tuple[x509.Certificate, _Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(common_name), ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/\\" for c in host):
        raise ConfigError(f"host {host!r} is not a DNS name or an IP address")
    return x509.DNSName(host)


def _device_paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / "devices" / f"{name}.pem", directory / "devices" / f"{name}.key"


def init_certs(
    out: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    devices: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
) -> CertificateSet:
    """Create a development CA in ``out``, a server certificate for ``hosts`` and a client
    certificate per device, valid ``days`` days. ConfigError, before anything is written,
    when one of the files exists, a host or device name is invalid or ``days`` < 1."""
    _check_days(days)
    if not hosts:
        raise ConfigError("the server certificate needs at least one host")
    alt_names = [_alt_name(h) for h in dict.fromkeys(hosts)]
    for name in devices:
        _check_device_name(name)
    if len(set(devices)) != len(devices):
        raise ConfigError("a device name is given twice")
    out = Path(out)
    made = CertificateSet(
        ca_cert=out / "ca.pem",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        devices={name: _device_paths(out, name) for name in devices},
    )
    _refuse_existing(
        [made.ca_cert, made.ca_key, made.server_cert, made.server_key]
        + [p for pair in made.devices.values() for p in pair]
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedge development CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(made.ca_cert, made.ca_key, ca_cert, ca_key)
    server_cert, server_key = _issue(
        ca_cert, ca_key, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, alt_names
    )
    _write_pair(made.server_cert, made.server_key, server_cert, server_key)
    for name, (cert_path, key_path) in made.devices.items():
        cert, key = _issue(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, days)
        _write_pair(cert_path, key_path, cert, key)
    return made


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, _Key]:
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load the CA of {ca_dir} (ca.pem and ca.key, from `certs init`): {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key")
    return cert, key


def issue_device_cert(ca_dir: Path, name: str, *, days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """One more device certificate from the CA in ``ca_dir``: ``devices/NAME.pem`` and
    ``devices/NAME.key`` there (ConfigError if either exists)."""
    _check_days(days)
    _check_device_name(name)
    ca_dir = Path(ca_dir)
    paths = _device_paths(ca_dir, name)
    _refuse_existing(paths)
    ca_cert, ca_key = _load_ca(ca_dir)
    cert, key = _issue(ca_cert, ca_key, name, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    _write_pair(*paths, cert, key)
    return paths
