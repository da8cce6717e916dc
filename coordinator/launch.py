"""Start ``fedge-coordinator serve`` as a child process and wait until it serves.

::

    with launch_coordinator(
        ["--task", "taxi", "--bundle", "bundle", "--db", "state.db", "--artifacts", "a"],
        port_file=work / "port", log_path=work / "coordinator.log",
    ) as coordinator:
        AdminClient(coordinator.url, token).list_models()

The coordinator binds a free port (``--port 0`` unless the arguments give one) and writes
it to the port file; it is ready once ``GET /healthz`` answers 200. With ``tls`` it serves
HTTPS (``url`` is ``https://...``) and the health check verifies its certificate with
``client_tls`` (CA file, client certificate, key: the certificate is needed when the
coordinator requires client certificates); with ``grpc=True`` it also serves gRPC on a free
port, ``grpc_url`` (``grpc://`` or, with TLS, ``grpcs://``). If it exits first, or
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

from coordinator.client import ClientCert, is_healthy
from coordinator.tls import TlsFiles
from fedge import processes
from fedge.errors import ConfigError, ProcessError

__all__ = [
    "SERVE_PROGRAM",
    "START_TIMEOUT",
    "ClientTlsFiles",
    "CoordinatorProcess",
    "launch_coordinator",
    "wait_until_serving",
]

SERVE_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "coordinator.cli")
"""The ``fedge-coordinator`` program of this interpreter (no console script needed)."""
START_TIMEOUT = 30.0
"""Seconds a coordinator gets to import its bundle and answer ``/healthz``."""
_POLL = 0.05

ClientTlsFiles = tuple[
    str | os.PathLike[str] | None, str | os.PathLike[str] | None, str | os.PathLike[str] | None
]
"""(CA file, client certificate, client key): how a client verifies the coordinator and,
for mutual TLS, proves who it is. ``None`` CA: the system's roots; certificate and key
go together."""


def _client_cert(client_tls: ClientTlsFiles | None) -> ClientCert | None:
    if client_tls is None:
        return None
    _ca, cert, key = client_tls
    if (cert is None) != (key is None):
        raise ConfigError("client_tls: the client certificate and key go together")
    return None if cert is None or key is None else (cert, key)


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
    scheme: str = "http",
    client_tls: ClientTlsFiles | None = None,
) -> str:
    """The URL of the coordinator ``child`` once its port file names a port and
    ``GET /healthz`` answers 200 there (``scheme`` https: verified with ``client_tls``).

    ProcessError when the child exits first or ``timeout`` seconds pass, with the tail of
    the child's log (``log_tail`` False: one line naming the log file); stops nothing.
    """
    path = Path(port_file)
    found: list[str] = []
    cert = _client_cert(client_tls)
    ca_file = None if client_tls is None else client_tls[0]

    def serving() -> bool:
        port = _read_port(path)
        if port is None:
            return False
        url = f"{scheme}://{host}:{port}"
        if is_healthy(url, ca_file=ca_file, cert=cert):
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
    """A running coordinator: its child process, base URL (``https://`` with TLS), gRPC
    URL (when it serves gRPC), the client TLS files its health check used, and log."""

    child: processes.Child
    url: str
    grpc_url: str | None = None
    client_tls: ClientTlsFiles | None = None

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
    tls: TlsFiles | None = None,
    client_tls: ClientTlsFiles | None = None,
    grpc: bool = False,
) -> CoordinatorProcess:
    """Run ``program serve *serve_args --port-file PORT_FILE`` and wait until it serves.

    ``serve_args`` are ``fedge-coordinator serve``'s options but ``--port-file``, which the
    launcher owns (a stale one is removed first); ``--port 0`` is added when no port is
    given. ``tls`` adds ``--tls-cert``, ``--tls-key`` and ``--client-ca``; ``client_tls``
    is what the health check verifies the server with and presents (a coordinator with a
    client CA needs its certificate). ``grpc`` adds ``--grpc-port 0 --grpc-port-file
    PORT_FILE.grpc``, and the result's ``grpc_url`` names the port it bound. The child's
    output goes to ``log_path``; with a ``supervisor`` (which then owns the child and stops
    it on close), the supervisor's log of ``name``, ``cwd`` and environment (unless ``env``
    is given) apply instead. ``host`` is where the URL points
    (the loopback for a server bound to every address).
    """
    args = [os.fspath(a) for a in serve_args]
    owned = ["--port-file"] + (["--grpc-port-file", "--grpc-port"] if grpc else [])
    owned += ["--tls-cert", "--tls-key", "--client-ca"] if tls is not None else []
    for flag in owned:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise ConfigError(f"serve_args must not hold {flag}: the launcher sets it")
    if not any(a == "--port" or a.startswith("--port=") for a in args):
        args += ["--port", "0"]
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        if tls.client_ca is not None:
            args += ["--client-ca", str(tls.client_ca)]
            if _client_cert(client_tls) is None:
                raise ConfigError(
                    "tls requires client certificates: give client_tls=(ca, cert, key) "
                    "for the launcher's health check"
                )
    path = Path(port_file)
    path.unlink(missing_ok=True)
    grpc_path = path.with_name(path.name + ".grpc")
    if grpc:
        grpc_path.unlink(missing_ok=True)
        args += ["--grpc-port", "0", "--grpc-port-file", str(grpc_path)]
    command = [*program, "serve", *args, "--port-file", str(path)]
    if supervisor is not None:
        child = supervisor.start(name, command, env=env)
    else:
        child = processes.start(command, name=name, env=env, cwd=cwd, log_path=log_path)
    secure = tls is not None or any(a == "--tls-cert" or a.startswith("--tls-cert=") for a in args)
    try:
        url = wait_until_serving(
            child,
            path,
            host=host,
            timeout=timeout,
            scheme="https" if secure else "http",
            client_tls=client_tls,
        )
        grpc_url = None
        if grpc:
            processes.wait_until(
                lambda: _read_port(grpc_path) is not None,
                timeout=timeout,
                watch=[child],
                interval=_POLL,
                what=f"writing its gRPC port to {grpc_path}",
            )
            grpc_url = f"{'grpcs' if secure else 'grpc'}://{host}:{_read_port(grpc_path)}"
    except BaseException:
        processes.stop([child])
        raise
    return CoordinatorProcess(child, url, grpc_url=grpc_url, client_tls=client_tls)
