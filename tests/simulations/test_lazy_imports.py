"""An in-memory simulation imports neither a server (Flask, waitress, gRPC) nor the device's
transports' heavy dependencies: the ``coordinator`` and ``edge_client`` packages load each
public name on first use, and ``fedge-simulate``'s modules take only what they use."""

from __future__ import annotations

import subprocess
import sys

import coordinator
import edge_client
from tests.support import REPO_ROOT

HEAVY = ("flask", "waitress", "grpc", "google.protobuf", "edge_client.daemon")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_simulation_modules_import_no_server_or_transport() -> None:
    assert (
        _loaded_after("import simulations.cli, simulations.runner, simulations.native_engine") == []
    )


def test_a_transport_name_still_loads_its_module_on_use() -> None:
    assert _loaded_after("from edge_client import connect") == ["grpc", "google.protobuf"]


def test_every_public_name_resolves_to_its_defining_module() -> None:
    for package in (coordinator, edge_client):
        for name in package.__all__:
            value = getattr(package, name)
            assert getattr(value, "__name__", name) == name, (package.__name__, name)
        assert set(package.__all__) <= set(dir(package))
