"""Size, latency and accuracy of every TFLite variant of the digits and taxi models.

Run ``.venv/bin/python benchmarks/quantize.py`` (trains small models into a temporary
directory first, ~20 s) or ``--model-dir DIR`` to reuse, or create once, ``DIR/digits`` and
``DIR/taxi`` exports. For each task it prints one row per variant: the Keras model (called
directly, and through ``predict``) and its float32, dynamic-range, float16 and int8 TFLite
conversions, with size in bytes and as a ratio to float32 TFLite, microseconds per example
(one example per call, median; and per example in batches of 256), held-out accuracy (AUC
for taxi) and argmax agreement with Keras. Every variant is timed in this run on the same
held-out inputs; TFLite runs with one thread, Keras with TensorFlow's default threading.
TFLite times are float in, float out: int8 rows include quantizing the input and
dequantizing the output in numpy. The Keras size is that of its SavedModel directory.

The targets of the edge bundle are checked at the end (digits int8 <= 0.35x float32 and
within 1.5 accuracy points of Keras; taxi int8 AUC within 0.01 of Keras); the exit code is
1 if one is missed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the package it measures: keep its folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quantize.inputs import (  # noqa: E402
    load_keras_model,
    load_task_arrays,
    representative_sample,
    resolve_model,
)
from quantize.quiet import capture_native_stderr  # noqa: E402
from quantize.report import Agreement, compare_logits, convert_checked, keras_logits  # noqa: E402
from quantize.runner import Latency, TFLiteRunner, measure_latency  # noqa: E402

TASKS = ("digits", "taxi")
MODES = ("float32", "dynamic", "float16", "int8")
EPOCHS = {"digits": 10, "taxi": 3}
DIGITS_MAX_RATIO = 0.35
DIGITS_MAX_ACCURACY_DROP = 0.015
TAXI_MAX_AUC_DROP = 0.01


@dataclass(frozen=True)
class Row:
    variant: str
    size_bytes: int
    ratio: float
    latency: Latency
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "bytes": self.size_bytes,
            "ratio_to_float32": self.ratio,
            "latency_us_per_example": self.latency.to_dict(),
            "accuracy": self.agreement.converted.accuracy,
            "auc": self.agreement.converted.auc,
            "agreement": self.agreement.argmax_agreement,
        }


def _export(task: str, model_dir: Path, *, log: Any) -> Path:
    out = model_dir / task
    if (out / "training_record.json").is_file():
        log(f"{task}: reusing the export in {out}")
        return out
    from cloud_trainer.config import TrainConfig
    from cloud_trainer.train import train

    log(f"{task}: training {EPOCHS[task]} epochs into {out}")
    train(
        TrainConfig(
            task=task, out_dir=str(out), epochs=EPOCHS[task], learning_rate=3e-3, progress=False
        )
    )
    return out


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def benchmark_task(export: Path, *, examples: int, log: Any) -> list[Row]:
    """Every variant of the model at ``export``, measured on its held-out split."""
    source = resolve_model(export)
    arrays = load_task_arrays(source)
    model = load_keras_model(source, input_shape=arrays.input_shape)
    x, y = arrays.x_test, arrays.y_test
    reference = keras_logits(model, x)
    task = arrays.held_out.task
    log(f"{task}: converting")
    flatbuffers = {
        mode: convert_checked(
            model,
            mode=mode,
            representative=representative_sample(arrays, 200) if mode == "int8" else None,
        )
        for mode in MODES
    }
    float32_bytes = len(flatbuffers["float32"])
    saved_bytes = _directory_bytes(source.saved_model_dir)
    keras_agreement = compare_logits(reference, reference, y)

    log(f"{task}: timing Keras")
    rows = [
        Row(
            "keras call",
            saved_bytes,
            saved_bytes / float32_bytes,
            measure_latency(lambda b: model(b, training=False), x, examples=examples),
            keras_agreement,
        ),
        Row(
            "keras predict",
            saved_bytes,
            saved_bytes / float32_bytes,
            measure_latency(lambda b: model.predict(b, verbose=0), x, examples=examples),
            keras_agreement,
        ),
    ]
    for mode, flatbuffer in flatbuffers.items():
        log(f"{task}: evaluating and timing {mode}")
        runner = TFLiteRunner(flatbuffer)
        rows.append(
            Row(
                f"tflite {mode}",
                len(flatbuffer),
                len(flatbuffer) / float32_bytes,
                runner.latency(x, examples=examples),
                compare_logits(reference, runner.logits(x), y),
            )
        )
    return rows


def format_table(task: str, rows: list[Row], *, runtime: str) -> str:
    header = (
        f"{'variant':<15} {'bytes':>9} {'x f32':>6} {'us/ex b=1':>10} {'us/ex b=256':>12} "
        f"{'accuracy':>9} {'AUC':>7} {'agree':>7}"
    )
    lines = [f"{task} (TFLite: {runtime}, 1 thread; Keras: TensorFlow default threads)", header]
    lines.append("-" * len(header))
    for row in rows:
        auc = row.agreement.converted.auc
        lines.append(
            f"{row.variant:<15} {row.size_bytes:>9,} {row.ratio:>6.3f} "
            f"{row.latency.single_us:>10.1f} {row.latency.batched_us:>12.2f} "
            f"{row.agreement.converted.accuracy:>9.4f} "
            f"{'-' if auc is None else f'{auc:.4f}':>7} {row.agreement.argmax_agreement:>7.4f}"
        )
    return "\n".join(lines)


def check_targets(results: dict[str, list[Row]]) -> list[tuple[str, bool]]:
    """The bundle's quantization targets, each with whether it holds."""
    checks = []
    if "digits" in results:
        int8 = next(r for r in results["digits"] if r.variant == "tflite int8")
        drop = int8.agreement.accuracy_drop
        checks.append((f"digits int8 size {int8.ratio:.3f}x float32 <= {DIGITS_MAX_RATIO}x",
                       int8.ratio <= DIGITS_MAX_RATIO))  # fmt: skip
        checks.append((f"digits int8 accuracy drop {100 * drop:.2f} points <= 1.5",
                       drop <= DIGITS_MAX_ACCURACY_DROP))  # fmt: skip
    if "taxi" in results:
        int8 = next(r for r in results["taxi"] if r.variant == "tflite int8")
        auc_drop = int8.agreement.auc_drop
        ok = auc_drop is not None and abs(auc_drop) <= TAXI_MAX_AUC_DROP
        checks.append((f"taxi int8 AUC drop {auc_drop:+.4f} within {TAXI_MAX_AUC_DROP}", ok))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="reuse (or create) DIR/digits, DIR/taxi")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--examples", type=int, default=100, help="one-example calls timed per variant (100)"
    )
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()

    with capture_native_stderr() as captured, tempfile.TemporaryDirectory() as scratch:

        def log(message: str) -> None:
            captured.original.write(f"[{time.monotonic() - started:5.1f}s] {message}\n")
            captured.original.flush()

        model_dir = args.model_dir or Path(scratch)
        results = {
            task: benchmark_task(_export(task, model_dir, log=log), examples=args.examples, log=log)
            for task in args.tasks
        }
    from quantize.runner import runtime_name

    for task, rows in results.items():
        print(format_table(task, rows, runtime=runtime_name()))
        print()
    checks = check_targets(results)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if args.json:
        print(json.dumps({t: [r.to_dict() for r in rows] for t, rows in results.items()}))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
