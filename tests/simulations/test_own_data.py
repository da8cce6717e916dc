"""Models and data from ``fedge-train`` go through ``fedge-simulate`` as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.inputs.model import load_user_model
from simulations.runner import simulate
from simulations.settings import Settings
from tests.support.trained_models import train_export

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)


@pytest.fixture(scope="module")
def taxi_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_export("taxi", tmp_path_factory.mktemp("taxi") / "export", epochs=1)


def test_a_fedge_train_export_is_a_model_devices_can_train(taxi_export: Path) -> None:
    """Every layer of an export is trainable as saved; its head is the part devices train,
    as ``fedge-quantize bundle`` splits it (no 'nothing is left for the frozen backbone')."""
    user = load_user_model(taxi_export)
    names = list(user.head.names)
    assert names
    assert all(name.startswith("head_") for name in names)
    assert not any(name.startswith("head_head_") for name in names)
    frozen = [la.name for la in user.model.layers if la.weights and not la.trainable]
    assert frozen
    assert all(name.startswith("backbone_") for name in frozen)


def test_simulate_trains_a_fedge_train_export_on_a_built_in_task(
    taxi_export: Path, tmp_path: Path
) -> None:
    settings = Settings(
        task="taxi",
        model_file=taxi_export,
        rounds=1,
        clients=3,
        workers=1,
        baseline=False,
        personalization=False,
        cache_dir=tmp_path / "cache",
    )
    report = simulate(settings)
    assert [r.committed for r in report.result.rounds] == [True]
    assert report.initial_label == "initial (your model)"
    assert all(name.startswith("head_") for name in report.result.final_head.names)
