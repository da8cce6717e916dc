"""A man in the middle on a real socket: an HTTP proxy on loopback between the edge
transport and a real coordinator rewrites a model's manifest and weights to all-zero
weights, (a) leaving the sha256 fields as they were, (b) fixing every sha256 field and
header so that the forgery is consistent.

The device's bundle store with its pinned key refuses both (b: the Ed25519 signature does
not verify) and leaves nothing behind; the same store without the signature check (the
checks that existed before signatures) takes forgery (b): the attack the signature stops.
Also: a state without a pinned key pins on first contact and says so; the coordinator's
key ring, ``keys show``, the registry's key id per version, and the offline-signed bundle
that ``serve --trusted-bundle-key`` imports or refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import stat
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from coordinator.cli import main as coordinator_main
from edge_client.bundles import BundleStore
from edge_client.errors import ModelRejected
from edge_client.state import ClientState
from edge_client.transport import CoordinatorClient, HttpTransport
from edge_client.trust import ManifestTrust, pin_coordinator_key
from fedge.bundle import MANIFEST_NAME, WEIGHTS_FILE
from fedge.signing import (
    SigningKey,
    key_id,
    public_key_from_text,
    read_signature_file,
    verify_manifest,
)
from fedge.weights import Weights
from quantize.cli import quantize_cli
from tests.support.coordinator import ServerProcess, admin_request, make_bundle


def _zeros(safetensors: bytes) -> bytes:
    weights = Weights.from_bytes(safetensors)
    return Weights({n: np.zeros_like(weights[n]) for n in weights.names}).to_bytes()


_Answer = tuple[int, dict[str, str], bytes]


class _Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.attack: str | None = None  # None, "unfixed" or "fixed"
        self.rewritten: list[str] = []

    def forward(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def answer(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        status, answer_headers, body = self.forward(method, path, headers)
        if self.attack is None or status != 200:
            return status, answer_headers, body
        fixed = self.attack == "fixed"
        if path.endswith("/manifest"):
            _, _, weights = self.forward("GET", path[: -len("manifest")] + "weights", headers)
            zeros = _zeros(weights)
            manifest = json.loads(body)
            if fixed:
                entry = {"sha256": hashlib.sha256(zeros).hexdigest(), "size": len(zeros)}
                manifest["files"][WEIGHTS_FILE] = entry
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            self.rewritten.append("manifest")
        elif path.endswith(f"/files/{WEIGHTS_FILE}"):
            body = _zeros(body)
            self.rewritten.append("weights")
        else:
            return status, answer_headers, body
        if fixed:
            answer_headers["X-Fedge-Sha256"] = hashlib.sha256(body).hexdigest()
            answer_headers.pop("ETag", None)
        answer_headers["Content-Length"] = str(len(body))
        return status, answer_headers, body


@contextlib.contextmanager
def mitm_proxy(upstream: str) -> Iterator[tuple[str, _Proxy]]:
    """A forwarding HTTP proxy on a free loopback port; its URL and its controls."""
    proxy = _Proxy(upstream)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            keep = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            status, headers, body = proxy.answer("GET", self.path, keep)
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("connection", "transfer-encoding", "date", "server"):
                    self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", proxy
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _enrolled(url: str, state_dir: Path) -> tuple[ClientState, str]:
    """A registered device state with the coordinator's key pinned at enrollment."""
    client = CoordinatorClient(url, HttpTransport())
    token = client.register(region="north").token
    state = ClientState(state_dir)
    assert pin_coordinator_key(state, client, how="enrollment") is not None
    client.close()
    return state, token


@pytest.mark.parametrize("attack", ["unfixed", "fixed"])
def test_a_proxy_that_rewrites_the_model_is_refused_only_by_the_signature_when_consistent(
    serve: Callable[..., ServerProcess], tmp_path: Path, attack: str
) -> None:
    server = serve()
    state, token = _enrolled(server.url, tmp_path / "device")
    with mitm_proxy(server.url) as (proxy_url, proxy):
        client = CoordinatorClient(proxy_url, HttpTransport(), token=token)
        trust = ManifestTrust(state, client)
        good = state.bundles.fetch(client, "v1", verify=trust)  # honest: passes through
        assert (good / "manifest.sig").is_file()
        pinned = public_key_from_text(state.trust()["public_key"])
        offline = verify_manifest(
            (good / MANIFEST_NAME).read_bytes(), read_signature_file(good), {key_id(pinned): pinned}
        )
        assert offline == state.trust()["key_id"]
        served = (good / WEIGHTS_FILE).read_bytes()

        proxy.attack = attack
        protected = BundleStore(tmp_path / "protected")
        with pytest.raises(ModelRejected) as refused:
            protected.fetch(client, "v1", verify=trust)
        assert "manifest" in proxy.rewritten
        reason = str(refused.value)
        if attack == "fixed":
            assert "signature does not verify" in reason
        else:
            assert "sha256" in reason
        assert protected.versions() == []
        assert not list((tmp_path / "protected").iterdir())  # nothing half-written
        assert (good / WEIGHTS_FILE).read_bytes() == served  # the good copy is untouched

        # The checks that existed before signatures, alone: the consistent forgery passes.
        unprotected = BundleStore(tmp_path / "unprotected")
        if attack == "fixed":
            taken = unprotected.fetch(client, "v1")
            weights = Weights.from_bytes((taken / WEIGHTS_FILE).read_bytes())
            assert all(not np.any(weights[n]) for n in weights.names)  # all zero: accepted
        else:
            with pytest.raises(ModelRejected, match="sha256"):
                unprotected.fetch(client, "v1")
        client.close()
    assert admin_request(server.url, "/healthz")["status"] == "ok"


def test_a_state_without_a_pinned_key_pins_on_first_contact(
    serve: Callable[..., ServerProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = serve()
    client = CoordinatorClient(server.url, HttpTransport())
    token = client.register(region="north").token
    client = CoordinatorClient(server.url, HttpTransport(), token=token)
    state = ClientState(tmp_path / "device")
    assert state.trust() == {}
    state.bundles.fetch(client, "v1", verify=ManifestTrust(state, client))
    assert state.trust()["how"] == "first contact"
    keys = admin_request(server.url, "/v1/keys")
    assert state.trust()["key_id"] == keys["current"]["key_id"]
    assert "pinned key" in caplog.text
    assert "trust on first use" in caplog.text
    client.close()


def test_key_ring_show_and_registry_key_id(
    serve: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve()
    ring = tmp_path / "artifacts" / "keys"
    key_file = ring / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    capsys.readouterr()
    assert coordinator_main(["keys", "show", "--keys", str(ring), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == admin_request(server.url, "/v1/keys")
    assert shown["current"]["key_id"] == SigningKey.load(key_file).key_id
    models = admin_request(server.url, "/v1/models")["models"]
    assert [m["signing_key_id"] for m in models] == [shown["current"]["key_id"]]
    assert models[0]["signature"].startswith(shown["current"]["key_id"] + ":")


def test_serve_imports_only_a_bundle_signed_by_the_trusted_key(
    serve: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    make_bundle(bundle)
    publisher, stranger = SigningKey.generate(), SigningKey.generate()
    publisher.save(tmp_path / "publisher.pem")
    stranger.save(tmp_path / "stranger.pem")
    trusted = tmp_path / "publisher.pub.pem"
    trusted.write_bytes(
        publisher.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    refused_args = ["serve", "--task", "taxi", "--bundle", str(bundle), "--db",
                    str(tmp_path / "refused.db"), "--artifacts", str(tmp_path / "refused"),
                    "--open-enrollment", "--trusted-bundle-key", str(trusted)]  # fmt: skip
    assert coordinator_main(refused_args) == 2  # unsigned
    assert "the manifest is not signed" in capsys.readouterr().err

    assert quantize_cli(["sign", "--key", str(tmp_path / "stranger.pem"), str(bundle)]) == 0
    assert coordinator_main(refused_args) == 2  # signed, by a key it does not trust
    assert "does not trust" in capsys.readouterr().err

    capsys.readouterr()
    assert (
        quantize_cli(["sign", "--key", str(tmp_path / "publisher.pem"), str(bundle), "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["key_id"] == publisher.key_id
    server = serve("--trusted-bundle-key", str(trusted))
    assert [m["version"] for m in admin_request(server.url, "/v1/models")["models"]] == ["v1"]
