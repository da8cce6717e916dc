"""The CLI kit every tool uses: exit codes, one-line errors, no abbreviations, logging."""

from __future__ import annotations

import gc
import io
import logging
import os
import signal
import sys
import time

import pytest

from fedge.cli import (
    ArgumentParser,
    ExitCode,
    StderrHandler,
    add_json_flag,
    add_verbosity_flags,
    configure_logging,
    error_line,
    exit_code_for,
    run_cli,
    tool_version,
)
from fedge.errors import BundleError, ConfigError, DataError, FedgeError, UsageError


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tool")
    parser.add_version()
    add_verbosity_flags(parser)
    add_json_flag(parser)
    parser.add_argument("--data-fraction", type=float, default=1.0)
    return parser


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    parser = _parser()

    def body() -> int:
        args = parser.parse_args(argv)
        out.write(f"fraction={args.data_fraction} json={args.json} verbose={args.verbose}\n")
        return ExitCode.OK

    old = sys.stdout
    sys.stdout = out
    try:
        code = run_cli(body, prog="tool", stderr=err)
    finally:
        sys.stdout = old
    return code, out.getvalue(), err.getvalue()


def test_a_prefix_of_a_long_flag_is_refused_not_expanded() -> None:
    code, out, err = _run(["--data", "0.5"])
    assert code == ExitCode.USAGE
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("tool: error: unrecognized arguments: --data 0.5")
    assert "'tool --help'" in err


def test_the_full_flag_and_shared_flags_parse() -> None:
    code, out, err = _run(["--data-fraction", "0.5", "--json", "-vv"])
    assert (code, err) == (0, "")
    assert out == "fraction=0.5 json=True verbose=2\n"


def test_quiet_and_verbose_exclude_each_other_in_one_line() -> None:
    code, _, err = _run(["-q", "-v"])
    assert code == ExitCode.USAGE
    assert err.count("\n") == 1
    assert "not allowed with argument" in err


def test_version_prints_the_package_version() -> None:
    out = io.StringIO()
    old = sys.stdout
    sys.stdout = out
    try:
        code = run_cli(lambda: _parser().parse_args(["--version"]) and 0, prog="tool")
    finally:
        sys.stdout = old
    assert code == 0
    assert out.getvalue().strip() == f"tool {tool_version()}"
    assert tool_version().count(".") >= 1


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UsageError("bad flag"), ExitCode.USAGE),
        (ConfigError("bad value"), ExitCode.USAGE),
        (DataError("bad data"), ExitCode.USAGE),
        (FileNotFoundError(2, "No such file or directory", "/nope"), ExitCode.USAGE),
        (IsADirectoryError(21, "Is a directory", "/tmp"), ExitCode.USAGE),
        (BundleError("sha256 mismatch"), ExitCode.FAILED),
        (FedgeError("refused"), ExitCode.FAILED),
        (OSError(28, "No space left on device"), ExitCode.FAILED),
        (RuntimeError("boom"), ExitCode.FAILED),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
)
def test_every_error_class_maps_to_one_exit_code(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_for(exc)[0] == code

    def body() -> int:
        raise exc

    err = io.StringIO()
    assert run_cli(body, prog="tool", stderr=err) == code
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("tool: error: ")
    assert "Traceback" not in err.getvalue()


def test_a_tool_table_overrides_the_default() -> None:
    class Unreachable(FedgeError):
        pass

    def body() -> int:
        raise Unreachable("coordinator unreachable")

    err = io.StringIO()
    code = run_cli(body, prog="t", stderr=err, extra_exit_table=[(Unreachable, ExitCode.USAGE)])
    assert code == ExitCode.USAGE
    assert err.getvalue() == "t: error: coordinator unreachable\n"


def test_a_multi_line_message_becomes_one_line() -> None:
    assert error_line("t", "first\n  second\n") == "t: error: first second"


def test_sigterm_becomes_keyboard_interrupt_and_finally_blocks_run() -> None:
    cleaned: list[str] = []

    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the signal is delivered between bytecodes
                pass
            return 0
        finally:
            cleaned.append("partial output removed")

    err = io.StringIO()
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli(body, prog="t", stderr=err) == ExitCode.INTERRUPTED
    assert cleaned == ["partial output removed"]
    assert err.getvalue() == "t: error: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_an_interrupt_lost_in_a_gc_callback_is_delivered_again() -> None:
    # Python drops an exception raised inside a garbage-collector callback ("Exception
    # ignored in ..."); a Ctrl-C that lands there must still stop the body.
    armed: list[bool] = []
    lost: list[str] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and armed and not lost:  # only the collection the body asks for
            lost.append("sent")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, inside the callback
                pass

    cleaned: list[str] = []

    def body() -> int:
        try:
            armed.append(True)
            gc.collect()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
            return 0
        finally:
            cleaned.append("partial output removed")

    err = io.StringIO()
    hook = sys.unraisablehook
    gc.callbacks.append(callback)
    try:
        started = time.monotonic()
        assert run_cli(body, prog="t", stderr=err) == ExitCode.INTERRUPTED
    finally:
        gc.callbacks.remove(callback)
    assert lost == ["sent"]
    assert time.monotonic() - started < 5
    assert cleaned == ["partial output removed"]
    assert err.getvalue() == "t: error: interrupted\n"
    assert sys.unraisablehook is hook  # restored


def test_stderr_handler_follows_a_replaced_stderr() -> None:
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    first, second = io.StringIO(), io.StringIO()
    old = sys.stderr
    try:
        sys.stderr = first
        handler.emit(record)
        first.close()  # what pytest does to a captured stream after a test
        sys.stderr = second
        handler.emit(record)
    finally:
        sys.stderr = old
    assert second.getvalue() == "hello there\n"


def test_configure_logging_installs_one_handler_and_sets_levels() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_logging(verbose=1, loggers=("fedge.test_pkg",))
        configure_logging(verbose=1, loggers=("fedge.test_pkg",))
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        assert isinstance(added[0], StderrHandler)
        assert logging.getLogger("fedge.test_pkg").level == logging.DEBUG
        configure_logging(quiet=True, loggers=("fedge.test_pkg",))
        assert logging.getLogger("fedge.test_pkg").level == logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("fedge.test_pkg").setLevel(logging.NOTSET)
