"""Composed strategies in a simulation: the native engine over the real coordinator service
runs median + FedAdam and trimmed mean + FedYogi, the run's database and artifacts show the
composition at work, and the result differs from plain FedAvg on the same inputs.

Each run keeps its service state (SQLite + artifacts) so the test can read what the
coordinator recorded and recompute round 1 with numpy from the stored client updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.artifacts import ArtifactStore
from coordinator.registry import SERVER_STATE
from coordinator.sqlite_store import SQLiteStore
from fedge.errors import ConfigError
from fedge.server_optimizers import ServerState
from fedge.weights import Weights
from simulations.cli import build_parser, settings_from_args
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.report import EngineResult
from simulations.scenario import Scenario
from simulations.settings import check_settings

if TYPE_CHECKING:
    from tests.support.simulation import SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)
Float64Array = npt.NDArray[np.float64]
ROUNDS = 2
CLIENTS = 4
# Reddi et al. 2021 defaults of fedge's adaptive server optimizers, with lr chosen here.
LR, BETA1, BETA2, TAU = 0.01, 0.9, 0.99, 1e-3


@pytest.fixture(scope="module")
def scenario(digits_pretrained: Pretrained, sim_settings: SettingsFactory) -> Scenario:
    settings = sim_settings(clients=CLIENTS, rounds=ROUNDS, partition="iid", epochs=1)
    return prepare_scenario(settings, check_settings(settings))


@pytest.fixture(scope="module")
def fedavg_run(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("fedavg")
    _run(scenario, state)
    return state


def _run(scenario: Scenario, state: Path, **strategy: Any) -> EngineResult:
    options = NativeOptions(
        workers=1, store="sqlite", state_dir=state, personalization=False, **strategy
    )
    return run_native(scenario, options)


@contextmanager
def _records(state: Path) -> Iterator[tuple[SQLiteStore, ArtifactStore]]:
    store = SQLiteStore(state / "state.db")
    try:
        yield store, ArtifactStore(state / "artifacts")
    finally:
        store.close()


def _weights(store: SQLiteStore, artifacts: ArtifactStore, version: str) -> Weights:
    model = store.get_model(version)
    assert model is not None
    return Weights.from_bytes(artifacts.get_bytes(model.artifacts["weights.safetensors"]))


def _server_state(store: SQLiteStore, artifacts: ArtifactStore, version: str) -> ServerState:
    model = store.get_model(version)
    assert model is not None
    return ServerState.from_bytes(artifacts.get_bytes(model.artifacts[SERVER_STATE]))


def _round_one_updates(store: SQLiteStore, artifacts: ArtifactStore) -> list[Weights]:
    """Round 1's client deltas in the order of the simulated client ids."""
    by_client = {}
    for update in store.list_updates(1):
        client = store.get_client(update.client_id)
        assert client is not None
        by_client[client.metadata["simulated_id"]] = update.sha256
    return [Weights.from_bytes(artifacts.get_bytes(by_client[c])) for c in sorted(by_client)]


def _adam_first_step(x: Float64Array, d: Float64Array) -> Float64Array:
    # From m0 = 0, v0 = tau^2: m = (1-b1) d, v = b2 tau^2 + (1-b2) d^2.
    m = (1 - BETA1) * d
    v = BETA2 * TAU**2 + (1 - BETA2) * d * d
    return x + LR * m / (np.sqrt(v) + TAU)


def _yogi_first_step(x: Float64Array, d: Float64Array) -> Float64Array:
    # From v0 = tau^2: v = v0 - (1-b2) d^2 sign(v0 - d^2).
    m = (1 - BETA1) * d
    v = TAU**2 - (1 - BETA2) * d * d * np.sign(TAU**2 - d * d)
    return x + LR * m / (np.sqrt(v) + TAU)


def _median(stacked: Float64Array) -> Float64Array:
    result: Float64Array = np.median(stacked, axis=0)
    return result


def _trimmed_mean(stacked: Float64Array) -> Float64Array:
    k = int(0.25 * len(stacked))  # floor(trim_fraction * n) = 1 of 4 per side
    result: Float64Array = np.sort(stacked, axis=0)[k : len(stacked) - k].mean(axis=0)
    return result


@pytest.mark.parametrize(
    ("aggregator", "aggregator_options", "server_optimizer", "combine", "step"),
    [
        ("median", {}, "fedadam", _median, _adam_first_step),
        ("trimmed_mean", {"trim_fraction": 0.25}, "fedyogi", _trimmed_mean, _yogi_first_step),
    ],
    ids=["median+fedadam", "trimmed_mean+fedyogi"],
)
def test_a_composed_strategy_runs_in_a_simulation_and_is_recorded(
    scenario: Scenario,
    fedavg_run: Path,
    tmp_path: Path,
    aggregator: str,
    aggregator_options: dict[str, float],
    server_optimizer: str,
    combine: Callable[[Float64Array], Float64Array],
    step: Callable[[Float64Array, Float64Array], Float64Array],
) -> None:
    result = _run(
        scenario,
        tmp_path,
        aggregator=aggregator,
        aggregator_options=aggregator_options,
        server_optimizer=server_optimizer,
        server_optimizer_options={"lr": LR},
    )
    assert [r.committed for r in result.rounds] == [True] * ROUNDS
    assert result.details["server_optimizer"] == server_optimizer
    with _records(tmp_path) as (store, artifacts):
        rounds = store.list_rounds()
        assert [r.state for r in rounds] == ["committed"] * ROUNDS
        for round_ in rounds:
            config = round_.config
            assert (config.aggregator, config.server_optimizer) == (aggregator, server_optimizer)
            assert dict(config.server_optimizer_options) == {"lr": LR}
            assert round_.measurements["count"] == CLIENTS
        if aggregator == "trimmed_mean":
            assert all(r.measurements["trimmed_per_side"] == 1.0 for r in rounds)
        final = _server_state(store, artifacts, f"v{ROUNDS + 1}")
        assert (final.optimizer, final.step) == (server_optimizer, ROUNDS)
        # Round 1 again, by hand from the stored updates: the robust aggregate of the
        # clients' deltas, then the adaptive server step from the initial state.
        base, v2 = _weights(store, artifacts, "v1"), _weights(store, artifacts, "v2")
        updates = _round_one_updates(store, artifacts)
        assert len(updates) == CLIENTS
        for name in base.names:
            stacked = np.stack([u[name].astype(np.float64) for u in updates])
            expected = step(base[name].astype(np.float64), combine(stacked))
            np.testing.assert_allclose(v2[name], expected, rtol=1e-5, atol=1e-6)
    # Plain FedAvg on the same inputs: the same round-1 updates, another model.
    with (
        _records(fedavg_run) as (plain_store, plain_artifacts),
        _records(tmp_path) as (store, artifacts),
    ):
        plain_updates = _round_one_updates(plain_store, plain_artifacts)
        assert all(a.allclose(b, atol=1e-6) for a, b in zip(plain_updates, updates, strict=True))
        plain_state = _server_state(plain_store, plain_artifacts, "v2")
        assert (plain_state.optimizer, plain_state.step) == ("fedavg", 1)
        plain_v2 = _weights(plain_store, plain_artifacts, "v2")
        assert not plain_v2.allclose(_weights(store, artifacts, "v2"), atol=1e-4)
        final_plain = _weights(plain_store, plain_artifacts, f"v{ROUNDS + 1}")
    assert not result.final_head.allclose(final_plain, atol=1e-4)


def test_fedge_simulate_flags_compose_the_strategy() -> None:
    args = build_parser().parse_args(
        [
            "--aggregator", "median", "--server-optimizer", "fedadam",
            "--server-optimizer-options", "lr=0.01,beta1=0.8",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert (settings.aggregator, settings.server_optimizer) == ("median", "fedadam")
    assert dict(settings.server_optimizer_options) == {"lr": 0.01, "beta1": 0.8}
    assert settings.to_dict()["server_optimizer_options"] == {"lr": 0.01, "beta1": 0.8}
    default = settings_from_args(build_parser().parse_args([]))
    assert (default.aggregator, default.server_optimizer) == ("fedavg", None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"aggregator": "fedadam", "server_optimizer": "fedyogi"},
            "invalid strategy .*'fedadam' is the preset fedavg \\+ fedadam",
        ),
        (
            {
                "aggregator": "median",
                "server_optimizer": "fedadam",
                "aggregator_options": {"lr": 1},
            },
            "server optimizer options go in server_optimizer_options",
        ),
        ({"server_optimizer": "fedadam", "engine": "tff"}, "tff reference engine runs plain"),
        ({"server_optimizer_options": {"lr": 0.5}, "engine": "tff"}, "tff reference engine"),
    ],
)
def test_a_bad_composition_is_refused_before_any_work(
    sim_settings: SettingsFactory, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_settings(sim_settings(**changes))
