"""Personalization time: fine-tuning the head through ``trainable.tflite`` against
``head.tflite`` on cached int8 embeddings.

Run ``.venv/bin/python benchmarks/personalize.py`` (trains a small digits model and bundles
it first, ~20 s; ``--bundle DIR`` uses an existing digits bundle, ``--work DIR`` keeps and
reuses the trained one). On the same rows, with the same epochs, learning rate, batches and
start head, it times (best of ``--repeats``, one interpreter thread each):

1. ``trainable.tflite``: every step runs the frozen float backbone on the pixels, then the
   head's forward and backward pass (how a bundle without ``head.tflite`` personalizes);
2. ``head.tflite`` on cached embeddings: the int8 backbone embeds the rows once (timed on
   its own row; later fine-tunings of the same rows find them in the cache), then every step
   runs the head alone (how ``edge_client.personalize.fine_tune`` personalizes now);

and prints both times, the speed-up (trainable / head; the goal is at least 3x) and each
head's accuracy on the rows it trained on. ``--json`` prints the figures as JSON too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep this folder off the import path (its files are named like the packages they measure).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GOAL = 3.0
TRAIN_EPOCHS = 2

Log = Callable[[str], None]


def _prepare(work: Path, epochs: int, log: Log) -> Path:
    """A digits bundle in ``work`` (trained and bundled unless already there)."""
    from quantize.cli import quantize_cli

    export, bundle = work / "digits-export", work / "digits-bundle"
    if not (export / "training_record.json").is_file():
        from cloud_trainer.config import TrainConfig
        from cloud_trainer.train import train

        log(f"training the digits model {epochs} epochs into {export}")
        train(TrainConfig(task="digits", out_dir=str(export), epochs=epochs, learning_rate=3e-3,
                          progress=False))  # fmt: skip
    if not (bundle / "manifest.json").is_file():
        log(f"bundling into {bundle}")
        code = quantize_cli(["bundle", str(export), "--out", str(bundle), "--quiet",
                             "--batch-size", "32", "--model-version", "digits-bench"])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"fedge-quantize bundle failed with {code}")
    return bundle


def _best(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure(
    bundle: Path, *, rows: int, epochs: int, learning_rate: float, repeats: int, seed: int
) -> dict[str, Any]:
    """Both fine-tunings of ``bundle``'s head on the first ``rows`` digits rows."""
    from edge_client.model import EdgeModel, accuracy
    from fedge.data import load_digits

    model = EdgeModel.load(bundle, num_threads=1)
    if not model.has_head_model:
        raise SystemExit(f"{bundle} has no head.tflite: rebuild it with fedge-quantize bundle")
    digits = load_digits()
    table = digits.take(np.arange(min(rows, len(digits))))
    x, y = model.transform(table.columns), table.labels
    start = model.global_weights

    def through_trainable() -> Any:
        rng = np.random.default_rng(seed)
        return model.train(x, y, start=start, epochs=epochs, learning_rate=learning_rate, rng=rng)

    embed_seconds, embeddings = _best(1, lambda: model.cached_embeddings(x))

    def through_head() -> Any:
        rng = np.random.default_rng(seed)
        return model.train_head(
            embeddings, y, start=start, epochs=epochs, learning_rate=learning_rate, rng=rng
        )

    trainable_seconds, (trainable_head, trainable_result) = _best(repeats, through_trainable)
    head_seconds, (head_head, head_result) = _best(repeats, through_head)
    return {
        "bundle": str(bundle),
        "model_version": model.version,
        "rows": len(table),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": model.batch_size,
        "steps": trainable_result.num_steps,
        "trainable_seconds": trainable_seconds,
        "head_seconds": head_seconds,
        "embed_once_seconds": embed_seconds,
        "speedup": trainable_seconds / head_seconds,
        "goal": GOAL,
        "trainable_train_accuracy": accuracy(model.logits(x, head=trainable_head), y),
        "head_train_accuracy": accuracy(model.head_logits(embeddings, head=head_head), y),
        "head_steps": head_result.num_steps,
    }


def report(figures: dict[str, Any]) -> str:
    f = figures
    lines = [
        f"personalization benchmark: digits bundle {f['model_version']}, {f['rows']} rows, "
        f"{f['epochs']} epochs, lr {f['learning_rate']}, batch {f['batch_size']}",
        "",
        f"{'path':<40} {'seconds':>9} {'steps':>6} {'train acc':>10}",
    ]
    lines.append("-" * len(lines[-1]))
    lines.append(f"{'trainable.tflite (pixels)':<40} {f['trainable_seconds']:>9.4f} "
                 f"{f['steps']:>6} {f['trainable_train_accuracy']:>10.4f}")  # fmt: skip
    lines.append(f"{'head.tflite (cached int8 embeddings)':<40} {f['head_seconds']:>9.4f} "
                 f"{f['head_steps']:>6} {f['head_train_accuracy']:>10.4f}")  # fmt: skip
    lines.append(f"{'int8 embeddings, computed once':<40} {f['embed_once_seconds']:>9.4f}")
    met = "met" if f["speedup"] >= f["goal"] else "NOT met"
    lines += [
        "",
        f"speedup (trainable / head): {f['speedup']:.1f}x (goal >= {f['goal']:g}x: {met})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--bundle", type=Path, help="an existing digits bundle with head.tflite")
    parser.add_argument("--work", type=Path, help="keep (and reuse) the trained bundle here")
    parser.add_argument("--rows", type=int, default=1000, help="device rows (default 1000)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    parser.add_argument("--learning-rate", type=float, default=0.05, help="default 0.05")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs each (default 5)")
    parser.add_argument("--train-epochs", type=int, default=TRAIN_EPOCHS,
                        help="epochs of the model trained without --bundle")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    for name in ("rows", "epochs", "repeats", "train_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or _prepare(args.work or Path(scratch), args.train_epochs, log)
        log("timing both fine-tunings")
        figures = measure(
            bundle, rows=args.rows, epochs=args.epochs, learning_rate=args.learning_rate,
            repeats=args.repeats, seed=args.seed,
        )  # fmt: skip
    print(report(figures))
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
