"""The continuous simulation (simulations.continuous): 20 rounds on the real service and the
real edge client while a fifth of the fleet switches to corrupted data half-way."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.views import model_document
from simulations.continuous import ContinuousConfig, ContinuousResult, run_continuous
from simulations.pretrain import Pretrained


@pytest.fixture(scope="module")
def corrupted_run(
    digits_pretrained: Pretrained, tmp_path_factory: pytest.TempPathFactory
) -> ContinuousResult:
    config = ContinuousConfig(
        rounds=20,
        corrupt_fraction=0.2,
        corrupt_from_round=10,
        shift_region="south",
        shift_from_round=15,
        gate=True,
        gate_margin=0.0,
    )
    return run_continuous(config, digits_pretrained, tmp_path_factory.mktemp("continuous"))


def test_corrupted_clients_updates_are_quarantined_with_reasons(
    corrupted_run: ContinuousResult,
) -> None:
    result = corrupted_run
    assert [r.round_id for r in result.rounds] == list(range(1, 21))
    assert len(result.corrupted) == 4  # 20% of 20 clients
    for outcome in result.rounds:
        assert sorted(outcome.quarantined) == sorted(outcome.corrupted), outcome
        if outcome.round_id < 10:
            assert outcome.quarantined == ()
    assert len(result.quarantined) >= 5
    for update in result.quarantined:
        assert update.client_id in result.corrupted
        assert update.round_id >= 10
        assert update.quarantined  # held: nobody released it
        assert str(update.quarantine).startswith(
            "anomalies in pixels: The approximate Jensen-Shannon divergence"
        )


def test_a_shift_the_statistics_cannot_see_is_not_quarantined(
    corrupted_run: ContinuousResult,
) -> None:
    result = corrupted_run
    clean_shifted = set(result.shifted) - set(result.corrupted)
    assert clean_shifted
    assert not clean_shifted & {u.client_id for u in result.quarantined}


def test_no_promoted_version_is_worse_than_its_parent_on_the_holdout(
    corrupted_run: ContinuousResult,
) -> None:
    result = corrupted_run
    accuracy = result.holdout_accuracy
    promoted = [m for m in result.models if m.promoted_at is not None and m.parent is not None]
    assert promoted
    for model in promoted:
        assert accuracy[model.version] >= accuracy[str(model.parent)], model.version
    production = {r.production for r in result.rounds}
    assert not production & {m.version for m in result.rejected()}


def test_the_lineage_lists_rejected_candidates_with_reasons(
    corrupted_run: ContinuousResult,
) -> None:
    result = corrupted_run
    rejected = result.rejected()
    assert rejected
    failed = {r.version: r.failure_reason for r in result.rounds if r.state == "failed"}
    for model in rejected:
        events = [e for e in result.events if e.version == model.version]
        document = model_document(model, events)
        assert document["stage"] == "rejected"
        (reason,) = [e["detail"] for e in document["events"] if e["kind"] == "rejected"]
        assert reason.startswith("cloud holdout accuracy")
        assert failed[model.version] == f"the gate rejected {model.version}: {reason}"
        parent = str(model.parent)
        assert result.holdout_accuracy[model.version] < result.holdout_accuracy[parent]


def test_clean_non_iid_clients_are_never_quarantined(
    digits_pretrained: Pretrained, tmp_path: Path
) -> None:
    result = run_continuous(
        ContinuousConfig(rounds=4, corrupt_fraction=0.0, clients_per_round=20),
        digits_pretrained,
        tmp_path,
    )
    assert [r.state for r in result.rounds] == ["committed"] * 4
    assert result.quarantined == ()
    assert result.holdout_accuracy["v5"] > 0.8
