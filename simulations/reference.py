"""The numpy floor: FedAvg of a Dense/relu MLP in plain numpy, on the files of a workload.

Three workloads on the 8x8 digits (the 64-32-10 MLP, every layer trained; issue 17) are
written as a user gives them to ``fedge-simulate``: ``data.npz`` (the clients' rows),
``test.npz``, ``partition.json`` (``{"client": [rows]}``, batches in that row order),
``schedule.json``, ``model.keras`` and ``init.safetensors`` (a plain safetensors file keyed
by the Keras weight names). :func:`run_reference` trains the same federation from those
files with nothing but numpy, exactly as the device's ``train_step`` does:

- each participant starts from the global weights and runs ``epochs`` epochs of plain SGD
  over its rows in the order given, in consecutive batches of ``batch_size`` (the last one
  shorter), each step minimising the mean softmax cross-entropy of its real examples;
  hidden layers are relu with no gradient at exactly 0 (the device's select-based relu);
- the round's new weights are the base plus the example-weighted mean of the clients'
  deltas (FedAvg, McMahan et al. 2017, server learning rate 1), accumulated in float64;
- every round's weights are evaluated on the test rows (accuracy = argmax of the logits).

``python -m simulations.reference DIR`` runs the floor on a workload folder and prints one
JSON document (per-round accuracy, weights digest, seconds); :mod:`benchmarks.simulate`
runs it beside ``fedge-simulate`` on the same folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HIDDEN_UNITS",
    "WORKLOADS",
    "ReferenceInputs",
    "ReferenceResult",
    "WorkloadFiles",
    "WorkloadSpec",
    "digits_arrays",
    "fedge_arguments",
    "initial_weights",
    "load_inputs",
    "run_reference",
    "write_model",
    "write_workload",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]
Params = dict[str, FloatArray]

HIDDEN_UNITS = 32
NUM_CLASSES = 10
INPUT_DIM = 64
LAYERS = ("hidden", "logits")
"""The Keras layer names of the MLP; its weights are ``hidden/kernel`` ... ``logits/bias``."""

DATA_FILE = "data.npz"
TEST_FILE = "test.npz"
PARTITION_FILE = "partition.json"
SCHEDULE_FILE = "schedule.json"
SETTINGS_FILE = "workload.json"
MODEL_FILE = "model.keras"
INIT_FILE = "init.safetensors"


@dataclass(frozen=True)
class WorkloadSpec:
    """One federation of the issue's table: who holds which rows, who trains when, how."""

    name: str
    title: str
    clients: int
    per_round: int
    rounds: int
    epochs: int
    partition: str
    """``iid`` (a seeded shuffle cut in equal parts) or ``pathological`` (rows sorted by
    label, cut in ``2 * clients`` shards, two shards per client: 1-2 classes each)."""
    batch_size: int = 16
    learning_rate: float = 0.1
    test_rows: int = 360
    train_rows: int | None = None
    """Clients' rows in all (default: every digit not in the test rows)."""
    seed: int = 0

    def shortened(self, *, rounds: int, train_rows: int, test_rows: int) -> WorkloadSpec:
        """The same workload with fewer rounds and rows (a quick parity check)."""
        return replace(self, rounds=rounds, train_rows=train_rows, test_rows=test_rows)


WORKLOADS: dict[str, WorkloadSpec] = {
    "A": WorkloadSpec("A", "10 iid clients, E=1, 30 rounds", 10, 10, 30, 1, "iid"),
    "B": WorkloadSpec(
        "B", "10 pathological clients, E=5, 30 rounds", 10, 10, 30, 5, "pathological"
    ),
    "C": WorkloadSpec("C", "100 clients, 10 per round, 20 rounds", 100, 10, 20, 1, "iid"),
}


@dataclass(frozen=True)
class WorkloadFiles:
    """The files of one workload, as ``fedge-simulate`` reads them."""

    directory: Path
    model: Path

    @property
    def data(self) -> Path:
        return self.directory / DATA_FILE

    @property
    def test(self) -> Path:
        return self.directory / TEST_FILE

    @property
    def partition(self) -> Path:
        return self.directory / PARTITION_FILE

    @property
    def schedule(self) -> Path:
        return self.directory / SCHEDULE_FILE

    @property
    def init(self) -> Path:
        return self.directory / INIT_FILE

    def spec(self) -> WorkloadSpec:
        return WorkloadSpec(**json.loads((self.directory / SETTINGS_FILE).read_text()))


def digits_arrays() -> tuple[FloatArray, LabelArray]:
    """The 1,797 bundled digits as model-ready rows: pixels / 16 (float32 ``[n, 64]``)."""
    from fedge.data import load_digits

    digits = load_digits()
    x = (digits.columns["pixels"].reshape(len(digits), INPUT_DIM) / 16.0).astype(np.float32)
    return x, np.asarray(digits.labels, dtype=np.int64)


def initial_weights(seed: int = 0) -> Params:
    """Glorot-uniform kernels and zero biases of the 64-32-10 MLP (Keras' defaults), seeded."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, (fan_in, fan_out) in zip(
        LAYERS, ((INPUT_DIM, HIDDEN_UNITS), (HIDDEN_UNITS, NUM_CLASSES)), strict=True
    ):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[f"{name}/kernel"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        params[f"{name}/bias"] = np.zeros(fan_out, np.float32)
    return params


def write_model(path: Path, init: Params) -> Path:
    """The Keras MLP (relu hidden layer, softmax output, every layer trainable) holding
    ``init``, saved to ``path``; and ``init`` as the plain safetensors file beside it."""
    import tensorflow as tf
    from safetensors.numpy import save_file

    inputs = tf.keras.Input((INPUT_DIM,), name="pixels")
    hidden = tf.keras.layers.Dense(HIDDEN_UNITS, activation="relu", name=LAYERS[0])(inputs)
    outputs = tf.keras.layers.Dense(NUM_CLASSES, activation="softmax", name=LAYERS[1])(hidden)
    model = tf.keras.Model(inputs, outputs)
    for variable in model.weights:
        variable.assign(init[_weight_name(variable.name)])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    save_file(
        {_weight_name(v.name): v.numpy() for v in model.weights}, str(path.parent / INIT_FILE)
    )
    return path


def _weight_name(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _clients_rows(spec: WorkloadSpec, y: LabelArray, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(y.size)
    if spec.partition == "iid":
        return [part.tolist() for part in np.array_split(order, spec.clients)]
    if spec.partition == "pathological":
        by_label = order[np.argsort(y[order], kind="stable")]
        shards = np.array_split(by_label, 2 * spec.clients)
        pick = rng.permutation(len(shards))
        return [
            [*shards[pick[2 * c]].tolist(), *shards[pick[2 * c + 1]].tolist()]
            for c in range(spec.clients)
        ]
    raise ValueError(f"unknown partition {spec.partition!r}: expected iid or pathological")


def _schedule(spec: WorkloadSpec, ids: Sequence[str], rng: np.random.Generator) -> list[list[str]]:
    if spec.per_round >= len(ids):
        return [list(ids) for _ in range(spec.rounds)]
    return [
        [ids[i] for i in sorted(rng.choice(len(ids), spec.per_round, replace=False))]
        for _ in range(spec.rounds)
    ]


def write_workload(spec: WorkloadSpec, directory: Path, *, model: Path) -> WorkloadFiles:
    """``spec``'s data, test, partition, schedule and init files in ``directory`` (the Keras
    model is ``model``, shared by every workload: see :func:`write_model`)."""
    from safetensors.numpy import save_file

    x, y = digits_arrays()
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(y.size)
    test, train = order[: spec.test_rows], order[spec.test_rows :]
    if spec.train_rows is not None:
        train = train[: spec.train_rows]
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / DATA_FILE, x=x[train], y=y[train])
    np.savez(directory / TEST_FILE, x=x[test], y=y[test])
    rows = _clients_rows(spec, y[train], rng)
    ids = [f"client{c:03d}" for c in range(spec.clients)]
    partition = dict(zip(ids, rows, strict=True))
    (directory / PARTITION_FILE).write_text(json.dumps(partition))
    schedule = _schedule(spec, ids, rng)
    (directory / SCHEDULE_FILE).write_text(json.dumps({"rounds": schedule}))
    (directory / SETTINGS_FILE).write_text(json.dumps(spec.__dict__))
    save_file(initial_weights(spec.seed), str(directory / INIT_FILE))
    return WorkloadFiles(directory=directory, model=model)


def fedge_arguments(files: WorkloadFiles, *, out: Path, cache: Path) -> list[str]:
    """The ``fedge-simulate`` arguments of the workload in ``files`` (every round's weights
    saved in ``out/weights``)."""
    spec = files.spec()
    return [
        "--model", str(files.model), "--init", str(files.init),
        "--data", str(files.data), "--test-data", str(files.test),
        "--partition-file", str(files.partition), "--schedule-file", str(files.schedule),
        "--epochs", str(spec.epochs), "--batch-size", str(spec.batch_size),
        "--learning-rate", repr(spec.learning_rate), "--holdout-fraction", "0",
        "--seed", str(spec.seed), "--save-weights", "every-round",
        "--no-baseline", "--no-personalization",
        "--out", str(out), "--cache-dir", str(cache),
    ]  # fmt: skip


# The floor ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReferenceInputs:
    """A workload's arrays and settings, read from its files."""

    spec: WorkloadSpec
    x: FloatArray
    y: LabelArray
    test_x: FloatArray
    test_y: LabelArray
    partition: Mapping[str, npt.NDArray[np.int64]]
    schedule: tuple[tuple[str, ...], ...]
    init: Params


def load_inputs(directory: Path) -> ReferenceInputs:
    """The workload in ``directory`` (written by :func:`write_workload`)."""
    from safetensors.numpy import load_file

    files = WorkloadFiles(directory=directory, model=directory / MODEL_FILE)
    with np.load(files.data) as data, np.load(files.test) as test:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
        test_x, test_y = test["x"].astype(np.float32), test["y"].astype(np.int64)
    partition = {
        client: np.asarray(rows, np.int64)
        for client, rows in json.loads(files.partition.read_text()).items()
    }
    rounds = json.loads(files.schedule.read_text())["rounds"]
    init = {name: np.asarray(a, np.float32) for name, a in load_file(str(files.init)).items()}
    return ReferenceInputs(
        spec=files.spec(),
        x=x,
        y=y,
        test_x=test_x,
        test_y=test_y,
        partition=partition,
        schedule=tuple(tuple(r) for r in rounds),
        init=init,
    )


@dataclass(frozen=True, eq=False)
class ReferenceResult:
    """Per round: test accuracy, the global weights after it and its seconds."""

    accuracy: tuple[float, ...]
    correct: tuple[int, ...]
    weights: tuple[Params, ...]
    round_seconds: tuple[float, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": list(self.accuracy),
            "correct": list(self.correct),
            "round_seconds": list(self.round_seconds),
            "seconds": self.seconds,
        }


def logits(params: Params, x: FloatArray) -> FloatArray:
    """The MLP's logits (the softmax left out, as the device's ``infer``)."""
    hidden = x @ params["hidden/kernel"] + params["hidden/bias"]
    hidden = np.where(hidden > 0, hidden, np.float32(0))
    out: FloatArray = hidden @ params["logits/kernel"] + params["logits/bias"]
    return out


def _sgd_step(params: Params, x: FloatArray, y: LabelArray, rate: np.float32) -> None:
    """One step on the mean softmax cross-entropy of ``x``/``y``, in place."""
    w1, b1 = params["hidden/kernel"], params["hidden/bias"]
    w2, b2 = params["logits/kernel"], params["logits/bias"]
    pre = x @ w1 + b1
    active = pre > 0
    hidden = np.where(active, pre, np.float32(0))
    z = hidden @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(y.size), y] -= np.float32(1)
    dz = p / np.float32(y.size)
    dh = (dz @ w2.T) * active
    grads = {
        "logits/kernel": hidden.T @ dz,
        "logits/bias": dz.sum(axis=0),
        "hidden/kernel": x.T @ dh,
        "hidden/bias": dh.sum(axis=0),
    }
    for name, grad in grads.items():
        params[name] -= rate * grad


def _train(
    start: Params, x: FloatArray, y: LabelArray, *, epochs: int, batch: int, rate: np.float32
) -> Params:
    params = {name: array.copy() for name, array in start.items()}
    for _ in range(epochs):
        for first in range(0, y.size, batch):
            _sgd_step(params, x[first : first + batch], y[first : first + batch], rate)
    return params


def run_reference(inputs: ReferenceInputs) -> ReferenceResult:
    """FedAvg over ``inputs``: the numpy floor (see the module's docstring)."""
    spec = inputs.spec
    rate = np.float32(spec.learning_rate)
    clients = {c: (inputs.x[rows], inputs.y[rows]) for c, rows in inputs.partition.items()}
    current = {name: array.copy() for name, array in inputs.init.items()}
    accuracy, correct, history, seconds = [], [], [], []
    started = time.perf_counter()
    for participants in inputs.schedule:
        begun = time.perf_counter()
        sums = {name: np.zeros(a.shape, np.float64) for name, a in current.items()}
        total = 0
        for client in participants:
            x, y = clients[client]
            trained = _train(current, x, y, epochs=spec.epochs, batch=spec.batch_size, rate=rate)
            for name, array in trained.items():
                sums[name] += (array - current[name]).astype(np.float64) * y.size
            total += y.size
        current = {name: current[name] + (sums[name] / total).astype(np.float32) for name in sums}
        hits = int((logits(current, inputs.test_x).argmax(axis=1) == inputs.test_y).sum())
        seconds.append(time.perf_counter() - begun)
        correct.append(hits)
        accuracy.append(float(hits / inputs.test_y.size))
        history.append(current)
    return ReferenceResult(
        accuracy=tuple(accuracy),
        correct=tuple(correct),
        weights=tuple(history),
        round_seconds=tuple(seconds),
        seconds=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.reference",
        description="Run the numpy FedAvg floor on a workload folder; print JSON.",
    )
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run_reference(load_inputs(args.directory))
    document = {**result.to_dict(), "wall_seconds": time.perf_counter() - started}
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
