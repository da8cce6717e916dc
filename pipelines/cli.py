"""``fedge-pipeline``: the fedge tools as one pipeline, for Kubeflow or for this machine.

Usage::

    fedge-pipeline compile --out pipeline.yaml [--image IMAGE]
    fedge-pipeline run-local --data FILE --label-column COL --schema schema.pbtxt \\
        --db DB --artifacts DIR --workdir DIR [--epochs N] [--json] [-v|-q]

Both follow one list of steps (:data:`pipelines.steps.STEPS`): ingest (``fedge-coordinator
data stats``), validate (``data anomalies``), train (``fedge-train``), quantize
(``fedge-quantize bundle``), register (``fedge-coordinator models register``) and deploy
(``models promote``). ``run-local`` prints each step's command and outcome and stops at the
first step that fails, with the tail of its log, exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedge.cli import (
    EXIT_CODES_HELP,
    ArgumentParser,
    ExitCode,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    error_line,
    print_json,
    run_cli,
    tool_version,
)
from fedge.errors import UsageError
from fedge.validation import check_int
from pipelines.steps import PARAMETERS, STEPS

__all__ = ["DEFAULT_IMAGE", "build_parser", "main", "pipeline_cli"]

PROG = "fedge-pipeline"
DEFAULT_IMAGE = f"fedge:{tool_version()}"

_STEP_LIST = "\n".join(f"  {s.name:<9} {s.tool}: {s.help}" for s in STEPS)
_EPILOG = f"steps, in order:\n{_STEP_LIST}\n\n{EXIT_CODES_HELP}"


def build_parser() -> ArgumentParser:
    """The parser of ``fedge-pipeline`` and its two commands."""
    parser = ArgumentParser(
        prog=PROG,
        description="The fedge tools as one pipeline: ingest -> validate -> train -> "
        "quantize -> register -> deploy.",
        epilog=_EPILOG,
    )
    parser.add_version()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_ = sub.add_parser(
        "compile",
        help="write the Kubeflow Pipelines (kfp v2) YAML",
        description="Compile the pipeline for Kubeflow Pipelines: every step a container "
        "step of --image running the fedge tool; the pipeline's parameters are "
        + ", ".join(p.name for p in PARAMETERS)
        + " (paths as the containers see them, e.g. on a mounted volume). Needs the "
        "pipeline extra (kfp).",
        epilog=_EPILOG,
    )
    compile_.add_argument("--out", type=Path, required=True, metavar="FILE")
    compile_.add_argument(
        "--image", default=DEFAULT_IMAGE, help="the container image with fedge (%(default)s)"
    )
    add_verbosity_flags(compile_)
    local = sub.add_parser(
        "run-local",
        help="run the same steps in order here",
        description="Run the pipeline's steps in order on this machine, each as a process of "
        "the fedge tool with the step's arguments. Outputs go to --workdir/STEP/, logs to "
        "--workdir/logs/STEP.log.",
        epilog=_EPILOG,
    )
    for param in PARAMETERS:
        flag = "--" + param.name.replace("_", "-")
        if param.default is None:
            local.add_argument(flag, required=True, help=param.help)
        else:
            local.add_argument(
                flag, type=param.kind, default=param.default, help=f"{param.help} (%(default)s)"
            )
    local.add_argument(
        "--workdir", type=Path, required=True, metavar="DIR", help="a new or empty directory"
    )
    add_json_flag(local)
    add_verbosity_flags(local)
    return parser


def _compile(args: argparse.Namespace) -> int:
    from pipelines.kfp import compile_pipeline

    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: no such directory {args.out.parent}")
    try:
        import kfp  # noqa: F401
    except ImportError as exc:
        raise UsageError("compile needs kfp: pip install 'fedge[pipeline]'") from exc
    compile_pipeline(args.out, image=args.image)
    print(args.out)
    return 0


def _check_local(args: argparse.Namespace) -> None:
    for name in ("data", "schema"):
        path = Path(getattr(args, name))
        if not path.is_file():
            raise UsageError(f"--{name} {path}: no such file")
    check_int(args.epochs, "--epochs", low=1, error=UsageError)
    if args.workdir.exists() and (not args.workdir.is_dir() or any(args.workdir.iterdir())):
        raise UsageError(f"--workdir {args.workdir} must be a new or empty directory")


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def _silent(line: str) -> None:
    del line


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.local import run_local

    _check_local(args)
    values = {p.name: getattr(args, p.name) for p in PARAMETERS}
    silent = args.quiet or args.json
    results = run_local(values, args.workdir, report=_silent if silent else _print_flushed)
    if args.json:
        print_json(
            [
                {"step": r.name, "returncode": r.returncode, "seconds": round(r.seconds, 3),
                 "log": str(r.log)}
                for r in results
            ]
        )  # fmt: skip
    failed = results[-1]
    if failed.returncode == 0:
        return 0
    sys.stderr.write(failed.log_tail() + "\n")
    sys.stderr.write(
        error_line(PROG, f"step {failed.name} failed with exit code {failed.returncode} "
                   f"(log: {failed.log})") + "\n"
    )  # fmt: skip
    return int(ExitCode.FAILED)


def pipeline_cli(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        configure_logging(verbose=args.verbose, quiet=args.quiet, loggers=("pipelines", "fedge"))
        return _compile(args) if args.command == "compile" else _run_local(args)

    return run_cli(body, prog=PROG)


def main() -> None:
    """Console-script entry point."""
    sys.exit(pipeline_cli())


if __name__ == "__main__":
    main()
