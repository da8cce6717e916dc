"""Compressed updates in the native engine: the same federation, plain, q8 and top-k.

Each run trains the digits head for the same rounds on the same clients, rows and
hyperparameters; only the devices' update codec differs. 8-bit stochastic quantization
(unbiased) and top-k sparsification with error feedback (the coordinates a device leaves
out are carried into its next update) both reach the plain model's test accuracy within
one point after six rounds (the plain run gains over two on the pretrained head), while
every compressed round uploads a fraction of the plain round's bytes (the round records'
``bytes_up``): under 30% with q8, under 15% with top-k 5%.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from edge_client import EdgeModel
from simulations.baseline import evaluate_head
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.report import EngineResult
from simulations.scenario import Scenario, initial_head
from simulations.settings import check_settings

if TYPE_CHECKING:
    from tests.support.simulation import SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

ROUNDS = 6
CLIENTS = 10
TOPK_FRACTION = 0.05
"""Each update keeps 5% of its coordinates (about a ninth of the plain upload)."""
ONE_POINT = 0.01


@pytest.fixture(scope="module")
def scenario(digits_pretrained: Pretrained, sim_settings: SettingsFactory) -> Scenario:
    settings = sim_settings(clients=CLIENTS, rounds=ROUNDS, epochs=2)
    return prepare_scenario(settings, check_settings(settings))


def _run(scenario: Scenario, compression: str, **options: float) -> EngineResult:
    return run_native(
        scenario,
        NativeOptions(
            workers=2,
            personalization=False,
            compression=compression,
            compression_options=options,
        ),
    )


@pytest.fixture(scope="module")
def plain(scenario: Scenario) -> EngineResult:
    """The uncompressed run; it must gain well over a point on the pretrained head, or
    "within one point of it" would say nothing."""
    result = _run(scenario, "none")
    assert all(r.committed for r in result.rounds)
    model = EdgeModel.load(scenario.bundle_dir)
    test_x, test_y = scenario.test_arrays()
    start = evaluate_head(model, test_x, test_y, head=initial_head(scenario.bundle_dir))
    assert result.rounds[-1].accuracy > start.accuracy + 2 * ONE_POINT
    return result


def _upload_ratios(result: EngineResult, plain: EngineResult, codec: str) -> list[float]:
    """Each round's bytes up against the plain run's, after checking that every round ran
    ``codec`` and committed."""
    assert [r.compression for r in result.rounds] == [codec] * ROUNDS
    assert all(r.committed for r in result.rounds)
    ratios = []
    for ours, theirs in zip(result.rounds, plain.rounds, strict=True):
        assert ours.bytes_up is not None
        assert theirs.bytes_up is not None
        ratios.append(ours.bytes_up / theirs.bytes_up)
    return ratios


def test_q8_reaches_the_plain_accuracy_within_one_point(
    scenario: Scenario, plain: EngineResult
) -> None:
    result = _run(scenario, "q8")
    assert max(_upload_ratios(result, plain, "q8")) < 0.3
    gap = plain.rounds[-1].accuracy - result.rounds[-1].accuracy
    assert gap <= ONE_POINT, (result.rounds[-1].accuracy, plain.rounds[-1].accuracy)


def test_topk_with_error_feedback_reaches_the_plain_accuracy_within_one_point(
    scenario: Scenario, plain: EngineResult
) -> None:
    result = _run(scenario, "topk", fraction=TOPK_FRACTION)
    assert max(_upload_ratios(result, plain, "topk")) < 0.15
    gap = plain.rounds[-1].accuracy - result.rounds[-1].accuracy
    assert gap <= ONE_POINT, (result.rounds[-1].accuracy, plain.rounds[-1].accuracy)
