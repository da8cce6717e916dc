"""The simulation's coordinator service served on loopback, in this process.

With ``fedge-simulate --transport rest`` or ``grpc`` the native engine does not call the
service directly for the devices' side: :func:`serve_loopback` serves the same
:class:`~coordinator.CoordinatorService` over the REST adapter (waitress in a thread) and,
for ``grpc``, over the gRPC adapter beside it on the same adapter state, and every task
poll and reply goes through the edge client's own client (:func:`edge_client.connect`),
as a deployed device's would. Only loopback is ever bound, with no TLS: nothing leaves the host.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from waitress.server import create_server  # type: ignore[import-untyped]

from coordinator.limits import GrpcLimits
from coordinator.rest import ApiConfig, create_app
from coordinator.rest.state import EXTENSION
from coordinator.rpc.server import GrpcServer, start_grpc_server
from coordinator.service import CoordinatorService
from simulations.errors import SimulationError

__all__ = ["LoopbackUrls", "serve_loopback"]

_HOST = "127.0.0.1"
_JOIN_SECONDS = 10.0
_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class LoopbackUrls:
    """Where the service answers: REST, and gRPC when it was asked for."""

    rest: str
    grpc: str | None = None


@contextlib.contextmanager
def serve_loopback(service: CoordinatorService, *, grpc: bool = False) -> Iterator[LoopbackUrls]:
    """``service`` on loopback ports for the duration of the block: REST, and with ``grpc``
    gRPC over the same adapter state; both stop when the block ends."""
    app = create_app(service, ApiConfig())
    server = create_server(app, host=_HOST, port=0, threads=4, ident="fedge-coordinator")
    thread = threading.Thread(target=server.run, name="fedge-sim-rest", daemon=True)
    thread.start()

    def close_everything() -> None:  # runs in the server's loop thread
        for dispatcher in list(server._map.values()):
            dispatcher.close()

    grpc_server: GrpcServer | None = None
    try:
        if grpc:
            grpc_server = start_grpc_server(
                app.extensions[EXTENSION], host=_HOST, port=0, limits=GrpcLimits()
            )
        yield LoopbackUrls(
            f"http://{_HOST}:{server.effective_port}",
            None if grpc_server is None else grpc_server.url,
        )
    finally:
        if grpc_server is not None:
            grpc_server.stop(_GRACE_SECONDS)
        server.trigger.pull_trigger(close_everything)
        thread.join(timeout=_JOIN_SECONDS)
        server.task_dispatcher.shutdown()
        if thread.is_alive():
            raise SimulationError("the simulation's loopback REST server did not stop")
