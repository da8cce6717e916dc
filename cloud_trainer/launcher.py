"""Run a multi-worker cluster as local processes on loopback (no TensorFlow in this process).

Each worker gets its own ``TF_CONFIG`` (worker 0 is the chief) on a free 127.0.0.1 port.
The launcher waits with a deadline, and stops every worker still running (with
:func:`fedge.processes.stop`) as soon as one fails, at the deadline, or on
KeyboardInterrupt: a collective op would otherwise leave the survivors waiting for their
peer forever.

:func:`launch_local_ps_cluster` runs a parameter-server cluster the same way: a chief (the
coordinator, which trains and exports), workers and parameter servers. Servers never exit on
their own, so it waits for the chief, fails at once if a server dies first, and then stops
the servers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from cloud_trainer.cluster import TF_CONFIG, local_ps_tf_configs, local_tf_configs
from cloud_trainer.errors import ClusterError
from fedge import processes
from fedge.cli import ExitCode
from fedge.errors import ConfigError, ProcessError

__all__ = [
    "LAUNCHER_PID_ENV",
    "WorkerOutcome",
    "free_ports",
    "launch_local_cluster",
    "launch_local_ps_cluster",
    "watch_launcher",
]

logger = logging.getLogger(__name__)

LAUNCHER_PID_ENV = "FEDGE_TRAIN_LAUNCHER_PID"
"""Set in each worker's environment: the PID of the launcher it must not outlive."""
_STOP_WAIT_S = 10.0
_LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class WorkerOutcome:
    """How one worker process ended (``returncode`` < 0: killed by that signal).

    ``task`` is the process's task type: ``worker``, or in a parameter-server cluster
    ``chief``, ``worker`` or ``ps`` (servers end when the launcher stops them)."""

    index: int
    pid: int
    returncode: int
    task: str = "worker"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    ports: list[int] = []
    while len(ports) < count:
        port = _pick_port()
        if port not in ports:
            ports.append(port)
    return ports


def _pick_port() -> int:
    try:
        import portpicker  # type: ignore[import-untyped]
    except ImportError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    with warnings.catch_warnings():
        # portpicker 1.6 passes floats to random.randrange on Python 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        return int(portpicker.pick_unused_port())


def launch_local_cluster(
    command: Sequence[str],
    *,
    num_workers: int,
    log_dir: str | os.PathLike[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    chief_stderr: IO[str] | None = None,
    poll_interval_s: float = 0.2,
) -> list[WorkerOutcome]:
    """Start ``num_workers`` copies of ``command`` as one cluster; wait for all to succeed.

    Worker output goes to ``log_dir/worker-<i>.log``; the chief's stderr goes to
    ``chief_stderr`` instead when given (so its progress bar shows). ClusterError names
    the first worker that failed, with the tail of its log, or reports the timeout.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
    base_env = dict(os.environ if env is None else env)
    configs = local_tf_configs(free_ports(num_workers))
    workers: list[processes.Child] = []
    try:
        with processes.deferred_interrupts():
            for index, config in enumerate(configs):
                workers.append(
                    processes.start(
                        command,
                        name=f"worker {index}",
                        env={**base_env, TF_CONFIG: config, LAUNCHER_PID_ENV: str(os.getpid())},
                        log_path=os.path.join(os.fspath(log_dir), f"worker-{index}.log"),
                        stderr=chief_stderr if index == 0 else None,
                    )
                )
                logger.info("started worker %d (pid %d)", index, workers[-1].pid)
        _wait_all(workers, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
        return [
            WorkerOutcome(index=i, pid=w.pid, returncode=int(w.popen.returncode))
            for i, w in enumerate(workers)
        ]
    finally:
        processes.stop(workers, timeout=_STOP_WAIT_S)


def _wait_all(
    workers: Sequence[processes.Child], *, timeout_s: float, poll_interval_s: float
) -> None:
    """Wait for every worker; ClusterError at the first failure or at the deadline."""
    try:
        processes.wait_all(workers, timeout=timeout_s, poll_interval=poll_interval_s)
    except ProcessError as exc:
        if exc.returncode is None:
            running = [i for i, w in enumerate(workers) if w.alive()]
            raise ClusterError(
                f"workers {running} still running after {timeout_s:g}s; killed"
            ) from None
        index = next(i for i, w in enumerate(workers) if w.name == exc.name)
        tail = workers[index].log_tail(_LOG_TAIL_CHARS)
        if tail:
            logger.error("worker %d log ends:\n%s", index, tail)
        raise ClusterError(
            f"worker {index} (pid {workers[index].pid}) exited with code {exc.returncode}; "
            "the other workers were killed"
        ) from None


def launch_local_ps_cluster(
    command: Sequence[str],
    *,
    num_workers: int,
    num_ps: int,
    log_dir: str | os.PathLike[str],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    chief_stderr: IO[str] | None = None,
    poll_interval_s: float = 0.2,
) -> list[WorkerOutcome]:
    """Start a parameter-server cluster of copies of ``command``; wait for its chief.

    Parameter servers and workers start first, then the chief. Logs go to
    ``log_dir/<task>-<i>.log`` (the chief's stderr to ``chief_stderr`` when given).
    ClusterError when the chief fails, a server exits while the chief runs, or at the
    deadline; every process is stopped in all cases. The outcomes list the chief first.
    """
    for name, value in (("num_workers", num_workers), ("num_ps", num_ps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
    base_env = dict(os.environ if env is None else env)
    ports = free_ports(1 + num_workers + num_ps)
    configs = local_ps_tf_configs(ports[0], ports[1 : 1 + num_workers], ports[1 + num_workers :])
    # Servers first, so the chief finds them listening; the chief last.
    order = [c for c in configs if c[0] == "ps"] + [c for c in configs if c[0] == "worker"]
    order += [c for c in configs if c[0] == "chief"]
    started: list[tuple[str, int, processes.Child]] = []
    try:
        with processes.deferred_interrupts():
            for kind, index, config in order:
                child = processes.start(
                    command,
                    name=f"{kind} {index}",
                    env={**base_env, TF_CONFIG: config, LAUNCHER_PID_ENV: str(os.getpid())},
                    log_path=os.path.join(os.fspath(log_dir), f"{kind}-{index}.log"),
                    stderr=chief_stderr if kind == "chief" else None,
                )
                started.append((kind, index, child))
                logger.info("started %s %d (pid %d)", kind, index, child.pid)
        chief = started[-1][2]
        servers = [(kind, index, child) for kind, index, child in started[:-1]]
        _wait_chief(chief, servers, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
    finally:
        processes.stop([child for _, _, child in started], timeout=_STOP_WAIT_S)
    return [
        WorkerOutcome(index=index, pid=child.pid, returncode=int(child.popen.returncode), task=kind)
        for kind, index, child in [started[-1], *started[:-1]]
    ]


def _wait_chief(
    chief: processes.Child,
    servers: Sequence[tuple[str, int, processes.Child]],
    *,
    timeout_s: float,
    poll_interval_s: float,
) -> None:
    """Wait for ``chief`` to exit 0; ClusterError if it fails, a server exits, or at timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = chief.popen.poll()
        if code is not None:
            if code == 0:
                return
            tail = chief.log_tail(_LOG_TAIL_CHARS)
            if tail:
                logger.error("chief log ends:\n%s", tail)
            raise ClusterError(
                f"chief (pid {chief.pid}) exited with code {code}; the servers were killed"
            )
        for kind, index, child in servers:
            if child.popen.poll() is not None:
                tail = child.log_tail(_LOG_TAIL_CHARS)
                if tail:
                    logger.error("%s %d log ends:\n%s", kind, index, tail)
                raise ClusterError(
                    f"{kind} {index} (pid {child.pid}) exited with code "
                    f"{child.popen.returncode} during training; the others were killed"
                )
        if time.monotonic() >= deadline:
            raise ClusterError(f"the chief was still training after {timeout_s:g}s; killed")
        time.sleep(poll_interval_s)


def watch_launcher(environ: Mapping[str, str] | None = None, *, interval_s: float = 1.0) -> bool:
    """In a launched worker: exit at once if the launcher dies (SIGKILL gives it no chance
    to kill us, and a worker waiting on a dead peer's all-reduce would wait forever).

    Returns whether a watchdog thread was started (only when ``LAUNCHER_PID_ENV`` is set).
    """
    text = (os.environ if environ is None else environ).get(LAUNCHER_PID_ENV, "")
    if not text.isdigit():
        return False
    launcher = int(text)

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(interval_s)
        logger.error("the launcher (pid %d) is gone; this worker exits", launcher)
        os._exit(ExitCode.FAILED)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
    return True
