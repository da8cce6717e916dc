"""Secure aggregation in the native engine: one SecAgg+ round of 20 digits clients.

The committed global model of a secure round equals plain FedAvg on the same updates
within the round's stated quantization error bound (``secagg_error_bound``, per
coordinate of the mean: ``example_cap * m * 2c / (L * N)``, see
:mod:`fedge.secagg.masking`): with every client, with 30% dropping before they send their
masked input (FedAvg over the survivors), and with 30% dropping after it (FedAvg over all
20, recovered from the neighbours' shares). Each run is one round on 300 pool rows.

The neighbourhoods have degree 14 (threshold 8) rather than the default 10 (threshold 6),
so that 6 dropouts leave every neighbourhood its threshold whatever the seeded draw: with
degree 10 some draws of 6 leave a client fewer than 6 live neighbours, and the round fails
as the protocol says it must.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

from fedge.weights import Weights
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.report import EngineResult
from simulations.scenario import Scenario
from simulations.secure_stages import Dropout
from simulations.settings import check_settings

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner, SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

Vector = npt.NDArray[np.float64]
CLIENTS = 20
ROWS_PER_CLIENT = 15
DEGREE = 14
CLIP = 0.25
"""Each coordinate of a client's delta stays far inside it (the mean's largest is ~0.01),
so clipping changes nothing and the bound (linear in the clip) is 4x tighter than at 1.0."""
FLOAT32_SLACK = 1e-6
"""The committed weights are float32: each side may round once more than the bound."""


@pytest.fixture(scope="module")
def scenario(
    digits_pretrained: Pretrained,
    sim_settings: SettingsFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Scenario:
    """20 clients of 15 pool rows each (12 to train on), one round with all of them."""
    folder = tmp_path_factory.mktemp("secure-sim")
    partition = {
        f"client_{i:03d}": list(range(i * ROWS_PER_CLIENT, (i + 1) * ROWS_PER_CLIENT))
        for i in range(CLIENTS)
    }
    path = folder / "partition.json"
    path.write_text(json.dumps(partition))
    settings = sim_settings(clients=CLIENTS, rounds=1, partition_file=path, epochs=2)
    return prepare_scenario(settings, check_settings(settings))


def _run(scenario: Scenario, **options: Any) -> EngineResult:
    return run_native(scenario, NativeOptions(workers=2, personalization=False, **options))


def _secure(scenario: Scenario, dropout: Dropout | None = None) -> EngineResult:
    return _run(
        scenario,
        secure_aggregation=True,
        secagg_degree=DEGREE,
        secagg_clip=CLIP,
        dropout=dropout or Dropout(),
    )


@pytest.fixture(scope="module")
def plain(scenario: Scenario) -> EngineResult:
    return _run(scenario)


@pytest.fixture(scope="module")
def base(scenario: Scenario) -> Vector:
    return Weights.from_bytes((scenario.bundle_dir / "weights.safetensors").read_bytes()).flatten()


def _assert_within_bound(secure: EngineResult, reference: EngineResult, base: Vector) -> None:
    """The secure round committed, reports its bound, and lies within it of ``reference``,
    whose own step away from the base is far larger than the bound (so the test can fail)."""
    (round_,) = secure.rounds
    (plain_round,) = reference.rounds
    assert round_.committed, "the secure round failed"
    assert plain_round.committed
    assert round_.secure
    assert not plain_round.secure
    bound = round_.measurements["secagg_error_bound"]
    assert 0 < bound < 1e-2
    expected = reference.final_head.flatten()
    step = np.abs(expected - base)
    assert step.max() < CLIP, "a delta beyond the clip would make clipped and plain differ"
    assert step.max() > 10 * bound, "the round must move the model well past the bound"
    error = np.abs(secure.final_head.flatten() - expected)
    assert error.max() <= bound + FLOAT32_SLACK, (error.max(), bound)


def test_secure_round_equals_plain_fedavg_within_the_bound(
    scenario: Scenario, plain: EngineResult, base: Vector
) -> None:
    secure = _secure(scenario)
    _assert_within_bound(secure, plain, base)
    (round_,) = secure.rounds
    assert round_.measurements["secagg_survivors"] == CLIENTS
    assert round_.measurements["secagg_dropped"] == 0
    assert round_.dropped_clients == ()
    assert round_.bytes_up is not None
    assert round_.bytes_up > 0


def test_dropouts_before_masking_give_fedavg_of_the_survivors(
    scenario: Scenario, base: Vector
) -> None:
    secure = _secure(scenario, Dropout(0.3, "mask"))
    (round_,) = secure.rounds
    dropped = set(round_.dropped_clients)
    assert len(dropped) == 6
    survivors = tuple(c for c in scenario.schedule[0] if c not in dropped)
    assert round_.measurements["secagg_survivors"] == CLIENTS - 6
    assert round_.measurements["secagg_dropped"] == 6
    # The same clients, rows and hyperparameters, but only the survivors in the round.
    reference = _run(dataclasses.replace(scenario, schedule=(survivors,)))
    _assert_within_bound(secure, reference, base)


def test_dropouts_after_masking_are_recovered_into_fedavg_of_all(
    scenario: Scenario, plain: EngineResult, base: Vector
) -> None:
    secure = _secure(scenario, Dropout(0.3, "unmask"))
    (round_,) = secure.rounds
    assert len(round_.dropped_clients) == 6
    assert round_.measurements["secagg_survivors"] == CLIENTS
    _assert_within_bound(secure, plain, base)


def test_dropout_draw_is_seeded_and_sized() -> None:
    clients = [f"c{i}" for i in range(20)]
    first = Dropout(0.3, "mask").choose(clients, np.random.default_rng([7, 1]))
    again = Dropout(0.3, "mask").choose(list(reversed(clients)), np.random.default_rng([7, 1]))
    other = Dropout(0.3, "mask").choose(clients, np.random.default_rng([7, 2]))
    assert first == again
    assert len(first) == 6
    assert first <= set(clients)
    assert other != first
    assert Dropout(0.0).choose(clients, np.random.default_rng(0)) == frozenset()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "tff", "--secure-aggregation"], "tff reference engine"),
        (["--engine", "tff", "--compression", "q8"], "tff reference engine"),
        (["--secure-aggregation", "--compression", "topk"], "top-k"),
        (["--secure-aggregation", "--aggregator", "median"], "fedavg aggregator"),
        (["--secagg-dropout", "0.3"], "only apply with secure aggregation"),
        (["--secure-aggregation", "--secagg-dropout", "1.5"], "secagg_dropout"),
        (["--secure-aggregation", "--clients", "2"], "at least 3 clients"),
        (["--secure-aggregation", "--clients", "6", "--secagg-degree", "6"], "below the clients"),
        (["--secure-aggregation", "--secagg-degree", "3"], "must be even"),
    ],
)
def test_cli_refuses_what_cannot_run_securely(
    fedge_simulate: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    result = fedge_simulate([*args, "--out", str(tmp_path / "out"), "--rounds", "1"])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("fedge-simulate: error:") == 1
    assert not (tmp_path / "out").exists()


def test_cli_secure_run_reports_mode_and_traffic_per_round(
    digits_pretrained: Pretrained, sim_cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = fedge_simulate(
        [
            *("--clients", "4", "--rounds", "2", "--secure-aggregation", "--compression", "q8"),
            *("--no-baseline", "--no-personalization", "--json"),
            *("--cache-dir", str(sim_cache), "--out", str(out)),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document == json.loads((out / "metrics.json").read_text())
    rounds = document["rounds"]
    assert [(r["secure"], r["compression"], r["committed"]) for r in rounds] == [
        (True, "q8", True)
    ] * 2
    for r in rounds:
        assert r["bytes_up"] > 0
        assert r["bytes_down"] > 0
        assert r["participants"] == 4
        assert r["measurements"]["secagg_survivors"] == 4
        assert r["measurements"]["secagg_error_bound"] > 0
    assert document["traffic"] == {
        "bytes_up": sum(r["bytes_up"] for r in rounds),
        "bytes_down": sum(r["bytes_down"] for r in rounds),
    }
    assert document["settings"]["secure_aggregation"] is True
    summary = (out / "summary.txt").read_text()
    assert summary.count("secure+q8") == 2
    assert "secure aggregation (SecAgg+): 2 of 2 rounds" in summary
    with open(out / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["secure"], row["compression"]) for row in rows] == [("True", "q8")] * 2
