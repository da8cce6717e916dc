"""A real PostgreSQL server for the tests: the ``pgserver`` wheel's bundled binaries, on a
Unix socket in a fresh data directory, one server per test session (a fixture in
``tests/conftest.py``), a new database per test.

Run as root (as CI may), pgserver runs the server as the unprivileged system user
``pgserver`` (created with ``useradd`` when missing): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg


class PostgresCluster:
    """A running server; :meth:`new_database` makes an empty database and gives its URL."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        name = f"fedge_test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresCluster]:
    """Start a server in a new data directory; stop it and delete the directory on exit."""
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR, /tmp/runtime-UID
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="fedge-pg-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        assert socket_dir is not None, "pgserver started no Unix socket"
        yield PostgresCluster(Path(socket_dir))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
