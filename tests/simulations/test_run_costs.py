"""What a run spends besides training: the workers it chooses, the time it reports per
round, and the plots drawn by a helper process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simulations.errors import SimulationError
from simulations.plotter import start_plotter
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.report import ClientGain, personalization_figure
from simulations.runner import AUTO_WORKERS, choose_workers, simulate
from simulations.settings import check_settings
from tests.support.simulation import SettingsFactory

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)


def test_unset_workers_run_a_small_training_in_process_and_a_large_one_in_workers(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    settings = sim_settings(clients=4, rounds=3)
    scenario = prepare_scenario(settings, check_settings(settings))
    assert settings.workers is None
    assert choose_workers(scenario, settings, inference_seconds=1e-6) == 1
    assert choose_workers(scenario, settings, inference_seconds=1.0) == AUTO_WORKERS
    given = dataclasses.replace(settings, workers=3)
    assert choose_workers(scenario, given, inference_seconds=1e-6) == 3
    ray = dataclasses.replace(settings, engine="ray")
    assert choose_workers(scenario, ray, inference_seconds=1e-6) == AUTO_WORKERS


def test_round_seconds_include_the_evaluation_and_the_workers_used_are_recorded(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    report = simulate(sim_settings(clients=2, rounds=2, personalization=False, baseline=False))
    for stats in report.result.rounds:
        assert stats.eval_seconds is not None
        assert stats.eval_seconds > 0
        assert stats.seconds > stats.eval_seconds
        assert stats.to_dict()["eval_seconds"] == stats.eval_seconds
    assert report.settings["workers"] == report.result.details["workers"] == 1


def test_the_plotter_draws_figures_and_reports_a_failure(tmp_path: Path) -> None:
    gains = [ClientGain("a", 10, 0.5, 0.75), ClientGain("b", 10, 0.5, 0.25)]
    plotter = start_plotter()
    try:
        plotter.draw([personalization_figure(gains, tmp_path / "gains.png")])
    finally:
        plotter.close()
    assert (tmp_path / "gains.png").read_bytes().startswith(b"\x89PNG")
    plotter = start_plotter()
    try:
        with pytest.raises(SimulationError, match=r"drawing the plots failed: .*KeyError"):
            plotter.draw([{"kind": "pie", "path": str(tmp_path / "pie.png")}])
    finally:
        plotter.close()
    assert not (tmp_path / "pie.png").exists()
