"""Signed models against a man in the middle: a real coordinator on loopback, the real
daemon, and a transport between them that rewrites model v2's manifest and weights to
all-zero weights.

- Without fixing the sha256 fields the device refuses on the sha256 (as before).
- Fixing every sha256 field and header consistently passes every sha256 check: only the
  coordinator's Ed25519 signature over the manifest stops it. The pinned device refuses
  with a signature reason in its status and keeps serving v1; a device whose signature
  check is turned off (the test-only switch) takes the all-zero model.
- Key rotation: after ``fedge-coordinator keys rotate`` a device that pinned the first key
  accepts the new key's manifests through the rotation statement; a forged statement is
  refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as coordinator_main
from edge_client.backoff import BackoffPolicy
from edge_client.cli import main as edge_main
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.model import EdgeModel
from edge_client.transport import DEFAULT_TIMEOUT, HttpResponse, HttpTransport
from fedge.bundle import WEIGHTS_FILE
from fedge.signing import SigningKey
from fedge.weights import Weights
from tests.support.edge import admin, coordinator, taxi_rows, wait_committed, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)


class ManInTheMiddle:
    """HttpTransport, except that while ``version`` is set, that version's manifest and
    weights are rewritten to all-zero weights; with ``fix_sha256`` the manifest's weights
    entry and both ``X-Fedge-Sha256`` headers are made to match the forgery. With
    ``forger`` the forged manifest is also signed by the forger's key, and a rotation
    statement naming that key (signed by the forger, not the pinned key) is slipped into
    ``/v1/keys``."""

    def __init__(self, *, fix_sha256: bool, forger: SigningKey | None = None) -> None:
        self.inner = HttpTransport()
        self.fix_sha256 = fix_sha256
        self.forger = forger
        self.version: str | None = None
        self.rewritten: list[str] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        response = self.inner.request(method, url, headers=headers, body=body, timeout=timeout)
        if self.version is None or response.status != 200:
            return response
        prefix = f"/v1/models/{self.version}/"
        if url.endswith("/v1/keys") and self.forger is not None:
            document = response.json()
            document["rotations"].append(self._forged_statement(document))
            return HttpResponse(200, response.headers, json.dumps(document).encode())
        if url.endswith(prefix + "manifest"):
            original = self.inner.request(
                "GET", url[: -len("manifest")] + "weights", headers=headers, timeout=timeout
            )
            zeros = _zeros(original.body)
            manifest = json.loads(response.body)
            if self.fix_sha256:
                entry = {"sha256": hashlib.sha256(zeros).hexdigest(), "size": len(zeros)}
                manifest["files"][WEIGHTS_FILE] = entry
            forged = json.dumps(manifest, indent=2, sort_keys=True).encode()
            self.rewritten.append("manifest")
            return self._answer(response, forged)
        if url.endswith(prefix + f"files/{WEIGHTS_FILE}"):
            self.rewritten.append("weights")
            return self._answer(response, _zeros(response.body))
        return response

    def _forged_statement(self, document: dict[str, object]) -> dict[str, str]:
        assert self.forger is not None
        current = document["current"]
        assert isinstance(current, dict)
        statement = self.forger.endorse(self.forger.public_key).to_dict()
        return {**statement, "previous_key_id": str(current["key_id"])}

    def _answer(self, response: HttpResponse, body: bytes) -> HttpResponse:
        headers = dict(response.headers)
        if self.fix_sha256:
            headers["x-fedge-sha256"] = hashlib.sha256(body).hexdigest()
        if self.forger is not None and "x-fedge-signature" in headers:
            headers["x-fedge-signature"] = self.forger.sign(body)
        return HttpResponse(response.status, headers, body)

    def close(self) -> None:
        self.inner.close()


def _zeros(safetensors: bytes) -> bytes:
    weights = Weights.from_bytes(safetensors)
    return Weights({name: np.zeros_like(weights[name]) for name in weights.names}).to_bytes()


def _step_until(daemon: Daemon, wanted: str, *, limit: int = 20) -> list[str]:
    outcomes = []
    for _ in range(limit):
        outcomes.append(daemon.step())
        if outcomes[-1] == wanted:
            return outcomes
    raise AssertionError(f"no {wanted!r} step in {outcomes}")


def _device(
    tmp_path: Path, name: str, url: str, transport: ManInTheMiddle, *, verify: bool = True
) -> Daemon:
    data, state, token = tmp_path / f"{name}-data", tmp_path / f"{name}-state", tmp_path / name
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 200))
    args = ["register", "--coordinator", url, "--token-file", str(token), "--state", str(state)]
    assert edge_main(args) == 0
    config = DaemonConfig(
        coordinator=url,
        token_file=token,
        data_dir=data,
        state_dir=state,
        backoff=BackoffPolicy(base=0.05, cap=0.2),
        settle_seconds=0,
        verify_signatures=verify,
    )
    return Daemon(config, transport=transport, rng=np.random.default_rng(0))


def _serving_weights(daemon: Daemon) -> Weights:
    bundle = daemon.state.current_bundle()
    assert bundle is not None
    return Weights.from_bytes((bundle / WEIGHTS_FILE).read_bytes())


@pytest.mark.parametrize("fix_sha256", [False, True], ids=["sha256-unfixed", "sha256-fixed"])
def test_a_rewritten_model_is_refused_and_the_last_good_model_keeps_serving(
    edge_taxi_bundle: Path, tmp_path: Path, fix_sha256: bool
) -> None:
    mitm = ManInTheMiddle(fix_sha256=fix_sha256)
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        pinned = _device(tmp_path, "pinned", server.url, mitm)
        trust = pinned.state.trust()
        assert trust["how"] == "enrollment"
        keys = admin(server.url, "GET", "/v1/keys")
        assert trust["key_id"] == keys["current"]["key_id"]

        admin(server.url, "POST", "/v1/rounds", {})
        assert _step_until(pinned, "handled")[-1] == "handled"
        pinned.step()  # delivers the update
        wait_committed(server.url, 1)
        assert pinned.state.current_version == "v1"
        assert (pinned.state.bundles.path("v1") / "manifest.sig").is_file()
        v1 = _serving_weights(pinned)

        unprotected = _device(tmp_path, "unprotected", server.url, mitm, verify=False)
        admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate"})
        mitm.version = "v2"

        assert _step_until(pinned, "model_rejected")[-1] == "model_rejected"
        assert "manifest" in mitm.rewritten
        assert pinned.state.current_version == "v1"
        assert pinned.state.bundles.versions() == ["v1"]
        status = json.loads((pinned.state.directory / "status.json").read_text())
        reason = status["rejected_models"]["v2"]["reason"]
        if fix_sha256:
            assert "signature does not verify" in reason
            assert "signature does not verify" in status["last_error"]["message"]
        else:
            assert "sha256" in reason
        served = _serving_weights(pinned)
        assert all(np.array_equal(served[n], v1[n]) for n in v1.names)
        assert EdgeModel.load(pinned.state.current_bundle() or tmp_path).version == "v1"

        # The same attack on a device whose signature check is off.
        outcomes = [unprotected.step() for _ in range(6)]
        if fix_sha256:
            assert "handled" in outcomes, outcomes
            assert unprotected.state.current_version == "v2"
            taken = _serving_weights(unprotected)
            assert all(not np.any(taken[name]) for name in taken.names)  # all zero: it worked
        else:
            assert "model_rejected" in outcomes  # the sha256 check alone catches this one
            assert unprotected.state.current_version != "v2"
        pinned.client.close()
        unprotected.client.close()


def test_a_pinned_device_follows_a_key_rotation_and_refuses_a_forged_one(
    edge_taxi_bundle: Path, tmp_path: Path
) -> None:
    mitm = ManInTheMiddle(fix_sha256=True)
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        device = _device(tmp_path, "device", server.url, mitm)
        first = device.state.trust()["key_id"]
        keys_dir = tmp_path / "artifacts" / "keys"
        assert coordinator_main(["keys", "rotate", "--keys", str(keys_dir)]) == 0
        rotated = admin(server.url, "GET", "/v1/keys")
        assert rotated["current"]["key_id"] != first
        assert rotated["rotations"][-1]["previous_key_id"] == first

        admin(server.url, "POST", "/v1/rounds", {})
        assert _step_until(device, "handled")[-1] == "handled"
        device.step()
        wait_committed(server.url, 1)
        models = admin(server.url, "GET", "/v1/models")["models"]
        assert [m["signing_key_id"] for m in models] == [first, rotated["current"]["key_id"]]

        admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate"})
        assert _step_until(device, "handled")[-1] == "handled"
        assert device.state.current_version == "v2"  # signed by the new key: accepted
        accepted = device.state.trust()["rotations"]
        assert [s["key_id"] for s in accepted] == [rotated["current"]["key_id"]]

        device.client.close()


def test_a_forged_rotation_statement_is_refused(edge_taxi_bundle: Path, tmp_path: Path) -> None:
    attacker = SigningKey.generate()
    mitm = ManInTheMiddle(fix_sha256=True, forger=attacker)
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        device = _device(tmp_path, "device", server.url, mitm)
        pinned = device.state.trust()["key_id"]
        admin(server.url, "POST", "/v1/rounds", {})
        assert _step_until(device, "handled")[-1] == "handled"
        device.step()
        wait_committed(server.url, 1)

        admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate"})
        mitm.version = "v2"
        assert _step_until(device, "model_rejected")[-1] == "model_rejected"
        status = json.loads((device.state.directory / "status.json").read_text())
        reason = status["rejected_models"]["v2"]["reason"]
        assert f"signed by key {attacker.key_id}, which this device does not trust" in reason
        assert device.state.current_version == "v1"
        trust = device.state.trust()
        assert trust["key_id"] == pinned
        assert not trust.get("rotations")  # the forged statement was not kept
        device.client.close()
