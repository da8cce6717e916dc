"""Serving the REST app with waitress (a production WSGI server), plus the deadline timer.

:func:`run_server` binds (port 0 picks a free port, written to ``port_file`` once bound),
starts a thread that calls ``service.tick()`` every ``tick_seconds`` so deadlines pass
without traffic (on PostgreSQL only in the replica that holds the leader lock, refreshed
before each tick: :mod:`coordinator.leadership`; the others serve requests and take the
lock over when its holder dies), serves until SIGTERM or SIGINT, then closes the socket,
stops the timer and closes the store. SIGTERM, the normal stop of a service, then returns 0; SIGINT
(Ctrl-C) raises KeyboardInterrupt once that clean shutdown is done, as Python does for it.
With ``tls`` (:class:`~coordinator.tls.TlsFiles`) it serves HTTPS itself: every accepted
socket is wrapped in the server's SSL context and shakes hands without blocking the I/O
loop; the handshake must finish within ``header_timeout`` s of the connection, and a
client that does not speak TLS (plain HTTP), or that has no certificate of the client CA
when one is required, is dropped at the handshake, before any request is read. Without
``tls`` it speaks plain HTTP (TLS may then be terminated in front of it by a reverse proxy
or load balancer). gunicorn works too: ``create_app`` is a plain WSGI app factory.
With ``grpc_port`` it also serves gRPC (:func:`coordinator.rpc.server.start_grpc_server`,
the same TLS) over the app's state, and stops it with the REST server: calls in flight get
a few seconds to finish.

Connections (:class:`ConnectionLimits`): waitress runs one I/O loop (``poll()``, so more
than 1024 sockets) over up to ``connection_limit`` sockets; only complete requests take a
worker thread, so slow clients cost a socket, not a thread. A request's headers must
arrive within ``header_timeout`` s and its body within ``body_timeout`` s of its first
byte, and a connection idle for ``idle_timeout`` s is closed; a client that trickles bytes
is cut off then, whatever its pace. As soon as a request's headers have arrived, the app's
:func:`~coordinator.rest.gate.precheck` decides from them alone whether its body may be
read (the route's token rule and body limit); a refusal is answered at once and the
connection closed, so no body of an unauthenticated or oversized request is ever read,
buffered or spooled. waitress spools bodies over 512 KiB to a temporary file; its own
``max_request_body_size`` is the largest route limit (the update upload), so only an
authenticated upload can be spooled, up to that size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
import signal
import socket
import ssl
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import BaseWSGIServer, create_server  # type: ignore[import-untyped]
from waitress.wasyncore import _DISCONNECTED, ExitNow  # type: ignore[import-untyped]

from coordinator.leadership import leadership_for
from coordinator.limits import ConnectionLimits, GrpcLimits
from coordinator.logsafe import printable
from coordinator.rest.gate import Refusal, precheck, refusal_for_size
from coordinator.rest.state import EXTENSION
from coordinator.rpc.server import GrpcServer, start_grpc_server
from coordinator.service import CoordinatorService
from coordinator.tls import TlsFiles, grpc_server_credentials, server_ssl_context
from fedge.fileio import atomic_write_text

__all__ = ["ConnectionLimits", "Ticker", "run_server"]

logger = logging.getLogger(__name__)


_DRAIN_SECONDS = 2.0
_GRPC_GRACE_SECONDS = 5.0
"""How long gRPC calls in flight may take to finish once the server stops."""


class _Stop(ExitNow):  # type: ignore[misc]
    """Raised in the main thread by the signal handler to leave the serve loop.

    An ``ExitNow``: waitress re-raises it from inside a channel's event handler, where it
    would swallow (log and close the channel for) any other exception, and with it the
    signal.
    """


class Ticker:
    """A daemon thread that applies deadlines: ``service.tick()`` every ``interval`` s,
    after refreshing the service's leadership (a replica that does not lead skips it)."""

    def __init__(self, service: CoordinatorService, interval: float) -> None:
        self._service = service
        self._interval = interval
        self._leadership = service.leadership
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
                if self._leadership.refresh():
                    self._service.tick()
            except Exception:
                logger.exception("deadline timer: tick failed; retrying in %.1f s", self._interval)


def _refusal_bytes(refusal: Refusal) -> bytes:
    body = json.dumps({"error": refusal.code, "detail": refusal.detail}).encode()
    lines = [
        f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"Date: {formatdate(usegmt=True)}",
        "Server: fedge-coordinator",
        *(f"{k}: {v}" for k, v in refusal.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _GatedChannel(HTTPChannel):  # type: ignore[misc]
    """A waitress channel that asks the app about a request once its headers are in (before
    any body is read) and cuts off requests that arrive too slowly."""

    limits = ConnectionLimits()
    flask_app: Flask
    will_close: bool
    _began = 0.0
    _gated: object = None
    _refusal: Refusal | None = None
    _body_limit = 0

    def _check_headers(self, request: Any) -> Refusal | None:
        """The app's verdict on ``request``, asked once per request."""
        if self._gated is not request:
            self._gated = request
            self._refusal = self._precheck(request)
        return self._refusal

    _draining_since: float | None = None
    _shut = False

    def received(self, data: bytes) -> bool:
        if self._draining_since is not None:
            return True  # the body of a refused request: read and dropped, never kept
        if self.request is None:
            self._began = time.monotonic()
        result: bool = super().received(data)
        request = self.request
        if (
            request is None
            or request.completed
            or not request.headers_finished
            or self.requests  # answers go out in order: the app checks it when its turn comes
        ):
            return result
        refusal = self._check_headers(request)
        if refusal is None and request.chunked and request.body_bytes_received > self._body_limit:
            refusal = refusal_for_size(self._body_limit)
        if refusal is not None:
            self._refuse(request, refusal)
        return result

    def send_continue(self) -> None:
        # A client that waits for 100 Continue hears the refusal instead.
        request: Any = self.request
        if self._check_headers(request) is not None:
            request.expect_continue = False
            return
        super().send_continue()

    def _precheck(self, request: Any) -> Refusal | None:
        length = request.headers.get("CONTENT_LENGTH")
        try:
            refusal, self._body_limit = precheck(
                self.flask_app,
                request.command,
                request.path,
                request.headers.get("AUTHORIZATION"),
                int(length) if length is not None else None,
            )
        except Exception:
            logger.exception("checking a request's headers failed; the app will check it")
            self._body_limit = 1 << 62
            return None
        return refusal

    def _refuse(self, request: Any, refusal: Refusal) -> None:
        """Answer ``refusal`` and drop the body: read and discarded for at most
        ``_DRAIN_SECONDS`` after the answer (a client that sends its body before it reads
        gets the answer rather than a reset), then close."""
        self.request = None
        request.close()
        logger.info(
            "%s %s -> %d (refused before the body: %s)",
            printable(request.command),
            printable(request.path),
            refusal.status,
            refusal.code,
        )
        self.write_soon(_refusal_bytes(refusal))
        self._draining_since = time.monotonic()

    def _drain(self) -> bool:
        """``readable`` while draining: keep reading until the client closes or time is up."""
        if self._draining_since is None or self.will_close:
            return False
        if not self.total_outbufs_len and not self._shut:
            self._shut = True
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_WR)
        if time.monotonic() - self._draining_since > _DRAIN_SECONDS:
            self.will_close = True
            return False
        return True

    def readable(self) -> bool:
        if self._draining_since is not None:
            return self._drain()
        request = self.request
        if request is not None and not self.requests and not self.will_close:
            waited = time.monotonic() - self._began
            headers_done = request.headers_finished
            limit = self.limits.body_timeout if headers_done else self.limits.header_timeout
            if waited > limit:
                logger.info(
                    "closing a connection from %s: its request's %s did not arrive within %g s",
                    printable(str(self.addr[0] if self.addr else "?")),
                    "body" if headers_done else "headers",
                    limit,
                )
                self.request = None
                request.close()
                self.will_close = True
                return False
        return bool(super().readable())


class _TlsChannel(_GatedChannel):
    """A gated channel over TLS: the handshake runs in the I/O loop without blocking it
    (within ``header_timeout`` s of the connection, else the connection is closed), then
    reads and writes go through the SSL socket, tolerating its want-read/want-write
    answers and reading what the TLS layer has already decrypted (``pending()``), which
    ``poll()`` cannot see."""

    _handshaking = True
    _handshake_wants_write = False
    _read_wants_write = False
    _write_wants_read = False
    _closed = False
    _accepted = 0.0

    def __init__(self, server: Any, sock: ssl.SSLSocket, addr: Any, adj: Any, map: Any = None):
        # The SSL object is used by the I/O loop and, for large answers, by the worker
        # writing them (waitress flushes from the worker under its outbuf lock).
        self._tls_lock = threading.Lock()
        self._accepted = time.monotonic()
        super().__init__(server, sock, addr, adj, map)

    def _peer(self) -> str:
        return printable(str(self.addr[0] if self.addr else "?"))

    def _handshake(self) -> None:
        try:
            with self._tls_lock:
                self.socket.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants_write = False
            return
        except ssl.SSLWantWriteError:
            self._handshake_wants_write = True
            return
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            logger.info("TLS handshake with %s failed: %s", self._peer(), printable(str(reason)))
            self.handle_close()
            return
        self._handshaking = False
        self.last_activity = time.time()
        self.handle_read()  # a request sent right behind the handshake

    def readable(self) -> bool:
        if self._handshaking:
            if self.will_close:
                return False
            if time.monotonic() - self._accepted > self.limits.header_timeout:
                logger.info(
                    "closing a connection from %s: its TLS handshake did not finish within %g s",
                    self._peer(),
                    self.limits.header_timeout,
                )
                self.will_close = True
                return False
            return not self._handshake_wants_write
        return self._write_wants_read or bool(super().readable())

    def writable(self) -> bool:
        if self._handshaking and not self.will_close:
            return self._handshake_wants_write
        return self._read_wants_write or bool(super().writable())

    def handle_close(self) -> None:
        self._closed = True
        super().handle_close()

    def handle_read_event(self) -> None:
        if self._closed:
            return
        if self._handshaking:
            self._handshake()
            return
        if self._write_wants_read:
            self._write_wants_read = False
            self.handle_write()
            if self._closed:
                return
        super().handle_read_event()

    def handle_write_event(self) -> None:
        if self._closed:
            return
        if self._handshaking and not self.will_close:
            self._handshake()
            return
        if self._read_wants_write:
            self._read_wants_write = False
            self.handle_read()
            if self._closed:
                return
        super().handle_write_event()

    def handle_read(self) -> None:
        chunks: list[bytes] = []
        try:
            with self._tls_lock:
                chunks.append(self.socket.recv(self.adj.recv_bytes))
                while chunks[-1] and (pending := self.socket.pending()) > 0:
                    chunks.append(self.socket.recv(pending))
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
        except (ssl.SSLError, OSError) as exc:
            logger.info("closing a TLS connection from %s: %s", self._peer(), exc)
            self.handle_close()
            return
        if not chunks:
            return  # nothing decrypted yet
        data = b"".join(chunks)
        if data:
            self.last_activity = time.time()
            self.received(data)
        else:  # the client closed the connection
            self.handle_close()
            self.connected = False

    def send(self, data: bytes, do_close: bool = True) -> int:
        try:
            with self._tls_lock:
                sent: int = self.socket.send(data)
            return sent
        except ssl.SSLWantWriteError:
            return 0
        except ssl.SSLWantReadError:
            self._write_wants_read = True
            return 0
        except ssl.SSLError as exc:
            logger.info("closing a TLS connection to %s: %s", self._peer(), exc)
            if do_close:
                self.handle_close()
            return 0
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            if exc.errno in _DISCONNECTED:
                if do_close:
                    self.handle_close()
                return 0
            raise


def _tls_channel_factory(channel: type[_TlsChannel], context: ssl.SSLContext) -> Any:
    """waitress's ``channel_class`` for TLS: wraps the accepted socket (no handshake yet:
    the channel does it in the I/O loop); a socket that cannot be wrapped (the client is
    already gone) is closed and gets no channel."""

    def accept(server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> Any:
        try:
            wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            logger.info("dropping a connection that could not start TLS: %s", exc)
            with contextlib.suppress(OSError):
                sock.close()
            return None
        return channel(server, wrapped, addr, adj, map=map)

    return accept


def _raise_file_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` descriptors (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        logger.warning(
            "the descriptor limit (%d) is below what --connection-limit needs (%d)",
            target,
            wanted,
        )


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
    limits: ConnectionLimits | None = None,
    tls: TlsFiles | None = None,
    grpc_port: int | None = None,
    grpc_port_file: Path | None = None,
    grpc_limits: GrpcLimits | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 after a clean shutdown on SIGTERM, and raises
    KeyboardInterrupt after the same clean shutdown on SIGINT. With ``tls``: HTTPS (and
    mutual TLS when it names a client CA). With ``grpc_port`` (0: a free one, written to
    ``grpc_port_file``) gRPC is served beside it over the app's state, with the same TLS,
    and stopped with it."""
    limits = limits or ConnectionLimits()
    context = server_ssl_context(tls) if tls is not None else None
    # Above every route's limit, so that the app's refusal (JSON, counted) answers first.
    body_limit = max_request_body_size or (int(app.config["MAX_CONTENT_LENGTH"]) + (1 << 20))
    _raise_file_limit(limits.connection_limit + threads + 64)
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="fedge-coordinator",
        max_request_body_size=body_limit,
        clear_untrusted_proxy_headers=True,
        connection_limit=limits.connection_limit,
        channel_timeout=int(max(1, limits.idle_timeout)),
        cleanup_interval=1,
        backlog=limits.backlog,
        asyncore_use_poll=True,
        url_scheme="https" if context is not None else "http",
    )
    settings = {"limits": limits, "flask_app": app}
    channel: Any = type("GatedChannel", (_GatedChannel,), settings)
    if context is not None:
        channel = _tls_channel_factory(type("TlsChannel", (_TlsChannel,), settings), context)
    dispatchers = [server, *getattr(server, "map", {}).values(), *server._map.values()]
    for dispatcher in dispatchers:
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = channel
    bound = int(server.effective_port)
    rpc: GrpcServer | None = None
    if grpc_port is not None:
        try:
            rpc = start_grpc_server(
                app.extensions[EXTENSION],
                host=host,
                port=grpc_port,
                limits=grpc_limits or GrpcLimits(),
                credentials=grpc_server_credentials(tls) if tls is not None else None,
            )
        except BaseException:
            server.close()
            raise
        if grpc_port_file is not None:
            _write_port(grpc_port_file, rpc.port)
    if port_file is not None:
        _write_port(port_file, bound)
    service.leadership = leadership_for(service.store)
    ticker = Ticker(service, tick_seconds)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheme = "https" if context is not None else "http"
    logger.info("fedge coordinator listening on %s://%s:%d", scheme, host, bound)
    stopped_by = ""
    try:
        if service.leadership.refresh():
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
        if rpc is not None:
            rpc.stop(_GRPC_GRACE_SECONDS)
        ticker.stop()
        service.leadership.close()
        service.store.close()
        logger.info("fedge coordinator stopped")
    if stopped_by == signal.SIGINT.name:
        raise KeyboardInterrupt(stopped_by)
    return 0
