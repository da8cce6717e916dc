"""A scripted HTTP server on loopback that plays a hostile or broken coordinator.

:func:`hostile_server` starts a real socket server (``http.server`` in a thread) whose every
answer comes from a test's ``script(request) -> Answer``: any status and headers (a
``Retry-After`` of ``0`` or ``1e12``, a wrong ``X-Fedge-Sha256``), any body, and optionally
trickled one byte every ``trickle`` seconds, from the status line on (``trickle_from="head"``)
or after the headers (``"body"``). Every request is recorded with its arrival time; a
trickled answer records when the client hung up (its ``gave_up_at``), which is how a test
sees that the client cut the request off. Stopping the server ends every trickle at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import quote

__all__ = ["Answer", "HostileServer", "Request", "bundle_answers", "hostile_server"]


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Answer:
    """What the server sends back."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    trickle: float | None = None  # seconds between two bytes; None sends at once
    trickle_from: Literal["head", "body"] = "body"


Script = Callable[[Request], Answer]


@dataclass
class HostileServer:
    """A running server: its ``url``, the requests it got, the trickles clients gave up."""

    url: str
    script: Script
    requests: list[Request] = field(default_factory=list)
    gave_up_at: list[float] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.method == method and r.path == path)

    def matching(self, method: str, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]


def _response_bytes(answer: Answer) -> tuple[bytes, bytes]:
    reason = {200: "OK", 204: "No Content", 429: "Too Many Requests"}.get(answer.status, "X")
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    headers = {"Content-Length": str(len(answer.body)), "Connection": "close", **answer.headers}
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), answer.body


def _handler(server: HostileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                self.command, self.path, dict(self.headers.items()), body, time.monotonic()
            )
            with server.lock:
                server.requests.append(request)
            answer = server.script(request)
            head, payload = _response_bytes(answer)
            self.close_connection = True
            if answer.trickle is None:
                self.wfile.write(head + payload)
                return
            slow = head + payload if answer.trickle_from == "head" else payload
            if answer.trickle_from == "body":
                self.wfile.write(head)
            try:
                for i in range(len(slow)):
                    if server.stopping.wait(answer.trickle):
                        return
                    self.wfile.write(slow[i : i + 1])
            except OSError:
                with server.lock:
                    server.gave_up_at.append(time.monotonic())

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def hostile_server(script: Script) -> Iterator[HostileServer]:
    """Serve ``script`` on a free loopback port until the block ends."""
    state = HostileServer(url="", script=script)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def bundle_answers(bundle: Path, version: str) -> dict[str, Answer]:
    """The coordinator's answers for downloading ``bundle`` as model ``version``, by path
    (the manifest with its ``X-Fedge-Sha256``, then each file)."""
    answers: dict[str, Answer] = {}
    quoted = quote(version, safe="")
    for path in sorted(bundle.iterdir()):
        if not path.is_file():
            continue
        body = path.read_bytes()
        digest = {"X-Fedge-Sha256": hashlib.sha256(body).hexdigest()}
        if path.name == "manifest.json":
            answers[f"/v1/models/{quoted}/manifest"] = Answer(200, digest, body)
        else:
            answers[f"/v1/models/{quoted}/files/{quote(path.name, safe='')}"] = Answer(
                200, digest, body
            )
    return answers
