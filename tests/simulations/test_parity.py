"""Acceptance 1: the native engine (coordinator service + edge clients on TFLite) and the TFF
reference (``build_weighted_fed_avg`` on the exported Keras model, backbone frozen) compute
the same global head: digits, 5 clients all taking part, E=1, batches in stored order,
3 rounds of FedAvg from the same bundle.

Both engines run through ``fedge-simulate`` in their own processes, side by side; the TFF
one must also exit on its own (its ``worker_binary`` child would otherwise hold the captured
pipes open).
With shuffled batches (the service's ``shuffle_seed`` task option on the device,
``batch_order`` in TFF) the two agree too; that run is shorter (2 rounds) and in-process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from fedge.weights import Weights
from simulations.native_engine import NativeOptions, run_native
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.scenario import build_workload, initial_head
from simulations.settings import check_settings
from tests.support.parallel import side_by_side

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner, SettingsFactory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:non-integer arguments to randrange:DeprecationWarning"),
]

TOLERANCE = 1e-4


def _run(cli: CliRunner, engine: str, out: Path, cache: Path) -> tuple[Weights, dict[str, Any]]:
    args = [
        "--task", "digits", "--clients", "5", "--rounds", "3", "--partition", "iid",
        "--epochs", "1", "--learning-rate", "0.05", "--aggregator", "fedavg", "--seed", "0",
        "--engine", engine, "--workers", "1", "--cache-dir", str(cache), "--out", str(out),
        "--no-baseline", "--no-personalization", "--quiet", "--json",
    ]  # fmt: skip
    result = cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    head = Weights.from_bytes((out / "final_head.safetensors").read_bytes())
    return head, json.loads(result.stdout)


def test_native_and_tff_engines_agree_on_the_global_head(
    digits_pretrained: Pretrained, sim_cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    (native, native_doc), (tff, tff_doc) = side_by_side(
        lambda: _run(fedge_simulate, "native", tmp_path / "native", sim_cache),
        lambda: _run(fedge_simulate, "tff", tmp_path / "tff", sim_cache),
    )
    assert native.names == tff.names == digits_pretrained.manifest.head
    diff = max(float(np.max(np.abs(native[n] - tff[n]))) for n in native.names)
    start = initial_head(digits_pretrained.bundle_dir)
    moved = max(float(np.max(np.abs(native[n] - start[n]))) for n in native.names)
    print(
        f"\nparity, digits 5 clients E=1 3 rounds: max |native - tff| = {diff:.3e} "
        f"(the head moved {moved:.3f})"
    )
    assert diff < TOLERANCE
    assert moved > 1e-2  # the rounds really trained: agreeing was not trivial
    assert native_doc["schedule"] == tff_doc["schedule"]
    assert len(native_doc["schedule"]) == 3
    assert all(len(r) == 5 for r in native_doc["schedule"])
    for mine, theirs in zip(native_doc["rounds"], tff_doc["rounds"], strict=True):
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=0.01)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)


def _max_diff(a: Weights, b: Weights) -> float:
    return max(float(np.max(np.abs(a[n] - b[n]))) for n in a.names)


def test_native_and_tff_engines_agree_with_shuffled_batches(
    digits_pretrained: Pretrained, sim_settings: SettingsFactory
) -> None:
    from simulations.tff_engine import keras_model_factory, run_tff

    settings = sim_settings(
        clients=5, rounds=2, partition="iid", epochs=2, learning_rate=0.05, seed=0
    )
    stored = prepare_scenario(settings, check_settings(settings))
    shuffled = dataclasses.replace(
        stored, hyperparams=dataclasses.replace(stored.hyperparams, shuffle=True, seed=3)
    )
    options = NativeOptions(workers=1, personalization=False)
    native = run_native(shuffled, options).final_head
    in_order = run_native(stored, options).final_head
    tff = run_tff(
        build_workload(shuffled), model_fn=keras_model_factory(shuffled.keras_model)
    ).final_head
    diff = _max_diff(native, tff)
    print(f"\nparity, shuffled, digits 5 clients E=2 2 rounds: max |native - tff| = {diff:.3e}")
    assert diff < TOLERANCE
    assert _max_diff(native, in_order) > 100 * TOLERANCE  # the devices really reshuffled
