"""Round lifecycle on a fake clock: selection, tasks, deadlines, commit, failure, recovery."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import RoundConfig
from coordinator.errors import ConflictError
from coordinator.records import ClientRecord
from coordinator.registry import SERVER_STATE
from coordinator.selection import RandomSelector
from coordinator.service import CoordinatorService
from fedge.bundle import BundleManifest
from fedge.errors import ConfigError
from fedge.server_optimizers import FedAdam, ServerState
from fedge.weights import Weights
from tests.support.coordinator import FakeClock, build_service, delta, submission


def _clients(service: CoordinatorService, n: int, region: str = "north") -> list[ClientRecord]:
    out = []
    for _ in range(n):
        registration = service.register_client(region=region)
        out.append(service.authenticate(registration.token))
    return out


def _weights(service: CoordinatorService, version: str) -> Weights:
    return service.registry.weights(service.get_model(version))


def _fedavg(base: Weights, deltas: list[tuple[Weights, int]]) -> Weights:
    total = sum(n for _, n in deltas)
    return Weights(
        {
            name: base[name].astype(np.float64)
            + sum(d[name].astype(np.float64) * n for d, n in deltas) / total
            for name in base.names
        }
    )


def test_round_waits_open_until_min_clients_register(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=3)
    service.tick()
    assert [r.state for r in service.list_rounds()] == ["open"]
    _clients(service, 2)
    assert service.get_round(1).state == "open"
    _clients(service, 1)
    round_ = service.get_round(1)
    assert round_.state == "collecting"
    assert len(round_.selected) == 3
    assert round_.base_version == "v1"


def test_selected_clients_get_train_tasks_with_the_round_config(tmp_path: Path) -> None:
    clock = FakeClock()
    service = build_service(
        tmp_path, clock=clock, clients_per_round=2, min_clients=2, epochs=3, learning_rate=0.2,
        deadline_seconds=60, max_examples=500,
    )  # fmt: skip
    clients = _clients(service, 4)
    round_ = service.get_round(1)
    assert len(round_.selected) == 2
    for client in clients:
        task = service.next_task(client)
        if client.client_id in round_.selected:
            assert task is not None
            assert task.kind == "train"
            assert task.round_id == 1
            assert task.model_version == "v1"
            assert (task.config.epochs, task.config.batch_size) == (3, 8)  # bundle batch size
            assert task.config.learning_rate == 0.2
            assert task.config.max_examples == 500
            assert task.deadline == pytest.approx(clock.time + 60)
        else:
            assert task is None


def test_full_round_commits_fedavg_of_the_updates(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=3)
    clients = _clients(service, 2, region="north") + _clients(service, 1, region="south")
    base = _weights(service, "v1")
    reported = [(10, 0.9, 0.1), (20, 0.6, 0.4), (30, 0.5, 1.0)]  # examples, accuracy, loss
    sent = []
    for i, (client, (count, accuracy, loss)) in enumerate(zip(clients, reported, strict=True)):
        metrics = {"accuracy": accuracy, "loss": loss}
        receipt = service.submit_update(
            client,
            submission(1, client.client_id, seed=10 + i, num_examples=count, metrics=metrics),
        )
        assert not receipt.duplicate
        sent.append((delta(10 + i), count))
    round_ = service.get_round(1)
    assert round_.state == "committed"
    assert round_.result_version == "v2"
    assert round_.measurements["count"] == 3
    assert _weights(service, "v2").allclose(_fedavg(base, sent), atol=1e-6)
    model = service.get_model("v2")
    assert model.stage == "production"  # continuous rounds auto-promote by default
    assert (model.parent, model.round_id, model.participants) == ("v1", 1, 3)
    assert model.data_fingerprint is not None
    assert model.data_fingerprint.startswith("sha256:")
    assert model.trainer_host
    # Example-weighted means: accuracy (10*0.9 + 20*0.6 + 30*0.5) / 60 = 36/60 = 0.6 (the
    # first client says 0.9, the unweighted mean is 0.667); loss (1 + 8 + 30) / 60 = 0.65.
    assert model.metrics == pytest.approx({"accuracy": 0.6, "loss": 0.65})
    # north: accuracy (9 + 12) / 30 = 0.7, loss (1 + 8) / 30 = 0.3; south: the one client.
    assert sorted(model.slice_metrics) == ["north", "south"]
    assert model.slice_metrics["north"] == pytest.approx({"accuracy": 0.7, "loss": 0.3})
    assert model.slice_metrics["south"] == pytest.approx({"accuracy": 0.5, "loss": 1.0})
    assert service.get_model("v1").stage == "archived"
    assert service.get_round(2).state == "collecting"
    assert service.get_round(2).base_version == "v2"


def test_committed_version_shares_the_parent_bundle_files(tmp_path: Path) -> None:
    service = build_service(tmp_path, clients_per_round=2, min_clients=2)
    for i, client in enumerate(_clients(service, 2)):
        service.submit_update(client, submission(1, client.client_id, seed=i))
    v1, v2 = service.get_model("v1"), service.get_model("v2")
    for name in ("inference.tflite", "trainable.tflite"):
        assert v1.artifacts[name] == v2.artifacts[name]
    assert v1.artifacts["weights.safetensors"] != v2.artifacts["weights.safetensors"]
    manifest = service.registry.manifest(v2)
    assert isinstance(manifest, BundleManifest)
    assert manifest.model_version == "v2"
    assert manifest.files["weights.safetensors"].sha256 == v2.artifacts["weights.safetensors"]
    assert manifest.metadata["parent_version"] == "v1"


def test_round_fails_at_deadline_with_too_few_updates(tmp_path: Path) -> None:
    clock = FakeClock()
    service = build_service(
        tmp_path, clock=clock, clients_per_round=3, min_clients=2, deadline_seconds=30
    )
    clients = _clients(service, 3)
    selected = [c for c in clients if c.client_id in service.get_round(1).selected]
    service.submit_update(selected[0], submission(1, selected[0].client_id))
    digest = service.get_model("current").artifacts["weights.safetensors"]
    clock.advance(31)
    failed = service.get_round(1)
    assert failed.state == "failed"
    assert failed.failure_reason is not None
    assert "only 1 of the 2 required updates" in failed.failure_reason
    assert service.get_model("current").version == "v1"
    assert service.get_model("current").artifacts["weights.safetensors"] == digest
    assert [a.kind for a in service.store.list_alerts()] == ["round_failed"]
    assert service.get_round(2).state == "collecting"  # continuous: the next round opened
    with pytest.raises(ConflictError) as late:
        service.submit_update(selected[1], submission(1, selected[1].client_id))
    assert late.value.code == "round_closed"


def test_round_commits_at_deadline_with_enough_updates(tmp_path: Path) -> None:
    clock = FakeClock()
    service = build_service(
        tmp_path, clock=clock, clients_per_round=3, min_clients=2, deadline_seconds=30
    )
    clients = _clients(service, 3)
    for client in clients[:2]:
        service.submit_update(client, submission(1, client.client_id))
    assert service.get_round(1).state == "collecting"
    clock.advance(30)
    round_ = service.get_round(1)
    assert round_.state == "committed"
    assert service.get_model(str(round_.result_version)).participants == 2


def test_on_demand_rounds_open_only_when_asked(tmp_path: Path) -> None:
    service = build_service(tmp_path, continuous=False, clients_per_round=2, min_clients=2)
    _clients(service, 2)
    assert service.list_rounds() == []
    round_ = service.open_round({"epochs": 4})
    assert round_.state == "collecting"
    assert round_.config.epochs == 4
    with pytest.raises(ConflictError, match="one round at a time"):
        service.open_round()


def test_acknowledged_updates_survive_a_restart(tmp_path: Path) -> None:
    """A new service over the same database and artifacts continues the open round."""
    clock = FakeClock()
    first = build_service(tmp_path, clock=clock, clients_per_round=3, min_clients=2)
    clients = _clients(first, 3)
    base = _weights(first, "v1")
    for i, client in enumerate(clients[:2]):
        first.submit_update(client, submission(1, client.client_id, seed=i, num_examples=5))
    first.store.close()
    del first
    second = build_service(tmp_path, clock=clock, clients_per_round=3, min_clients=2)
    assert len(second.store.list_models()) == 1  # the same bundle is not registered twice
    assert len(second.round_updates(1)) == 2
    clock.advance(601)
    assert second.get_round(1).state == "committed"
    expected = _fedavg(base, [(delta(0), 5), (delta(1), 5)])
    assert _weights(second, "v2").allclose(expected, atol=1e-6)


def test_a_round_interrupted_while_aggregating_is_aggregated_on_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    first = build_service(tmp_path, clock=clock, clients_per_round=3, min_clients=2)
    clients = _clients(first, 3)
    for client in clients[:2]:
        first.submit_update(client, submission(1, client.client_id))
    stuck = dataclasses.replace(first.get_round(1), state="aggregating")
    first.store.save_round(stuck)  # as if killed between the two steps
    first.store.close()
    second = build_service(tmp_path, clock=clock, clients_per_round=3, min_clients=2)
    assert second.get_round(1).state == "committed"
    assert second.get_model("v2").participants == 2


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "fedavgm"])
def test_every_aggregator_commits(tmp_path: Path, aggregator: str) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=3, aggregator=aggregator)
    for i, client in enumerate(_clients(service, 3)):
        service.submit_update(client, submission(1, client.client_id, seed=i))
    assert service.get_round(1).state == "committed"
    assert not _weights(service, "v2").allclose(_weights(service, "v1"))


def test_krum_with_too_few_updates_fails_the_round_with_the_reason(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=3, aggregator="krum",
        aggregator_options={"num_byzantine": 1},
    )  # fmt: skip
    for i, client in enumerate(_clients(service, 3)):
        service.submit_update(client, submission(1, client.client_id, seed=i))
    round_ = service.get_round(1)
    assert round_.state == "failed"
    assert round_.failure_reason is not None
    assert "aggregation failed" in round_.failure_reason
    assert service.get_model("current").version == "v1"


def test_server_optimizer_state_is_persisted_per_version(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, aggregator="fedadam",
        aggregator_options={"lr": 0.05},
    )  # fmt: skip
    clients = _clients(service, 2)
    for round_id in (1, 2):
        for i, client in enumerate(clients):
            service.submit_update(client, submission(round_id, client.client_id, seed=i))
    steps = []
    for version in ("v2", "v3"):
        digest = service.get_model(version).artifacts[SERVER_STATE]
        state = ServerState.from_bytes(service.artifacts.get_bytes(digest))
        steps.append((state.optimizer, state.step))
    assert steps == [("fedadam", 1), ("fedadam", 2)]


class _Chooser:
    """A selector that answers with a fixed choice and records what it was asked."""

    def __init__(self, choice: Callable[[Sequence[str]], Sequence[str]]) -> None:
        self.choice = choice
        self.asked: list[tuple[int, tuple[str, ...], int]] = []

    def select(
        self, round_id: int, candidates: Sequence[str], count: int, rng: np.random.Generator
    ) -> Sequence[str]:
        self.asked.append((round_id, tuple(candidates), count))
        return self.choice(candidates)


def test_the_selector_chooses_the_round_participants(tmp_path: Path) -> None:
    chooser = _Chooser(lambda candidates: [candidates[3], candidates[0]])
    service = build_service(
        tmp_path, selector=chooser, continuous=False, clients_per_round=3, min_clients=2
    )
    clients = _clients(service, 5)
    round_ = service.open_round()
    assert round_.selected == (clients[3].client_id, clients[0].client_id)
    assert chooser.asked == [(1, tuple(c.client_id for c in clients), 3)]
    assert [t.client_id for t in service.store.list_tasks(round_id=1)] == list(round_.selected)
    for i, client in enumerate([clients[3], clients[0]]):
        service.submit_update(client, submission(1, client.client_id, seed=i))
    assert service.get_round(1).state == "committed"  # everyone selected reported


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (lambda c: [c[0], "c-stranger"], "not registered candidates"),
        (lambda c: [c[0], c[0]], "more than once"),
        (lambda c: list(c[:4]), "between 2 and 3 clients, got 4"),
        (lambda c: list(c[:1]), "between 2 and 3 clients, got 1"),
        (lambda c: c[0], "must be a sequence of client ids"),
        (lambda c: [1, 2], "client id strings"),
    ],
)
def test_an_invalid_selection_starts_no_round(
    tmp_path: Path, choice: Callable[[Sequence[str]], Sequence[str]], message: str
) -> None:
    service = build_service(
        tmp_path, selector=_Chooser(choice), continuous=False, clients_per_round=3, min_clients=2
    )
    _clients(service, 4)
    with pytest.raises(ConfigError, match=f"client selector's choice for round 1 .*{message}"):
        service.open_round()
    assert service.store.list_tasks() == []
    assert [r.state for r in service.store.list_rounds()] == ["open"]


def test_random_selection_is_seeded_and_draws_distinct_candidates() -> None:
    candidates = [f"c{i}" for i in range(20)]
    picks = [RandomSelector().select(1, candidates, 5, np.random.default_rng(s)) for s in (3, 3, 4)]
    assert picks[0] == picks[1] != picks[2]
    assert all(len(set(p)) == 5 and set(p) <= set(candidates) for p in picks)


def test_task_options_reach_every_train_task_and_persist_with_the_round(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, continuous=False, clients_per_round=2, min_clients=2,
        task_options={"shuffle_seed": 7, "mode": "fast"},
    )  # fmt: skip
    clients = _clients(service, 2)
    round_ = service.open_round({"task_options": {"shuffle_seed": 9, "proximal": True}})
    expected = {"shuffle_seed": 9, "proximal": True}
    for client in clients:
        task = service.next_task(client)
        assert task is not None
        assert dict(task.config.options) == expected
    service.store.close()
    reopened = build_service(tmp_path, continuous=False, clients_per_round=2, min_clients=2)
    assert dict(reopened.get_round(round_.round_id).config.task_options) == expected


@pytest.mark.parametrize(
    "options",
    [{"seed": [1]}, {"bad key": 1}, {"drift": float("nan")}, {"seed": None}, ["seed"]],
)
def test_invalid_task_options_are_refused(options: Any) -> None:
    with pytest.raises(ConfigError, match="task_options"):
        RoundConfig(task_options=options)


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_robust_rounds_keep_their_fedavg_server_state_silently(
    tmp_path: Path, aggregator: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = build_service(tmp_path, clients_per_round=3, min_clients=3, aggregator=aggregator)
    clients = _clients(service, 3)
    with caplog.at_level(logging.DEBUG, logger="coordinator"):
        for round_id in (1, 2):
            for i, client in enumerate(clients):
                service.submit_update(client, submission(round_id, client.client_id, seed=i))
    assert service.get_round(2).state == "committed"
    assert [r.getMessage() for r in caplog.records if "server" in r.getMessage()] == []


def test_a_changed_server_optimizer_restarts_its_state_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = build_service(
        tmp_path, continuous=False, auto_promote=True, clients_per_round=2, min_clients=2,
        aggregator="fedadam", aggregator_options={"lr": 0.05},
    )  # fmt: skip
    clients = _clients(service, 2)
    plain = {"aggregator": "fedavg", "aggregator_options": {}, "auto_promote": False}
    with caplog.at_level(logging.INFO, logger="coordinator"):
        for overrides in ({}, plain, plain):  # the last two both build on fedadam's v2
            round_ = service.open_round(overrides)
            for i, client in enumerate(clients):
                service.submit_update(client, submission(round_.round_id, client.client_id, seed=i))
    assert [service.get_round(r).state for r in (1, 2, 3)] == ["committed"] * 3
    assert service.get_round(3).base_version == "v2"
    said = [r for r in caplog.records if "server optimizer changed" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in said] == [
        (
            logging.INFO,
            "the server optimizer changed from fedadam to fedavg: its state starts afresh",
        )
    ]
    state = ServerState.from_bytes(
        service.artifacts.get_bytes(service.get_model("v4").artifacts[SERVER_STATE])
    )
    assert (state.optimizer, state.step) == ("fedavg", 1)


# Composed strategies -------------------------------------------------------------------------


def test_a_composed_median_and_fedadam_round_commits_their_step(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=3, min_clients=3, aggregator="median",
        server_optimizer="fedadam", server_optimizer_options={"lr": 0.05},
    )  # fmt: skip
    base = _weights(service, "v1")
    for i, client in enumerate(_clients(service, 3)):
        service.submit_update(
            client, submission(1, client.client_id, seed=i, num_examples=10 ** (i + 1))
        )
    assert service.get_round(1).state == "committed"
    state = ServerState.from_bytes(
        service.artifacts.get_bytes(service.get_model("v2").artifacts[SERVER_STATE])
    )
    assert (state.optimizer, state.step) == ("fedadam", 1)
    # FedAdam's first step from m0 = 0, v0 = tau^2 (lr 0.05, b1 0.9, b2 0.99, tau 1e-3) on the
    # unweighted coordinate-wise median d:  m = 0.1 d,  v = 0.99 tau^2 + 0.01 d^2,
    # x = x0 + lr m / (sqrt(v) + tau).
    for name in base.names:
        d = np.median(np.stack([delta(i)[name].astype(np.float64) for i in range(3)]), axis=0)
        m, v = 0.1 * d, 0.99 * 1e-6 + 0.01 * d * d
        expected = base[name] + 0.05 * m / (np.sqrt(v) + 1e-3)
        np.testing.assert_allclose(_weights(service, "v2")[name], expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.slots["m"][name], m, rtol=1e-5, atol=1e-9)


def test_the_metrics_aggregation_of_the_round_config_is_used(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, clients_per_round=2, min_clients=2, metrics_aggregation="mean"
    )
    for client, (count, accuracy) in zip(_clients(service, 2), [(10, 0.9), (90, 0.5)], strict=True):
        metrics = {"accuracy": accuracy}
        service.submit_update(
            client, submission(1, client.client_id, num_examples=count, metrics=metrics)
        )
    model = service.get_model("v2")
    assert model.metrics == pytest.approx({"accuracy": 0.7})  # (0.9 + 0.5) / 2, not 0.54
    assert model.slice_metrics["north"] == pytest.approx({"accuracy": 0.7})


def test_a_preset_and_its_composed_form_share_the_server_state(tmp_path: Path) -> None:
    """The state carries the server optimizer's name: fedadam (the preset) and median +
    fedadam continue one state; only a change of server optimizer starts afresh."""
    service = build_service(
        tmp_path, continuous=False, auto_promote=True, clients_per_round=2, min_clients=2,
        aggregator="fedadam", aggregator_options={"lr": 0.05},
    )  # fmt: skip
    clients = _clients(service, 2)
    composed = {
        "aggregator": "median", "aggregator_options": {},
        "server_optimizer": "fedadam", "server_optimizer_options": {"lr": 0.05},
    }  # fmt: skip
    yogi = {**composed, "server_optimizer": "fedyogi"}
    for overrides in ({}, composed, yogi):
        round_ = service.open_round(overrides)
        for i, client in enumerate(clients):
            service.submit_update(client, submission(round_.round_id, client.client_id, seed=i))
    states = [
        ServerState.from_bytes(
            service.artifacts.get_bytes(service.get_model(version).artifacts[SERVER_STATE])
        )
        for version in ("v2", "v3", "v4")
    ]
    assert [(s.optimizer, s.step) for s in states] == [
        ("fedadam", 1),
        ("fedadam", 2),
        ("fedyogi", 1),
    ]
    assert service.get_round(2).config.server_optimizer == "fedadam"


def test_an_old_round_config_without_the_strategy_fields_still_loads() -> None:
    stored = {
        "clients_per_round": 3, "min_clients": 2, "min_available_clients": None,
        "deadline_seconds": 600.0, "epochs": 1, "batch_size": None, "learning_rate": 0.01,
        "aggregator": "fedadam", "aggregator_options": {"lr": 0.05, "tau": 0.01},
        "task_options": {}, "norm_bound": 100.0, "max_examples": 1000000,
        "continuous": True, "auto_promote": None,
    }  # fmt: skip
    config = RoundConfig.from_dict(stored)
    assert (config.server_optimizer, config.metrics_aggregation) == (None, "weighted_mean")
    strategy = config.strategy()
    assert strategy.server_optimizer_name == "fedadam"
    assert strategy.server_optimizer == FedAdam(lr=0.05, tau=0.01)
    again = RoundConfig.from_dict(config.to_dict())
    assert again == config
    assert again.to_dict()["server_optimizer_options"] == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregator": "fedavgx"}, "unknown aggregator 'fedavgx'; expected an aggregator"),
        (
            {"aggregator": "fedyogi", "server_optimizer": "fedadam"},
            "'fedyogi' is the preset fedavg \\+ fedyogi, which contradicts server_optimizer",
        ),
        (
            {
                "aggregator": "median",
                "server_optimizer": "fedadam",
                "aggregator_options": {"lr": 1},
            },
            "server optimizer options go in server_optimizer_options",
        ),
        ({"server_optimizer": "sgd"}, "unknown server optimizer 'sgd'"),
        ({"server_optimizer_options": {"lr": True}}, "server_optimizer_options\\['lr'\\] must be"),
        ({"server_optimizer_options": [1]}, "server_optimizer_options must be an object"),
        ({"metrics_aggregation": "max"}, "unknown metrics_aggregation 'max'"),
        ({"aggregator": "krum"}, "'krum' needs the options \\['num_byzantine'\\]"),
    ],
)
def test_round_config_refuses_a_bad_strategy_when_built(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RoundConfig(**changes)
    with pytest.raises(ConfigError, match=message):
        RoundConfig().merged(changes)
