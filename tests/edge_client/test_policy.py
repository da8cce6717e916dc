"""The device policy: its file, its defaults, its refusals and the persistent ledger."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_client.errors import PolicyRefusal
from edge_client.policy import DevicePolicy, PolicyLedger, load_policy
from edge_client.state import ClientState
from fedge.errors import ConfigError


def test_defaults_are_the_safe_ones() -> None:
    policy = DevicePolicy()
    assert policy.protected
    assert policy.min_rows == 20
    assert policy.min_class_rows == 20
    assert policy.epsilon_budget == 10.0
    assert not policy.allow_row_features
    assert policy.min_interval_seconds["stats"] == 3600
    assert policy.min_interval_seconds["features"] == 3600
    assert policy.min_interval_seconds["evaluate"] == 600
    assert policy.min_interval_seconds["train"] == 0
    assert policy.epsilon_for("features") == 1.0
    assert policy.epsilon_for("train") == 0.0


def test_a_policy_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"min_rows": 5, "min_interval_seconds": {"stats": 10}}))
    policy = load_policy(path)
    assert policy.min_rows == 5
    assert policy.min_interval_seconds["stats"] == 10
    assert policy.min_interval_seconds["features"] == 3600
    assert DevicePolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"min_rows": 0}, "min_rows"),
        ({"min_rows": "20"}, "min_rows"),
        ({"privacy": "maybe"}, "privacy"),
        ({"task_kinds": ["train", "dance"]}, "task_kinds"),
        ({"task_kinds": "train"}, "task_kinds"),
        ({"epsilon_budget": -1}, "epsilon_budget"),
        ({"features_epsilon": 0}, "features_epsilon"),
        ({"min_interval_seconds": {"stats": -5}}, "min_interval_seconds.stats"),
        ({"allow_row_features": "yes"}, "allow_row_features"),
        ({"min_rowz": 3}, "min_rowz"),
    ],
)
def test_a_bad_policy_file_names_the_file_and_the_field(
    tmp_path: Path, document: dict[str, object], field: str
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"field {field}" in message
    assert "\n" not in message


def test_unreadable_or_malformed_policy_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "absent.json")
    path = tmp_path / "policy.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_policy(path)


def test_refusals_for_kind_interval_budget_and_rows() -> None:
    policy = DevicePolicy(task_kinds=("train", "stats"), epsilon_budget=1.5)
    ledger = PolicyLedger()
    with pytest.raises(PolicyRefusal, match="does not answer features") as caught:
        policy.admit("features", ledger, now=0.0)
    assert caught.value.reason == "task_kind"
    policy.admit("stats", ledger, now=0.0)
    ledger = ledger.charge(kind="stats", task_id="t1", now=100.0, epsilon=1.0, delta=1e-6)
    with pytest.raises(PolicyRefusal, match="every 3600 s") as caught:
        policy.admit("stats", ledger, now=200.0)
    assert caught.value.reason == "interval"
    with pytest.raises(PolicyRefusal, match="privacy budget exhausted") as caught:
        policy.admit("stats", ledger, now=100.0 + 3600)
    assert caught.value.reason == "budget"
    policy.admit("train", ledger, now=200.0)
    with pytest.raises(PolicyRefusal, match="needs at least 20") as caught:
        policy.check_rows(19, "train")
    assert caught.value.reason == "min_rows"
    policy.check_rows(20, "train")


def test_off_answers_everything_but_unlisted_kinds() -> None:
    policy = DevicePolicy(privacy="off", task_kinds=("train", "stats"), epsilon_budget=0.0)
    ledger = PolicyLedger().charge(kind="stats", task_id="t", now=0.0, epsilon=5.0, delta=0.0)
    policy.admit("stats", ledger, now=1.0)
    policy.check_rows(1, "stats")
    assert policy.epsilon_for("stats") == 0.0
    with pytest.raises(PolicyRefusal):
        policy.admit("features", ledger, now=1.0)


def test_the_ledger_persists_owner_only_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    state = ClientState(tmp_path / "state")
    assert state.ledger.load() == PolicyLedger()
    ledger = PolicyLedger().charge(kind="features", task_id="t9", now=5.0, epsilon=1.0, delta=1e-6)
    state.ledger.save(ledger)
    path = tmp_path / "state" / "policy_ledger.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ClientState(tmp_path / "state").ledger.load()
    assert again.epsilon_spent == 1.0
    assert again.last_answered == {"features": 5.0}
    assert again.answers[0]["task_id"] == "t9"
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="policy ledger"):
        state.ledger.load()
