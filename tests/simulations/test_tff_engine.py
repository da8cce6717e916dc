"""The TFF reference engine against plain Keras SGD, the workload types, and child reaping.

TFF's first computation is slow, so one small digits workload (4 IID clients of ~43
examples, E=1, batch 16, lr 0.1, 2 rounds) is run once per module and checked several ways
against a reference written here with GradientTape: per client, copy the global head, step
through the batches in order, take the delta; then add the example-weighted mean delta.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil
import pytest
import tensorflow as tf

from cloud_trainer.data import prepare_task_data
from cloud_trainer.models import build_model, compile_model, freeze_backbone
from fedge.data import iid
from fedge.errors import ConfigError, ShapeMismatchError, UnknownTensorError
from fedge.weights import Weights
from quantize.trainable import trainable_weight_names, trainable_weights
from simulations.tff_engine import TffResult, build_client_dataset, run_tff
from simulations.workload import (
    ClientData,
    Hyperparams,
    RoundMetrics,
    Workload,
    batch_order,
    build_full_schedule,
    build_random_schedule,
    check_schedule,
    clients_from_partition,
    load_schedule,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # Keras' set_random_seed
)
REPO = Path(__file__).resolve().parents[2]
BACKBONE_SEED = 0
HEAD_SEED = 1  # not the model_fn's seed: the run must start from the workload's head
TOLERANCE = 1e-5
OrderFn = Callable[[int, str, int], npt.NDArray[np.int64]]


def digits_model_fn() -> tf.keras.Model:
    """The zoo digits CNN with seeded (hence identical) weights on every call."""
    tf.keras.utils.set_random_seed(BACKBONE_SEED)
    return build_model("digits", input_shape=(8, 8), num_classes=10)


def head_of(seed: int) -> Weights:
    tf.keras.utils.set_random_seed(seed)
    model = freeze_backbone(build_model("digits", input_shape=(8, 8), num_classes=10))
    return Weights.from_pairs(trainable_weights(model).items())


@pytest.fixture(scope="module")
def workload() -> Workload:
    data = prepare_task_data("digits", seed=0, data_fraction=0.15)
    partition = iid(np.arange(len(data.y_train)), num_clients=4, seed=0, holdout_fraction=0.2)
    clients = clients_from_partition(data.x_train, data.y_train, partition)
    return Workload(
        task="digits",
        clients=clients,
        schedule=build_full_schedule([c.client_id for c in clients], rounds=2),
        hyperparams=Hyperparams(epochs=1, batch_size=16, learning_rate=0.1),
        initial_head=head_of(HEAD_SEED),
        test_x=data.x_test,
        test_y=data.y_test,
    )


@pytest.fixture(scope="module")
def tff_run(workload: Workload) -> tuple[TffResult, list[RoundMetrics]]:
    seen: list[RoundMetrics] = []
    result = run_tff(workload, model_fn=digits_model_fn, on_round=seen.append)
    return result, seen


def in_stored_order(hyperparams: Hyperparams) -> OrderFn:
    return lambda _round, _client, n: np.tile(np.arange(n), (hyperparams.epochs, 1))


def reference_fedavg(workload: Workload, order: OrderFn) -> tuple[Weights, list[float]]:
    """Plain FedAvg with GradientTape SGD: the final head and each round's mean train loss."""
    model = freeze_backbone(digits_model_fn())
    names = trainable_weight_names(model)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    hp = workload.hyperparams
    global_head = [workload.initial_head[n].astype(np.float64) for n in names]
    losses = []
    for round_index, participants in enumerate(workload.schedule):
        deltas, counts, loss_sum, seen = [], [], 0.0, 0
        for client_id in participants:
            client = workload.client(client_id)
            for variable, value in zip(model.trainable_variables, global_head, strict=True):
                variable.assign(value.astype(np.float32))
            for row in order(round_index, client_id, client.num_examples):
                for start in range(0, len(row), hp.batch_size):
                    idx = row[start : start + hp.batch_size]
                    with tf.GradientTape() as tape:
                        loss = loss_fn(client.y[idx], model(client.x[idx], training=True))
                    grads = tape.gradient(loss, model.trainable_variables)
                    for variable, grad in zip(model.trainable_variables, grads, strict=True):
                        variable.assign_sub(hp.learning_rate * grad)
                    loss_sum += float(loss) * len(idx)
                    seen += len(idx)
            deltas.append(
                [
                    v.numpy().astype(np.float64) - g
                    for v, g in zip(model.trainable_variables, global_head, strict=True)
                ]
            )
            counts.append(client.num_examples)
        total = sum(counts)
        global_head = [
            g + sum(c * d[i] for c, d in zip(counts, deltas, strict=True)) / total
            for i, g in enumerate(global_head)
        ]
        losses.append(loss_sum / seen)
    return Weights(dict(zip(names, global_head, strict=True))), losses


def max_abs_diff(a: Weights, b: Weights) -> float:
    assert a.names == b.names
    return max(float(np.max(np.abs(a[n] - b[n]))) for n in a.names)


def accuracy(head: Weights, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    model = freeze_backbone(digits_model_fn())
    names = trainable_weight_names(model)
    for variable, name in zip(model.trainable_variables, names, strict=True):
        variable.assign(head[name])
    return float(np.mean(np.argmax(model(x, training=False).numpy(), axis=1) == y))


# The TFF engine ---------------------------------------------------------------------------


def test_tff_head_matches_plain_sgd_reference_with_deterministic_batches(
    workload: Workload, tff_run: tuple[TffResult, list[RoundMetrics]]
) -> None:
    result, _ = tff_run
    expected, _ = reference_fedavg(workload, in_stored_order(workload.hyperparams))
    diff = max_abs_diff(result.final_head, expected)
    print(f"TFF vs reference, deterministic batches: max abs diff {diff:.3e}")
    assert diff < TOLERANCE
    # The run moved away from its start, so agreeing was not trivial.
    assert max_abs_diff(result.final_head, workload.initial_head) > 1e-3


def test_tff_final_head_uses_trainable_weight_names_order(
    workload: Workload, tff_run: tuple[TffResult, list[RoundMetrics]]
) -> None:
    result, _ = tff_run
    assert list(result.final_head.names) == trainable_weight_names(
        freeze_backbone(digits_model_fn())
    )
    assert result.final_head.shapes == workload.initial_head.shapes


def test_tff_round_metrics_match_reference(
    workload: Workload, tff_run: tuple[TffResult, list[RoundMetrics]]
) -> None:
    result, seen = tff_run
    expected_head, expected_losses = reference_fedavg(
        workload, in_stored_order(workload.hyperparams)
    )
    assert seen == list(result.rounds)
    assert [m.round for m in result.rounds] == [0, 1]
    assert [m.participants for m in result.rounds] == list(workload.schedule)
    np.testing.assert_allclose([m.train_loss for m in result.rounds], expected_losses, atol=1e-5)
    assert all(m.seconds > 0 for m in result.rounds)
    final_accuracy = accuracy(expected_head, workload.test_x, workload.test_y)
    assert result.rounds[-1].test_accuracy == pytest.approx(final_accuracy, abs=1e-9)
    assert result.rounds[-1].to_dict()["participants"] == list(workload.schedule[-1])


def test_tff_shuffled_epochs_follow_batch_order(workload: Workload) -> None:
    hyperparams = Hyperparams(epochs=2, batch_size=16, learning_rate=0.1, shuffle=True, seed=7)
    shuffled = Workload(
        task="digits",
        clients=workload.clients,
        schedule=build_random_schedule(workload.client_ids, rounds=1, per_round=3, seed=3),
        hyperparams=hyperparams,
        initial_head=workload.initial_head,
        test_x=workload.test_x,
        test_y=workload.test_y,
    )
    result = run_tff(shuffled, model_fn=digits_model_fn)
    expected, _ = reference_fedavg(shuffled, lambda r, c, n: batch_order(hyperparams, r, c, n))
    diff = max_abs_diff(result.final_head, expected)
    print(f"TFF vs reference, shuffled, 2 epochs: max abs diff {diff:.3e}")
    assert diff < TOLERANCE
    # Stored order gives another result: the permutation really was applied.
    stored, _ = reference_fedavg(shuffled, in_stored_order(hyperparams))
    assert max_abs_diff(result.final_head, stored) > 1e-4


def test_tff_accepts_a_compiled_model_like_a_loaded_export(workload: Workload) -> None:
    # load_exported_model returns a compiled model, which from_keras_model refuses.
    def compiled_model_fn() -> tf.keras.Model:
        model = digits_model_fn()
        compile_model(model)
        return model

    one_round = Workload(
        task="digits",
        clients=workload.clients,
        schedule=workload.schedule[:1],
        hyperparams=workload.hyperparams,
        initial_head=workload.initial_head,
        test_x=workload.test_x,
        test_y=workload.test_y,
    )
    result = run_tff(one_round, model_fn=compiled_model_fn)
    expected, _ = reference_fedavg(one_round, in_stored_order(one_round.hyperparams))
    assert max_abs_diff(result.final_head, expected) < TOLERANCE


def test_client_dataset_batches_each_epoch_on_its_own(workload: Workload) -> None:
    hyperparams = Hyperparams(epochs=2, batch_size=16, learning_rate=0.1)
    two_epochs = Workload(
        task="digits",
        clients=workload.clients[:1],
        schedule=((workload.clients[0].client_id,),),
        hyperparams=hyperparams,
        initial_head=workload.initial_head,
        test_x=workload.test_x,
        test_y=workload.test_y,
    )
    client = workload.clients[0]
    batches = list(build_client_dataset(two_epochs, 0, client.client_id).as_numpy_iterator())
    n = client.num_examples
    sizes = [len(y) for _, y in batches]
    per_epoch = [16] * (n // 16) + ([n % 16] if n % 16 else [])
    assert sizes == per_epoch * 2
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches]), np.tile(client.x, (2, 1, 1))
    )


def test_run_tff_refuses_a_head_that_does_not_fit_the_model(workload: Workload) -> None:
    names = list(workload.initial_head.names)
    wrong_shape = Weights(
        {n: (np.zeros((3, 3)) if n == names[0] else a) for n, a in workload.initial_head.items()}
    )
    bad = Workload(
        task="digits",
        clients=workload.clients,
        schedule=workload.schedule,
        hyperparams=workload.hyperparams,
        initial_head=wrong_shape,
        test_x=workload.test_x,
        test_y=workload.test_y,
    )
    with pytest.raises(ShapeMismatchError, match=names[0]):
        run_tff(bad, model_fn=digits_model_fn)
    renamed = Weights({("head_other" if n == names[0] else n): a for n, a in wrong_shape.items()})
    with pytest.raises(UnknownTensorError, match="head_other"):
        run_tff(
            Workload(
                task="digits",
                clients=workload.clients,
                schedule=workload.schedule,
                hyperparams=workload.hyperparams,
                initial_head=renamed,
                test_x=workload.test_x,
                test_y=workload.test_y,
            ),
            model_fn=digits_model_fn,
        )


def test_run_tff_refuses_a_model_with_other_inputs(workload: Workload) -> None:
    with pytest.raises(ConfigError, match=r"takes inputs \(6, 6\)"):
        run_tff(
            workload,
            model_fn=lambda: build_model("digits", input_shape=(6, 6), num_classes=10),
        )


# Child processes --------------------------------------------------------------------------

TFF_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, psutil, tensorflow as tf
    from cloud_trainer.models import build_model, freeze_backbone
    from fedge.weights import Weights
    from quantize.trainable import trainable_weights
    from fedge.processes import hard_exit
    from simulations.tff_engine import run_tff
    from simulations.workload import ClientData, Hyperparams, Workload, build_full_schedule

    def model_fn():
        tf.keras.utils.set_random_seed(0)
        return build_model("digits", input_shape=(8, 8), num_classes=10)

    rng = np.random.default_rng(0)
    clients = tuple(
        ClientData(f"c{i}", rng.random((10, 8, 8), dtype=np.float32), rng.integers(0, 10, 10))
        for i in range(2)
    )
    workload = Workload(
        task="digits",
        clients=clients,
        schedule=build_full_schedule(["c0", "c1"], rounds=1),
        hyperparams=Hyperparams(epochs=1, batch_size=4, learning_rate=0.1),
        initial_head=Weights(trainable_weights(freeze_backbone(model_fn()))),
        test_x=clients[0].x,
        test_y=clients[0].y,
    )
    result = run_tff(workload, model_fn=model_fn)
    workers = [
        p.pid for p in psutil.Process().children(recursive=True) if p.name() == "worker_binary"
    ]
    with open(sys.argv[1], "w") as handle:
        json.dump({"workers": workers, "rounds": len(result.rounds)}, handle)
    print("done", flush=True)
    hard_exit(0)  # how fedge's TFF entry points end (see its docstring)
    """
)


def _stop(pids: list[int]) -> None:
    """Clean up after a failed check: kill what the child left behind (ours, by pid)."""
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.name() == "worker_binary":
                process.kill()
        except psutil.NoSuchProcess:
            pass


def test_tff_process_exits_by_itself_and_leaves_no_worker_binary(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", TFF_CHILD, str(report)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        # Reading to EOF is what hangs when an orphaned worker holds the pipes open.
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-3000:]
        assert "done" in out
        workers = json.loads(report.read_text())["workers"]
        assert workers, "the TFF run started no worker_binary; nothing was checked"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in workers):
            time.sleep(0.1)
        left = [
            p.info
            for p in psutil.process_iter(["pid", "ppid", "name"])
            if p.info["name"] == "worker_binary"
            and (p.info["pid"] in workers or p.info["ppid"] == child.pid)
        ]
        assert left == []
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        if report.exists():
            workers = json.loads(report.read_text())["workers"]
        pytest.fail(f"the TFF process did not exit within 240 s (workers {workers} hold pipes?)")
    finally:
        _stop(workers)


REAPER_CHILD = textwrap.dedent(
    """
    import subprocess, sys, time
    from fedge.processes import install_child_reaper, kill_descendants

    mode = sys.argv[1]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    install_child_reaper(timeout=5)
    install_child_reaper(timeout=5)  # idempotent
    print(sleeper.pid, flush=True)
    if mode == "call":
        print(kill_descendants(5) == [sleeper.pid], sleeper.poll() is not None, flush=True)
    elif mode == "wait":
        time.sleep(300)
    """
)


def _reaper_child(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", REAPER_CHILD, mode],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone(pid: int, *, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["call", "exit"])
def test_kill_descendants_stops_them_when_called_and_at_exit(mode: str) -> None:
    child = _reaper_child(mode)
    out, err = child.communicate(timeout=60)
    lines = out.split()
    sleeper = int(lines[0])
    try:
        assert child.returncode == 0, err
        if mode == "call":
            assert lines[1:] == ["True", "True"]
        assert _gone(sleeper)
    finally:
        _stop_pid(sleeper)


def test_child_reaper_stops_descendants_on_sigterm() -> None:
    child = _reaper_child("wait")
    assert child.stdout is not None
    sleeper = int(child.stdout.readline())
    try:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGTERM
        assert _gone(sleeper)
    finally:
        _stop_pid(sleeper)
        if child.poll() is None:
            child.kill()


def _stop_pid(pid: int) -> None:
    try:
        process = psutil.Process(pid)
        if "time.sleep(300)" in " ".join(process.cmdline()):
            process.kill()
    except psutil.Error:
        pass


# Workload, schedules and batch order ------------------------------------------------------


def tiny_clients() -> tuple[ClientData, ...]:
    rng = np.random.default_rng(0)
    return tuple(
        ClientData(name, rng.random((5, 3), dtype=np.float32), rng.integers(0, 2, 5))
        for name in ("a", "b", "c")
    )


def tiny_workload(**changes: object) -> Workload:
    fields: dict[str, object] = {
        "task": "toy",
        "clients": tiny_clients(),
        "schedule": (("a", "b"), ("c",)),
        "hyperparams": Hyperparams(epochs=1, batch_size=2, learning_rate=0.5),
        "initial_head": Weights({"head/kernel": np.zeros((3, 2))}),
        "test_x": np.zeros((4, 3), dtype=np.float32),
        "test_y": np.zeros(4, dtype=np.int64),
    }
    fields.update(changes)
    return Workload(**fields)  # type: ignore[arg-type]


def test_workload_accepts_a_consistent_run_and_copies_read_only() -> None:
    workload = tiny_workload()
    assert workload.num_rounds == 2
    assert workload.client_ids == ("a", "b", "c")
    assert workload.feature_shape == (3,)
    assert workload.client("b").num_examples == 5
    assert workload.clients[0].y.dtype == np.int64
    assert workload.clients[0].holdout_x.shape == (0, 3)
    with pytest.raises(ValueError, match="read-only"):
        workload.clients[0].x[0, 0] = 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": (("a", "z"),)}, r"unknown clients \['z'\]"),
        ({"schedule": ()}, "non-empty list of rounds"),
        ({"schedule": (("a",), ())}, "round 1 of the schedule has no participants"),
        ({"schedule": (("a", "a"),)}, "more than once"),
        ({"clients": tiny_clients()[:1] * 2}, "unique"),
        ({"clients": ()}, "at least one client"),
        ({"test_x": np.zeros((4, 2), dtype=np.float32)}, r"test_x has feature shape \(2,\)"),
        ({"test_y": np.zeros(3, dtype=np.int64)}, "3 labels for 4 examples"),
        ({"initial_head": Weights({})}, "non-empty Weights"),
        ({"task": ""}, "task"),
    ],
)
def test_workload_rejects_inconsistent_input(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_workload(**changes)


def test_workload_rejects_clients_with_different_feature_shapes() -> None:
    odd = ClientData("d", np.zeros((2, 4), dtype=np.float32), np.zeros(2, dtype=np.int64))
    with pytest.raises(ConfigError, match="feature shape"):
        tiny_workload(clients=(*tiny_clients(), odd))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": np.zeros((2, 3)), "y": np.zeros(3, dtype=np.int64)}, "3 labels for 2 examples"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, dtype=np.int64)}, "at least one"),
        ({"x": np.zeros(3), "y": np.zeros(3, dtype=np.int64)}, r"\[examples, \*features\]"),
        ({"x": np.zeros((2, 3)), "y": np.array([0.5, 1.0])}, "integer labels"),
        ({"x": np.zeros((2, 3)), "y": np.array([0, -1])}, "non-negative"),
        ({"x": np.full((2, 3), np.nan), "y": np.zeros(2, dtype=np.int64)}, "NaN"),
        (
            {
                "x": np.zeros((2, 3)),
                "y": np.zeros(2, dtype=np.int64),
                "holdout_x": np.zeros((1, 3)),
            },
            "both holdout_x and holdout_y",
        ),
        (
            {
                "x": np.zeros((2, 3)),
                "y": np.zeros(2, dtype=np.int64),
                "holdout_x": np.zeros((1, 4)),
                "holdout_y": np.zeros(1, dtype=np.int64),
            },
            "holdout_x has feature shape",
        ),
    ],
)
def test_client_data_rejects_inconsistent_arrays(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientData("a", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"shuffle": 1}, "shuffle"),
        ({"seed": -1}, "seed"),
    ],
)
def test_hyperparams_reject_invalid_values(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"epochs": 1, "batch_size": 4, "learning_rate": 0.1}
    with pytest.raises(ConfigError, match=message):
        Hyperparams(**{**base, **kwargs})  # type: ignore[arg-type]


def test_batch_order_is_stored_order_without_shuffle() -> None:
    order = batch_order(Hyperparams(epochs=2, batch_size=4, learning_rate=0.1), 3, "a", 5)
    np.testing.assert_array_equal(order, [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    assert order.dtype == np.int64


def test_batch_order_shuffle_is_determined_by_seed_round_and_client() -> None:
    hp = Hyperparams(epochs=2, batch_size=4, learning_rate=0.1, shuffle=True, seed=5)
    order = batch_order(hp, 1, "a", 50)
    assert order.shape == (2, 50)
    assert all(sorted(row) == list(range(50)) for row in order.tolist())
    assert not np.array_equal(order[0], order[1])  # a new permutation every epoch
    np.testing.assert_array_equal(order, batch_order(hp, 1, "a", 50))
    others = [
        batch_order(hp, 2, "a", 50),
        batch_order(hp, 1, "b", 50),
        batch_order(Hyperparams(2, 4, 0.1, shuffle=True, seed=6), 1, "a", 50),
    ]
    assert all(not np.array_equal(order, other) for other in others)


def test_batch_order_is_the_same_in_another_process() -> None:
    # The client id enters through a digest, not hash(), which varies between processes.
    code = (
        "from simulations.workload import Hyperparams, batch_order; "
        "print(batch_order(Hyperparams(1, 2, 0.1, shuffle=True, seed=5), 1, 'a', 8).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "random"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    hp = Hyperparams(1, 2, 0.1, shuffle=True, seed=5)
    assert json.loads(out) == batch_order(hp, 1, "a", 8).tolist()


def test_full_schedule_lists_every_client_every_round() -> None:
    assert build_full_schedule(["a", "b"], rounds=3) == (("a", "b"),) * 3
    with pytest.raises(ConfigError, match="rounds"):
        build_full_schedule(["a"], rounds=0)
    with pytest.raises(ConfigError, match="more than once"):
        build_full_schedule(["a", "a"], rounds=1)


def test_random_schedule_is_seeded_and_draws_distinct_clients() -> None:
    ids = [f"c{i}" for i in range(10)]
    schedule = build_random_schedule(ids, rounds=20, per_round=3, seed=1)
    assert schedule == build_random_schedule(ids, rounds=20, per_round=3, seed=1)
    assert schedule != build_random_schedule(ids, rounds=20, per_round=3, seed=2)
    assert all(len(set(r)) == 3 and set(r) <= set(ids) for r in schedule)
    assert all(list(r) == sorted(r, key=ids.index) for r in schedule)
    assert len({r for r in schedule}) > 1
    with pytest.raises(ConfigError, match="exceeds the 10 clients"):
        build_random_schedule(ids, rounds=1, per_round=11, seed=1)


def test_load_schedule_reads_rounds_from_json(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"rounds": [["a", "b"], ["c"]]}))
    assert load_schedule(path) == (("a", "b"), ("c",))
    assert load_schedule(path, client_ids=["a", "b", "c"]) == (("a", "b"), ("c",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('[["a"]]', "must hold an object"),
        ('{"round": [["a"]]}', "must hold an object"),
        ('{"rounds": [["a"]], "seed": 1}', r"unknown keys \['seed'\]"),
        ('{"rounds": "a"}', "non-empty list of rounds"),
        ('{"rounds": []}', "non-empty list of rounds"),
        ('{"rounds": [["a"], "b"]}', "round 1 of the schedule must be a list"),
        ('{"rounds": [["a", 3]]}', "non-empty strings"),
        ('{"rounds": [["a"], []]}', "round 1 of the schedule has no participants"),
        ('{"rounds": [["a", "zz"]]}', r"unknown clients \['zz'\]"),
    ],
)
def test_load_schedule_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_schedule(path, client_ids=["a", "b"])
    assert str(path) in str(caught.value)


def test_load_schedule_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read schedule file"):
        load_schedule(tmp_path / "missing.json")


def test_check_schedule_returns_tuples() -> None:
    assert check_schedule([["a"], ["b", "a"]]) == (("a",), ("b", "a"))
