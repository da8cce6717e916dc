"""The command-line kit every fedge tool is built on.

One set of conventions for ``fedge-train``, ``fedge-quantize``, ``fedge-coordinator``,
``fedge-edge``, ``fedge-simulate`` and the demo:

- exit codes: :class:`ExitCode` (0 ok, 1 the operation failed, 2 a usage or input error,
  130 interrupted);
- one table from error class to exit code (:data:`DEFAULT_EXIT_TABLE`, which a tool may
  extend), and one line on stderr for every failure: ``prog: error: message``, no traceback;
- :class:`ArgumentParser`: no abbreviations of long flags, a one-line error with a hint to
  ``--help`` instead of argparse's usage block, ``--version``, and the flags shared by every
  tool (``-v/-q``, ``--json``) under the same names;
- :class:`StderrHandler`: a log handler that looks ``sys.stderr`` up when it writes, so a
  handler installed once keeps working when the stream is swapped (pytest's capture);
- :func:`run_cli`: calls a tool's body, maps whatever it raises to an exit code and a line,
  and turns SIGINT (and SIGTERM, for long runs) into :class:`KeyboardInterrupt` so that the
  body's ``finally`` blocks run and the tool exits 130 after a clean stop.

Library code never calls ``sys.exit`` nor mentions a flag: only a tool's ``*_cli`` function
knows which flag produced a value.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import IO, Any, NoReturn

from fedge.errors import (
    BundleError,
    ConfigError,
    DataError,
    FeatureError,
    FedgeError,
    ProtocolError,
    UsageError,
    WeightsError,
)

__all__ = [
    "DEFAULT_EXIT_TABLE",
    "EXIT_CODES_HELP",
    "ArgumentParser",
    "ExitCode",
    "StderrHandler",
    "add_json_flag",
    "add_verbosity_flags",
    "configure_logging",
    "error_line",
    "exit_code_for",
    "interrupts_as_keyboard_interrupt",
    "print_json",
    "run_cli",
    "tool_version",
]


class ExitCode(enum.IntEnum):
    """What a fedge tool's exit status means, the same for every tool."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    the operation failed
  2    usage or input error (bad flag, missing or unreadable input)
  130  interrupted (Ctrl-C or SIGTERM): stopped cleanly, no partial output left"""

# Most specific first: the first class an error is an instance of decides its exit code.
# Input that cannot be used is the caller's to fix (2); everything else fedge refuses on
# purpose is a failed operation (1).
DEFAULT_EXIT_TABLE: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (ConfigError, ExitCode.USAGE),
    (DataError, ExitCode.USAGE),
    (FeatureError, ExitCode.USAGE),
    (BundleError, ExitCode.FAILED),
    (WeightsError, ExitCode.FAILED),
    (ProtocolError, ExitCode.FAILED),
    (FedgeError, ExitCode.FAILED),
)

# OSErrors that mean "the path you gave does not work" rather than "the machine failed".
_INPUT_ERRNOS = frozenset(
    {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EEXIST}
)


def tool_version() -> str:
    """The installed fedge version (the distribution's metadata, else the package's)."""
    from importlib import metadata

    try:
        return metadata.version("fedge")
    except metadata.PackageNotFoundError:
        from fedge import __version__

        return __version__


def _one_line(message: str) -> str:
    text = " ".join(str(message).split())
    return text or "unknown error"


def error_line(prog: str, message: str) -> str:
    """``prog: error: message`` on one line, whatever the message holds."""
    return f"{prog}: error: {_one_line(message)}"


def exit_code_for(
    exc: BaseException,
    table: Sequence[tuple[type[BaseException], ExitCode]] = DEFAULT_EXIT_TABLE,
) -> tuple[ExitCode, str]:
    """The exit code and the one-line message for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    for cls, code in table:
        if isinstance(exc, cls):
            return code, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        reason = exc.strerror or str(exc)
        code = ExitCode.USAGE if exc.errno in _INPUT_ERRNOS else ExitCode.FAILED
        return code, f"{reason}{where}"
    return ExitCode.FAILED, f"{type(exc).__name__}: {exc}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with fedge's conventions.

    Long flags must be spelled out (``allow_abbrev=False``); a bad command line raises
    :class:`UsageError` carrying argparse's message and a hint to ``--help``, which
    :func:`run_cli` prints as one line and turns into exit code 2. Sub-parsers made with
    ``add_subparsers().add_parser`` are instances of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def add_version(self) -> None:
        """``--version``: print ``prog VERSION`` and exit 0."""
        self.add_argument(
            "--version", action="version", version=f"{self.prog.split()[0]} {tool_version()}"
        )


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``: the log level of every tool."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more (-v: debug detail from fedge; -vv: also from libraries)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output on stdout."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose stream is whatever ``sys.stderr`` is when a record is written.

    A handler bound to the stream of the moment keeps writing to it after it was replaced
    and closed (pytest swaps ``sys.stderr`` per test), which ends in "Logging error ... I/O
    operation on closed file". Looking the stream up at each write cannot.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:  # logging.StreamHandler.setStream assigns it
        pass


_KIT_HANDLER_ATTR = "_fedge_cli_handler"


def configure_logging(
    *,
    verbose: int = 0,
    quiet: bool = False,
    loggers: Sequence[str] = ("fedge",),
    fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
) -> None:
    """Send the tool's logs to stderr through one :class:`StderrHandler`.

    ``loggers`` are the packages whose INFO lines the tool shows; ``-v`` adds their DEBUG
    lines, ``-vv`` lowers the root to DEBUG too, ``-q`` keeps warnings only. Calling it
    again replaces the handler it installed before instead of adding another.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _KIT_HANDLER_ATTR, False):
            root.removeHandler(handler)
    handler = StderrHandler()
    setattr(handler, _KIT_HANDLER_ATTR, True)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    if quiet:
        ours, others = logging.WARNING, logging.WARNING
    elif verbose >= 2:
        ours, others = logging.DEBUG, logging.DEBUG
    elif verbose == 1:
        ours, others = logging.DEBUG, logging.WARNING
    else:
        ours, others = logging.INFO, logging.WARNING
    root.setLevel(others)
    for name in loggers:
        logging.getLogger(name).setLevel(ours)


def print_json(data: Any, stream: IO[str] | None = None) -> None:
    """One JSON document on stdout (sorted keys, indented), as every ``--json`` prints."""
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    out.flush()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


# A signal handler runs in whatever Python code the main thread executes at that moment. When
# that is a garbage-collector callback or a finalizer (``__del__``), the KeyboardInterrupt it
# raises is "unraisable": Python prints "Exception ignored in ..." and carries on as if no
# signal had come (TensorFlow's and JAX's gc callbacks run often during a conversion). The hook
# below sends such a lost interrupt again, from a helper thread, a moment later.
_REDELIVERY_DELAY_S = 0.01


def _redeliver(signum: int) -> None:
    if signal.getsignal(signum) is _raise_keyboard_interrupt:  # still inside the block
        os.kill(os.getpid(), signum)


def _redelivering_hook(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    def hook(unraisable: Any) -> object:
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt):
            name = str(exc.args[0]) if exc.args else ""
            signum = signal.Signals[name] if name in signal.Signals.__members__ else signal.SIGINT
            import threading

            timer = threading.Timer(_REDELIVERY_DELAY_S, _redeliver, (signum,))
            timer.daemon = True
            timer.start()
            return None
        return previous(unraisable)

    return hook


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt(*, sigterm: bool = True) -> Iterator[None]:
    """Within the block, SIGINT (and SIGTERM if asked) raise :class:`KeyboardInterrupt`.

    Python does this for SIGINT already unless something replaced the handler; making it
    explicit, and doing it for SIGTERM as well, lets ``finally`` blocks remove partial
    output and stop children whichever of the two signals a user or supervisor sends. An
    interrupt that lands in a garbage-collector callback or a finalizer, where Python would
    drop it, is delivered again a moment later. Only the main thread can install handlers;
    elsewhere the block changes nothing.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [signal.SIGINT] + ([signal.SIGTERM] if sigterm else [])
    previous = {s: signal.signal(s, _raise_keyboard_interrupt) for s in signums}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _redelivering_hook(previous_hook)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook


def run_cli(
    body: Callable[[], int | None],
    *,
    prog: str,
    extra_exit_table: Sequence[tuple[type[BaseException], ExitCode]] = (),
    stderr: IO[str] | None = None,
    sigterm: bool = True,
    debug_tracebacks: bool = False,
) -> int:
    """Run a tool's body and return its exit code; never raises, never prints a traceback.

    ``body`` parses its arguments and does the work; it returns an exit code (``None`` is
    0). Errors are looked up in ``extra_exit_table`` and then :data:`DEFAULT_EXIT_TABLE`;
    what matches nowhere is a failure (1), reported as ``Type: message``. ``SystemExit``
    from argparse's ``--help``/``--version`` passes through as its code.
    ``debug_tracebacks`` logs the traceback of an unexpected error at DEBUG level.
    """
    err = stderr if stderr is not None else sys.stderr
    table = (*extra_exit_table, *DEFAULT_EXIT_TABLE)
    try:
        with interrupts_as_keyboard_interrupt(sigterm=sigterm):
            code = body()
        return int(ExitCode.OK if code is None else code)
    except SystemExit as exc:  # --help / --version
        if exc.code is None:
            return int(ExitCode.OK)
        if isinstance(exc.code, int):
            return exc.code
        err.write(error_line(prog, str(exc.code)) + "\n")
        return int(ExitCode.FAILED)
    except BaseException as exc:
        code_, message = exit_code_for(exc, table)
        if debug_tracebacks and code_ == ExitCode.FAILED:
            logging.getLogger("fedge.cli").debug("unexpected error", exc_info=exc)
        with contextlib.suppress(Exception):
            err.write(error_line(prog, message) + "\n")
            err.flush()
        return int(code_)


def exit_table(
    mapping: Mapping[type[BaseException], ExitCode],
) -> tuple[tuple[type[BaseException], ExitCode], ...]:
    """A tool's extra table from a dict (kept in insertion order: most specific first)."""
    return tuple(mapping.items())
