"""The daemon in-process against a real coordinator, with transports that misbehave:

- a response lost after the coordinator accepted an update: the outbox resends it with the
  same Idempotency-Key, and the coordinator counts it once;
- acceptance 4: a download whose sha256 differs from the manifest is rejected, the error
  is logged and recorded, and the previous model keeps serving; the rejected version is
  not downloaded again until its quarantine ends, then the clean download is taken.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edge_client.backoff import BackoffPolicy
from edge_client.cli import main
from edge_client.daemon import Daemon, DaemonConfig
from edge_client.errors import TransportError
from edge_client.model import EdgeModel
from edge_client.state import write_token
from edge_client.transport import DEFAULT_TIMEOUT, CoordinatorClient, HttpResponse, HttpTransport
from tests.support.edge import admin, coordinator, taxi_rows, wait_committed, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)


class MisbehavingTransport:
    """HttpTransport, except: the first update's response is lost after the server got it,
    and while ``tamper`` is set, downloads of that file of that version arrive corrupted."""

    def __init__(self) -> None:
        self.inner = HttpTransport()
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        self.lose_update_response = True
        self.tamper: tuple[str, str] | None = None

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        self.sent.append((method, url, dict(headers)))
        response = self.inner.request(method, url, headers=headers, body=body, timeout=timeout)
        if url.endswith("/updates") and self.lose_update_response:
            self.lose_update_response = False
            raise TransportError("connection reset while reading the response")
        if self.tamper is not None and url.endswith("/models/{}/files/{}".format(*self.tamper)):
            corrupted = bytearray(response.body)
            corrupted[len(corrupted) // 2] ^= 0xFF
            return HttpResponse(response.status, response.headers, bytes(corrupted))
        return response

    def close(self) -> None:
        self.inner.close()


def _step_until(daemon: Daemon, wanted: str, *, limit: int = 20) -> list[str]:
    outcomes = []
    for _ in range(limit):
        outcomes.append(daemon.step())
        if outcomes[-1] == wanted:
            return outcomes
    raise AssertionError(f"no {wanted!r} step in {outcomes}")


def test_lost_response_and_corrupted_download(
    edge_taxi_bundle: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    write_csv(data / "trips.csv", taxi_rows(0, 200))
    transport = MisbehavingTransport()
    with coordinator(tmp_path, edge_taxi_bundle, "taxi") as server:
        registration = CoordinatorClient(server.url, HttpTransport()).register(region="north")
        write_token(tmp_path / "token", registration.token)
        config = DaemonConfig(
            coordinator=server.url,
            token_file=tmp_path / "token",
            data_dir=data,
            state_dir=state,
            backoff=BackoffPolicy(base=0.05, cap=0.2),
            settle_seconds=0,
        )
        now = [time.time()]  # the daemon's clock, moved on to end a model's quarantine
        daemon = Daemon(
            config, transport=transport, rng=np.random.default_rng(0), clock=lambda: now[0]
        )

        # A lost response: resent with the same key, counted once.
        admin(server.url, "POST", "/v1/rounds", {})
        assert _step_until(daemon, "handled")[-1] == "handled"
        assert daemon.step() == "unreachable"  # the update arrived, its answer did not
        daemon.step()  # resent: acknowledged as a duplicate, the outbox empties
        round_ = wait_committed(server.url, 1)
        uploads = [h for m, u, h in transport.sent if u.endswith("/updates")]
        assert len(uploads) == 2
        assert uploads[0]["Idempotency-Key"] == uploads[1]["Idempotency-Key"]
        assert round_["num_updates"] == 1
        assert len(daemon.state.outbox) == 0
        assert "delivered train reply" in caplog.text

        # Acceptance 4: v2 arrives corrupted; v1 keeps serving.
        assert daemon.state.current_version == "v1"
        admin(server.url, "POST", "/v1/tasks", {"kind": "evaluate"})
        transport.tamper = ("v2", "weights.safetensors")
        assert _step_until(daemon, "model_rejected")[-1] == "model_rejected"
        assert daemon.state.current_version == "v1"
        assert daemon.state.bundles.versions() == ["v1"]
        assert not [p for p in (state / "bundles").iterdir() if p.name.startswith(".")]
        status = json.loads((state / "status.json").read_text())
        assert "sha256" in status["last_error"]["message"]
        assert status["model_version"] == "v1"
        rejected = [r for r in caplog.records if "model v2 rejected" in r.getMessage()]
        assert rejected
        assert rejected[0].levelno == logging.ERROR
        assert "weights.safetensors has sha256" in rejected[0].getMessage()

        serving = EdgeModel.load(daemon.state.current_bundle() or tmp_path / "none")
        assert serving.version == "v1"
        rows = taxi_rows(500, 20)
        write_csv(tmp_path / "query.csv", rows)
        capsys.readouterr()
        assert main(["predict", "--state", str(state), "--input", str(tmp_path / "query.csv"),
                     "--json"]) == 0  # fmt: skip
        predicted = json.loads(capsys.readouterr().out)
        assert predicted["model_version"] == "v1"
        assert predicted["count"] == len(rows)

        # The rejected version is not downloaded again while it is in quarantine.
        transport.tamper = None
        downloads = sum(1 for _, u, _ in transport.sent if "/models/v2/" in u)
        assert daemon.step() == "model_rejected"
        assert sum(1 for _, u, _ in transport.sent if "/models/v2/" in u) == downloads

        # Clean bytes once the quarantine is over: the new version is verified and taken,
        # v1 kept as previous.
        now[0] += config.retry_rejected_after + 1
        assert _step_until(daemon, "handled")[-1] == "handled"
        assert daemon.state.current_version == "v2"
        assert daemon.state.previous_version == "v1"
        daemon.step()
        assert len(daemon.state.outbox) == 0
        daemon.client.close()
