"""Reaping child processes, because TFF leaves one behind.

TFF's local C++ execution context starts a ``worker_binary`` subprocess that inherits this
process's stdout and stderr and is only stopped from a ``__del__`` that may never run. After
Python exits it lives on, reparented to init, holding those pipes open, so whoever reads our
output (``subprocess.run(capture_output=True)``, CI) waits forever. Every process that uses
TFF therefore calls :func:`install_child_reaper`, which stops all of its descendants at exit
and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

import psutil

__all__ = [
    "DEFAULT_TIMEOUT",
    "exit_after_tff",
    "install_child_reaper",
    "kill_children",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
"""Seconds a child gets to exit after SIGTERM before it is killed (and again after SIGKILL)."""

_install_lock = threading.Lock()
_installed = False  # one atexit hook and one SIGTERM handler per process, however often called


def kill_children(timeout: float = DEFAULT_TIMEOUT) -> list[int]:
    """Stop every descendant of this process; return the pids that were found.

    Each gets SIGTERM; those still alive after ``timeout`` seconds get SIGKILL. Children
    are waited for (reaped), so none is left as a zombie either.
    """
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error as exc:  # a process can always list its children; be safe at exit
        logger.warning("cannot list child processes: %s", exc)
        return []
    if not children:
        return []
    logger.debug("terminating child processes %s", [c.pid for c in children])
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        logger.warning("child process %d ignored SIGTERM; killing it", child.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if alive:
        psutil.wait_procs(alive, timeout=timeout)
    return [child.pid for child in children]


def install_child_reaper(*, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Run :func:`kill_children` at interpreter exit and on SIGTERM; idempotent.

    A SIGTERM handler that was already installed still runs afterwards; with none, the
    process then dies of SIGTERM as it would have. From a thread other than the main one
    only the exit hook is installed (Python lets only the main thread set handlers).
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    atexit.register(kill_children, timeout)
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not in the main thread: child reaper installed for exit only")
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> Any:
        kill_children(timeout)
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            return None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    signal.signal(signal.SIGTERM, on_sigterm)


def exit_after_tff(code: int, *, timeout: float = DEFAULT_TIMEOUT) -> NoReturn:
    """End a process that used TFF: reap its children, flush, and exit with ``code`` at once.

    After a TFF run, the interpreter's ordinary teardown (gRPC and TensorFlow native
    destructors, with the ``worker_binary`` gone) segfaults now and then under load, turning
    a finished run's exit status into -11. Entry points that know their exit code skip that
    teardown; the :func:`install_child_reaper` hook stays as the safety net for others.
    """
    kill_children(timeout)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
