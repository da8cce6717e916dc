"""Development certificates: ``fedge-coordinator certs init|device`` and coordinator.certs."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.certs import init_certs
from coordinator.cli import main
from coordinator.tls import TlsFiles, server_ssl_context
from fedge.errors import ConfigError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_certs_init_writes_the_layout_with_private_keys_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    argv = ["certs", "init", "--out", str(out), "--device", "pump-1", "--device", "pump-2"]
    assert main(argv) == 0
    assert _files(out) == [
        "ca.key", "ca.pem",
        "devices/pump-1.key", "devices/pump-1.pem", "devices/pump-2.key", "devices/pump-2.pem",
        "server.key", "server.pem",
    ]  # fmt: skip
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / name) for name in _files(out))
    for key in ("ca.key", "server.key", "devices/pump-1.key", "devices/pump-2.key"):
        assert _mode(out / key) == 0o600, key
    assert _mode(out / "ca.pem") == 0o644


def test_server_certificate_names_its_hosts_and_defaults_to_the_loopback(tmp_path: Path) -> None:
    default = init_certs(tmp_path / "default")
    names = _cert(default.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert main(["certs", "init", "--out", str(tmp_path / "lan"), "--host", "coordinator.lan",
                 "--host", "10.0.0.5", "--host", "::1"]) == 0  # fmt: skip
    lan = _cert(tmp_path / "lan" / "server.pem")
    alt = lan.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["coordinator.lan"]
    assert alt.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    usage = lan.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert lan.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "coordinator.lan"


def test_device_and_server_certificates_verify_against_the_ca_only(tmp_path: Path) -> None:
    made = init_certs(tmp_path / "pki", devices=["pump-1"])
    other = init_certs(tmp_path / "other", devices=["pump-1"])
    ca = _cert(made.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    device = _cert(made.devices["pump-1"][0])
    device.verify_directly_issued_by(ca)
    _cert(made.server_cert).verify_directly_issued_by(ca)
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pump-1"
    usage = device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(InvalidSignature):
        _cert(other.devices["pump-1"][0]).verify_directly_issued_by(ca)
    # The server's pair loads, and a client context trusting the CA accepts the server cert.
    mutual = server_ssl_context(TlsFiles(made.server_cert, made.server_key, made.ca_cert))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ssl_context(TlsFiles(made.server_cert, made.server_key)).verify_mode == (
        ssl.CERT_NONE
    )
    client = ssl.create_default_context(cafile=made.ca_cert)
    client.load_cert_chain(*made.devices["pump-1"])


def test_certs_device_issues_one_more_device_certificate_from_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = init_certs(tmp_path / "pki")
    assert main(["certs", "device", "--ca-dir", str(tmp_path / "pki"), "pump-9"]) == 0
    cert_path, key_path = tmp_path / "pki/devices/pump-9.pem", tmp_path / "pki/devices/pump-9.key"
    assert capsys.readouterr().out.split() == [str(cert_path), str(key_path)]
    _cert(cert_path).verify_directly_issued_by(_cert(made.ca_cert))
    assert _mode(key_path) == 0o600


def test_certs_refuse_to_overwrite_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "init", "--out", str(out), "--device", "pump-1"]) == 0
    before = {name: (out / name).read_bytes() for name in _files(out)}
    capsys.readouterr()
    assert main(["certs", "init", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedge-coordinator: error: refusing to overwrite")
    assert str(out / "ca.key") in err
    assert main(["certs", "device", "--ca-dir", str(out), "pump-1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in _files(out)} == before
    # A device file alone already there: nothing at all is written.
    fresh = tmp_path / "fresh"
    (fresh / "devices").mkdir(parents=True)
    (fresh / "devices" / "pump-2.key").write_text("mine")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_certs(fresh, devices=["pump-2"])
    assert _files(fresh) == ["devices/pump-2.key"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "../escape"], "device name '../escape'"),
        (["--device", "a", "--device", "a"], "a device name is given twice"),
        (["--host", "bad host"], "host 'bad host' is not a DNS name or an IP address"),
        (["--days", "0"], "days must be an integer >= 1"),
    ],
)
def test_certs_init_refuses_bad_names_and_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "pki"
    assert main(["certs", "init", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_certs_device_without_a_ca_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "device", "--ca-dir", str(tmp_path), "pump-1"]) == 2
    assert "cannot load the CA of" in capsys.readouterr().err
    assert not (tmp_path / "devices").exists()
