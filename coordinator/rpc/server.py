"""The gRPC server: the Fleet (and Admin) services over the REST app's state, with the
options of :class:`~coordinator.limits.GrpcLimits`.

:func:`start_grpc_server` binds (port 0 picks a free port) and starts serving on a pool of
``limits.workers`` threads; :mod:`coordinator.server` runs it beside waitress over the same
:class:`~coordinator.rest.state.RestState` and stops it with it. Without credentials it
speaks plain HTTP/2 (``grpc://``); with them (:func:`coordinator.tls.grpc_server_credentials`)
TLS, mutual when they require client certificates (``grpcs://``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.limits import GrpcLimits
from coordinator.rpc.admin import admin_handler
from coordinator.rpc.fleet import fleet_handler
from fedge.errors import ConfigError

if TYPE_CHECKING:
    from coordinator.rest.state import RestState

__all__ = ["GrpcServer", "grpc_options", "start_grpc_server"]

logger = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def grpc_options(limits: GrpcLimits) -> list[tuple[str, Any]]:
    """The gRPC core channel arguments of ``limits``."""
    ping = _ms(limits.min_ping_interval_seconds)
    return [
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_send_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.keepalive_time_ms", _ms(limits.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(limits.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", ping),
        ("grpc.http2.min_ping_interval_without_data_ms", ping),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_idle_ms", _ms(limits.max_connection_idle_seconds)),
        # Another process must not share the port (SO_REUSEPORT would split the calls).
        ("grpc.so_reuseport", 0),
    ]


class _CallPool(ThreadPoolExecutor):
    """The server's worker threads, counting the calls they are running."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="fedge-grpc")
        self._lock = threading.Lock()
        self._running = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._running += 1
        try:
            return super().submit(counted)
        except BaseException:
            with self._lock:
                self._running -= 1
            raise

    def idle(self) -> bool:
        with self._lock:
            return self._running == 0


class GrpcServer:
    """A started gRPC server: its bound :attr:`port`; :meth:`stop` ends it."""

    def __init__(
        self, server: grpc.Server, pool: _CallPool, port: int, *, secure: bool, host: str
    ) -> None:
        self._server = server
        self._pool = pool
        self.port = port
        self.secure = secure
        self.host = host

    @property
    def url(self) -> str:
        """``grpc://host:port``, or ``grpcs://`` with TLS."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'grpcs' if self.secure else 'grpc'}://{host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls; calls in flight get up to ``grace`` seconds to finish (None:
        cancelled at once). Returns once the server has stopped: as soon as no call is
        running (idle client connections do not hold it for the grace period)."""
        stopped = self._server.stop(grace)
        while not stopped.wait(0.05):
            if self._pool.idle():
                self._server.stop(None)
                break
        stopped.wait()
        self._pool.shutdown(wait=False)


def start_grpc_server(
    state: RestState,
    *,
    host: str,
    port: int,
    limits: GrpcLimits,
    credentials: grpc.ServerCredentials | None = None,
) -> GrpcServer:
    """Serve the device API (``fedge.v1.Fleet``) and the admin API (``fedge.v1.Admin``)
    over ``state`` on ``host:port`` (0: a free port); ConfigError when it cannot bind."""
    pool = _CallPool(limits.workers)
    server = grpc.server(
        pool,
        handlers=_handlers(state, limits),
        options=grpc_options(limits),
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"gRPC cannot listen on {address}: {exc}") from exc
    if not bound:
        raise ConfigError(f"gRPC cannot listen on {address}")
    server.start()
    started = GrpcServer(server, pool, int(bound), secure=credentials is not None, host=host)
    logger.info("gRPC on %s", started.url)
    return started


def _handlers(state: RestState, limits: GrpcLimits) -> list[grpc.GenericRpcHandler]:
    return [fleet_handler(state, limits), admin_handler(state)]
