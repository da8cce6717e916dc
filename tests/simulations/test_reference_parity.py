"""Acceptance 4 of issue 17: on a short version of each workload (A iid, B pathological with
E=5, C 100 clients 10 per round; 3 rounds on 300 client rows), ``fedge-simulate`` run from the
user's plain files (``.keras`` model with every layer trainable, plain safetensors init,
``{"client": [rows]}`` partition, schedule, ``--test-data``) reaches the numpy FedAvg floor's
test accuracy exactly in every round, and its weights after every round
(``--save-weights every-round``) equal the floor's within float32 rounding (``TOLERANCE``).

The three runs share one conversion cache: the first converts the Keras model, the others
reuse it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load_file

from simulations.reference import (
    WORKLOADS,
    ReferenceInputs,
    WorkloadFiles,
    fedge_arguments,
    initial_weights,
    load_inputs,
    run_reference,
    write_model,
    write_workload,
)

if TYPE_CHECKING:
    from tests.support.simulation import CliRunner

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

TOLERANCE = 1e-5
"""Largest weight difference allowed: float32 sums taken in another order (TFLite's
kernels, the coordinator's aggregation) over a few hundred SGD steps stay far below it."""
ROUNDS = 3
FloatArray = npt.NDArray[Any]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "model.keras", initial_weights())


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conversion-cache")


def _short(name: str, root: Path, model: Path) -> WorkloadFiles:
    spec = WORKLOADS[name].shortened(rounds=ROUNDS, train_rows=300, test_rows=150)
    return write_workload(spec, root / name, model=model)


def _max_diff(saved: Mapping[str, FloatArray], reference: Mapping[str, FloatArray]) -> float:
    assert sorted(saved) == sorted(reference)
    return max(float(np.max(np.abs(saved[name] - reference[name]))) for name in reference)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_fedge_simulate_matches_the_numpy_floor_in_every_round(
    name: str, model_file: Path, cache: Path, fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    files = _short(name, tmp_path, model_file)
    out = tmp_path / "out"
    done = fedge_simulate([*fedge_arguments(files, out=out, cache=cache), "--json", "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = json.loads(done.stdout)["rounds"]
    inputs = load_inputs(files.directory)
    floor = run_reference(inputs)
    assert len(rounds) == len(floor.accuracy) == ROUNDS
    assert [sorted(r["clients"]) for r in rounds] == [sorted(p) for p in inputs.schedule]
    assert [r["accuracy"] for r in rounds] == list(floor.accuracy)
    saved = [load_file(str(out / "weights" / f"round-{i:04d}.safetensors")) for i in (1, 2, 3)]
    diffs = [_max_diff(w, ref) for w, ref in zip(saved, floor.weights, strict=True)]
    assert max(diffs) < TOLERANCE, diffs
    # the comparison can tell: the rounds moved the weights, and where a client's rows fill
    # more than one batch, the same rows in another order give other weights
    assert _max_diff(saved[-1], inputs.init) > 100 * TOLERANCE
    if max(rows.size for rows in inputs.partition.values()) > inputs.spec.batch_size:
        shuffled = run_reference(_rows_sorted(inputs)).weights[-1]
        assert _max_diff(saved[-1], shuffled) > 100 * TOLERANCE


def _rows_sorted(inputs: ReferenceInputs) -> ReferenceInputs:
    partition = {c: np.sort(rows) for c, rows in inputs.partition.items()}
    return dataclasses.replace(inputs, partition=partition)
