"""Runs ``fedge-edge`` the way a device would, with TensorFlow made unimportable.

``python tests/edge_launcher.py [--capture FILE] [--report FILE] -- ARGS...`` installs a
meta-path blocker BEFORE any other import (``tensorflow``, ``keras``, the cloud packages
and Flask cannot be imported), optionally wraps the HTTP transport so that every request
the client sends (method, URL, headers, body) is appended to FILE as JSON lines, calls
``edge_client.cli.main(ARGS)`` and, at exit, writes the top-level modules it loaded to the
``--report`` file. The tests judge both files.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = (
    "tensorflow",
    "tensorflow_federated",
    "keras",
    "tf_keras",
    "flask",
    "waitress",
    "sklearn",
    "coordinator",
    "cloud_trainer",
    "quantize",
    "simulations",
)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname.split(".", 1)[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the edge has no TensorFlow")
        return None


_already = sorted(m for m in sys.modules if m.split(".", 1)[0] in BLOCKED)
if _already:
    raise SystemExit(f"blocked modules were imported before the blocker: {_already}")
sys.meta_path.insert(0, _Blocker())

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

    def close(self) -> None:
        self._inner.close()


def _tensorflow_import_fails() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return True
    return False


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
            document = {"modules": loaded, "tensorflow_import_fails": _tensorflow_import_fails()}
            report.write_text(json.dumps(document))


if __name__ == "__main__":
    raise SystemExit(_run(sys.argv[1:]))
