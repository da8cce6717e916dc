"""``fedge-quantize``: convert an exported model to TFLite and report, build its edge bundle,
or sign a bundle offline (``sign``, :mod:`quantize.signing`).

Thin: it parses arguments, calls :func:`quantize.jobs.quantize_export` or
:func:`quantize.jobs.bundle_export` (plain functions returning data) and prints. Bad input
fails before TensorFlow is imported; TensorFlow's native stderr chatter and its Python
warnings are held back unless ``-v``, so a failure prints exactly one error line. Exit codes,
error lines, ``-v/-q``, ``--json`` and ``--version`` come from the shared kit
(:mod:`fedge.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from fedge.cli import (
    ArgumentParser,
    ExitCode,
    StderrHandler,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    print_json,
    run_cli,
)
from fedge.errors import ConfigError, DataError, FeatureError, FedgeError, UsageError
from quantize.errors import ConversionError
from quantize.inputs import DEFAULT_REPRESENTATIVE
from quantize.jobs import MODES, HeldOutOptions, bundle_export, quantize_export
from quantize.quiet import capture_native_stderr
from quantize.signing import sign_bundle

# None of the imports above loads TensorFlow; the jobs import it once the input is checked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["build_bundle_parser", "build_parser", "main", "quantize_cli"]

PROG = "fedge-quantize"
_LOGGERS = ("quantize", "cloud_trainer", "fedge")
# What the caller can fix: exit 2 with the message as it is. Anything else that goes wrong
# once the input was accepted is a failed conversion (exit 1).
_INPUT_ERRORS = (UsageError, ConfigError, DataError, FeatureError, OSError)

_USAGE = f"""\
{PROG} MODEL --mode MODE --out DIR [options]
       {PROG} bundle MODEL --out DIR [options]
       {PROG} sign --key FILE BUNDLE_DIR"""

_EXIT_CODES = """\
exit codes:
  0    success: the output directory is complete
  1    conversion failed (converter error, or the result failed a check against Keras)
  2    usage or input error: unknown flag or mode, missing or non-model MODEL,
       representative data of the wrong shape, a non-empty --out
  130  interrupted (SIGINT or SIGTERM): stopped cleanly
On failure or interrupt nothing is left at --out: output is written into a hidden directory
beside it and renamed at the end; an --out that already exists (it must be empty) is never
removed."""

_CONVERT_EPILOG = f"""\
MODEL is a fedge-train export directory (saved_model/, feature_spec.json,
training_record.json) or a Keras SavedModel directory; for a SavedModel without a
training record beside it, name the task with --task.

Writes DIR/model.tflite and DIR/report.json: bytes, ratio to a float32 conversion, the op
list, latency per example in the TFLite runtime, and accuracy (AUC for two-class tasks) and
argmax agreement against the Keras model on the held-out split rebuilt from the training
record (task, seed, test_fraction).

modes:
  float32   plain float conversion
  dynamic   int8 weights, float compute
  float16   float16 weights
  int8      full-integer (int8 input and output), calibrated on --representative N
            training examples (default {DEFAULT_REPRESENTATIVE}) or on --representative-file

commands:
  bundle    build the edge bundle (see {PROG} bundle --help)

{_EXIT_CODES}"""

_BUNDLE_EPILOG = f"""\
DIR receives the edge bundle:
  manifest.json         sha256 and size of every file, schema, feature spec, train batch
                        size, head tensor names, metadata {{training_record, quantization}}
  inference.tflite      int8 model (int8 input and output) for predictions
  trainable.tflite      float32, builtin ops only: infer, train_step (static --batch-size),
                        get_weights, set_weights over the head (the backbone is frozen)
  weights.safetensors   the head's weights
  backbone.tflite       int8 backbone -> embedding (for features tasks)
  head.tflite           float32, the four trainable signatures over the head alone (input:
                        the embedding), for int8-backbone serving and fast personalization
The bundle is checked against the Keras model and verified before success is reported.
Its version is --model-version, or <task>-<data fingerprint>-<training end time, UTC>.

{_EXIT_CODES}"""


class _Outcome(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="export directory or SavedModel directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory")
    sample = parser.add_mutually_exclusive_group()
    sample.add_argument(
        "--representative",
        type=int,
        metavar="N",
        help=f"calibrate int8 on N seeded training examples (default {DEFAULT_REPRESENTATIVE})",
    )
    sample.add_argument(
        "--representative-file",
        metavar="X.npy",
        help="calibrate int8 on this array of model-ready inputs [n, *input_shape]",
    )
    split = parser.add_argument_group("held-out data for a SavedModel without a training record")
    split.add_argument("--task", help="the task whose data the model was trained on")
    split.add_argument("--seed", type=int, help="seed of the train/test split (0)")
    split.add_argument("--test-fraction", type=float, metavar="F", help="held-out share (0.2)")
    add_json_flag(parser)
    add_verbosity_flags(parser)


def build_parser() -> ArgumentParser:
    """The parser of ``fedge-quantize MODEL --mode MODE --out DIR``."""
    parser = ArgumentParser(
        prog=PROG,
        usage=_USAGE,
        description="Convert an exported Keras model to TFLite and report its size, latency "
        "and accuracy\nagainst Keras; or build its edge bundle (command 'bundle').",
        epilog=_CONVERT_EPILOG,
    )
    parser.add_version()
    parser.add_argument("--mode", required=True, metavar="MODE", help=f"one of {', '.join(MODES)}")
    _add_common(parser)
    return parser


def build_bundle_parser() -> ArgumentParser:
    """The parser of ``fedge-quantize bundle MODEL --out DIR``."""
    parser = ArgumentParser(
        prog=f"{PROG} bundle",
        usage=f"{PROG} bundle MODEL --out DIR [options]",
        description="Build the edge bundle of an exported Keras model.",
        epilog=_BUNDLE_EPILOG,
    )
    parser.add_version()
    parser.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="static batch of train_step (32)"
    )
    parser.add_argument(
        "--model-version", metavar="V", help="the bundle's model version (derived if absent)"
    )
    _add_common(parser)
    return parser


class _Progress:
    """A status line redrawn in place on a terminal; silent elsewhere (logs, pipes, tests)."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self._start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self._enabled:
            elapsed = time.monotonic() - self._start
            self._stream.write(f"\r\x1b[K{PROG}: {message}... ({elapsed:.0f}s)")
            self._stream.flush()

    def clear(self) -> None:
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


class _OwnRecords(logging.Filter):
    """Our packages' records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".", 1)[0] in _LOGGERS


def _held_out(args: argparse.Namespace) -> HeldOutOptions:
    return HeldOutOptions(task=args.task, seed=args.seed, test_fraction=args.test_fraction)


def _convert_job(args: argparse.Namespace, progress: Callable[[str], None]) -> _Outcome:
    return quantize_export(
        args.model,
        args.out,
        mode=args.mode,
        representative=args.representative,
        representative_file=args.representative_file,
        held_out=_held_out(args),
        progress=progress,
    )


def _bundle_job(args: argparse.Namespace, progress: Callable[[str], None]) -> _Outcome:
    return bundle_export(
        args.model,
        args.out,
        batch_size=args.batch_size,
        representative=args.representative,
        representative_file=args.representative_file,
        version=args.model_version,
        held_out=_held_out(args),
        progress=progress,
    )


def quantize_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, print the result; the exit code (see ``--help``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: _quantize(arguments), prog=PROG, debug_tracebacks=True)


def build_sign_parser() -> ArgumentParser:
    """The parser of ``fedge-quantize sign --key FILE BUNDLE_DIR``."""
    parser = ArgumentParser(
        prog=f"{PROG} sign",
        usage=f"{PROG} sign --key FILE BUNDLE_DIR [options]",
        description="Sign an edge bundle's manifest.json with an Ed25519 private key (PEM): "
        "writes BUNDLE_DIR/manifest.sig.",
    )
    parser.add_version()
    parser.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", help="edge bundle directory")
    parser.add_argument("--key", required=True, type=Path, metavar="FILE", help="private key")
    add_json_flag(parser)
    add_verbosity_flags(parser)
    return parser


def _sign(arguments: list[str]) -> int:
    args = build_sign_parser().parse_args(arguments)
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=_LOGGERS)
    ident = sign_bundle(args.bundle, args.key)
    document = {"bundle": str(args.bundle), "signature_file": "manifest.sig", "key_id": ident}
    if args.json:
        print_json(document)
    else:
        print(f"signed {args.bundle}/manifest.json with key {ident}")
    return 0


def _quantize(arguments: list[str]) -> int:
    if arguments[:1] == ["sign"]:
        return _sign(arguments[1:])
    if arguments[:1] == ["bundle"]:
        args = build_bundle_parser().parse_args(arguments[1:])
        job = _bundle_job
    else:
        args = build_parser().parse_args(arguments)
        job = _convert_job
    configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=_LOGGERS)
    if not args.verbose:
        # TensorFlow's own records (deprecations, retracing notes, absl's renaming of
        # parameters) are its business: anyone else's below ERROR stays off stderr.
        logging.getLogger().setLevel(logging.ERROR)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, StderrHandler):
                handler.addFilter(_OwnRecords())
    logging.captureWarnings(not args.verbose)
    try:
        with capture_native_stderr(enabled=not args.verbose) as captured:
            progress = _Progress(captured.original, enabled=not args.quiet)
            try:
                outcome = job(args, progress)
            finally:
                progress.clear()
    except _INPUT_ERRORS:
        raise
    except Exception as exc:
        detail = str(exc) if isinstance(exc, FedgeError) else f"{type(exc).__name__}: {exc}"
        raise ConversionError(f"conversion failed: {detail}") from exc
    finally:
        logging.captureWarnings(False)
    if args.json:
        print_json(outcome.to_dict())
    else:
        print(outcome.summary())
    return 0


def main() -> None:
    """Console-script entry point."""
    try:
        code = quantize_cli()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout went away (`| head`); the output directory is complete anyway.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ExitCode.FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
