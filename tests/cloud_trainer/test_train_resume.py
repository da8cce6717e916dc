"""A ``fedge-train`` run killed after its first epoch resumes there when restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from cloud_trainer.train import backup_epoch

EPOCHS = 4
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 240


def _command(out: Path) -> list[str]:
    script = shutil.which("fedge-train", path=os.path.dirname(sys.executable))
    # The installed console script when there is one, the module otherwise.
    head = [script] if script else [sys.executable, "-m", "cloud_trainer.cli"]
    # Full taxi training split, small batches: an epoch lasts about a second or more here,
    # which leaves time to kill the run between the first and the second backup.
    return [
        *head,
        "--task=taxi",
        f"--epochs={EPOCHS}",
        "--batch-size=16",
        f"--out={out}",
        "--seed=2",
        "--json",
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return env


@pytest.mark.slow
def test_killed_run_resumes_from_the_epoch_after_its_last_backup(
    tmp_path: Path, no_leftover_children: None
) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(
        _command(out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # The checkpoint state file is written last: the epoch-1 backup is complete.
        while not (out / "backup" / "chief" / "checkpoint").exists():
            assert first.poll() is None, f"training exited early with {first.returncode}"
            assert time.monotonic() < deadline, "no backup within the time limit"
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    assert not (out / "training_record.json").exists()  # it really died unfinished
    done = backup_epoch(out / "backup")  # epochs completed, read as Keras restores them
    assert done is not None
    assert 1 <= done < EPOCHS  # normally exactly 1: killed within the second epoch

    second = subprocess.run(
        _command(out), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_env()
    )
    assert second.returncode == 0, second.stderr
    assert f"resuming from epoch {done} " in second.stderr
    progress = [line for line in second.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in progress] == [
        f"{e}/{EPOCHS}" for e in range(done + 1, EPOCHS + 1)
    ]
    record = json.loads(second.stdout)["record"]
    assert record["initial_epoch"] == done
    assert record["epochs_run"] == EPOCHS - done
    assert record["epochs"] == EPOCHS
    assert not (out / "backup").exists()  # deleted once the run finished
    assert (out / "checkpoints" / f"epoch-{EPOCHS:03d}.index").is_file()
