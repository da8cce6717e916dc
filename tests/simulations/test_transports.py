"""``fedge-simulate --transport``: the native engine with its devices on REST or gRPC.

The service is served on loopback inside the engine's process and every task poll and
reply goes through the edge client's own client (``connect(url)``): the same rounds then
give the same accuracy as the in-memory default, and the served routes show the traffic
(the REST access log; over gRPC, REST stays silent).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.scenario import Scenario
from simulations.settings import check_settings

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner, SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)


def _scenario(sim_settings: SettingsFactory, **changes: object) -> Scenario:
    settings = sim_settings(**changes)
    return prepare_scenario(settings, check_settings(settings))


@pytest.fixture(scope="module")
def two_rounds(digits_pretrained: Pretrained, sim_settings: SettingsFactory) -> Scenario:
    return _scenario(sim_settings, clients=3, rounds=2, partition="iid", epochs=1)


@pytest.fixture(scope="module")
def in_memory(two_rounds: Scenario) -> tuple[float, ...]:
    result = run_native(two_rounds, NativeOptions(workers=1))
    return tuple(r.accuracy for r in result.rounds)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_two_rounds_over_a_transport_reach_the_in_memory_accuracy(
    transport: str,
    two_rounds: Scenario,
    in_memory: tuple[float, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    result = run_native(two_rounds, NativeOptions(workers=1, transport=transport))
    assert result.details["transport"] == transport
    assert [r.committed for r in result.rounds] == [True, True]
    assert [r.version for r in result.rounds] == ["v2", "v3"]
    assert tuple(r.accuracy for r in result.rounds) == pytest.approx(in_memory, abs=1e-9)
    assert result.details["rejected_updates"] == 0
    assert [g.client_id for g in result.personalization] == list(two_rounds.client_ids)
    served = [r.getMessage() for r in caplog.records]
    assert any(f"devices reach the service over {transport} at " in m for m in served)
    polls = sum("GET /v1/tasks/next -> 200" in m for m in served)
    if transport == "rest":
        assert polls == 3 * 2 + 3  # two train rounds and the evaluation, three clients
        assert sum("POST /v1/rounds/1/updates -> 201" in m for m in served) == 3
        assert sum("POST /v1/evaluations -> 201" in m for m in served) == 3
    else:  # REST is served beside gRPC and answers nothing: gRPC carried every call
        assert any(m.startswith("gRPC on grpc://127.0.0.1:") for m in served)
        assert polls == 0
        assert not any(" /v1/" in m for m in served)


def test_a_compressed_round_over_rest_matches_memory(
    two_rounds: Scenario, digits_pretrained: Pretrained
) -> None:
    options = {"workers": 1, "personalization": False, "compression": "q8"}
    memory = run_native(two_rounds, NativeOptions(**options))  # type: ignore[arg-type]
    rest = run_native(two_rounds, NativeOptions(transport="rest", **options))  # type: ignore[arg-type]
    assert rest.details["rejected_updates"] == 0
    assert rest.final_head.allclose(memory.final_head, rtol=0, atol=1e-6)
    assert [r.bytes_up for r in rest.rounds] == [r.bytes_up for r in memory.rounds]


def test_updates_the_service_refuses_over_grpc_are_counted_and_keep_the_model(
    two_rounds: Scenario, digits_pretrained: Pretrained
) -> None:
    options = NativeOptions(workers=1, norm_bound=1e-9, personalization=False, transport="grpc")
    result = run_native(two_rounds, options)
    assert [r.committed for r in result.rounds] == [False, False]
    assert [r.version for r in result.rounds] == ["v1", "v1"]
    assert result.details["rejected_updates"] == 6
    start = Weights.from_bytes((digits_pretrained.bundle_dir / "weights.safetensors").read_bytes())
    assert result.final_head.equal(start)


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"transport": "carrier-pigeon"}, ["transport"]),
        ({"transport": "grpc", "engine": "tff"}, ["transport", "engine"]),
        ({"transport": "rest", "secure_aggregation": True}, ["transport", "secure_aggregation"]),
    ],
)
def test_an_unusable_transport_is_refused_naming_it(
    sim_settings: SettingsFactory, changes: dict[str, object], fields: list[str]
) -> None:
    with pytest.raises(SettingsError, match="transport") as caught:
        check_settings(sim_settings(**changes))
    assert list(caught.value.fields) == fields


def test_fedge_simulate_runs_over_grpc_and_says_so(
    digits_pretrained: Pretrained, sim_cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--task", "digits", "--clients", "3", "--rounds", "1", "--workers", "1",
            "--no-baseline", "--no-personalization", "--transport", "grpc"]  # fmt: skip
    result = fedge_simulate([*args, "--cache-dir", str(sim_cache), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with the native engine (devices over gRPC), 3 clients, 1 rounds" in result.stdout
    document = json.loads((out / "metrics.json").read_text())
    assert document["settings"]["transport"] == "grpc"
    assert document["rounds"][0]["participants"] == 3
