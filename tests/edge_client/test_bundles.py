"""Bundle downloads: every file checked against the manifest, nothing half-written kept."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from edge_client.bundles import BundleStore
from edge_client.model import EdgeModel
from edge_client.transport import CoordinatorClient, FunctionTransport, HttpResponse
from fedge.bundle import read_manifest, write_manifest
from fedge.errors import BundleError
from fedge.weights import Weights

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)

Tamper = Callable[[str, bytes], bytes]


class BundleServer:
    """Serves bundle directories by version, like the coordinator's download routes."""

    def __init__(self, bundles: Mapping[str, Path]) -> None:
        self.bundles = dict(bundles)
        self.downloads: list[str] = []
        self.tamper: Tamper | None = None
        self.claimed_manifest_sha: str | None = None

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        path = url.split("/v1/models/", 1)[1]
        version, _, rest = path.partition("/")
        name = "manifest.json" if rest == "manifest" else rest.removeprefix("files/")
        if version not in self.bundles:
            return HttpResponse(404, {}, json.dumps({"error": "model_not_found"}).encode())
        self.downloads.append(f"{version}/{name}")
        data = (self.bundles[version] / name).read_bytes()
        sha = self.claimed_manifest_sha or hashlib.sha256(data).hexdigest()
        if self.tamper is not None:
            data = self.tamper(name, data)
        return HttpResponse(200, {"X-Fedge-Sha256": sha}, data)


def _client(server: BundleServer) -> CoordinatorClient:
    return CoordinatorClient("http://coordinator.test", FunctionTransport(server), token="t")


def _round_version(bundle: Path, directory: Path, version: str) -> Path:
    """A copy of ``bundle`` as the coordinator derives a round version: new weights only."""
    shutil.copytree(bundle, directory)
    weights = Weights.from_bytes((bundle / "weights.safetensors").read_bytes())
    (directory / "weights.safetensors").write_bytes(
        Weights({n: a * 0.5 for n, a in weights.items()}).to_bytes()
    )
    m = read_manifest(bundle)
    write_manifest(
        directory, model_version=version, task=m.task, schema=m.schema,
        feature_spec=m.feature_spec, train_batch_size=m.train_batch_size,
        created_at=m.created_at, head=m.head, extra_files=["backbone.tflite"],
    )  # fmt: skip
    return directory


def test_download_is_verified_and_kept(edge_taxi_bundle: Path, tmp_path: Path) -> None:
    server = BundleServer({"taxi-v1": edge_taxi_bundle})
    store = BundleStore(tmp_path / "bundles")
    path = store.fetch(_client(server), "taxi-v1")
    assert EdgeModel.load(path).version == "taxi-v1"
    assert len(server.downloads) == 6  # the manifest and the five files it lists
    store.fetch(_client(server), "taxi-v1")
    assert len(server.downloads) == 6  # already here: nothing downloaded again


def test_round_version_downloads_only_what_changed(edge_taxi_bundle: Path, tmp_path: Path) -> None:
    v2 = _round_version(edge_taxi_bundle, tmp_path / "served-v2", "taxi-v2")
    server = BundleServer({"taxi-v1": edge_taxi_bundle, "taxi-v2": v2})
    store = BundleStore(tmp_path / "bundles")
    store.fetch(_client(server), "taxi-v1")
    server.downloads.clear()
    store.fetch(_client(server), "taxi-v2")
    assert server.downloads == ["taxi-v2/manifest.json", "taxi-v2/weights.safetensors"]
    assert EdgeModel.load(store.path("taxi-v2")).version == "taxi-v2"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == "trainable.tflite" else d, "sha256"),
        (lambda n, d: d + b"\0" if n == "weights.safetensors" else d, "bytes, the manifest"),
        (lambda n, d: d[:100] if n == "inference.tflite" else d, "bytes, the manifest"),
    ],
    ids=["flipped-bit", "extra-byte", "truncated"],
)
def test_corrupted_file_is_rejected_and_nothing_is_kept(
    edge_taxi_bundle: Path, tmp_path: Path, tamper: Tamper, message: str
) -> None:
    server = BundleServer({"taxi-v1": edge_taxi_bundle})
    server.tamper = tamper
    store = BundleStore(tmp_path / "bundles")
    with pytest.raises(BundleError, match=message):
        store.fetch(_client(server), "taxi-v1")
    assert list((tmp_path / "bundles").iterdir()) == []


def test_manifest_that_does_not_match_its_digest_is_rejected(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    server = BundleServer({"taxi-v1": edge_taxi_bundle})
    server.claimed_manifest_sha = "0" * 64
    with pytest.raises(BundleError, match=r"manifest.json has sha256"):
        BundleStore(tmp_path).fetch(_client(server), "taxi-v1")


def test_manifest_of_another_version_is_rejected(edge_taxi_bundle: Path, tmp_path: Path) -> None:
    server = BundleServer({"taxi-v7": edge_taxi_bundle})
    with pytest.raises(BundleError, match="the manifest is for taxi-v1"):
        BundleStore(tmp_path).fetch(_client(server), "taxi-v7")


def test_unsafe_version_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unsafe"):
        BundleStore(tmp_path).path("../etc")


def test_a_bundle_changed_on_disk_fails_verification_when_loaded(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(edge_taxi_bundle, copy)
    with open(copy / "weights.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256"):
        EdgeModel.load(copy)
