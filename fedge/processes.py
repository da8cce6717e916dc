"""Child processes that are always stopped: start, watch, stop, reap.

Every tool that runs other processes (the local training cluster, the coordinator
launcher, the simulation's workers, the demo) uses this one module, so a Ctrl-C, a failed
child or a deadline leaves nothing running, whoever started what.

API:

- :func:`start` ``(command, *, name, env, cwd, log_path, stdout_path, stderr, pipes,
  die_with_parent)`` -> :class:`Child`: starts a child in a session (and so a process
  group) of its own, so a Ctrl-C at the terminal reaches only the parent, which then stops
  its children in order. On Linux the child also asks the kernel for SIGTERM when its
  parent dies (``PR_SET_PDEATHSIG``): a parent killed with SIGKILL leaves nothing running.
  SIGINT/SIGTERM are held while the child is being created (one inside ``Popen`` would
  orphan it) and raised as :class:`KeyboardInterrupt` once it is recorded.
- :class:`Child`: ``name``, ``command``, ``pid``, ``returncode``, ``alive()``,
  ``outcome`` (``running``, ``exited``, ``terminated``, ``killed``), ``log_path``,
  ``log_tail()``, ``last_error()``, ``read_stdout()``, ``describe_exit()``, ``to_dict()``.
- :func:`stop` ``(children, *, timeout)``: SIGTERM to each running child's process group
  at once, one bounded wait for all of them, SIGKILL to those groups (children left and
  grandchildren that ignored SIGTERM), reap. Signals are held until it is done.
- :func:`wait` ``(child, *, timeout)``, :func:`wait_all` ``(children, *, timeout)``:
  wait until they exit 0; :class:`~fedge.errors.ProcessError` names the first one that
  fails (at once, without waiting for the others) or the ones still running at the
  deadline. Neither stops anything: the caller's ``finally`` calls :func:`stop`.
- :func:`wait_until` ``(ready, *, timeout, watch)``: poll ``ready()`` (a health check)
  until it is true; ProcessError when a watched child exits first or at the deadline.
- :class:`Supervisor` ``(*, log_dir, cwd, env, stop_timeout)``: a context manager owning
  the children it starts: ``start(name, command, *, stdout, stderr, env)`` (logs in
  ``log_dir/<name>.log``), ``run(...)`` (start and :func:`wait`), ``check_running``,
  ``stop``; ``close()`` stops them all, then any descendant that appeared since it was
  created and escaped its process group, and returns those leftovers.
- :func:`deferred_interrupts`: a block that SIGINT/SIGTERM cannot cut short (they raise
  KeyboardInterrupt when it ends).
- :func:`kill_descendants`, :func:`install_child_reaper`, :func:`hard_exit`: for a
  process whose libraries start children it does not own (TFF's ``worker_binary``):
  stop every descendant now, at interpreter exit and on SIGTERM, or now and exit at once.

Descendants outside a child's process group are found with psutil, imported only by the
functions that need them (it is a cloud dependency, not an edge one); everything else is
the standard library.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn

from fedge.errors import ConfigError, ProcessError

__all__ = [
    "STOP_TIMEOUT",
    "Child",
    "Supervisor",
    "deferred_interrupts",
    "hard_exit",
    "install_child_reaper",
    "kill_descendants",
    "start",
    "stop",
    "wait",
    "wait_all",
    "wait_until",
]

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds children get to exit after SIGTERM before they are killed."""
_KILL_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
_ERROR_LINE = re.compile(r"\berror\b|traceback|exception", re.IGNORECASE)


@dataclass(eq=False)
class Child:
    """One started process: its name, command, log file and ``Popen``."""

    name: str
    command: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    stdout_path: Path | None = None
    outcome: str = "running"
    """``running``, then ``exited`` (on its own), ``terminated`` (SIGTERM) or ``killed``."""
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status (reaping it if it has ended); None while it runs."""
        code = self.popen.poll()
        if code is not None and self.outcome == "running":
            self.outcome = "exited"
        return code

    def alive(self) -> bool:
        return self.returncode is None

    def read_stdout(self) -> str:
        """Its standard output so far (its ``stdout_path``, else its log)."""
        path = self.stdout_path or self.log_path
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    def log_tail(self, chars: int = 2000) -> str:
        """The last ``chars`` characters of its log ("" without one)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - chars))
                return stream.read().decode("utf-8", errors="replace").strip()
        except OSError:
            return ""

    def last_error(self) -> str:
        """The last line of its log that reports an error, or ""."""
        lines = [line.strip() for line in self.log_tail(20_000).splitlines() if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.search(line) and not line.startswith("$ ")]
        return errors[-1][:300] if errors else ""

    def describe_exit(self) -> str:
        """``exited with code N`` or ``was killed by SIGNAL``, then its last error line."""
        code = self.returncode
        if code is None:
            text = "is still running"
        elif code < 0:
            try:
                text = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                text = f"was killed by signal {-code}"
        else:
            text = f"exited with code {code}"
        error = self.last_error()
        return f"{text}: {error}" if error else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "exit_code": self.returncode,
            "outcome": self.outcome,
            "log": None if self.log_path is None else str(self.log_path),
        }


# Starting -----------------------------------------------------------------------------------

_deferring = False  # set by the outermost deferred_interrupts block (main thread only)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise KeyboardInterrupt if one came.

    A KeyboardInterrupt inside ``Popen`` (after the fork, before the ``Popen`` object is
    returned) would orphan the child; starting and recording it is made atomic instead.
    Outside the main thread signals cannot arrive here, and the block changes nothing.
    """
    global _deferring
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield  # an outer block holds the signals and raises when it ends
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def start(
    command: Sequence[str],
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    stdout_path: str | os.PathLike[str] | None = None,
    stderr: IO[str] | IO[bytes] | None = None,
    pipes: bool = False,
    die_with_parent: bool = True,
) -> Child:
    """Start ``command`` in a new session; see the module docstring.

    Output: stdout to ``stdout_path`` when given, else to ``log_path``; stderr to
    ``stderr`` when given (a stream, e.g. the terminal for a progress bar), else to
    ``log_path``, else where this process's stderr goes; stdout with no destination is
    discarded. The log starts with the command line. With ``pipes`` the child's stdin
    and stdout are pipes (``child.popen.stdin``/``stdout``: a worker that speaks a
    protocol). ``die_with_parent`` uses a ``preexec_fn``, which CPython documents as
    unsafe when the parent runs threads that hold locks the child needs; it runs only
    ``prctl`` there.
    """
    argv = [os.fspath(part) for part in command]
    if not argv:
        raise ConfigError("command must not be empty")
    log = Path(log_path) if log_path is not None else None
    out = Path(stdout_path) if stdout_path is not None else None
    with contextlib.ExitStack() as files:
        log_file: IO[bytes] | None = None
        if log is not None:
            log_file = files.enter_context(open(log, "wb"))
            log_file.write(f"$ {' '.join(argv)}\n".encode())
            log_file.flush()
        out_file = files.enter_context(open(out, "wb")) if out is not None else log_file
        with deferred_interrupts():
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else (out_file or subprocess.DEVNULL),
                stderr=stderr if stderr is not None else log_file,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=_death_signal() if die_with_parent else None,
            )
            child = Child(name or Path(argv[0]).name, tuple(argv), popen, log, out)
    logger.debug("started %s (pid %d): %s", child.name, child.pid, " ".join(argv))
    return child


# Stopping and waiting -----------------------------------------------------------------------


def _signal_group(child: Child, signum: int) -> None:
    # The child leads its own group; its group id stays reserved while any member lives,
    # so the signal reaches the child and whatever it started that stayed in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def stop(children: Iterable[Child], *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop ``children`` and everything in their process groups, for sure.

    SIGTERM to the group of every running child at once, wait up to ``timeout`` seconds
    for all of them, then SIGKILL to those groups (the children left, and any grandchild
    that ignored SIGTERM), and reap. Children that already ended are reaped too. Never
    raises for a child that is already gone.
    """
    if not timeout >= 0:
        raise ConfigError(f"timeout must be >= 0 seconds, got {timeout!r}")
    children = list(children)
    with deferred_interrupts():
        running = [c for c in children if c.alive()]
        for child in running:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                child.outcome = "terminated"
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", child.name, timeout)
                child.outcome = "killed"
        # Only groups whose leader was alive a moment ago: an empty group's id can be
        # reused once its leader is long gone.
        for child in running:
            _signal_group(child, signal.SIGKILL)
        for child in children:
            try:
                child.popen.wait(timeout=_KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.error("%s (pid %d) did not exit after SIGKILL", child.name, child.pid)


def _failure(child: Child, what: str | None) -> ProcessError:
    where = f" (see {child.log_path})" if child.log_path is not None else ""
    return ProcessError(
        f"{what or child.name} {child.describe_exit()}{where}",
        name=child.name,
        returncode=child.returncode,
    )


def wait_all(
    children: Sequence[Child],
    *,
    timeout: float,
    poll_interval: float = 0.1,
    what: str | None = None,
) -> None:
    """Wait until every child has exited with status 0.

    ProcessError at once when one exits otherwise (naming it, with its last error line),
    or when ``timeout`` seconds pass with some still running. Stops nothing.
    """
    if not timeout > 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
    deadline = time.monotonic() + timeout
    while True:
        codes = [c.returncode for c in children]
        for child, code in zip(children, codes, strict=True):
            if code is not None and code != 0:
                raise _failure(child, what)
        if all(code == 0 for code in codes):
            return
        if time.monotonic() >= deadline:
            late = [c.name for c, code in zip(children, codes, strict=True) if code is None]
            raise ProcessError(
                f"{what or ', '.join(late)} still running after {timeout:g} s", name=late[0]
            )
        time.sleep(poll_interval)


def wait(child: Child, *, timeout: float, what: str | None = None) -> Child:
    """Wait until ``child`` exits with status 0 (see :func:`wait_all`); returns it."""
    wait_all([child], timeout=timeout, poll_interval=0.05, what=what)
    return child


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    watch: Sequence[Child] = (),
    interval: float = 0.1,
    what: str = "ready",
) -> None:
    """Call ``ready()`` every ``interval`` seconds until it returns true.

    ProcessError when one of ``watch`` exits first (naming it and its last error line), or
    when ``timeout`` seconds pass (``... not <what> after N s``). Stops nothing.
    """
    if not timeout > 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
    deadline = time.monotonic() + timeout
    while True:
        for child in watch:
            if not child.alive():
                raise _failure(child, f"{child.name} (before {what})")
        if ready():
            return
        if time.monotonic() >= deadline:
            name = watch[0].name if watch else what
            raise ProcessError(f"{name} not {what} after {timeout:g} s", name=name)
        time.sleep(interval)


# Descendants (psutil) -----------------------------------------------------------------------


def _descendants() -> list[Any]:
    """This process's descendants as psutil processes ([] without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error as exc:
        logger.warning("cannot list child processes: %s", exc)
        return []


def _live(process: Any) -> bool:
    """Alive and still the same process (a reused pid or a zombie does not count)."""
    import psutil

    try:
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate_processes(processes: list[Any], timeout: float) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        logger.warning("process %d ignored SIGTERM; killing it", process.pid)
        with contextlib.suppress(psutil.Error):
            process.kill()
    if alive:
        psutil.wait_procs(alive, timeout=timeout)


def kill_descendants(timeout: float = _KILL_TIMEOUT, *, exclude: Iterable[int] = ()) -> list[int]:
    """Stop every descendant of this process but ``exclude``; return the pids found.

    SIGTERM, ``timeout`` seconds, SIGKILL, and reaping (no zombie is left). Uses psutil;
    without it, finds nothing.
    """
    if not timeout >= 0:
        raise ConfigError(f"timeout must be >= 0 seconds, got {timeout!r}")
    skip = set(exclude)
    found = [p for p in _descendants() if p.pid not in skip]
    if found:
        logger.debug("terminating descendants %s", [p.pid for p in found])
        _terminate_processes(found, timeout)
    return [p.pid for p in found]


_reaper_lock = threading.Lock()
_reaper_installed = False


def install_child_reaper(*, timeout: float = _KILL_TIMEOUT) -> None:
    """Run :func:`kill_descendants` at interpreter exit and on SIGTERM; idempotent.

    A SIGTERM handler that was already installed still runs afterwards; with none, the
    process then dies of SIGTERM as it would have. From a thread other than the main one
    only the exit hook is installed (Python lets only the main thread set handlers).
    """
    global _reaper_installed
    with _reaper_lock:
        if _reaper_installed:
            return
        _reaper_installed = True
    atexit.register(kill_descendants, timeout)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        kill_descendants(timeout)
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    signal.signal(signal.SIGTERM, on_sigterm)


def hard_exit(code: int, *, timeout: float = _KILL_TIMEOUT) -> NoReturn:
    """Stop every descendant, flush the log and the standard streams, and ``os._exit``.

    For entry points whose native libraries crash now and then in the interpreter's
    ordinary teardown (gRPC and TensorFlow destructors after TFF's worker is gone), which
    would turn a finished run's exit status into -11.
    """
    kill_descendants(timeout)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# Supervisor ---------------------------------------------------------------------------------


class Supervisor:
    """Owns the children it starts and stops them all on :meth:`close` (or ``with`` exit).

    Children are started with :func:`start` (logs in ``log_dir/<name>.log``). Processes
    that were already descendants when the supervisor was created (a test session's
    servers) are never touched.
    """

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self._existing = {p.pid for p in _descendants()}
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        stdout: bool = False,
        stderr: IO[str] | IO[bytes] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start ``command`` as ``name``: output to ``name.log`` (stdout to ``name.out``
        with ``stdout``; stderr to ``stderr`` when given)."""
        log = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        out = self.log_dir / f"{name}.out" if stdout and self.log_dir is not None else None
        with deferred_interrupts():
            child = start(
                command,
                name=name,
                env=env if env is not None else self.env,
                cwd=self.cwd,
                log_path=log,
                stdout_path=out,
                stderr=stderr,
            )
            self.children.append(child)
        return child

    def run(
        self,
        name: str,
        command: Sequence[str],
        *,
        timeout: float,
        what: str | None = None,
        stdout: bool = False,
    ) -> Child:
        """Start ``command`` and wait for it to exit 0 (ProcessError otherwise; a child
        that overran is stopped before the error is raised)."""
        child = self.start(name, command, stdout=stdout)
        try:
            return wait(child, timeout=timeout, what=what)
        except ProcessError:
            stop([child], timeout=self.stop_timeout)
            raise

    def check_running(self, children: Sequence[Child] | None = None, *, doing: str) -> None:
        """ProcessError naming the first of ``children`` (default: all) that has exited."""
        for child in self.children if children is None else children:
            if not child.alive():
                raise _failure(child, f"{child.name} (while {doing})")

    def stop(self, children: Sequence[Child] | None = None) -> None:
        """:func:`stop` ``children`` (default: all of them)."""
        stop(self.children if children is None else children, timeout=self.stop_timeout)

    def close(self) -> list[str]:
        """Stop every child, then every descendant started since the supervisor was
        created that is still running (one that left its child's process group); returns a
        description of each such leftover (empty: none). Signals wait until it is done."""
        with deferred_interrupts():
            return self._close()

    def _close(self) -> list[str]:
        before = self._new_descendants()
        self.stop()
        ours = {c.pid for c in self.children}
        seen = {p.pid: p for p in [*before, *self._new_descendants()] if p.pid not in ours}
        leftovers = [p for p in seen.values() if _live(p)]
        found = []
        for process in leftovers:
            try:
                found.append(f"{process.pid} ({' '.join(process.cmdline())[:120]})")
            except Exception:  # its command line is unreadable: report the pid alone
                found.append(f"{process.pid} (command line unreadable)")
        if leftovers:
            _terminate_processes(leftovers, _KILL_TIMEOUT)
        return found

    def remaining(self) -> list[int]:
        """Pids of this process's live descendants started since the supervisor was created."""
        return [p.pid for p in self._new_descendants() if _live(p)]

    def _new_descendants(self) -> list[Any]:
        return [p for p in _descendants() if p.pid not in self._existing]

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
