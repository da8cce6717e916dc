"""The gate: a round's candidate is evaluated (cloud holdout, federated holdout cohort) and
promoted only when not worse than its parent by the margin, else kept as rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from coordinator.artifacts import ArtifactStore
from coordinator.auth import hash_token
from coordinator.cli import main
from coordinator.config import RoundConfig, ServiceConfig
from coordinator.errors import ConflictError
from coordinator.gate import HoldoutSet, compare_metrics, holdout_metrics
from coordinator.records import ClientRecord
from coordinator.registry import ModelRegistry
from coordinator.rest import ApiConfig, create_app
from coordinator.service import CoordinatorService
from coordinator.sqlite_store import SQLiteStore
from fedge.errors import ConfigError
from fedge.messages import EvalReport
from fedge.weights import Weights
from tests.support.coordinator import (
    ADMIN_TOKEN,
    FEATURE_SPEC,
    EdgeClient,
    FakeClock,
    admin_request,
    bearer,
    build_service,
    delta,
    local_training,
    make_bundle,
    running_server,
    serve_command,
    submission,
    wait_for,
    write_admin_token,
)

TARGET = delta(99, scale=1.0)
"""The change a 'better' round makes: the holdout is labelled by v1 + TARGET."""


def head_scores(registry: ModelRegistry, version: str, holdout: HoldoutSet) -> NDArray[Any]:
    """The fake bundle's model: its linear head over the feature spec's input."""
    weights = registry.weights(registry.get(version))
    return _scores(weights, holdout.columns)


def _scores(weights: Weights, columns: Any) -> NDArray[Any]:
    x = FEATURE_SPEC.transform(columns)
    return np.asarray(x @ weights["head/kernel"] + weights["head/bias"])


def _columns(n: int, seed: int) -> dict[str, NDArray[Any]]:
    rng = np.random.default_rng(seed)
    return {
        "fare": rng.normal(10.0, 2.0, n),
        "miles": rng.normal(3.0, 1.0, n),
        "company": rng.choice(np.array(["a", "b", "c"], dtype=object), n),
    }


def _v1() -> Weights:
    from tests.support.coordinator import head_weights

    return head_weights(0)


def _plus(base: Weights, change: Weights, sign: float = 1.0) -> Weights:
    return Weights({n: (base[n] + sign * change[n]).astype(np.float32) for n in base.names})


def _holdout(*, south_rows: int = 0) -> HoldoutSet:
    """300 'north' rows labelled by v1 + TARGET and ``south_rows`` 'south' rows labelled by
    v1 itself (a region where the target is worse than the parent)."""
    north = _columns(300, seed=1)
    labels = np.argmax(_scores(_plus(_v1(), TARGET), north), axis=1)
    columns, regions = north, ["north"] * 300
    if south_rows:
        south = _columns(south_rows, seed=2)
        columns = {k: np.concatenate([north[k], south[k]]) for k in north}
        labels = np.concatenate([labels, np.argmax(_scores(_v1(), south), axis=1)])
        regions += ["south"] * south_rows
    return HoldoutSet(columns, labels, np.asarray(regions, dtype=object))


def _service(
    tmp_path: Path,
    *,
    holdout: HoldoutSet | None = None,
    clock: FakeClock | None = None,
    min_cohort: int = 1,
    **round_options: Any,
) -> CoordinatorService:
    bundle = tmp_path / "bundle"
    if not (bundle / "manifest.json").exists():
        make_bundle(bundle)
    options = {"clients_per_round": 2, "min_clients": 2, **round_options}
    service = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(
            task="taxi", rounds=RoundConfig(**options), seed=0, min_cohort=min_cohort
        ),
        now=clock or FakeClock(),
        holdout=holdout,
        holdout_scorer=head_scores,
    )
    service.import_bundle(bundle)
    return service


def _clients(service: CoordinatorService, regions: list[str]) -> list[ClientRecord]:
    return [service.authenticate(service.register_client(region=r).token) for r in regions]


def _train(service: CoordinatorService, round_id: int, change: Weights, sign: float) -> None:
    """Every selected client of the round sends ``sign * change`` (FedAvg: exactly it)."""
    round_ = service.get_round(round_id)
    body = Weights({n: (sign * change[n]).astype(np.float32) for n in change.names}).to_bytes()
    for client_id in round_.selected:
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(round_id, client_id, body=body))


# Pure parts ------------------------------------------------------------------------------


def test_holdout_metrics_count_accuracy_overall_and_per_region() -> None:
    holdout = HoldoutSet(
        {"x": np.zeros(4)}, np.array([0, 1, 1, 0]), np.array(["n", "n", "s", "s"], dtype=object)
    )
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    metrics = holdout_metrics(scores, holdout)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["regions"] == {
        "n": {"accuracy": 1.0, "examples": 2},
        "s": {"accuracy": 0.5, "examples": 2},
    }


def test_compare_metrics_allows_the_margin_and_names_the_region_below_it() -> None:
    parent = {"accuracy": 0.8, "regions": {"n": {"accuracy": 0.8}, "s": {"accuracy": 0.9}}}
    within = {"accuracy": 0.79, "regions": {"n": {"accuracy": 0.85}, "s": {"accuracy": 0.89}}}
    assert compare_metrics(within, parent, metric="accuracy", margin=0.02, what="cloud") == []
    below = {"accuracy": 0.85, "regions": {"n": {"accuracy": 0.9}, "s": {"accuracy": 0.7}}}
    failures = compare_metrics(below, parent, metric="accuracy", margin=0.02, what="cloud")
    assert failures == [
        "cloud accuracy in region 's' 0.7000 is below the parent's 0.9000 by more than the "
        "margin 0.02"
    ]
    one = {"accuracy": 0.5, "regions": {"n": {"accuracy": 0.5}}}
    other = {"accuracy": 0.9, "regions": {"n": {"accuracy": 0.9}}}
    only = compare_metrics(one, other, metric="accuracy", margin=0.0, what="cloud")
    assert only == ["cloud accuracy 0.5000 is below the parent's 0.9000 by more than the margin 0"]


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="gate_margin"):
        RoundConfig(gate_margin=-0.1)
    with pytest.raises(ConfigError, match="gate_metric"):
        RoundConfig(gate_metric="loss")
    with pytest.raises(ConfigError, match="gate_min_reports"):
        RoundConfig(gate_clients=4, gate_min_reports=3)  # 2 per version at most
    with pytest.raises(ConfigError, match="gate_clients must be 0"):
        RoundConfig(gate_clients=1)
    assert not RoundConfig().gated(cloud_holdout=False)  # the default: no gate
    assert RoundConfig().gated(cloud_holdout=True)
    assert RoundConfig(gate_clients=3).gated(cloud_holdout=False)
    assert not RoundConfig(gate=False).gated(cloud_holdout=True)
    assert not RoundConfig(auto_promote=False).gated(cloud_holdout=True)


# The cloud holdout -------------------------------------------------------------------------


def test_worse_candidate_is_rejected_production_unchanged_next_round_from_production(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path, holdout=_holdout())
    _clients(service, ["north"] * 2)
    _train(service, 1, TARGET, sign=-1.0)  # away from the labels
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.result_version == "v2"
    assert round_.failure_reason is not None
    assert round_.failure_reason.startswith("the gate rejected v2: cloud holdout accuracy ")
    candidate = service.get_model("v2")
    assert candidate.stage == "rejected"
    assert candidate.gate is not None
    cloud = candidate.gate["cloud"]
    assert cloud["candidate"]["accuracy"] < cloud["parent"]["accuracy"]
    assert candidate.gate["status"] == "rejected"
    events = service.model_events("v2")
    assert [e.kind for e in events] == ["registered", "rejected"]
    assert events[-1].detail == candidate.gate["reason"]
    assert "below the parent's" in events[-1].detail
    assert service.get_model("current").version == "v1"
    # The next round opens at once and trains from production.
    assert service.get_round(2).state == "collecting"
    assert service.get_round(2).base_version == "v1"


def test_better_candidate_is_promoted(tmp_path: Path) -> None:
    service = _service(tmp_path, holdout=_holdout())
    _clients(service, ["north"] * 2)
    _train(service, 1, TARGET, sign=1.0)
    round_ = service.get_round(1)
    assert (round_.state, round_.result_version) == ("committed", "v2")
    model = service.get_model("v2")
    assert model.stage == "production"
    assert model.gate is not None
    assert model.gate["status"] == "passed"
    assert model.gate["cloud"]["candidate"]["accuracy"] == 1.0
    assert model.gate["cloud"]["parent"]["accuracy"] < 1.0
    assert service.model_events("v2")[-1].detail.startswith("promoted by the gate of round 1")
    assert service.get_round(2).base_version == "v2"


def test_a_region_worse_by_more_than_the_margin_rejects_a_candidate_better_overall(
    tmp_path: Path,
) -> None:
    holdout = _holdout(south_rows=60)
    service = _service(tmp_path, holdout=holdout)
    _clients(service, ["north"] * 2)
    _train(service, 1, TARGET, sign=1.0)
    candidate = service.get_model("v2")
    assert candidate.gate is not None
    cloud = candidate.gate["cloud"]
    assert cloud["candidate"]["accuracy"] > cloud["parent"]["accuracy"]  # better overall
    south = cloud["candidate"]["regions"]["south"]["accuracy"]
    assert south < cloud["parent"]["regions"]["south"]["accuracy"] == 1.0
    assert candidate.stage == "rejected"
    assert "in region 'south'" in str(candidate.gate["reason"])
    assert "in region 'north'" not in str(candidate.gate["reason"])
    assert service.get_model("current").version == "v1"


def test_a_margin_wider_than_the_regions_loss_promotes(tmp_path: Path) -> None:
    service = _service(tmp_path, holdout=_holdout(south_rows=60), gate_margin=1.0)
    _clients(service, ["north"] * 2)
    _train(service, 1, TARGET, sign=1.0)
    assert service.get_model("v2").stage == "production"


def test_gate_off_by_default_and_when_switched_off(tmp_path: Path) -> None:
    plain = build_service(tmp_path / "plain", clients_per_round=2, min_clients=2)
    _clients(plain, ["north"] * 2)
    _train(plain, 1, TARGET, sign=-1.0)
    model = plain.get_model("v2")
    assert (model.stage, model.gate) == ("production", None)
    off = _service(tmp_path / "off", holdout=_holdout(), gate=False)
    _clients(off, ["north"] * 2)
    _train(off, 1, TARGET, sign=-1.0)
    assert off.get_model("v2").stage == "production"


def test_reject_only_a_candidate(tmp_path: Path) -> None:
    service = _service(tmp_path)
    with pytest.raises(ConflictError, match="only a candidate can be rejected"):
        service.registry.reject("v1", "no")
    assert service.get_model("v1").stage == "production"


# The federated holdout cohort ---------------------------------------------------------------


def _evaluate_all(
    service: CoordinatorService, clients: list[ClientRecord], accuracy: dict[str, float]
) -> int:
    """Each client answers its pending evaluate tasks with ``accuracy[version role]``."""
    answered = 0
    for client in clients:
        while (task := service.next_task(client)) is not None and task.kind == "evaluate":
            role = "candidate" if task.task_id.split("-")[1] == "c" else "parent"
            report = EvalReport(task.task_id, task.model_version, 50, {"accuracy": accuracy[role]})
            service.submit_evaluation(client, report)
            answered += 1
    return answered


def test_federated_cohort_rejects_a_worse_candidate_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock=clock, gate_clients=4, gate_seconds=60)
    clients = _clients(service, ["north"] * 7)
    _train(service, 1, TARGET, sign=1.0)
    round_ = service.get_round(1)
    assert round_.state == "gating"
    candidate = service.get_model("v2")
    assert candidate.stage == "candidate"
    assert candidate.gate is not None
    halves = candidate.gate["federated"]
    cohort = [*halves["candidate_clients"], *halves["parent_clients"]]
    assert (len(halves["candidate_clients"]), len(halves["parent_clients"])) == (2, 2)
    assert len(set(cohort)) == 4
    assert not set(cohort) & set(round_.selected)  # clients outside the round
    # one evaluation per device (its policy answers one every few minutes)
    tasks = service.store.list_tasks(round_id=1, status="pending")
    assert sorted((t.client_id, t.kind, t.model_version) for t in tasks) == sorted(
        [(c, "evaluate", "v2") for c in halves["candidate_clients"]]
        + [(c, "evaluate", "v1") for c in halves["parent_clients"]]
    )
    # The coordinator restarts while the gate waits: its state is in the store.
    service.store.close()
    service = _service(tmp_path, clock=clock, gate_clients=4, gate_seconds=60)
    assert service.get_round(1).state == "gating"
    cohort_clients = [c for c in clients if c.client_id in cohort]
    assert _evaluate_all(service, cohort_clients, {"candidate": 0.5, "parent": 0.8}) == 4
    round_ = service.get_round(1)
    assert round_.state == "failed"
    model = service.get_model("v2")
    assert model.stage == "rejected"
    assert model.gate is not None
    federated = model.gate["federated"]
    assert (federated["candidate"]["reports"], federated["parent"]["reports"]) == (2, 2)
    assert federated["candidate"]["accuracy"] == pytest.approx(0.5)
    assert federated["parent"]["accuracy"] == pytest.approx(0.8)
    assert federated["candidate"]["regions"]["north"]["accuracy"] == pytest.approx(0.5)
    assert "federated cohort accuracy 0.5000 is below the parent's 0.8000" in str(
        model.gate["reason"]
    )
    assert service.get_model("current").version == "v1"
    assert service.get_round(2).base_version == "v1"


def test_federated_cohort_promotes_a_candidate_as_good_as_its_parent(tmp_path: Path) -> None:
    service = _service(tmp_path, gate_clients=2, gate_margin=0.05)
    clients = _clients(service, ["north", "north", "south", "south"])
    _train(service, 1, TARGET, sign=1.0)
    assert service.get_round(1).state == "gating"
    _evaluate_all(service, clients, {"candidate": 0.78, "parent": 0.8})
    assert service.get_round(1).state == "committed"
    model = service.get_model("v2")
    assert (model.stage, model.gate and model.gate["status"]) == ("production", "passed")


def test_federated_cohort_that_does_not_report_by_the_deadline_rejects(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock=clock, gate_clients=2, gate_seconds=30)
    _clients(service, ["north"] * 4)
    _train(service, 1, TARGET, sign=1.0)
    clock.advance(10)
    assert service.get_round(1).state == "gating"
    clock.advance(25)
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert (
        "only 0 of the 1 clients asked to evaluate the candidate and 0 of the 1 clients asked "
        "to evaluate the parent answered by the deadline, 1 needed for each"
    ) in str(round_.failure_reason)
    assert service.store.list_tasks(round_id=1, status="pending") == []
    assert service.get_model("v2").stage == "rejected"


def test_federated_cohort_respects_the_minimum_cohort(tmp_path: Path) -> None:
    service = _service(tmp_path, gate_clients=4, min_cohort=3)
    _clients(service, ["north"] * 7)  # 5 outside the round: each half needs 3
    _train(service, 1, TARGET, sign=1.0)
    model = service.get_model("v2")
    assert model.stage == "rejected"
    assert (
        "only 5 clients outside the round can be asked to evaluate now, 6 needed (each half "
        "at least the minimum cohort of 3)"
    ) in str(model.gate and model.gate["reason"])
    assert service.store.list_tasks(round_id=1, status="pending") == []


def test_cancelling_a_gating_round_abandons_its_gate(tmp_path: Path) -> None:
    service = _service(tmp_path, gate_clients=2)
    _clients(service, ["north"] * 4)
    _train(service, 1, TARGET, sign=1.0)
    service.cancel_round(1)
    model = service.get_model("v2")
    assert model.stage == "candidate"
    assert model.gate is not None
    assert (model.gate["status"], model.gate["reason"]) == ("abandoned", "cancelled by an operator")
    assert service.get_model("current").version == "v1"


# Lineage ------------------------------------------------------------------------------------


def test_models_list_and_show_name_the_rejected_candidate_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = _service(tmp_path, holdout=_holdout())
    _clients(service, ["north"] * 2)
    _train(service, 1, TARGET, sign=-1.0)
    gate = service.get_model("v2").gate
    assert gate is not None
    reason = str(gate["reason"])
    service.store.close()
    direct = ["--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts")]
    assert main(["models", "list", *direct]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "gate"
    assert lines[2].split()[:2] == ["v2", "rejected"]
    assert lines[2].endswith(f"rejected: {reason}")
    assert main(["models", "show", "v2", *direct, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stage"] == "rejected"
    assert shown["gate"]["reason"] == reason
    assert shown["events"][-1] == {**shown["events"][-1], "kind": "rejected", "detail": reason}


def test_rest_documents_a_gating_round_and_the_rejected_candidate(tmp_path: Path) -> None:
    service = _service(tmp_path, gate_clients=2, gate_seconds=60)
    clients = _clients(service, ["north"] * 4)
    _train(service, 1, TARGET, sign=1.0)
    http = create_app(service, ApiConfig(admin_token_hash=hash_token(ADMIN_TOKEN))).test_client()
    admin = bearer(ADMIN_TOKEN)
    gating = http.get("/v1/rounds/1", headers=admin)
    assert gating.status_code == 200
    assert (gating.get_json()["state"], gating.get_json()["result_version"]) == ("gating", "v2")
    pending = http.get("/v1/models/v2", headers=admin).get_json()
    assert (pending["stage"], pending["gate"]["status"]) == ("candidate", "pending")
    assert pending["gate"]["federated"]["deadline"] > 0
    _evaluate_all(service, clients, {"candidate": 0.2, "parent": 0.9})
    listing = http.get("/v1/models", headers=admin)
    assert listing.status_code == 200
    listed = next(m for m in listing.get_json()["models"] if m["version"] == "v2")
    assert listed["stage"] == "rejected"
    rejected = http.get("/v1/models/v2", headers=admin).get_json()
    assert rejected["gate"]["federated"]["candidate"]["reports"] == 1
    assert rejected["events"][-1]["kind"] == "rejected"
    failed = http.get("/v1/rounds/1", headers=admin).get_json()
    assert failed["state"] == "failed"
    assert failed["failure_reason"].startswith("the gate rejected v2: federated cohort accuracy")


# The served model (a real bundle) --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.bundles import build_bundle

    return build_bundle(
        "digits", tmp_path_factory.mktemp("gate-digits"), batch_size=32, version="digits-v1"
    )


@pytest.mark.slow
def test_cloud_holdout_is_scored_by_the_served_model_of_each_version(
    tmp_path: Path, digits_bundle: Path
) -> None:
    from coordinator.serving.model import ServedModel
    from fedge.data.digits import load_digits

    rows = load_digits().take(np.arange(1497, 1797))
    regions = np.where(rows.labels < 5, "low", "high").astype(object)
    holdout = HoldoutSet(dict(rows.columns), rows.labels, regions)
    service = CoordinatorService(
        store=SQLiteStore(tmp_path / "state.db"),
        artifacts=ArtifactStore(tmp_path / "artifacts"),
        config=ServiceConfig(
            task="digits",
            rounds=RoundConfig(clients_per_round=2, min_clients=2, norm_bound=1e6),
            min_cohort=1,
        ),
        now=FakeClock(),
        holdout=holdout,  # the default scorer: coordinator.serving's ServedModel
    )
    v1 = service.import_bundle(digits_bundle)
    head = service.registry.weights(v1)
    _clients(service, ["north"] * 2)
    _train(service, 1, head, sign=-2.0)  # v1's head negated: far worse
    candidate = service.get_model("v2")
    assert candidate.gate is not None
    cloud = candidate.gate["cloud"]
    served = ServedModel.load(service.registry, "v1").predict_columns(holdout.columns)
    parent_accuracy = float(np.mean(np.argmax(served, axis=1) == holdout.labels))
    assert cloud["parent"]["accuracy"] == pytest.approx(parent_accuracy)
    assert parent_accuracy > 0.6  # the bundle's model learned something
    assert cloud["candidate"]["accuracy"] < parent_accuracy - 0.2
    assert sorted(cloud["candidate"]["regions"]) == ["high", "low"]
    assert candidate.stage == "rejected"
    assert service.get_model("current").version == "v1"


# serve --holdout ------------------------------------------------------------------------------


def _holdout_csv(path: Path, rows: int = 40) -> Path:
    columns = _columns(rows, seed=3)
    lines = ["fare,miles,company,area,big_tipper"]
    for i in range(rows):
        area = "north" if i < rows // 2 else "south"
        fare, miles, company = columns["fare"][i], columns["miles"][i], columns["company"][i]
        lines.append(f"{fare:.3f},{miles:.3f},{company},{area},{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _failed(url: str, round_id: int) -> dict[str, Any] | None:
    round_ = admin_request(url, f"/v1/rounds/{round_id}")
    return round_ if round_["state"] == "failed" else None


def test_serve_holdout_gates_rounds_and_a_failed_evaluation_rejects(tmp_path: Path) -> None:
    """The fake bundle's .tflite files are not models: the served model cannot score the
    holdout, and a candidate the gate could not evaluate is never promoted."""
    make_bundle(tmp_path / "bundle")
    command = serve_command(
        tmp_path, tmp_path / "bundle", write_admin_token(tmp_path),
        "--holdout", str(_holdout_csv(tmp_path / "holdout.csv")),
        "--clients-per-round", "2", "--min-clients", "2", "--retry-after", "1",
    )  # fmt: skip
    with running_server(command, tmp_path) as server:
        clients = [EdgeClient(server.url, "north") for _ in range(2)]
        for i, client in enumerate(clients):
            task = wait_for(client.poll)
            _, base = client.download(task["model_version"])
            assert client.upload(task, local_training(base, i).delta(base), 10).status_code == 201
        round_ = wait_for(lambda: _failed(server.url, 1))
        assert round_["result_version"] == "v2"
        assert round_["failure_reason"].startswith(
            "the gate rejected v2: the cloud holdout evaluation failed: "
        )
        model = admin_request(server.url, "/v1/models/v2")
        assert model["stage"] == "rejected"
        assert model["gate"]["cloud"]["error"].startswith("the cloud holdout evaluation failed")
        assert admin_request(server.url, "/v1/models/current")["version"] == "v1"
        assert admin_request(server.url, "/v1/rounds/2")["base_version"] in (None, "v1")


def test_serve_holdout_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bundle(tmp_path / "bundle")
    base = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts"),
            "--open-enrollment"]  # fmt: skip
    assert main([*base, "--holdout-region-column", "area"]) == 2
    assert capsys.readouterr().err.strip().endswith("--holdout-region-column needs --holdout")
    assert main([*base, "--holdout", str(tmp_path / "missing.csv")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert f"--holdout {tmp_path / 'missing.csv'}: " in error[0]


def test_a_gate_without_auto_promote_leaves_a_passing_candidate_a_candidate(
    tmp_path: Path,
) -> None:
    service = _service(
        tmp_path, holdout=_holdout(), gate=True, continuous=False, auto_promote=False
    )
    _clients(service, ["north"] * 2)
    service.open_round()
    _train(service, 1, TARGET, sign=1.0)
    assert service.get_round(1).state == "committed"
    model = service.get_model("v2")
    assert (model.stage, model.gate and model.gate["status"]) == ("candidate", "passed")
    assert service.get_model("current").version == "v1"
