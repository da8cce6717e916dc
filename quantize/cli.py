"""``fedge-quantize``: convert an exported model to TFLite and report, or build its edge bundle.

Thin: it parses arguments, calls :func:`quantize.jobs.quantize_export` or
:func:`quantize.jobs.bundle_export` (plain functions returning data) and prints. Bad input
fails before TensorFlow is imported; TensorFlow's native stderr chatter is held back unless
``--verbose``, so a failure prints exactly one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol, TextIO

from fedge.errors import ConfigError, DataError, FeatureError, FedgeError
from quantize.inputs import DEFAULT_REPRESENTATIVE
from quantize.jobs import MODES, HeldOutOptions, bundle_export, quantize_export
from quantize.quiet import capture_native_stderr

# None of the imports above loads TensorFlow; the jobs import it once the input is checked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["EXIT_CONVERSION_FAILED", "EXIT_OK", "EXIT_USAGE", "main", "quantize_cli"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONVERSION_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PROG = "fedge-quantize"
_OUR_LOGGERS = ("quantize", "cloud_trainer", "fedge")

_USAGE = f"""\
{PROG} MODEL --mode MODE --out DIR [options]
       {PROG} bundle MODEL --out DIR [options]"""

_EXIT_CODES = """\
exit codes:
  0    success: the output directory is complete
  1    conversion failed (converter error, or the result failed a check against Keras)
  2    usage or input error: unknown mode, missing or non-model MODEL, representative data
       of the wrong shape, a non-empty --out
  130  interrupted
On failure nothing is left at --out: output is written into a hidden directory beside it
and renamed at the end; an --out that already exists (it must be empty) is never removed."""

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
The bundle is checked against the Keras model and verified before success is reported.
Its version is --version, or <task>-<data fingerprint>-<training end time, UTC>.

{_EXIT_CODES}"""


class _Outcome(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


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
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logs, TensorFlow's output, tracebacks"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fedge-quantize MODEL --mode MODE --out DIR``."""
    parser = _Parser(
        prog=PROG,
        usage=_USAGE,
        description="Convert an exported Keras model to TFLite and report its size, latency "
        "and accuracy\nagainst Keras; or build its edge bundle (command 'bundle').",
        epilog=_CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", required=True, metavar="MODE", help=f"one of {', '.join(MODES)}")
    _add_common(parser)
    return parser


def build_bundle_parser() -> argparse.ArgumentParser:
    """The parser of ``fedge-quantize bundle MODEL --out DIR``."""
    parser = _Parser(
        prog=f"{PROG} bundle",
        usage=f"{PROG} bundle MODEL --out DIR [options]",
        description="Build the edge bundle of an exported Keras model.",
        epilog=_BUNDLE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="static batch of train_step (32)"
    )
    parser.add_argument(
        "--version", metavar="V", help="the bundle's model version (derived if absent)"
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
    """Our packages' records, and anyone's errors; the rest is TensorFlow's business."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".", 1)[0] in _OUR_LOGGERS


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
        version=args.version,
        held_out=_held_out(args),
        progress=progress,
    )


def quantize_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, print the result; the exit code (see ``--help``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bundle"]:
        return _run(build_bundle_parser(), arguments[1:], _bundle_job, help_hint=f"{PROG} bundle")
    return _run(build_parser(), arguments, _convert_job, help_hint=PROG)


def _run(
    parser: argparse.ArgumentParser,
    argv: list[str],
    job: Callable[[argparse.Namespace, Callable[[str], None]], _Outcome],
    *,
    help_hint: str,
) -> int:
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see {help_hint} --help)", EXIT_USAGE)
    root = logging.getLogger()
    saved_level = root.level
    outcome: _Outcome | None = None
    code, error = EXIT_CONVERSION_FAILED, "no result"
    with capture_native_stderr(enabled=not args.verbose) as captured:
        handler = logging.StreamHandler(captured.original)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        if not args.verbose:
            handler.addFilter(_OwnRecords())
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
        progress = _Progress(captured.original, enabled=not args.quiet)
        try:
            outcome = job(args, progress)
        except (Exception, KeyboardInterrupt) as exc:  # each failure: one line, one exit code
            code, error = _classify(exc)
            if args.verbose:
                logger.error("%s failed", PROG, exc_info=exc)
        finally:
            progress.clear()
            root.removeHandler(handler)
            root.setLevel(saved_level)
    if outcome is None:
        return _fail(error, code)
    if args.json:
        print(json.dumps(outcome.to_dict(), sort_keys=True, allow_nan=False))
    else:
        print(outcome.summary())
    return EXIT_OK


def _classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and message of a failure: input errors 2, everything else 1."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, ConfigError | DataError | FeatureError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, FedgeError):  # ConversionError, BundleError of what was just written
        return EXIT_CONVERSION_FAILED, f"conversion failed: {exc}"
    return EXIT_CONVERSION_FAILED, f"conversion failed: {type(exc).__name__}: {exc}"


def _fail(message: str, code: int) -> int:
    lines = message.strip().splitlines()
    print(f"error: {lines[0] if lines else 'unknown error'}", file=sys.stderr)
    return code


def main() -> None:
    """Console-script entry point."""
    try:
        code = quantize_cli()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout went away (`| head`); the output directory is complete anyway.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_CONVERSION_FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
