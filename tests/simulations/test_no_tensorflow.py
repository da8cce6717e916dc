"""No process of a ``fedge-simulate`` run imports TensorFlow when the model is an edge bundle
or a Keras model already in the conversion cache.

A poison ``tensorflow`` package first on ``PYTHONPATH`` (inherited by every child process,
the worker processes of ``--workers 2`` included) appends the importing process's pid to a
marker file and raises ImportError: the run must succeed and the marker must not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.data import load_digits
from simulations.preparation import prepare_scenario
from simulations.settings import Settings, check_settings
from tests.support import REPO_ROOT

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

POISON = """\
import os

with open(os.environ["FEDGE_TF_MARKER"], "a", encoding="utf-8") as marker:
    marker.write(f"{os.getpid()}\\n")
raise ImportError("tensorflow must not be imported here")
"""
RUN_FLAGS = ["--rounds", "1", "--epochs", "1", "--workers", "2", "--no-baseline"]
RUN_FLAGS += ["--no-personalization"]


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ``import tensorflow`` records the pid in the marker file."""
    package = tmp_path / "poison" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(POISON, encoding="utf-8")
    marker = tmp_path / "tensorflow-imported-by"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(package.parent), str(REPO_ROOT)]),
        "FEDGE_TF_MARKER": str(marker),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return env, marker


def _run(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def _simulate(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "simulations.cli", *args, *RUN_FLAGS], env)


def _succeeded(result: subprocess.CompletedProcess[str], out: Path) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return metrics


def test_the_poison_records_an_import_of_tensorflow(
    poisoned: tuple[dict[str, str], Path],
) -> None:
    env, marker = poisoned
    result = _run(["-c", "import tensorflow"], env)
    assert result.returncode != 0
    assert "tensorflow must not be imported here" in result.stderr
    assert marker.read_text(encoding="utf-8").strip().isdigit()


def test_a_bundle_run_imports_tensorflow_in_no_process(
    poisoned: tuple[dict[str, str], Path], edge_digits_bundle: Path, tmp_path: Path
) -> None:
    env, marker = poisoned
    out = tmp_path / "out"
    args = ["--task", "digits", "--model", str(edge_digits_bundle), "--clients", "2"]
    result = _simulate([*args, "--out", str(out), "--cache-dir", str(tmp_path / "cache")], env)
    metrics = _succeeded(result, out)
    assert len(metrics["rounds"]) == 1
    assert not marker.exists(), f"tensorflow imported by pids {marker.read_text().split()}"


def test_a_cached_keras_model_run_imports_tensorflow_in_no_process(
    poisoned: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    import tensorflow as tf

    digits = load_digits()
    x = (digits.columns["pixels"].reshape(len(digits), 64)[:400] / 16.0).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.asarray(digits.labels)[:400])
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((64,))
    hidden = tf.keras.layers.Dense(16, activation="relu", name="hidden", trainable=False)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, name="out")(hidden(inputs)))
    model.save(tmp_path / "model.keras")
    cache = tmp_path / "cache"
    files = ["--model", str(tmp_path / "model.keras"), "--data", str(tmp_path / "data.npz")]
    settings = Settings(
        task=None,
        model_file=tmp_path / "model.keras",
        data_file=tmp_path / "data.npz",
        clients=2,
        cache_dir=cache,
    )
    converted = prepare_scenario(settings, check_settings(settings)).bundle_dir
    env, marker = poisoned
    out = tmp_path / "out"
    args = [*files, "--clients", "2", "--out", str(out), "--cache-dir", str(cache)]
    metrics = _succeeded(_simulate(args, env), out)
    assert metrics["settings"]["bundle"] == str(converted)
    assert not marker.exists(), f"tensorflow imported by pids {marker.read_text().split()}"
