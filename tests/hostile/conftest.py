"""Fixtures of the hostile tests: real ``fedge-coordinator serve`` processes on loopback,
and a real taxi bundle for the attacks on what edge clients send."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.coordinator import (
    ServerProcess,
    make_bundle,
    serve_command,
    start_server,
    stop_server,
    write_admin_token,
)

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """``serve(*flags)`` starts a coordinator over ``tmp_path`` (fake bundle in
    ``tmp_path/bundle``, state in ``tmp_path/state.db``) with extra serve flags; every
    server started is stopped at the end."""
    bundle = tmp_path / "bundle"
    if not (bundle / "manifest.json").exists():
        make_bundle(bundle)
    token_file = write_admin_token(tmp_path)
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        server = start_server(serve_command(tmp_path, bundle, token_file, *flags), tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture(scope="session")
def hostile_taxi_bundle(edge_taxi_bundle: Path) -> Path:
    """A real taxi MLP bundle, for attacks on what real edge clients send (read-only; the
    session's ``edge_taxi_bundle``)."""
    return edge_taxi_bundle
