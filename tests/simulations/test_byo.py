"""Bring your own model, initial weights, data, partition and schedule.

A small Keras model over flattened digits (a frozen Dense "backbone", a trainable relu
Dense and a softmax output) runs end to end from the user's files; every kind of bad file
or unusable model is refused with a one-line message before any training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from fedge.data import load_digits
from fedge.errors import ConfigError
from fedge.weights import Weights
from simulations.errors import SettingsError
from simulations.inputs import files as inputs
from simulations.preparation import prepare_scenario
from simulations.pretrain import Pretrained
from simulations.runner import simulate
from simulations.settings import Settings, check_settings

if TYPE_CHECKING:
    import tensorflow as tf

    from tests.support.simulation import CliRunner

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

CLIENTS = {f"dev{i}": list(range(400 + 200 * i, 400 + 200 * (i + 1))) for i in range(5)}
"""Rows 0..399 and 1400.. belong to nobody: they are the test split."""
SCHEDULE = [["dev0", "dev1", "dev2"], ["dev3", "dev4"], ["dev1", "dev4"]]


def _digits_arrays() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    digits = load_digits()
    x = (digits.columns["pixels"].reshape(len(digits), 64) / 16.0).astype(np.float32)
    return x, np.asarray(digits.labels)


def _build_model(trainable: tuple[bool, bool, bool] = (False, True, True)) -> tf.keras.Model:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((64,))
    h = tf.keras.layers.Dense(32, activation="relu", name="features")(inputs)
    h = tf.keras.layers.Dense(16, activation="relu", name="hidden")(h)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="out")(h)
    model = tf.keras.Model(inputs, outputs)
    for layer, flag in zip(model.layers[1:], trainable, strict=True):
        layer.trainable = flag
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The user's files: data.npz, model.keras (briefly trained), init.safetensors (its
    trainable part, perturbed), partition.json, schedule.json."""
    from quantize.trainable import trainable_weights

    root = tmp_path_factory.mktemp("byo")
    x, y = _digits_arrays()
    np.savez(root / "data.npz", x=x, y=y)
    model = _build_model()
    model.layers[1].trainable = True
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:400], y[:400], epochs=15, verbose=0)
    model.layers[1].trainable = False
    model.save(root / "model.keras")
    head = Weights(trainable_weights(model))
    rng = np.random.default_rng(1)
    init = Weights({n: a + 0.01 * rng.standard_normal(a.shape) for n, a in head.items()})
    (root / "init.safetensors").write_bytes(init.to_bytes())
    (root / "partition.json").write_text(json.dumps(CLIENTS))
    (root / "schedule.json").write_text(json.dumps({"rounds": SCHEDULE}))
    return {p.stem: p for p in root.iterdir()}


def _settings(files: dict[str, Path], cache: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = {
        "task": None,
        "model_file": files["model"],
        "init_file": files["init"],
        "data_file": files["data"],
        "partition_file": files["partition"],
        "schedule_file": files["schedule"],
        "rounds": None,
        "workers": 1,
        "learning_rate": 0.05,
        "cache_dir": cache,
    }
    return Settings(**{**base, **changes})


def test_your_model_data_partition_schedule_and_init_run_end_to_end(
    files: dict[str, Path], tmp_path: Path
) -> None:
    import tensorflow as tf

    report = simulate(_settings(files, tmp_path / "cache"))
    rounds = report.result.rounds
    assert [sorted(r.clients) for r in rounds] == [sorted(r) for r in SCHEDULE]
    assert all(r.committed for r in rounds)
    assert report.settings["test"] == "rows no client holds"
    assert report.settings["test_examples"] == 1797 - 1000
    assert all(name.startswith("head_") for name in report.result.final_head.names)
    # The clients started from the user's model with --init applied.
    model = tf.keras.models.load_model(files["model"])
    init = Weights.from_bytes(files["init"].read_bytes())
    for layer in ("hidden", "out"):
        model.get_layer(layer).set_weights([init[f"{layer}/kernel"], init[f"{layer}/bias"]])
    x, y = _digits_arrays()
    test = np.r_[0:400, 1400:1797]
    keras_accuracy = float(np.mean(model.predict(x[test], verbose=0).argmax(axis=1) == y[test]))
    assert report.pretrained.accuracy == pytest.approx(keras_accuracy, abs=0.005)
    assert report.initial_label == "initial (your model)"
    assert report.final.accuracy > report.pretrained.accuracy


def test_csv_data_are_numeric_columns_and_a_label_zscored_over_the_clients(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    a, b = rng.normal(5.0, 2.0, 50), rng.normal(-1.0, 0.5, 50)
    labels = rng.integers(0, 3, 50)
    lines = ["a,kind,b"] + [f"{u},{k},{v}" for u, k, v in zip(a, labels, b, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    data = inputs.load_data(path, label_column="kind")
    assert data.kind == "csv"
    assert sorted(data.columns) == ["a", "b"]
    np.testing.assert_array_equal(data.labels, labels)
    dataset = data.dataset(3)
    spec = data.feature_spec(dataset)
    x = spec.transform(dataset.columns)
    assert x.shape == (50, 2)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)


def _write(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return make


def _npz(**arrays: Any) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / "bad.npz"
        np.savez(path, **arrays)
        return path

    return make


_X = np.zeros((10, 4), np.float32)
BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("data_file", lambda root: root / "absent.npz", r"data file .*absent.npz: no such file"),
    ("data_file", _write("data.txt", "1,2"), r"expected a \.npz .* or a \.csv file"),
    ("data_file", _npz(x=_X), r"needs arrays 'x' and 'y', missing \['y'\]"),
    ("data_file", _npz(x=np.zeros(10), y=np.zeros(10, int)), r"x must be numbers shaped"),
    ("data_file", _npz(x=_X, y=np.full(10, 0.5)), r"y must hold integer class ids"),
    ("data_file", _npz(x=_X, y=np.arange(10) - 1), r"class ids must be >= 0"),
    ("data_file", _npz(x=_X, y=np.zeros(9, int)), r"y must be 10 labels"),
    ("data_file", _write("d.csv", "a,b\n1,2\n3,4\n"), r"no label column 'label'"),
    ("data_file", _write("d.csv", "a,label\n1,0\nx,0\n"), r"needs at least 2 distinct values"),
    ("init_file", _write("init.safetensors", b"not weights"), r"init file .*: not usable"),
    ("partition_file", _write("p.json", "{nope"), r"partition file .*: not valid JSON"),
    ("partition_file", _write("p.json", "{}"), r"expected a non-empty object"),
    ("partition_file", _write("p.json", '{"a": [1, 5000]}'), r"'a' index 5000 is out of range"),
    (
        "partition_file",
        _write("p.json", '{"a": [1, 2], "b": [2]}'),
        r"row 2 is held by 'a' and 'b'",
    ),
    ("partition_file", _write("p.json", '{"a": []}'), r"'a' needs a non-empty list"),
    ("partition_file", _write("p.json", '{"a": [1.5]}'), r"non-integer index 1\.5"),
    ("schedule_file", _write("s.json", "[1]"), r"schedule file .*must hold an object"),
    ("schedule_file", _write("s.json", '{"rounds": [[]]}'), r"round 0 of the schedule has no"),
]


@pytest.mark.parametrize(("option", "make", "message"), BAD_FILES)
def test_bad_files_are_refused_before_any_training(
    files: dict[str, Path],
    tmp_path: Path,
    option: str,
    make: Callable[[Path], Path],
    message: str,
) -> None:
    settings = _settings(files, tmp_path / "cache", **{option: make(tmp_path)})
    with pytest.raises(SettingsError, match=message) as caught:
        check_settings(settings)
    assert "\n" not in str(caught.value)
    assert option in caught.value.fields
    assert not (tmp_path / "cache").exists()


def test_inconsistent_options_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(SettingsError, match=r"rounds is 5 but the schedule file .* has 3 rounds"):
        check_settings(_settings(files, cache, rounds=5))
    with pytest.raises(SettingsError, match="a data file needs a model file") as caught:
        check_settings(_settings(files, cache, model_file=None))
    assert caught.value.fields == ("data_file", "model_file")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"rounds": [["dev0", "nobody"]]}))
    settings = _settings(files, cache, schedule_file=unknown)
    with pytest.raises(ConfigError, match=r"round 0 names unknown clients \['nobody'\]"):
        prepare_scenario(settings, check_settings(settings))
    assert not cache.exists()  # refused before bundling, let alone training


def _saved(model: tf.keras.Model, root: Path, name: str = "m.keras") -> Path:
    path = root / name
    model.save(path)
    return path


def _conv_model(root: Path) -> Path:
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 1))
    h = tf.keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    h = tf.keras.layers.Conv2D(4, 3, name="conv_b")(h)
    h = tf.keras.layers.Flatten()(h)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, name="out")(h))
    model.get_layer("conv_a").trainable = False
    return _saved(model, root)


BAD_MODELS: list[tuple[Callable[[Path], Path], str]] = [
    (lambda root: _saved(_build_model((False, False, False)), root), r"no layer is trainable"),
    (
        lambda root: _saved(_build_model((False, True, False)), root),
        r"'out' is frozen but sits above",
    ),
    (_conv_model, r"'conv_b' \(Conv2D\) is trainable, but only Dense layers"),
    (_write("m.keras", b"not a model"), r"cannot load a Keras model"),
    (lambda root: root / "absent.keras", r"no such file or directory"),
]


@pytest.mark.parametrize(("make", "message"), BAD_MODELS)
def test_models_devices_cannot_train_are_refused(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    from simulations.inputs.model import load_user_model

    with pytest.raises(ConfigError, match=message) as caught:
        load_user_model(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_init_and_data_must_fit_the_model(files: dict[str, Path], tmp_path: Path) -> None:
    from simulations.inputs.model import load_user_model

    wrong = Weights({"hidden/kernel": np.zeros((32, 3), np.float32)})
    with pytest.raises(SettingsError, match=r"the init weights do not fit the trainable part"):
        load_user_model(files["model"], init=wrong)
    images = tmp_path / "images.npz"
    x, y = _digits_arrays()
    np.savez(images, x=x.reshape(-1, 8, 8), y=y)
    settings = _settings(files, tmp_path / "cache", data_file=images)
    with pytest.raises(ConfigError, match=r"takes inputs of shape \(64,\), the data give \(8, 8\)"):
        prepare_scenario(settings, check_settings(settings))


def test_cli_reports_a_bad_file_in_one_line_and_trains_nothing(
    fedge_simulate: CliRunner, tmp_path: Path
) -> None:
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"a": [0, 1, 2, 3], "b": [3, 4]}))
    cache = tmp_path / "cache"
    result = fedge_simulate(
        [
            "--task", "digits", "--partition-file", str(partition), "--rounds", "2",
            "--cache-dir", str(cache), "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fedge-simulate: error: partition file {partition}: ")
    assert "row 3 is held by 'a' and 'b'" in lines[0]
    assert lines[0].endswith("(--partition-file)")
    assert result.stdout == ""
    assert not cache.exists()


def test_init_on_the_built_in_model_is_checked_before_pretraining_and_used(
    digits_pretrained: Pretrained, sim_cache: Path, tmp_path: Path
) -> None:
    from edge_client import EdgeModel
    from simulations.baseline import evaluate_head
    from simulations.scenario import initial_head

    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(Weights({"head_out/kernel": np.zeros((3, 3), np.float32)}).to_bytes())
    cold = Settings(task="digits", init_file=wrong, cache_dir=tmp_path / "cold", rounds=1)
    with pytest.raises(SettingsError, match="the init weights do not fit the model's trainable"):
        prepare_scenario(cold, check_settings(cold))
    assert not (tmp_path / "cold").exists()  # refused before pretraining

    start = initial_head(digits_pretrained.bundle_dir)
    rng = np.random.default_rng(0)
    init = Weights({n: a + 0.05 * rng.standard_normal(a.shape) for n, a in start.items()})
    path = tmp_path / "init.safetensors"
    path.write_bytes(init.to_bytes())
    warm = Settings(
        task="digits", init_file=path, cache_dir=sim_cache, clients=3, rounds=1, workers=1
    )
    scenario = prepare_scenario(warm, check_settings(warm))
    assert initial_head(scenario.bundle_dir).allclose(init, atol=0)
    assert scenario.bundle_dir != digits_pretrained.bundle_dir
    report = simulate(warm)
    assert report.initial_label == "initial (init file)"
    # The clients started from the init file's head: that is what "initial" measured.
    model = EdgeModel.load(digits_pretrained.bundle_dir)
    x, y = scenario.test_arrays()
    assert report.pretrained == evaluate_head(model, x, y, head=init)
    assert report.pretrained != evaluate_head(model, x, y, head=start)
