"""Runs ``fedge-edge`` the way a device would, with TensorFlow made unimportable.

``python tests/support/edge_launcher.py [--capture FILE] [--report FILE] -- ARGS...`` (with
the repository root on ``PYTHONPATH``) blocks imports BEFORE any other import
(:mod:`tests.support.blocker`: TensorFlow, Flask, scikit-learn and the cloud packages cannot
be imported), optionally records every request the client sends to FILE as JSON lines,
calls ``edge_client.cli.main(ARGS)`` and, at exit, writes the top-level modules it loaded
to the ``--report`` file. The tests judge both files.

What is recorded depends on ARGS' ``--coordinator`` URL: for ``http(s)://`` the HTTP
transport is wrapped (method, URL, headers, body; with ARGS' ``--ca-file``/``--cert``/
``--key`` for TLS), for ``grpc(s)://`` an interceptor on the channel records every request
message (``method`` is the RPC's path, ``headers`` its metadata, ``body`` the serialized
protobuf message, ``message`` its type; a streamed upload is one record per message).
"""

from __future__ import annotations

import sys

from tests.support.blocker import TENSORFLOW, block_imports, import_fails

BLOCKED = (
    *TENSORFLOW,
    "flask",
    "waitress",
    "sklearn",
    "coordinator",
    "cloud_trainer",
    "quantize",
    "simulations",
)
block_imports(BLOCKED)

import base64  # noqa: E402  (the blocker must be in place before any other import)
import json  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402

from edge_client.cli import main  # noqa: E402
from edge_client.grpc_client import Interceptor  # noqa: E402
from edge_client.transport import DEFAULT_TIMEOUT, HttpResponse, HttpTransport  # noqa: E402


class _Recorder:
    """Appends one JSON line per request to a file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        with self._lock, open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class RecordingTransport:
    """Forwards to HttpTransport and appends every request sent to a JSON-lines file."""

    def __init__(self, inner: HttpTransport, path: Path) -> None:
        self._inner = inner
        self._recorder = _Recorder(path)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        record = {
            "method": method,
            "url": url,
            "headers": dict(headers),
            "body": base64.b64encode(body or b"").decode("ascii"),
        }
        self._recorder.write(record)
        return self._inner.request(method, url, headers=headers, body=body, timeout=timeout)

    def cancel(self) -> None:
        self._inner.cancel()

    def close(self) -> None:
        self._inner.close()


class RecordingInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    """Appends every request message a gRPC channel sends to a JSON-lines file."""

    def __init__(self, base_url: str, path: Path) -> None:
        self._base = base_url.rstrip("/")
        self._recorder = _Recorder(path)

    def _record(self, details: Any, message: Any) -> None:
        method = str(details.method)
        headers = {str(k): str(v) for k, v in (details.metadata or ())}
        self._recorder.write(
            {
                "method": method,
                "url": self._base + method,
                "headers": headers,
                "body": base64.b64encode(message.SerializeToString()).decode("ascii"),
                "message": type(message).__name__,
            }
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:  # fmt: skip
        self._record(details, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:  # fmt: skip
        self._record(details, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                               requests: Iterator[Any]) -> Any:  # fmt: skip
        def recorded() -> Iterator[Any]:
            for message in requests:
                self._record(details, message)
                yield message

        return continuation(details, recorded())


def _option(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``fedge-edge`` arguments (``--flag V`` or ``--flag=V``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _recording(args: Sequence[str], capture: Path) -> tuple[RecordingTransport | None,
                                                           list[Interceptor]]:  # fmt: skip
    """What records the requests of the ``fedge-edge`` command ``args``."""
    url = _option(args, "--coordinator") or ""
    if url.startswith(("grpc://", "grpcs://")):
        return None, [RecordingInterceptor(url, capture)]
    ca, cert, key = (_option(args, f) for f in ("--ca-file", "--cert", "--key"))
    inner = HttpTransport(
        verify=ca if ca is not None else True,
        client_cert=(cert, key) if cert is not None and key is not None else None,
    )
    return RecordingTransport(inner, capture), []


def _run(argv: list[str]) -> int:
    capture: Path | None = None
    report: Path | None = None
    while argv and argv[0] != "--":
        flag, value = argv[0], Path(argv[1])
        if flag == "--capture":
            capture = value
        elif flag == "--report":
            report = value
        else:
            raise SystemExit(f"unknown launcher flag {flag}")
        argv = argv[2:]
    args = argv[1:]
    transport, interceptors = _recording(args, capture) if capture is not None else (None, [])
    try:
        return main(args, transport=transport, grpc_interceptors=interceptors)
    finally:
        if report is not None:
            loaded = sorted({name.split(".", 1)[0] for name in sys.modules})
            document = {"modules": loaded, "tensorflow_import_fails": import_fails("tensorflow")}
            report.write_text(json.dumps(document))


if __name__ == "__main__":
    raise SystemExit(_run(sys.argv[1:]))
