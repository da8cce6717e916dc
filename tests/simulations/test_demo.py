"""The end-to-end demo (``make demo``): a CI-sized run of the real job, and its parts.

The slow test runs the demo's CLI in this process (so the ``no_leftover_children`` fixture
sees every process it starts) with two daemons, two rounds and a short pretraining, and
holds it to the README's promise: the federated rounds lift the pretrained model's test
accuracy. The fast tests cover the data split, the output folder and the lift check.
The command-line contract (exit codes, one-line errors, SIGINT) is in ``test_cli.py``.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data import split_task
from fedge.cli import ExitCode
from fedge.data import load_task
from fedge.errors import ConfigError
from simulations.demo.cli import demo_cli
from simulations.demo.config import DemoConfig
from simulations.demo.data import DATA_FILE, split_demo_data, write_device_files
from simulations.demo.job import OUTPUT_MARKER, prepare_output
from simulations.demo.result import DemoResult
from simulations.report import RoundRow, TestScore

SMALL_RUN = ["--devices", "3", "--rounds", "2", "--pretrain-epochs", "3", "--seed", "1"]
"""Secure aggregation is on by default; it needs at least three devices per round."""


@pytest.mark.slow
def test_demo_runs_every_tool_end_to_end_and_leaves_no_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftover_children: None
) -> None:
    out = tmp_path / "demo-output"
    (out / "logs").mkdir(parents=True)
    (out / "summary.json").write_text("{}")  # an earlier run's output is replaced

    code = demo_cli(["--out", str(out), *SMALL_RUN])
    printed = capsys.readouterr()

    assert code == ExitCode.OK, printed.err
    for step in range(1, 7):
        assert f"[{step}/6] " in printed.out
    assert "fedge demo OK" in printed.out
    assert "secure aggregation was on" in printed.out
    assert "2 devices over REST, 1 over gRPC" in printed.out  # edge-2 speaks gRPC

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    rounds = summary["rounds"]
    assert [(r["round"], r["version"], r["parent"]) for r in rounds] == [
        (0, "v1", None),
        (1, "v2", "v1"),
        (2, "v3", "v2"),
    ]
    assert [r["participants"] for r in rounds[1:]] == [3, 3]
    assert summary["settings"]["secure_aggregation"] is True
    device_rows = summary["data"]["device_rows"]
    assert sum(device_rows.values()) == summary["data"]["pool_examples"]
    for r in rounds[1:]:
        # a secure round stores no update: each device's example count stays in the sum
        assert r["examples"] is None
    # The README's promise, against the pretrained model scored in this same run.
    pretrained, final = summary["pretrained"]["accuracy"], summary["final"]["accuracy"]
    assert rounds[0]["test_accuracy"] == pretrained
    assert final > pretrained, (pretrained, final)
    assert summary["improvement"] == pytest.approx(final - pretrained)
    assert f"test accuracy {pretrained:.3f} (v1, pretrained" in printed.out
    assert f"-> {final:.3f} (v3, after 2 rounds" in printed.out
    assert summary["pretrained"]["int8_accuracy"] is not None
    assert summary["final"]["version"] == "v3"

    devices = summary["devices"]
    assert [d["device"] for d in devices] == ["edge-1", "edge-2", "edge-3"]
    assert [d["transport"] for d in devices] == ["rest", "grpc", "rest"]
    assert summary["coordinator_grpc"].startswith("grpc://127.0.0.1:")
    for device in devices:
        evaluation = device["evaluation"]
        assert evaluation["model_version"] == "v3"
        assert evaluation["holdout_examples"] > 0
        assert 0.0 <= evaluation["global_accuracy"] <= 1.0
        assert 0.0 <= evaluation["personalized_accuracy"] <= 1.0
        assert device["status"]["state"] == "stopped"
        assert device["status"]["tasks"] == {
            "train": 2,
            "secagg_share": 2,
            "secagg_mask": 2,
            "secagg_unmask": 2,
            "evaluate": 1,
        }

    stopped = {p["name"]: p for p in summary["processes"]}
    for name in ("coordinator", "edge-1", "edge-2", "edge-3"):
        assert stopped[name]["outcome"] == "terminated"
        assert stopped[name]["exit_code"] == 0
    assert summary["leftover_processes"] == []

    with open(out / "rounds.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["version"] for row in table] == ["v1", "v2", "v3"]
    assert all(0.0 <= float(row["test_accuracy"]) <= 1.0 for row in table)
    lineage = (out / "lineage.txt").read_text()
    assert "fedge-coordinator models list" in lineage
    for line in ("v2       archived    v1", "v3       production  v2"):
        assert line in lineage
    assert "v3       production  v2" in printed.out
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    logs = {p.name for p in (out / "logs").iterdir()}
    processes = ("fedge-train", "fedge-quantize", "coordinator", "edge-1", "edge-2", "edge-3")
    assert {f"{name}.log" for name in processes} <= logs
    assert "received SIGTERM" in (out / "logs" / "edge-1.log").read_text()
    admin_token = (out / "work" / "coordinator" / "admin-token").read_text().strip()
    assert admin_token not in printed.out + printed.err + lineage


def _row_counts(pixels: np.ndarray, labels: np.ndarray) -> Counter[bytes]:
    flat = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)
    return Counter(row.tobytes() + bytes([int(y)]) for row, y in zip(flat, labels, strict=True))


def test_demo_split_gives_devices_exactly_the_rows_the_cloud_never_sees(tmp_path: Path) -> None:
    digits = load_task("digits")
    data = split_demo_data(
        "digits", seed=0, test_fraction=0.2, proxy_fraction=0.1, devices=5, alpha=0.5
    )
    proxy, test = split_task(digits, test_fraction=0.2, seed=0, data_fraction=0.1)
    assert data.proxy.fingerprint() == proxy.fingerprint()  # what fedge-train trains on
    assert data.test.fingerprint() == test.fingerprint()

    directories = [tmp_path / f"edge-{i}" for i in range(5)]
    sizes = write_device_files(data, directories)

    on_devices: Counter[bytes] = Counter()
    for directory, size in zip(directories, sizes, strict=True):
        with np.load(directory / DATA_FILE) as archive:
            assert len(archive["digit"]) == size
            on_devices += _row_counts(archive["pixels"], archive["digit"])
    everything = _row_counts(digits.columns["pixels"], digits.labels)
    cloud = _row_counts(proxy.columns["pixels"], proxy.labels) + _row_counts(
        test.columns["pixels"], test.labels
    )
    assert on_devices == everything - cloud


def test_prepare_output_empties_a_previous_demo_output(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "old.log").write_text("old")
    (out / "rounds.csv").write_text("old")

    assert prepare_output(out) == out.resolve()

    assert [p.name for p in out.iterdir()] == [OUTPUT_MARKER]


def test_prepare_output_refuses_a_folder_that_is_not_a_demo_output(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")

    with pytest.raises(ConfigError, match="refusing to clean it"):
        prepare_output(tmp_path)

    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_demo_refuses_an_unusable_out_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")

    assert demo_cli(["--out", str(tmp_path)]) == ExitCode.USAGE

    printed = capsys.readouterr()
    error = printed.err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("python -m simulations.demo: error: output directory ")
    assert "refusing to clean it" in error[0]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--devices", "0"],
        ["--clients-per-round", "6"],
        ["--proxy-fraction", "1.5"],
        ["--bogus"],
        ["--devices", "2"],  # secure aggregation (the default) needs 3 per round
    ],
)
def test_demo_refuses_bad_flags_with_exit_2(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo_cli(["--out", str(tmp_path / "out"), *flags]) == ExitCode.USAGE
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _result(pretrained: float, final: float, tmp_path: Path) -> DemoResult:
    def row(number: int, accuracy: float) -> RoundRow:
        version = f"v{number + 1}"
        return RoundRow(
            round=number,
            version=version,
            parent=None if number == 0 else f"v{number}",
            participants=None if number == 0 else 2,
            examples=10,
            train_loss=None,
            train_accuracy=None,
            test=TestScore(version, accuracy, 0.5),
            seconds=None,
        )

    return DemoResult(DemoConfig(), tmp_path, rows=[row(0, pretrained), row(1, final)])


def test_demo_result_is_failed_when_the_rounds_made_the_model_worse(tmp_path: Path) -> None:
    worse = _result(0.892, 0.786, tmp_path)
    assert not worse.improved
    assert worse.to_dict()["status"] == "failed"
    assert worse.to_dict()["improvement"] == pytest.approx(-0.106)
    better = _result(0.883, 0.930, tmp_path)
    assert better.improved
    assert better.to_dict()["status"] == "ok"


def test_demo_config_resolves_per_task_defaults() -> None:
    from simulations.demo.config import LEARNING_RATES, PRETRAIN_EPOCHS, PROXY_FRACTIONS

    for task in ("digits", "taxi"):
        config = DemoConfig(task=task)
        assert config.pretrain_epochs == PRETRAIN_EPOCHS[task]
        assert config.proxy_fraction == PROXY_FRACTIONS[task]
        assert config.learning_rate == LEARNING_RATES[task]
    assert DemoConfig(task="taxi", proxy_fraction=0.3).proxy_fraction == 0.3
    with pytest.raises(ConfigError, match="proxy_fraction"):
        DemoConfig(proxy_fraction=1.5)


def test_demo_exits_1_naming_the_figures_when_the_rounds_made_the_model_worse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job itself is replaced by its result: what is checked is the CLI's verdict.
    worse = _result(0.892, 0.786, tmp_path)
    monkeypatch.setattr("simulations.demo.cli.run_job", lambda config, out, say: worse)

    assert demo_cli(["--out", str(tmp_path / "out"), "--task", "taxi"]) == ExitCode.FAILED

    printed = capsys.readouterr()
    error = printed.err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("python -m simulations.demo: error: ")
    assert "test accuracy 0.892 (v1, pretrained on the proxy share) -> 0.786 (v2" in error[0]
    assert "fedge demo OK" not in printed.out
