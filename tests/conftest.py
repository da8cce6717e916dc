"""Shared test set-up: quiet TensorFlow, a guard against leftover child processes, a
guard that fails the run when a log handler fails to write ("--- Logging error ---"),
every coordinator response a test sees checked against the OpenAPI document, and the
session's real models and own-table runs, built by background jobs while the first tests
run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.background import JOBS_OF_FIXTURE, BackgroundJobs
from tests.support.openapi import Recorder, install
from tests.support.postgres import PostgresCluster, running_postgres

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_logging_errors: list[str] = []
_original_handle_error = logging.Handler.handleError


def _recording_handle_error(self: logging.Handler, record: logging.LogRecord) -> None:
    """Remember every record a handler failed to write, then report it as logging does.

    A handler bound to a stream that pytest has since closed prints "--- Logging error ---"
    and the test still passes; recording it lets the session fail instead.
    """
    _logging_errors.append(f"{type(self).__name__} failed on {record.name}: {record.msg!r}")
    _original_handle_error(self, record)


logging.Handler.handleError = _recording_handle_error  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _logging_errors and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _logging_errors:
        terminalreporter.section("logging errors")
        for line in _logging_errors[:20]:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"{len(_logging_errors)} logging error(s): the run fails")


_RESPONSES = pytest.StashKey[Recorder]()


def pytest_configure(config: pytest.Config) -> None:
    """Check every response from the coordinator (Flask test client or a real server)."""
    patcher = pytest.MonkeyPatch()
    config.stash[_RESPONSES] = install(patcher.setattr)
    config.add_cleanup(patcher.undo)


def _undocumented(item: pytest.Item) -> str:
    problems = item.config.stash[_RESPONSES].take()
    if not problems:
        return ""
    listed = "\n  ".join(problems)
    return f"responses that disagree with the OpenAPI document:\n  {listed}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The test fails when it (or its fixtures' set-up) saw an undocumented response."""
    try:
        yield
    except BaseException as exc:
        if message := _undocumented(item):
            exc.add_note(message)
        raise
    if message := _undocumented(item):
        pytest.fail(message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if message := _undocumented(item):
        pytest.fail(f"in teardown: {message}")


_BASELINE_ROOT_LEVEL = logging.getLogger().level


def _reset_cli_logging() -> None:
    """Undo what a CLI entry point run in this process did to logging: remove the kit's
    stderr handler and put the root and every named logger back to their levels at start."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fedge_cli_handler", False):
            root.removeHandler(handler)
    root.setLevel(_BASELINE_ROOT_LEVEL)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Each test runs with the logging set-up the session started with.

    A CLI entry point run inside the test process configures logging as it would in its own
    process (root level, one stderr handler, package levels) - also from a session fixture,
    which is set up before this one; so the reset runs before the test and after it.
    """
    _reset_cli_logging()
    yield
    _reset_cli_logging()


@pytest.fixture
def no_leftover_children(background_jobs: BackgroundJobs) -> Iterator[None]:
    """Fail (and clean up) when the test leaves a child process behind.

    Only processes started during the test count: long-lived children of the test session
    (a TFF ``worker_binary``, a session-scoped server) existed before it began, and the
    session's background jobs and what they start are not the test's.
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    children = me.children(recursive=True)
    background = background_jobs.process_ids()
    left = [p for p in children if p.pid not in before and p.pid not in background]
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert left == [], f"processes left behind: {left}"


# Built in the background (tests/support/background.py) ----------------------------------


@pytest.fixture(scope="session", autouse=True)
def background_jobs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundJobs]:
    """The session's background jobs: those the collected tests need are queued at once."""
    wanted: set[str] = set()
    for item in request.session.items:
        wanted.update(getattr(item, "fixturenames", ()))
    with BackgroundJobs(tmp_path_factory.mktemp("background")) as jobs:
        for fixture, names in JOBS_OF_FIXTURE.items():
            if fixture in wanted:
                for name in names:
                    jobs.queue(name)
        yield jobs


@pytest.fixture(scope="session")
def digits_bundle_export(background_jobs: BackgroundJobs) -> Path:
    """The digits export ``edge_digits_bundle`` is made of (read-only), trained for
    ``BUNDLE_EPOCHS`` epochs."""
    return background_jobs.finished("digits-bundle") / "export"


@pytest.fixture(scope="session")
def taxi_bundle_export(background_jobs: BackgroundJobs) -> Path:
    """The taxi export ``edge_taxi_bundle`` is made of (read-only), trained for
    ``BUNDLE_EPOCHS`` epochs."""
    return background_jobs.finished("taxi-bundle") / "export"


@pytest.fixture(scope="session")
def edge_digits_bundle(digits_bundle_export: Path) -> Path:
    """A digits CNN bundle (read-only: copy it before changing it)."""
    return digits_bundle_export.parent / "bundle"


@pytest.fixture(scope="session")
def edge_taxi_bundle(taxi_bundle_export: Path) -> Path:
    """A taxi MLP bundle (read-only: copy it before changing it)."""
    return taxi_bundle_export.parent / "bundle"


@pytest.fixture(scope="session")
def tiny_digits_export(digits_bundle_export: Path) -> Path:
    """A digits export trained briefly (read-only): a real model for tests that only need
    one to exist, such as a conversion to interrupt (the one ``edge_digits_bundle`` is
    made of)."""
    return digits_bundle_export


@pytest.fixture(scope="session")
def own_table_runs(background_jobs: BackgroundJobs) -> Callable[[str], Path]:
    """``own_table_runs(suffix)``: the folder where a user's table (``.csv`` or ``.tfrecord``)
    went through every tool, each as its own process
    (:func:`tests.support.user_tables.run_every_tool`; read it with ``read_tool_runs``;
    read-only)."""

    def finished(suffix: str) -> Path:
        return background_jobs.finished(f"own-table{suffix}")

    return finished


@pytest.fixture(scope="session")
def changed_table_run(background_jobs: BackgroundJobs) -> Path:
    """The folder where ``fedge-quantize bundle`` ran on a ``fedge-train --data`` export after
    the table changed and after it was deleted
    (:func:`tests.support.user_tables.run_changed_table`; read it with ``read_tool_runs``;
    read-only)."""
    return background_jobs.finished("changed-table")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server for the session (tests/support/postgres.py), started on
    first use; ``postgres.new_database()`` gives each test its own empty database."""
    with running_postgres() as cluster:
        yield cluster
