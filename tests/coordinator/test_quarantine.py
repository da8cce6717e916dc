"""Quarantine: updates of clients whose latest statistics show anomalies are kept, not
aggregated, listed with their reason and releasable (coordinator.quarantine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from coordinator.artifacts import ArtifactStore
from coordinator.cli import main
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.dataval.schema import save_schema
from coordinator.dataval.statistics import to_tfmd
from coordinator.errors import NotFoundError
from coordinator.quarantine import reference_schema
from coordinator.records import ClientRecord
from coordinator.service import CoordinatorService
from coordinator.store import MemoryStore
from fedge.messages import StatsReport, encode_message
from fedge.stats import DatasetStats
from fedge.weights import Weights
from tests.support.coordinator import (
    EdgeClient,
    FakeClock,
    admin_request,
    build_service,
    delta,
    local_training,
    make_bundle,
    running_server,
    serve_command,
    submission,
    training_stats,
    wait_for,
    write_admin_token,
)

CLEAN = training_stats(seed=5)
CORRUPTED = training_stats(seed=6, fare_mean=100.0)  # fares x10: a broken meter


def _clients(service: CoordinatorService, n: int) -> list[ClientRecord]:
    return [service.authenticate(service.register_client().token) for _ in range(n)]


def _report(service: CoordinatorService, client: ClientRecord, stats: DatasetStats) -> None:
    (task,) = service.create_tasks("stats", client_ids=[client.client_id])
    service.submit_stats(client, StatsReport(task.task_id, stats))


def _submit(service: CoordinatorService, round_id: int, clients: list[ClientRecord]) -> None:
    for i, client in enumerate(clients):
        service.submit_update(client, submission(round_id, client.client_id, seed=10 + i))


def _weights(service: CoordinatorService, version: str) -> Weights:
    return service.registry.weights(service.get_model(version))


def test_an_anomalous_clients_update_is_kept_but_not_aggregated(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=2)
    clients = _clients(service, 3)
    for client, stats in zip(clients, (CLEAN, CLEAN, CORRUPTED), strict=True):
        _report(service, client, stats)
    base = _weights(service, "v1")
    _submit(service, 1, clients)
    round_ = service.get_round(1)
    assert round_.state == "committed"
    assert round_.measurements["quarantined_updates"] == 1.0
    assert service.get_model("v2").participants == 2
    mean = {n: (delta(10)[n] + delta(11)[n]) / 2 for n in base.names}  # equal example counts
    assert _weights(service, "v2").allclose(
        Weights({n: base[n] + mean[n] for n in base.names}), atol=1e-6
    )
    (held,) = service.list_quarantined()
    assert held.client_id == clients[2].client_id
    assert held.round_id == 1
    assert held.quarantine is not None
    assert held.quarantine.startswith("anomalies in fare: The approximate Jensen-Shannon")
    assert service.artifacts.get_bytes(held.sha256) == delta(12).to_bytes()  # kept
    assert service.list_quarantined(clients[0].client_id) == []
    assert len(service.round_updates(1)) == 3


def test_without_statistics_reports_nothing_is_quarantined(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=2)
    clients = _clients(service, 3)
    _submit(service, 1, clients)
    round_ = service.get_round(1)
    assert round_.state == "committed"
    assert round_.measurements["quarantined_updates"] == 0.0
    assert service.get_model("v2").participants == 3
    assert service.list_quarantined() == []


@pytest.mark.parametrize("metadata", [{}, {"training_stats": {"num_rows": "many"}}])
def test_a_bundle_without_usable_training_statistics_judges_no_one(
    tmp_path: Path, metadata: dict[str, Any]
) -> None:
    make_bundle(tmp_path / "bundle", metadata=metadata)
    service = build_service(tmp_path, clients_per_round=3, min_clients=2)
    clients = _clients(service, 3)
    _report(service, clients[0], CORRUPTED)
    _submit(service, 1, clients)
    assert service.get_model("v2").participants == 3
    assert service.list_quarantined() == []


def test_quarantine_off_aggregates_every_update(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=2, quarantine=False)
    clients = _clients(service, 3)
    _report(service, clients[0], CORRUPTED)
    _submit(service, 1, clients)
    round_ = service.get_round(1)
    assert service.get_model(str(round_.result_version)).participants == 3
    assert "quarantined_updates" not in round_.measurements
    assert service.list_quarantined() == []


def test_a_round_left_with_too_few_updates_to_aggregate_fails(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=2)
    clients = _clients(service, 3)
    for client in clients[1:]:
        _report(service, client, CORRUPTED)
    _submit(service, 1, clients)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason == (
        "only 1 of the 2 required updates can be aggregated: 2 of the 3 that arrived are "
        "quarantined"
    )
    assert service.registry.production().version == "v1"
    assert sorted(u.client_id for u in service.list_quarantined()) == sorted(
        c.client_id for c in clients[1:]
    )


def test_release_counts_the_client_in_the_collecting_round_until_new_anomalies(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    service = build_service(tmp_path, clock=clock, clients_per_round=3, min_clients=2)
    clients = _clients(service, 3)
    suspect = clients[2]
    _report(service, suspect, CORRUPTED)
    _submit(service, 1, clients)
    assert [u.round_id for u in service.list_quarantined(suspect.client_id)] == [1]
    assert service.get_round(2).state == "collecting"
    service.submit_update(suspect, submission(2, suspect.client_id, seed=30))
    clock.advance(5)
    (released,) = service.release_quarantine(suspect.client_id)
    assert (released.round_id, released.released_at) == (1, clock.time)
    assert released.quarantine is not None  # the reason stays on the record
    assert service.list_quarantined() == []
    assert service.release_quarantine(suspect.client_id) == []
    _submit(service, 2, clients[:2])
    assert service.get_model(str(service.get_round(2).result_version)).participants == 3
    clock.advance(5)
    _report(service, suspect, CORRUPTED)  # new statistics, anomalous again
    service.submit_update(suspect, submission(3, suspect.client_id, seed=31))
    _submit(service, 3, clients[:2])
    assert service.get_model(str(service.get_round(3).result_version)).participants == 2
    assert [u.round_id for u in service.list_quarantined(suspect.client_id)] == [3]


def test_unknown_clients_are_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    with pytest.raises(NotFoundError) as listed:
        service.list_quarantined("c-nobody")
    assert listed.value.code == "client_not_found"
    with pytest.raises(NotFoundError):
        service.release_quarantine("c-nobody")


def test_stats_every_round_hands_a_stats_task_before_the_train_task(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2, stats_every_round=True)
    clients = _clients(service, 2)
    first = service.next_task(clients[0])
    assert first is not None
    assert (first.kind, first.round_id, first.task_id) == (
        "stats",
        1,
        f"r1-{clients[0].client_id}-stats",
    )
    service.submit_stats(clients[0], StatsReport(first.task_id, CORRUPTED))
    second = service.next_task(clients[0])
    assert second is not None
    assert (second.kind, second.task_id) == ("train", f"r1-{clients[0].client_id}")
    _submit(service, 1, clients)  # the second client's stats task is still pending
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert "1 of the 2 that arrived are quarantined" in str(round_.failure_reason)
    second_client = [
        t for t in service.store.list_tasks(round_id=1) if t.client_id == clients[1].client_id
    ]
    assert [(t.kind, t.status) for t in second_client] == [
        ("stats", "expired"),
        ("train", "completed"),
    ]


def test_a_configured_schema_is_validated_as_given(tmp_path: Path) -> None:
    schema = reference_schema(
        to_tfmd(CLEAN, name="training"), numeric_threshold=1.0, categorical_threshold=1.0
    )
    schema.feature.add(name="tip", type=schema_pb2.FLOAT)
    make_bundle(tmp_path / "bundle")
    service = CoordinatorService(
        store=MemoryStore(),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(
            task="taxi", rounds=RoundConfig(clients_per_round=2, min_clients=1), min_cohort=1
        ),
        now=FakeClock(),
        quarantine_schema=schema,
    )
    service.import_bundle(tmp_path / "bundle")
    clients = _clients(service, 2)
    _report(service, clients[0], CORRUPTED)  # within the loose thresholds, but no tip
    _submit(service, 1, clients)
    (held,) = service.list_quarantined()
    assert held.quarantine == "anomalies in tip: Column is completely missing"


def test_the_inferred_schema_compares_every_feature_and_asks_only_for_presence() -> None:
    schema = reference_schema(
        to_tfmd(CLEAN, name="training"), numeric_threshold=0.25, categorical_threshold=0.2
    )
    features = {f.name: f for f in schema.feature}
    assert sorted(features) == ["company", "fare", "miles"]
    assert features["fare"].skew_comparator.jensen_shannon_divergence.threshold == 0.25
    assert features["company"].skew_comparator.infinity_norm.threshold == pytest.approx(0.2)
    assert features["company"].distribution_constraints.min_domain_mass == pytest.approx(0.8)
    assert all(f.presence.min_fraction == 0.0 for f in schema.feature)
    assert all(f.presence.min_count == 1 for f in schema.feature)


def test_a_served_coordinator_quarantines_by_its_schema_file(tmp_path: Path) -> None:
    schema = reference_schema(
        to_tfmd(training_stats(), name="training"),
        numeric_threshold=0.3,
        categorical_threshold=0.3,
    )
    save_schema(schema, tmp_path / "schema.pbtxt")
    (tmp_path / "rounds.json").write_text(json.dumps({"stats_every_round": True}))
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--schema", str(tmp_path / "schema.pbtxt"), "--round-config", str(tmp_path / "rounds.json"),
        "--clients-per-round", "2", "--min-clients", "1", "--retry-after", "1",
    )  # fmt: skip
    with running_server(command, tmp_path) as server:
        clients = [EdgeClient(server.url, "north") for _ in range(2)]
        for i, (client, stats) in enumerate(zip(clients, (CORRUPTED, CLEAN), strict=True)):
            task = wait_for(client.poll)
            assert task["kind"] == "stats"
            document, _ = encode_message(StatsReport(task["task_id"], stats))
            sent = client.session.post(
                f"{server.url}/v1/stats", json=document, headers={"Idempotency-Key": f"s{i}"}
            )
            assert sent.status_code == 201, sent.text
            train = wait_for(client.poll)
            assert train["kind"] == "train"
            _, base = client.download(train["model_version"])
            assert client.upload(train, local_training(base, i).delta(base), 10).status_code == 201
        round_ = wait_for(lambda: _closed(server.url, 1))
        assert round_["state"] == "committed"
        assert round_["measurements"]["quarantined_updates"] == 1.0
        held = {u["client_id"]: u["quarantine"] for u in round_["updates"]}
        assert held[clients[1].client_id] is None
        assert str(held[clients[0].client_id]).startswith("anomalies in fare: ")
        model = admin_request(server.url, f"/v1/models/{round_['result_version']}")
        assert model["participants"] == 1


def _closed(url: str, round_id: int) -> dict[str, Any] | None:
    round_: dict[str, Any] = admin_request(url, f"/v1/rounds/{round_id}")
    return round_ if round_["state"] in ("committed", "failed") else None


def test_serve_refuses_an_unreadable_schema_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "bundle")
    (tmp_path / "schema.pbtxt").write_text("feature { nme: 'x' }")
    args = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts"),
            "--open-enrollment", "--schema", str(tmp_path / "schema.pbtxt")]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert f"--schema {tmp_path / 'schema.pbtxt'}: " in error[0]
