"""Start ``fedge-coordinator serve`` as a child process and wait until it serves.

::

    with launch_coordinator(
        ["--task", "taxi", "--bundle", "bundle", "--db", "state.db", "--artifacts", "a"],
        port_file=work / "port", log_path=work / "coordinator.log",
    ) as coordinator:
        AdminClient(coordinator.url, token).list_models()

The coordinator binds a free port (``--port 0`` unless the arguments give one) and writes
it to the port file; it is ready once ``GET /healthz`` answers 200. If it exits first, or
does not answer within the timeout, it is stopped and :class:`~fedge.errors.ProcessError`
says how it ended, with the tail of its log. Starting and stopping are
:mod:`fedge.processes`': the child runs in a process group of its own, is told to die with
its parent, and is stopped with SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from coordinator.client import is_healthy
from fedge import processes
from fedge.errors import ConfigError, ProcessError

__all__ = [
    "SERVE_PROGRAM",
    "START_TIMEOUT",
    "CoordinatorProcess",
    "launch_coordinator",
    "wait_until_serving",
]

SERVE_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "coordinator.cli")
"""The ``fedge-coordinator`` program of this interpreter (no console script needed)."""
START_TIMEOUT = 30.0
"""Seconds a coordinator gets to import its bundle and answer ``/healthz``."""
_POLL = 0.05


def _read_port(port_file: Path) -> int | None:
    try:
        text = port_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_until_serving(
    child: processes.Child,
    port_file: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    timeout: float = START_TIMEOUT,
    log_tail: bool = True,
) -> str:
    """The URL of the coordinator ``child`` once its port file names a port and
    ``GET /healthz`` answers 200 there.

    ProcessError when the child exits first or ``timeout`` seconds pass, with the tail of
    the child's log (``log_tail`` False: one line naming the log file); stops nothing.
    """
    path = Path(port_file)
    found: list[str] = []

    def serving() -> bool:
        port = _read_port(path)
        if port is None:
            return False
        url = f"http://{host}:{port}"
        if is_healthy(url):
            found.append(url)
            return True
        return False

    try:
        processes.wait_until(
            serving, timeout=timeout, watch=[child], interval=_POLL, what="serving /healthz"
        )
    except ProcessError as exc:
        message = str(exc)
        if child.log_path is not None and str(child.log_path) not in message:
            message += f" (see {child.log_path})"
        tail = child.log_tail() if log_tail else ""
        if tail:
            message += f"; the end of its log:\n{tail}"
        raise ProcessError(message, name=exc.name, returncode=exc.returncode) from None
    return found[-1]


@dataclass(eq=False)
class CoordinatorProcess:
    """A running coordinator: its child process, base URL and log."""

    child: processes.Child
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def log_path(self) -> Path | None:
        return self.child.log_path

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    def alive(self) -> bool:
        return self.child.alive()

    def log(self) -> str:
        """Its whole log so far ("" without one)."""
        path = self.child.log_path
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""

    def stop(self, timeout: float = processes.STOP_TIMEOUT) -> int | None:
        """SIGTERM (a clean shutdown: exit 0), at most ``timeout`` s, then SIGKILL; the exit
        status. Safe to call again."""
        processes.stop([self.child], timeout=timeout)
        return self.child.returncode

    def kill(self, timeout: float = processes.STOP_TIMEOUT) -> int | None:
        """SIGKILL at once, no clean shutdown (an outage, a crash); the exit status."""
        if self.child.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, signal.SIGKILL)
            self.child.popen.wait(timeout=timeout)
            self.child.outcome = "killed"
        return self.child.returncode

    def __enter__(self) -> CoordinatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def launch_coordinator(
    serve_args: Sequence[str],
    *,
    port_file: str | os.PathLike[str],
    log_path: str | os.PathLike[str] | None = None,
    program: Sequence[str] = SERVE_PROGRAM,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = START_TIMEOUT,
    supervisor: processes.Supervisor | None = None,
    name: str = "coordinator",
) -> CoordinatorProcess:
    """Run ``program serve *serve_args --port-file PORT_FILE`` and wait until it serves.

    ``serve_args`` are ``fedge-coordinator serve``'s options but ``--port-file``, which the
    launcher owns (a stale one is removed first); ``--port 0`` is added when no port is
    given. The child's output goes to ``log_path``; with a ``supervisor`` (which then owns
    the child and stops it on close), the supervisor's log of ``name``, ``cwd`` and
    environment (unless ``env`` is given) apply instead. ``host`` is where the URL points
    (the loopback for a server bound to every address).
    """
    args = [os.fspath(a) for a in serve_args]
    if any(a == "--port-file" or a.startswith("--port-file=") for a in args):
        raise ConfigError("serve_args must not hold --port-file: the launcher sets it")
    if not any(a == "--port" or a.startswith("--port=") for a in args):
        args += ["--port", "0"]
    path = Path(port_file)
    path.unlink(missing_ok=True)
    command = [*program, "serve", *args, "--port-file", str(path)]
    if supervisor is not None:
        child = supervisor.start(name, command, env=env)
    else:
        child = processes.start(command, name=name, env=env, cwd=cwd, log_path=log_path)
    try:
        url = wait_until_serving(child, path, host=host, timeout=timeout)
    except BaseException:
        processes.stop([child])
        raise
    return CoordinatorProcess(child, url)
