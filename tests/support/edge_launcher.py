"""Runs ``fedge-edge`` the way a device would, with TensorFlow made unimportable.

``python tests/support/edge_launcher.py [--capture FILE] [--report FILE] -- ARGS...`` (with
the repository root on ``PYTHONPATH``) blocks imports BEFORE any other import
(:mod:`tests.support.blocker`: TensorFlow, Flask, scikit-learn and the cloud packages cannot
be imported), optionally wraps the HTTP transport so that every request the client sends
(method, URL, headers, body) is appended to FILE as JSON lines, calls
``edge_client.cli.main(ARGS)`` and, at exit, writes the top-level modules it loaded to the
``--report`` file. The tests judge both files.
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
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

from edge_client.cli import main  # noqa: E402
from edge_client.transport import DEFAULT_TIMEOUT, HttpResponse, HttpTransport  # noqa: E402


class RecordingTransport:
    """Forwards to HttpTransport and appends every request sent to a JSON-lines file."""

    def __init__(self, inner: HttpTransport, path: Path) -> None:
        self._inner = inner
        self._path = path
        self._lock = threading.Lock()

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
        with self._lock, open(self._path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return self._inner.request(method, url, headers=headers, body=body, timeout=timeout)

    def cancel(self) -> None:
        self._inner.cancel()

    def close(self) -> None:
        self._inner.close()


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
    transport = RecordingTransport(HttpTransport(), capture) if capture is not None else None
    try:
        return main(args, transport=transport)
    finally:
        if report is not None:
            loaded = sorted({name.split(".", 1)[0] for name in sys.modules})
            document = {"modules": loaded, "tensorflow_import_fails": import_fails("tensorflow")}
            report.write_text(json.dumps(document))


if __name__ == "__main__":
    raise SystemExit(_run(sys.argv[1:]))
