"""The child processes of the end-to-end demo: started with their output in a log file,
always stopped, and checked for leftovers.

:class:`ProcessSupervisor` starts each tool in a session of its own, so a Ctrl-C at the
terminal reaches only the demo, which then stops the children in order (devices before the
coordinator). On Linux each child also asks the kernel for SIGTERM when the demo dies
(``PR_SET_PDEATHSIG``), so even a demo killed with SIGKILL leaves nothing running.
:meth:`ProcessSupervisor.stop` sends SIGTERM, waits a bounded time and sends SIGKILL to
whatever is left; :meth:`ProcessSupervisor.close` stops everything still running and then
asks psutil for every descendant that appeared since the supervisor was created, so a
grandchild a tool forgot is found and stopped too. Processes that already existed (a test
session's servers) are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from fedge.errors import FedgeError

__all__ = [
    "DemoError",
    "ManagedProcess",
    "ProcessSupervisor",
    "child_environment",
    "tool_command",
]

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
"""Seconds a child gets to exit after SIGTERM before it is killed."""
_KILL_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1
_SECRET_VARIABLES = ("FEDGE_ADMIN_TOKEN", "FEDGE_ENROLLMENT_TOKEN")
_ERROR_LINE = re.compile(r"\berror\b|traceback|exception", re.IGNORECASE)


class DemoError(FedgeError, RuntimeError):
    """The demo job cannot go on; the message says why in one line."""


def tool_command(script: str, module: str) -> list[str]:
    """The command of a fedge console script: the script beside this interpreter (how a
    user runs it from the virtual environment), else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    return [sys.executable, "-m", module]


def child_environment() -> dict[str, str]:
    """This environment for the tools, without admin or enrollment secrets (the demo passes
    its own token in a file) and with TensorFlow's native logging quiet."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


@dataclass
class ManagedProcess:
    """One started tool: its name, command, log file and ``Popen``."""

    name: str
    command: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    stdout_path: Path | None = None
    outcome: str = "running"
    """``running``, then ``exited`` (on its own), ``terminated`` (SIGTERM) or ``killed``."""
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        path = self.stdout_path or self.log_path
        return path.read_text(errors="replace") if path.is_file() else ""

    def last_error(self) -> str:
        """The last line of its log that reports an error, or ""."""
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        errors = [line for line in lines if _ERROR_LINE.search(line)]
        return errors[-1][:300] if errors else ""

    def describe_exit(self) -> str:
        """``exited with code N`` or ``was killed by SIGNAL``, then its last error line."""
        code = self.returncode
        if code is not None and code < 0:
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
            "log": str(self.log_path),
        }


class ProcessSupervisor:
    """Starts tools as children, stops them for sure (see the module docstring)."""

    def __init__(self, log_dir: Path, *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.env = dict(env) if env is not None else child_environment()
        self.processes: list[ManagedProcess] = []
        self._me = psutil.Process()
        self._existing = {p.pid for p in self._me.children(recursive=True)}
        self._preexec = _death_signal()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: Sequence[str], *, stdout: bool = False) -> ManagedProcess:
        """Start ``command``; its stderr (and stdout unless ``stdout``) go to ``name.log``;
        with ``stdout`` its standard output goes to ``name.out`` (read it with
        :meth:`ManagedProcess.stdout`)."""
        log_path = self.log_dir / f"{name}.log"
        out_path = self.log_dir / f"{name}.out" if stdout else None
        with contextlib.ExitStack() as files:
            log: IO[bytes] = files.enter_context(open(log_path, "wb"))
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            out: IO[bytes] = files.enter_context(open(out_path, "wb")) if out_path else log
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=self._preexec,  # the demo runs no threads
            )
        process = ManagedProcess(name, list(command), log_path, popen, out_path)
        self.processes.append(process)
        logger.debug("started %s (pid %d): %s", name, popen.pid, " ".join(command))
        return process

    def wait(self, process: ManagedProcess, *, timeout: float, what: str) -> ManagedProcess:
        """Wait (bounded) for ``process`` to finish; DemoError when it fails or overruns."""
        try:
            process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop([process])
            raise DemoError(
                f"{what} did not finish within {timeout:.0f} s (see {process.log_path})"
            ) from None
        process.outcome = "exited"
        if process.returncode != 0:
            raise DemoError(f"{what} {process.describe_exit()} (see {process.log_path})")
        return process

    def run(
        self, name: str, command: Sequence[str], *, timeout: float, what: str, stdout: bool = False
    ) -> ManagedProcess:
        """Start ``command`` and wait for it (see :meth:`wait`)."""
        return self.wait(self.start(name, command, stdout=stdout), timeout=timeout, what=what)

    def check_running(self, processes: Sequence[ManagedProcess], *, doing: str) -> None:
        """DemoError naming the first of ``processes`` that has exited."""
        for process in processes:
            if not process.alive():
                process.outcome = "exited"
                raise DemoError(
                    f"{process.name} {process.describe_exit()} while {doing} "
                    f"(see {process.log_path})"
                )

    def stop(self, processes: Sequence[ManagedProcess], *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every running one of ``processes`` at once, wait up to ``timeout`` s for
        all of them, SIGKILL the rest."""
        running = [p for p in processes if p.alive()]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                process.outcome = "terminated"
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", process.name, timeout)
                process.popen.kill()
                process.popen.wait(timeout=_KILL_TIMEOUT)
                process.outcome = "killed"

    def close(self) -> list[str]:
        """Stop every process still running, then every descendant psutil found before or
        after that (a grandchild outlives its parent when the tool forgot it); returns a
        description of each leftover that had to be stopped (empty: none)."""
        seen = {p.pid: p for p in self._descendants()}
        self.stop(self.processes)
        ours = {p.pid for p in self.processes}
        seen.update((p.pid, p) for p in self._descendants())
        leftovers = [p for pid, p in seen.items() if pid not in ours and _running(p)]
        found = []
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                found.append(f"{process.pid} ({' '.join(process.cmdline())[:120]})")
                process.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=_KILL_TIMEOUT)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=_KILL_TIMEOUT)
        return found

    def _descendants(self) -> list[psutil.Process]:
        return [p for p in self._me.children(recursive=True) if p.pid not in self._existing]

    def remaining(self) -> list[int]:
        """Pids of this process's descendants started since the supervisor was created."""
        return [p.pid for p in self._descendants()]


def _running(process: psutil.Process) -> bool:
    """Alive and still the same process (``is_running`` compares creation times, so a
    reused pid does not count); a zombie is not running."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
