"""The model registry: bundle import and lineage, promote, rollback, events."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.errors import ConflictError, NotFoundError
from coordinator.service import CoordinatorService
from fedge.errors import BundleError, ConfigError
from tests.support.coordinator import build_service, make_bundle, submission


def _commit_round(service: CoordinatorService, round_id: int) -> str:
    """Register two clients if needed, run round ``round_id`` to commit; the new version."""
    if service.store.count_clients() < 2:
        for _ in range(2):
            service.register_client(region="north")
    if service.store.get_round(round_id) is None:
        service.open_round()
    round_ = service.get_round(round_id)
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(round_id, client_id, seed=round_id * 10 + i))
    committed = service.get_round(round_id)
    assert committed.state == "committed"
    return str(committed.result_version)


def test_imported_bundle_is_v1_production_with_lineage(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    model = service.get_model("current")
    assert (model.version, model.stage, model.parent) == ("v1", "production", None)
    assert (model.trainer_host, model.trainer_user) == ("trainer-7", "alice")
    assert model.training_job == "job-42"
    assert model.data_fingerprint == "sha256:" + "ab" * 32
    assert model.metrics["accuracy"] == 0.8
    assert model.slice_metrics["south"]["accuracy"] == 0.78
    assert model.promoted_at is not None
    manifest = service.registry.manifest(model)
    assert manifest.model_version == "v1"
    assert manifest.metadata["source_model_version"] == "taxi-20240501"
    assert [e.kind for e in service.model_events("v1")] == ["registered", "promoted"]


def test_reimporting_the_same_bundle_is_a_no_op(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    again = service.import_bundle(tmp_path / "bundle")
    assert again.version == "v1"
    assert len(service.list_models()) == 1


def test_a_new_bundle_registers_as_a_candidate_child_of_production(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    make_bundle(tmp_path / "retrained", seed=5, model_version="taxi-20240601")
    model = service.import_bundle(tmp_path / "retrained")
    assert (model.version, model.stage, model.parent) == ("v2", "candidate", "v1")
    assert service.get_model("current").version == "v1"


def test_bundle_for_another_task_is_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    make_bundle(tmp_path / "other", seed=3)
    service.config = type(service.config)(task="digits")
    with pytest.raises(ConfigError, match="the bundle is for task 'taxi', not 'digits'"):
        service.import_bundle(tmp_path / "other")


def test_corrupt_bundle_is_refused(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    make_bundle(tmp_path / "bad", seed=4)
    (tmp_path / "bad" / "trainable.tflite").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"trainable\.tflite"):
        service.import_bundle(tmp_path / "bad")
    assert len(service.list_models()) == 1


def test_promote_then_rollback_serves_the_previous_version(tmp_path: Path) -> None:
    service = build_service(tmp_path, continuous=False, auto_promote=False, min_clients=2,
                            clients_per_round=2)  # fmt: skip
    v2 = _commit_round(service, 1)
    assert v2 == "v2"
    assert service.get_model("v2").stage == "candidate"
    assert service.get_model("current").version == "v1"
    service.promote("v2")
    assert service.get_model("current").version == "v2"
    assert service.get_model("v1").stage == "archived"
    restored = service.rollback()
    assert restored.version == "v1"
    assert service.get_model("current").version == "v1"
    assert service.get_model("v2").stage == "archived"
    kinds = [(e.version, e.kind, e.previous) for e in service.model_events()]
    assert ("v2", "promoted", "v1") in kinds
    assert ("v1", "rolled_back", "v2") in kinds
    assert service.open_round().base_version == "v1"  # the next round trains v1 again


def test_rollback_without_a_previous_version_conflicts(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    with pytest.raises(ConflictError, match="no previous production version") as info:
        service.rollback()
    assert info.value.code == "no_previous_version"


def test_repeated_rollbacks_walk_back_the_promotion_history(tmp_path: Path) -> None:
    service = build_service(tmp_path, continuous=False, min_clients=2, clients_per_round=2,
                            auto_promote=True)  # fmt: skip
    assert _commit_round(service, 1) == "v2"
    assert _commit_round(service, 2) == "v3"
    assert service.rollback().version == "v2"
    assert service.rollback().version == "v1"


def test_rollback_fails_the_round_in_flight_on_the_rolled_back_version(tmp_path: Path) -> None:
    service = build_service(tmp_path, min_clients=2, clients_per_round=2)
    assert _commit_round(service, 1) == "v2"
    assert service.get_round(2).base_version == "v2"
    service.rollback()
    failed = service.store.get_round(2)
    assert failed is not None
    assert failed.state == "failed"
    assert "no longer production" in str(failed.failure_reason)
    assert service.get_round(3).base_version == "v1"


def test_promote_unknown_version_is_not_found(tmp_path: Path) -> None:
    service = build_service(tmp_path)
    with pytest.raises(NotFoundError, match="no model version 'v9'"):
        service.promote("v9")


def test_deployed_time_is_set_when_a_version_first_goes_to_clients(tmp_path: Path) -> None:
    service = build_service(tmp_path, min_clients=2, clients_per_round=2)
    assert service.get_model("v1").deployed_at is None
    service.register_client()
    service.register_client()
    assert service.get_model("v1").deployed_at is not None
