"""A user's workload expressed exactly, with plain inputs: the partition's row order, a test
data file, plain safetensors initial weights, a fully trainable model and every round's
weights saved.

The model is a small fully trainable MLP (16 inputs -> Dense(8, relu) -> Dense(3)) saved as
``.keras``; its bundle is built once per module (the conversion cache is shared).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.errors import ConfigError
from simulations.errors import SettingsError
from simulations.inputs import files as inputs
from simulations.settings import Settings, check_settings

ROWS, FEATURES, CLASSES = 120, 16, 3


def _arrays(seed: int, rows: int = ROWS) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    centers = np.random.default_rng(99).normal(0.0, 1.0, (CLASSES, FEATURES))
    x = (centers[y] + rng.normal(0.0, 0.7, (rows, FEATURES))).astype(np.float32)
    return x, y


def _write_csv(path: Path, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> Path:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    lines = [header] + [
        ",".join([*(f"{v:.5f}" for v in row), str(int(label))])
        for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# The partition keeps the order given ---------------------------------------------------------


def test_hand_written_partition_keeps_each_clients_row_order() -> None:
    document = {"b": [9, 3, 7, 1, 0], "a": [5, 2, 8, 4, 6]}
    in_order = inputs._ordered_partition(document, holdout_fraction=0.0, seed=0)
    assert list(in_order) == ["b", "a"]
    assert in_order["b"].train.tolist() == [9, 3, 7, 1, 0]
    assert in_order["a"].train.tolist() == [5, 2, 8, 4, 6]
    held = inputs._ordered_partition(document, holdout_fraction=0.4, seed=3)
    for client, rows in document.items():
        split = held[client]
        assert split.holdout.size == 2
        # the train rows are the list minus the held-out ones, in the listed order
        assert split.train.tolist() == [r for r in rows if r not in split.holdout.tolist()]
        assert split.holdout.tolist() == [r for r in rows if r in split.holdout.tolist()]


def test_partition_file_forms_keep_the_order_given(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"c0": [11, 2, 7], "c1": [0, 19, 4, 3]}))
    got = inputs.load_partition(plain, rows=20, holdout_fraction=0.0, seed=0)
    assert got["c0"].train.tolist() == [11, 2, 7]
    assert got["c1"].train.tolist() == [0, 19, 4, 3]
    full = tmp_path / "full.json"
    full.write_text(
        json.dumps(
            {
                "format": "fedge.partition/1",
                "clients": {"c0": {"train": [11, 2, 7], "holdout": [5, 1]}},
                "unassigned": [3],
            }
        )
    )
    got = inputs.load_partition(full, rows=20, holdout_fraction=0.2, seed=0)
    assert got["c0"].train.tolist() == [11, 2, 7]
    assert got["c0"].holdout.tolist() == [5, 1]


# --test-data ----------------------------------------------------------------------------------


def test_test_data_is_read_like_the_data_file(tmp_path: Path) -> None:
    x, y = _arrays(0)
    tx, ty = _arrays(1, rows=30)
    data = inputs.load_data(_write_csv(tmp_path / "train.csv", x, y))
    test = inputs.load_test_data(_write_csv(tmp_path / "test.csv", tx, ty), data)
    assert len(test) == 30
    np.testing.assert_array_equal(test.labels, ty)
    assert sorted(test.columns) == sorted(data.columns)
    np.testing.assert_allclose(test.columns["f3"], tx[:, 3], atol=1e-5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=tx, y=ty)
    npz = inputs.load_test_data(tmp_path / "test.npz", inputs.load_data(tmp_path / "train.npz"))
    np.testing.assert_array_equal(npz.columns["x"], tx)


def test_test_data_that_does_not_match_the_data_is_refused(tmp_path: Path) -> None:
    x, y = _arrays(0)
    data = inputs.load_data(_write_csv(tmp_path / "train.csv", x, y))
    short = _write_csv(tmp_path / "short.csv", x[:5, :4], y[:5])
    with pytest.raises(ConfigError, match=r"test data file .*short\.csv: .*f4") as caught:
        inputs.load_test_data(short, data)
    assert "\n" not in str(caught.value)
    other = _write_csv(tmp_path / "other.csv", x[:5], np.full(5, 7))
    with pytest.raises(ConfigError, match=r"test data file .*other\.csv: .*7"):
        inputs.load_test_data(other, data)
    np.savez(tmp_path / "t.npz", x=x[:5], y=y[:5])
    with pytest.raises(ConfigError, match=r"expected a table .* like the data file"):
        inputs.load_test_data(tmp_path / "t.npz", data)
    with pytest.raises(SettingsError, match="a test data file needs a data file") as settings:
        check_settings(Settings(task="digits", test_data_file=tmp_path / "t.npz"))
    assert settings.value.fields == ("test_data_file", "data_file")
