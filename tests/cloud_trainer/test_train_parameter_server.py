"""``fedge-train --strategy parameter-server``: a local chief, workers and parameter servers.

One run is stopped with SIGTERM after its first backed-up epochs and restarted with the
same arguments: it resumes, trains digits above the default strategy's bar, exports, and
leaves no process behind either time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import psutil
import pytest

from cloud_trainer.cluster import cluster_role, local_ps_tf_configs
from cloud_trainer.config import TrainConfig
from cloud_trainer.data import prepare_task_data
from cloud_trainer.errors import ClusterError
from cloud_trainer.evaluation import logit_metrics
from cloud_trainer.export import load_exported_model
from cloud_trainer.launcher import launch_local_ps_cluster
from cloud_trainer.record import load_training_record
from cloud_trainer.train import backup_epoch
from fedge.errors import ConfigError

# Keras 2.14 seeds its initializers with random.randint(1, 1e9), which Python 3.11 flags.
pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

SEED = 4
RUN_TIMEOUT_S = 240
START_TIMEOUT_S = 120
# Few, small epochs (about a third of a second each here): the whole test stays short.
ARGS = (
    "--task=digits",
    "--strategy=parameter-server",
    "--workers=2",
    "--ps=1",
    "--data-fraction=0.3",
    f"--seed={SEED}",
    "--worker-timeout=200",
)
DIGITS_BAR = 0.5  # the default strategy's bar on digits (chance: 0.1)


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return env


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloud_trainer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _communicate(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate(timeout=30)
        raise


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_tf_configs_of_a_local_parameter_server_cluster() -> None:
    configs = local_ps_tf_configs(5000, [5001, 5002], [5003])
    assert [(kind, index) for kind, index, _ in configs] == [
        ("chief", 0),
        ("worker", 0),
        ("worker", 1),
        ("ps", 0),
    ]
    roles = [cluster_role({"TF_CONFIG": text}) for _, _, text in configs]
    assert [r.is_chief for r in roles] == [True, False, False, False]
    assert [r.is_server for r in roles] == [False, True, True, True]
    assert {(r.num_workers, r.num_ps) for r in roles} == {(2, 1)}
    with pytest.raises(ConfigError, match="distinct ports"):
        local_ps_tf_configs(5000, [5000], [5003])


# A stand-in for fedge-train in a launched cluster: the task type named in argv[1] exits
# with code 3 after a moment; every other task sleeps (a server, or a long-training chief).
_FAKE_TASK = """
import json, os, sys, time
task = json.loads(os.environ["TF_CONFIG"])["task"]["type"]
if task == sys.argv[1]:
    time.sleep(0.5)
    sys.exit(3)
time.sleep(120)
"""


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("ps", r"ps 0 \(pid \d+\) exited with code 3 during training; the others were killed"),
        ("chief", r"chief \(pid \d+\) exited with code 3; the servers were killed"),
    ],
    ids=["ps", "chief"],
)
def test_launcher_stops_the_cluster_when_a_server_or_the_chief_fails(
    tmp_path: Path, no_leftover_children: None, failing: str, message: str
) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match=message):
        launch_local_ps_cluster(
            [sys.executable, "-c", _FAKE_TASK, failing],
            num_workers=2,
            num_ps=1,
            log_dir=tmp_path,
            timeout_s=60,
        )
    assert time.monotonic() - start < 30  # did not wait for the sleeping processes


def test_ps_applies_to_the_parameter_server_strategy_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ps applies to the parameter-server strategy only"):
        TrainConfig(task="digits", out_dir=str(tmp_path), strategy="multi-worker", ps=1)
    proc = _popen("--task=digits", "--strategy=multi-worker", "--ps=1", "--epochs=1", "--out=x")
    _, err = _communicate(proc, 60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "fedge-train: error: --ps needs --strategy parameter-server"
    ]


def test_parameter_server_without_workers_or_cluster_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = _popen("--task=digits", "--strategy=parameter-server", "--epochs=1", f"--out={out}")
    _, err = _communicate(proc, 60)
    assert proc.returncode == 2
    assert not out.exists()
    assert err.strip().splitlines()[-1] == (
        "fedge-train: error: the parameter-server strategy needs --workers (a local cluster) "
        "or TF_CONFIG"
    )


@pytest.mark.slow
def test_parameter_server_trains_digits_resumes_exports_and_leaves_no_process(
    tmp_path: Path, no_leftover_children: None
) -> None:
    out = tmp_path / "ps"
    # 1. A long run, stopped with SIGTERM (a preempted job) once an epoch is backed up.
    first = _popen(*ARGS, "--epochs=1000", f"--out={out}", "--quiet")
    try:
        launcher = psutil.Process(first.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (out / "backup" / "chief" / "checkpoint").is_file():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no epoch was backed up"
            time.sleep(0.05)
        family = [p.pid for p in launcher.children()]
        assert len(family) == 4  # chief, 2 workers, 1 ps
        first.send_signal(signal.SIGTERM)
        _, err = _communicate(first, 60)
    finally:
        _kill_tree(first.pid)
    assert first.returncode == 130, err
    assert [pid for pid in family if not _gone(pid)] == []
    done = backup_epoch(out / "backup")
    assert done is not None
    assert done >= 1
    assert not (out / "training_record.json").exists()

    # 2. The same command, to a few epochs past the backup: it resumes there and finishes.
    epochs = done + 3
    second = _popen(*ARGS, f"--epochs={epochs}", f"--out={out}", "--json")
    try:
        stdout, err = _communicate(second, RUN_TIMEOUT_S)
    finally:
        _kill_tree(second.pid)
    assert second.returncode == 0, err
    assert f"resuming from epoch {done} " in err
    assert f"epoch {epochs}/{epochs} [" in err  # the per-epoch progress line
    outcome = json.loads(stdout)
    processes = outcome["workers"]
    assert sorted((w["task"], w["index"]) for w in processes) == [
        ("chief", 0),
        ("ps", 0),
        ("worker", 0),
        ("worker", 1),
    ]
    assert processes[0]["task"] == "chief"
    assert processes[0]["returncode"] == 0
    assert [w["pid"] for w in processes if not _gone(w["pid"])] == []
    record = outcome["record"]
    assert (record["strategy"], record["workers"]) == ("parameter-server", 2)
    assert (record["epochs"], record["initial_epoch"], record["epochs_run"]) == (epochs, done, 3)
    assert record["metrics"]["test_accuracy"] > DIGITS_BAR
    assert load_training_record(out).to_dict() == record
    # The export other strategies produce: the SavedModel loads outside the cluster and
    # scores the record's test accuracy; per-epoch checkpoints; no backup left.
    assert (out / "feature_spec.json").is_file()
    data = prepare_task_data("digits", seed=SEED, data_fraction=0.3)
    logits = np.asarray(load_exported_model(out)(data.x_test), dtype=np.float32)
    accuracy = logit_metrics(logits, data.y_test)["accuracy"]
    assert accuracy == pytest.approx(record["metrics"]["test_accuracy"], abs=1e-6)
    assert (out / "checkpoints" / f"epoch-{epochs:03d}.index").is_file()
    assert not (out / "backup").exists()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
