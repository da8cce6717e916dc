"""The coordinator's async mode (FedBuff): buffers of staleness-weighted updates, tasks on
demand, too-stale and malformed updates refused, exactly-once commits across a restart; the
service over SQLite, then the real server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.artifacts import ArtifactStore
from coordinator.config import AlertConfig, RoundConfig, ServiceConfig
from coordinator.errors import CoordinatorError
from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from coordinator.sqlite_store import SQLiteStore
from fedge.errors import ConfigError, ShapeMismatchError
from fedge.weights import Weights
from tests.support.coordinator import (
    EdgeClient,
    FakeClock,
    admin_request,
    build_service,
    delta,
    running_server,
    serve_command,
    submission,
    wait_for,
    write_admin_token,
)

ASYNC: dict[str, Any] = {"mode": "async", "buffer": 2, "max_staleness": 1, "quarantine": False}


def _client(service: CoordinatorService) -> ClientRecord:
    return service.authenticate(service.register_client().token)


def _production(service: CoordinatorService) -> Weights:
    return service.registry.weights(service.get_model("current"))


def _upload(service: CoordinatorService, client: ClientRecord, task: Any, seed: int) -> Any:
    return service.submit_update(
        client, submission(task.round_id, client.client_id, seed=seed, task_id=task.task_id)
    )


def _expected(base: Weights, parts: list[tuple[int, int]], buffer: int) -> Weights:
    """base + sum((1 + tau)^-1/2 * delta(seed)) / buffer, in float64."""
    return Weights(
        {
            name: base[name].astype(np.float64)
            + sum((1.0 + tau) ** -0.5 * delta(seed)[name].astype(np.float64) for seed, tau in parts)
            / buffer
            for name in base.names
        }
    )


def test_buffers_commit_the_staleness_weighted_mean_with_their_lineage(tmp_path: Path) -> None:
    service = build_service(tmp_path, **ASYNC)
    a, b, c, d = (_client(service) for _ in range(4))
    v1 = _production(service)
    # Every polling client gets a train task of the collecting buffer on production.
    tasks = {x.client_id: service.next_task(x) for x in (a, b, c, d)}
    assert all(t is not None and t.model_version == "v1" for t in tasks.values())
    assert {t.round_id for t in tasks.values() if t is not None} == {1}
    assert service.next_task(a) == tasks[a.client_id]  # its pending task, not a second one
    _upload(service, a, tasks[a.client_id], seed=11)
    assert service.get_round(1).state == "collecting"
    _upload(service, b, tasks[b.client_id], seed=12)
    first = service.get_round(1)
    assert first.state == "committed"
    assert first.measurements["staleness_max"] == 0.0
    v2 = service.get_model("current")
    assert v2.version == first.result_version
    assert v2.parent == "v1"
    assert v2.participants == 2
    assert _production(service).allclose(_expected(v1, [(11, 0), (12, 0)], 2), atol=1e-6)

    # c trained on v1: its update goes into buffer 2 with staleness 1 (weight 1/sqrt(2)).
    receipt = _upload(service, c, tasks[c.client_id], seed=13)
    assert receipt.round_id == 2
    retry = _upload(service, c, tasks[c.client_id], seed=13)
    assert retry.duplicate
    assert retry.round_id == 2
    # Its update is in buffer 2 already: no task of buffer 2 for it (a second would be refused).
    assert service.next_task(c) is None
    fresh = service.next_task(a)
    assert fresh is not None
    assert (fresh.round_id, fresh.model_version) == (2, v2.version)
    v2_weights = _production(service)
    _upload(service, a, fresh, seed=14)
    second = service.get_round(2)
    assert second.state == "committed"
    assert second.measurements["staleness_mean"] == pytest.approx(0.5)
    assert second.measurements["staleness_max"] == 1.0
    assert service.get_model("current").parent == v2.version
    assert _production(service).allclose(_expected(v2_weights, [(13, 1), (14, 0)], 2), atol=1e-6)

    # d still holds a task on v1, now two versions behind: refused, never stored.
    before = _production(service).digest()
    with pytest.raises(CoordinatorError) as stale:
        _upload(service, d, tasks[d.client_id], seed=15)
    assert stale.value.code == "too_stale"
    assert "max_staleness 1" in str(stale.value)
    assert service.round_updates(3) == []
    # Its stale task is expired when it polls again: it gets a fresh one on production.
    again = service.next_task(d)
    assert again is not None
    assert again.task_id != tasks[d.client_id].task_id  # type: ignore[union-attr]
    assert again.model_version == service.get_model("current").version
    # A malformed update (wrong shapes) is refused too.
    task_b = service.next_task(b)
    assert task_b is not None
    bad = Weights({name: np.zeros((3, 3), np.float32) for name in v1.names})
    with pytest.raises(ShapeMismatchError, match="expected shape"):
        service.submit_update(
            b,
            submission(3, b.client_id, body=bad.to_bytes(), task_id=task_b.task_id),
        )
    assert service.round_updates(3) == []
    assert _production(service).digest() == before


def test_a_buffer_commits_exactly_once_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    service = build_service(tmp_path, clock=clock, **ASYNC)
    a, b = _client(service), _client(service)
    task_a, task_b = service.next_task(a), service.next_task(b)
    assert task_a is not None
    assert task_b is not None
    first = _upload(service, a, task_a, seed=21)
    assert not first.duplicate
    del service  # the process dies with one update in the buffer

    restarted = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(task="taxi", rounds=RoundConfig(**ASYNC), alerts=AlertConfig()),
        now=clock,
    )
    assert _upload(restarted, a, task_a, seed=21).duplicate  # the device's retry
    assert restarted.get_round(1).state == "collecting"
    _upload(restarted, b, task_b, seed=22)
    assert _upload(restarted, b, task_b, seed=22).duplicate
    restarted.tick()
    committed = [r for r in restarted.list_rounds() if r.state == "committed"]
    assert [r.round_id for r in committed] == [1]
    assert [m.version for m in restarted.list_models()] == ["v1", committed[0].result_version]
    assert restarted.get_model("current").participants == 2


@pytest.mark.parametrize(
    ("options", "what"),
    [
        ({"secure_aggregation": True, "clients_per_round": 3, "min_clients": 3}, "secure"),
        ({"dp_noise_multiplier": 1.0}, "dp_noise_multiplier"),
        ({"gate": True}, "the gate"),
        ({"aggregator": "median"}, "aggregator"),
        ({"stats_every_round": True}, "stats_every_round"),
        ({"mode": "later"}, "mode must be one of"),
        ({"buffer": 0}, "buffer"),
        ({"max_staleness": -1}, "max_staleness"),
    ],
)
def test_async_mode_refuses_what_it_cannot_combine_with(options: dict[str, Any], what: str) -> None:
    with pytest.raises(ConfigError, match=what):
        RoundConfig.from_dict({"mode": "async", **options})


def test_sync_mode_is_unchanged_by_default() -> None:
    config = RoundConfig()
    assert config.mode == "sync"
    assert not config.buffered


def test_the_served_coordinator_runs_fedbuff_over_rest(tmp_path: Path) -> None:
    token_file = write_admin_token(tmp_path)
    bundle = tmp_path / "bundle"
    build_service(tmp_path / "probe")  # writes a bundle we can serve
    (tmp_path / "probe" / "bundle").rename(bundle)
    command = serve_command(
        tmp_path, bundle, token_file, "--mode", "async", "--buffer", "2", "--max-staleness", "1"
    )
    with running_server(command, tmp_path) as server:
        devices = [EdgeClient(server.url, "north") for _ in range(3)]
        tasks = [wait_for(device.poll) for device in devices]
        assert {t["model_version"] for t in tasks} == {"v1"}
        for device, task in zip(devices[:2], tasks[:2], strict=True):
            manifest, _ = device.download(task["model_version"])
            assert manifest.model_version == "v1"
            assert device.upload(task, delta(3), 10).status_code == 201
        first = wait_for(lambda: admin_request(server.url, "/v1/rounds/1")["state"] == "committed")
        assert first
        round_1 = admin_request(server.url, "/v1/rounds/1")
        assert round_1["config"]["mode"] == "async"
        assert round_1["measurements"]["staleness_max"] == 0.0
        # The third device trained on v1: its update lands in buffer 2, one version stale.
        response = devices[2].upload(tasks[2], delta(4), 10)
        assert response.status_code == 201, response.text
        assert response.json()["round_id"] == 2
