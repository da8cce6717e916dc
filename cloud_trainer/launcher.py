"""Run a multi-worker cluster as local processes on loopback (no TensorFlow in this process).

Each worker gets its own ``TF_CONFIG`` (worker 0 is the chief) on a free 127.0.0.1 port.
The launcher waits with a deadline, and kills every worker still running, by PID, as soon
as one fails, at the deadline, or on KeyboardInterrupt: a collective op would otherwise
leave the survivors waiting for their peer forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from cloud_trainer.cluster import TF_CONFIG, local_tf_configs
from fedge.errors import ConfigError, FedgeError

__all__ = [
    "LAUNCHER_PID_ENV",
    "ClusterError",
    "WorkerOutcome",
    "free_ports",
    "launch_local_cluster",
    "watch_launcher",
]

logger = logging.getLogger(__name__)

LAUNCHER_PID_ENV = "FEDGE_TRAIN_LAUNCHER_PID"
"""Set in each worker's environment: the PID of the launcher it must not outlive."""
_KILL_WAIT_S = 10.0
EXIT_LAUNCHER_GONE = 1
_LOG_TAIL_CHARS = 2000


class ClusterError(FedgeError, RuntimeError):
    """A worker of a local cluster failed, or the cluster ran past its deadline."""


@dataclass(frozen=True)
class WorkerOutcome:
    """How one worker process ended (``returncode`` < 0: killed by that signal)."""

    index: int
    pid: int
    returncode: int


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
    logs = [os.path.join(os.fspath(log_dir), f"worker-{i}.log") for i in range(num_workers)]
    procs: list[subprocess.Popen[bytes]] = []
    handles: list[IO[bytes]] = []
    try:
        with _sigint_deferred():
            _start_all(command, configs, logs, base_env, chief_stderr, procs, handles)
        _wait_all(procs, logs, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
        return [
            WorkerOutcome(index=i, pid=p.pid, returncode=int(p.returncode))
            for i, p in enumerate(procs)
        ]
    finally:
        with _sigint_deferred():
            _kill_all(procs)
            for handle in handles:
                handle.close()


def _start_all(
    command: Sequence[str],
    configs: Sequence[str],
    logs: Sequence[str],
    base_env: Mapping[str, str],
    chief_stderr: IO[str] | None,
    procs: list[subprocess.Popen[bytes]],
    handles: list[IO[bytes]],
) -> None:
    """Start the workers, appending each to ``procs`` as soon as it exists."""
    for index, (config, log_path) in enumerate(zip(configs, logs, strict=True)):
        log = open(log_path, "wb")  # noqa: SIM115 - the caller closes it
        handles.append(log)
        stderr: IO[str] | IO[bytes] = log
        if index == 0 and chief_stderr is not None:
            stderr = chief_stderr
        procs.append(
            subprocess.Popen(
                list(command),
                env={**base_env, TF_CONFIG: config, LAUNCHER_PID_ENV: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=stderr,
                # Own session: a Ctrl-C reaches the launcher, which then kills by PID.
                start_new_session=True,
            )
        )
        logger.info("started worker %d (pid %d)", index, procs[-1].pid)


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
        os._exit(EXIT_LAUNCHER_GONE)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()
    return True


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends: one inside ``Popen`` would orphan its child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _wait_all(
    procs: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[str],
    *,
    timeout_s: float,
    poll_interval_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        for index, code in enumerate(codes):
            if code is not None and code != 0:
                tail = _tail(logs[index])
                if tail:
                    logger.error("worker %d log ends:\n%s", index, tail)
                raise ClusterError(
                    f"worker {index} (pid {procs[index].pid}) exited with code {code}; "
                    "the other workers were killed"
                )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() >= deadline:
            running = [i for i, code in enumerate(codes) if code is None]
            raise ClusterError(f"workers {running} still running after {timeout_s:g}s; killed")
        time.sleep(poll_interval_s)


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            logger.warning("killing worker pid %d", proc.pid)
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            logger.error("worker pid %d did not exit %gs after SIGKILL", proc.pid, _KILL_WAIT_S)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - _LOG_TAIL_CHARS))
            text = stream.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
    return text
