"""``fedge-quantize MODEL --mode ...``: the report's figures, and failing cleanly on bad input.

Successful conversions run in this process (TensorFlow is loaded once); the exit-code and
stderr contract is checked on the real console script in subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedge.cli import ExitCode
from quantize.cli import quantize_cli

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)
CLI = Path(sys.executable).with_name("fedge-quantize")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _convert(
    capsys: pytest.CaptureFixture[str], export: Path, out: Path, *args: str
) -> dict[str, Any]:
    """Run the command in this process with --json; the report.json it wrote."""
    code = quantize_cli([str(export), "--out", str(out), "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert printed["report"] == report
    return report


@pytest.fixture(scope="module")
def digits_int8(
    digits_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("digits") / "int8"
    code = quantize_cli([str(digits_export), "--mode", "int8", "--out", str(out), "--json"])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def taxi_int8(
    taxi_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("taxi") / "int8"
    code = quantize_cli([str(taxi_export), "--mode", "int8", "--out", str(out), "--quiet"])
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


# Acceptance 4: sizes and accuracy of int8, from the report -------------------------------


def test_int8_digits_is_at_most_035x_float32_and_within_1_5_points_of_keras(
    digits_int8: tuple[Path, dict[str, Any]],
) -> None:
    out, report = digits_int8
    assert report["mode"] == "int8"
    assert report["bytes"] == (out / "model.tflite").stat().st_size
    assert report["ratio_to_float32"] == pytest.approx(report["bytes"] / report["float32_bytes"])
    assert report["ratio_to_float32"] <= 0.35
    assert report["keras"]["accuracy"] - report["tflite"]["accuracy"] <= 0.015
    assert report["accuracy_drop"] == pytest.approx(
        report["keras"]["accuracy"] - report["tflite"]["accuracy"]
    )
    assert report["argmax_agreement"] >= 0.97


def test_int8_taxi_auc_is_within_0_01_of_keras(taxi_int8: tuple[Path, dict[str, Any]]) -> None:
    _, report = taxi_int8
    assert report["keras"]["auc"] is not None
    assert report["keras"]["auc"] > 0.8  # a real model, so the comparison means something
    assert abs(report["keras"]["auc"] - report["tflite"]["auc"]) <= 0.01
    assert report["auc_drop"] == pytest.approx(report["keras"]["auc"] - report["tflite"]["auc"])


def test_int8_report_describes_a_full_integer_builtin_model_calibrated_on_training_data(
    digits_int8: tuple[Path, dict[str, Any]], digits_export: Path
) -> None:
    _, report = digits_int8
    record = json.loads((digits_export / "training_record.json").read_text())
    assert report["input_dtype"] == report["output_dtype"] == "int8"
    assert "FULLY_CONNECTED" in report["ops"]
    assert "CONV_2D" in report["ops"]
    assert not [op for op in report["ops"] if op.startswith("CUSTOM")]
    assert report["representative"] == {"examples": 200, "source": "training split"}
    assert report["runtime"] == "tflite_runtime"
    latency = report["latency_us_per_example"]
    assert latency["single_us"] > 0
    assert latency["batched_us"] > 0
    held_out = report["held_out"]
    assert held_out["task"] == record["task"] == report["task"]
    assert held_out["seed"] == record["seed"]
    assert held_out["test_fraction"] == record["test_fraction"]
    assert held_out["num_test_examples"] == record["num_test_examples"]
    assert held_out["fingerprint_matches_record"] is True
    # The Keras figure is the trainer's own test accuracy: the same split was rebuilt.
    assert report["keras"]["accuracy"] == pytest.approx(record["metrics"]["test_accuracy"])


def test_report_auc_is_the_rank_auc_of_the_tflite_margins_on_the_held_out_split(
    taxi_int8: tuple[Path, dict[str, Any]], taxi_export: Path
) -> None:
    from edge_client.runtime import InferenceModel
    from quantize.inputs import load_task_arrays, resolve_model

    out, report = taxi_int8
    arrays = load_task_arrays(resolve_model(taxi_export))
    logits = InferenceModel(out / "model.tflite").logits(arrays.x_test).astype(np.float64)
    # int8 logits tie often, so the margin is taken in float64 as the report does (float32
    # rounding would break some ties); roc_auc_score counts a tie as half, like the ranks.
    expected = roc_auc_score(arrays.y_test, logits[:, 1] - logits[:, 0])
    assert report["tflite"]["auc"] == pytest.approx(expected, abs=1e-9)
    assert report["tflite"]["accuracy"] == pytest.approx(
        float((logits.argmax(axis=1) == arrays.y_test).mean())
    )


@pytest.mark.parametrize(
    ("mode", "max_ratio"), [("float32", 1.0), ("dynamic", 0.35), ("float16", 0.6)]
)
def test_float_modes_report_their_size_ratio_and_agree_with_keras(
    mode: str,
    max_ratio: float,
    digits_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = _convert(capsys, digits_export, tmp_path / mode, "--mode", mode)
    assert report["mode"] == mode
    assert report["representative"] is None
    assert report["input_dtype"] == "float32"
    assert report["ratio_to_float32"] <= max_ratio
    assert report["argmax_agreement"] >= 0.99
    if mode == "float32":
        assert report["bytes"] == report["float32_bytes"]
        assert report["max_abs_logit_diff"] < 1e-3
    else:
        assert report["bytes"] < report["float32_bytes"]


def test_int8_calibrates_on_a_representative_file_when_given(
    digits_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quantize.inputs import load_task_arrays, resolve_model

    arrays = load_task_arrays(resolve_model(digits_export))
    sample = tmp_path / "sample.npy"
    np.save(sample, arrays.x_train[:64])
    report = _convert(
        capsys,
        digits_export,
        tmp_path / "out",
        "--mode",
        "int8",
        "--representative-file",
        str(sample),
    )
    assert report["representative"] == {"examples": 64, "source": str(sample)}
    assert report["argmax_agreement"] >= 0.95


def test_cli_prints_a_one_line_summary_and_only_its_own_logs_for_a_savedmodel_dir(
    digits_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dyn"
    run = subprocess.run(
        [str(CLI), str(digits_export / "saved_model"), "--mode", "dynamic", "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # TensorFlow's native chatter and Python warnings are held back; our INFO records pass.
    own_record = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING) (quantize|cloud_trainer|fedge)\b")
    assert [line for line in run.stderr.splitlines() if not own_record.match(line)] == []
    assert "converted" in run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("digits dynamic: ")
    assert lines[0].endswith(f"-> {out / 'model.tflite'}")
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "report.json"]


# Acceptance 5: bad input exits 2 with one line and leaves nothing -----------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=ENV, capture_output=True, text=True, timeout=300, check=False
    )


def _assert_one_error_line(run: subprocess.CompletedProcess[str], code: int, match: str) -> None:
    assert run.returncode == code, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("fedge-quantize: error: ")
    assert match in lines[0]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def _bad_representative(tmp_path: Path) -> Path:
    path = tmp_path / "wrong_shape.npy"
    np.save(path, np.zeros((10, 64), np.float32))  # digits inputs are [n, 8, 8]
    return path


def _corrupt_savedmodel(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"this is not a protobuf")
    return path


_BAD_INPUTS = {
    "missing-path": (lambda t, e: [str(t / "nope"), "--mode", "int8"], "does not exist"),
    "file-not-model": (
        lambda t, e: [str(e / "feature_spec.json"), "--mode", "int8"],
        "is a file, not a model",
    ),
    "dir-not-model": (lambda t, e: [str(e.parent), "--mode", "int8"], "is not a model"),
    "corrupt-savedmodel": (
        lambda t, e: [str(_corrupt_savedmodel(t)), "--mode", "int8", "--task", "digits"],
        "cannot load a Keras model",
    ),
    "wrong-shape-representative": (
        lambda t, e: [
            str(e),
            "--mode",
            "int8",
            "--representative-file",
            str(_bad_representative(t)),
        ],
        "must have shape [n, 8, 8]",
    ),
    "not-npy-representative": (
        lambda t, e: [
            str(e),
            "--mode",
            "int8",
            "--representative-file",
            str(e / "feature_spec.json"),
        ],
        "is not a .npy array",
    ),
    "unknown-mode": (lambda t, e: [str(e), "--mode", "int4"], "unknown mode 'int4'"),
    "missing-mode": (lambda t, e: [str(e)], "--mode"),
    "representative-without-int8": (
        lambda t, e: [str(e), "--mode", "float16", "--representative", "10"],
        "only used by mode int8",
    ),
    "bundle-missing-path": (lambda t, e: ["bundle", str(t / "nope")], "does not exist"),
    "bundle-wrong-shape-representative": (
        lambda t, e: ["bundle", str(e), "--representative-file", str(_bad_representative(t))],
        "must have shape [n, 8, 8]",
    ),
    "bundle-bad-version": (
        lambda t, e: ["bundle", str(e), "--model-version", "../v1"],
        "version",
    ),
    "abbreviated-flag": (
        lambda t, e: [str(e), "--mode", "int8", "--representative-f", "x.npy"],
        "unrecognized arguments: --representative-f",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line_and_no_output(
    case: str, digits_export: Path, tmp_path: Path
) -> None:
    build_args, match = _BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = build_args(inputs, digits_export)
    out = tmp_path / "results" / "out"

    run = _run_cli(*args, "--out", str(out))

    _assert_one_error_line(run, ExitCode.USAGE, match)
    assert not out.exists()
    assert not (tmp_path / "results").exists()  # nor the parent it would have created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_bad_input_keeps_an_existing_out_dir_it_did_not_create(
    digits_export: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run_cli(
        str(digits_export), "--mode", "int8", "--representative-file",
        str(_bad_representative(tmp_path)), "--out", str(empty),
    )  # fmt: skip
    _assert_one_error_line(run, ExitCode.USAGE, "must have shape")
    assert empty.is_dir()
    assert not list(empty.iterdir())

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    run = _run_cli(str(digits_export), "--mode", "float32", "--out", str(full))
    _assert_one_error_line(run, ExitCode.USAGE, "exists and is not empty")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert (full / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            RuntimeError("converter crashed"),
            ExitCode.FAILED,
            "conversion failed: RuntimeError: converter crashed",
        ),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
    ],
    ids=["conversion-fails", "interrupted"],
)
def test_failure_after_staging_leaves_no_partial_output(
    error: BaseException,
    code: int,
    message: str,
    digits_export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import quantize.jobs

    out = tmp_path / "new" / "deeper" / "out"
    staged: list[Path] = []

    def half_written_then_failing(*args: Any, **kwargs: Any) -> Any:
        # Runs inside the staging directory's lifetime: leave a partial file there, then fail.
        staging = next(out.parent.glob(".out.partial-*"))
        (staging / "model.tflite").write_bytes(b"half a model")
        staged.append(staging)
        raise error

    monkeypatch.setattr(quantize.jobs, "quantize_model", half_written_then_failing)

    assert quantize_cli([str(digits_export), "--mode", "float32", "--out", str(out)]) == code

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0] == f"fedge-quantize: error: {message}"
    assert staged
    assert not staged[0].exists()
    assert not (tmp_path / "new").exists()


def test_help_documents_commands_and_exit_codes() -> None:
    for args in (["--help"], ["bundle", "--help"]):
        run = _run_cli(*args)
        assert run.returncode == 0
        assert "exit codes:" in run.stdout
        for code in ("0 ", "1 ", "2 ", "130 "):
            assert f"\n  {code}" in run.stdout
        assert "--model-version" in run.stdout or args == ["--help"]
    assert "bundle MODEL --out DIR" in _run_cli("--help").stdout


# Units -----------------------------------------------------------------------------------


def test_cli_modes_match_the_converter_modes() -> None:
    from quantize import jobs
    from quantize.convert import Mode

    assert get_args(Mode) == jobs.MODES


def test_compare_logits_counts_agreement_accuracy_and_auc_by_hand() -> None:
    from quantize.report import compare_logits

    reference = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    converted = np.array([[1.5, 0.0], [0.5, 0.0], [0.0, 2.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    agreement = compare_logits(reference, converted, labels)
    assert agreement.argmax_agreement == 0.75
    assert agreement.reference.accuracy == 0.75
    assert agreement.converted.accuracy == 0.5
    assert agreement.accuracy_drop == 0.25
    assert agreement.max_abs_logit_diff == 1.0
    # margins (class 1 - class 0), reference: -2, 1, 3, -1 with labels 0, 1, 1, 1: the one
    # negative (-2) is below every positive, so AUC = 1; converted: -1.5, -0.5, 2, -1 -> 1.
    assert agreement.reference.auc == 1.0
    assert agreement.converted.auc == 1.0
    assert agreement.auc_drop == 0.0
