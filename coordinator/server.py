"""Serving the REST app with waitress (a production WSGI server), plus the deadline timer.

:func:`run_server` binds (port 0 picks a free port, written to ``port_file`` once bound),
starts a thread that calls ``service.tick()`` every ``tick_seconds`` so deadlines pass
without traffic, serves until SIGTERM or SIGINT, then closes the socket, stops the timer
and closes the store. SIGTERM, the normal stop of a service, then returns 0; SIGINT
(Ctrl-C) raises KeyboardInterrupt once that clean shutdown is done, as Python does for it.
TLS is terminated in front of it (a reverse proxy or load balancer); waitress speaks plain
HTTP. gunicorn works too: ``create_app`` is a plain WSGI app factory.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from flask import Flask
from waitress.server import create_server  # type: ignore[import-untyped]

from coordinator.service import CoordinatorService
from fedge.fileio import atomic_write_text

__all__ = ["Ticker", "run_server"]

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised in the main thread by the signal handler to leave the serve loop."""


class Ticker:
    """A daemon thread that applies deadlines: ``service.tick()`` every ``interval`` s."""

    def __init__(self, service: CoordinatorService, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedge-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a no-op for a ticker that never started)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._service.tick()
            except Exception:
                logger.exception("deadline timer: tick failed; retrying in %.1f s", self._interval)


def _write_port(port_file: Path, port: int) -> None:
    atomic_write_text(port_file, f"{port}\n")


def run_server(
    app: Flask,
    service: CoordinatorService,
    *,
    host: str,
    port: int,
    port_file: Path | None = None,
    threads: int = 8,
    tick_seconds: float = 1.0,
    max_request_body_size: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 after a clean shutdown on SIGTERM, and raises
    KeyboardInterrupt after the same clean shutdown on SIGINT."""
    limit = max_request_body_size or (int(app.config["MAX_CONTENT_LENGTH"]) + (1 << 20))
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="fedge-coordinator",
        max_request_body_size=limit,
        clear_untrusted_proxy_headers=True,
    )
    bound = int(server.effective_port)
    if port_file is not None:
        _write_port(port_file, bound)
    ticker = Ticker(service, tick_seconds)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("fedge coordinator listening on http://%s:%d", host, bound)
    stopped_by = ""
    try:
        service.tick()
        ticker.start()
        server.run()
    except _Stop as exc:
        stopped_by = str(exc)
        logger.info("received %s: shutting down", stopped_by)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
        ticker.stop()
        service.store.close()
        logger.info("fedge coordinator stopped")
    if stopped_by == signal.SIGINT.name:
        raise KeyboardInterrupt(stopped_by)
    return 0
