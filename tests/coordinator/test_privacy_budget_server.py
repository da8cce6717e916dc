"""Loopback integration: a real coordinator serving DP rounds with ``--privacy-budget``
commits the round that fits the budget, refuses the next before it starts, says why, raises
the alert, opens no further round, and keeps serving the production model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dp_accounting import dp_event, rdp

from tests.support import REPO_ROOT
from tests.support.coordinator import (
    EdgeClient,
    admin_client,
    local_training,
    make_bundle,
    production_digest,
    running_server,
    serve_command,
    wait_for,
    write_admin_token,
)


def _epsilon(rounds: int) -> float:
    """dp-accounting's epsilon of ``rounds`` rounds at z 1.0, q 2/2 and delta 1e-5."""
    accountant = rdp.RdpAccountant()
    event = dp_event.PoissonSampledDpEvent(1.0, dp_event.GaussianDpEvent(1.0))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(1e-5))


def test_the_budget_stops_training_on_a_real_server(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    settings = tmp_path / "rounds.json"
    settings.write_text(json.dumps({"dp_delta": 1e-5}))
    one, two = _epsilon(1), _epsilon(2)
    budget = (one + two) / 2
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--clients-per-round", "2", "--min-clients", "2", "--deadline-seconds", "60",
        "--retry-after", "1", "--round-config", str(settings),
        "--dp-noise-multiplier", "1.0", "--dp-clip", "0.5",
        "--privacy-budget", f"{budget!r}",
    )  # fmt: skip
    with running_server(command, tmp_path) as server, admin_client(server.url) as admin:
        clients = [EdgeClient(server.url, "north") for _ in range(2)]
        for i, client in enumerate(clients):
            task = wait_for(client.poll)
            assert task["round_id"] == 1
            _, weights = client.download(task["model_version"])
            response = client.upload(task, local_training(weights, seed=i).delta(weights), 20)
            assert response.status_code == 201, response.text
        wait_for(lambda: admin.show_round(1)["state"] == "committed")
        refused = wait_for(lambda: (r := admin.show_round(2))["state"] == "failed" and r)
        reason = f"privacy budget exhausted: epsilon would be {two:.4g}, budget {budget:g}"
        assert refused["failure_reason"] == reason
        alerts = admin.list_alerts(kind="privacy_budget_exhausted")
        assert len(alerts) == 1
        assert reason in alerts[0]["message"]
        production = admin.show_model("current")
        assert production["version"] == "v2"
        assert abs(production["privacy"]["epsilon"] - one) <= 1e-9 * one
        assert production["privacy"]["delta"] == 1e-5
        digest = production_digest(server.url)
        time.sleep(2.0)  # ten ticks of 0.2 s: no round opens, nothing fails again
        assert [r["state"] for r in admin.list_rounds()] == ["committed", "failed"]
        assert len(admin.list_alerts(kind="privacy_budget_exhausted")) == 1
        assert clients[0].poll() is None
        assert production_digest(server.url) == digest
        assert admin.show_model("current")["version"] == "v2"
    assert "privacy budget exhausted" in server.log()
    listing = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "models", "list",
         "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0][5] == "epsilon"
    assert (rows[1][0], rows[1][5]) == ("v1", "0")
    assert (rows[2][0], rows[2][5]) == ("v2", f"{one:.4g}")
