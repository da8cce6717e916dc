"""The session's background jobs: expensive, read-only set-up built in child processes while
the first tests run (fixture ``background_jobs`` in ``tests/conftest.py``).

A test session is one process that mostly keeps one core busy; on a two-core machine the
other is free while most tests run. The session fixtures that train and bundle models (and
the own-table runs of every tool) are queued when the session starts, each job one
``python -m tests.support.prebuild ...`` process, which lowers its own priority
(:data:`NICENESS`) so that the tests themselves keep the processor first; the fixture that
needs a job's output waits for that job (:meth:`BackgroundJobs.finished`).

The jobs run one at a time, in the order they were queued, except that a job a fixture
waits for starts at once. A job runs in a process group of its own, its output in
``<root>/<name>.log``; whatever is still running at the end of the session is killed.
:meth:`BackgroundJobs.process_ids` lists the jobs and their descendants, which the
``no_leftover_children`` fixture does not count as the test's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support import REPO_ROOT

__all__ = [
    "JOBS_OF_FIXTURE",
    "NICENESS",
    "BackgroundJobs",
    "Job",
    "bundle_job",
    "job_args",
    "session_jobs",
    "started_by_a_job",
]

NICENESS = 10
"""How much lower a job runs than the tests (``nice``)."""
_POLL = 0.1

_BUNDLES = {"digits": ("32", "digits-v1"), "taxi": ("16", "taxi-v1")}
"""Each reference task's session bundle: batch size and model version."""

JOBS_OF_FIXTURE = {
    "taxi_bundle_export": ["taxi-bundle"],
    "digits_bundle_export": ["digits-bundle"],
    "own_table_runs": ["own-table.csv", "own-table.tfrecord"],
    "digits_export": ["digits-export"],
    "taxi_export": ["taxi-export"],
    "changed_table_run": ["changed-table"],
    "digits_pretrained": ["pretrain-digits"],
}
"""The jobs a session fixture waits for, queued when the session starts (in this order:
about the order of the tests) if a collected test needs the fixture."""


def bundle_job(task: str, batch_size: int, version: str) -> str | None:
    """The job that builds ``task``'s bundle with this batch size and version, if one does."""
    return f"{task}-bundle" if _BUNDLES.get(task) == (str(batch_size), version) else None


def job_args(name: str, workdir: Path) -> list[str]:
    """The ``tests.support.prebuild`` arguments of job ``name``, writing in ``workdir``."""
    if name.endswith("-bundle"):  # edge_digits_bundle, edge_taxi_bundle
        task = name.removesuffix("-bundle")
        batch_size, version = _BUNDLES[task]
        return ["bundle", task, str(workdir), "--batch-size", batch_size, "--version", version]
    if name.endswith("-export"):  # the quantizer tests' (tests/quantize/conftest.py)
        return ["export", name.removesuffix("-export"), str(workdir / "export")]
    if name == "changed-table":
        return ["changed-table", str(workdir)]
    if name.startswith("pretrain-"):  # in the simulation tests' cache (their sim_cache)
        return ["pretrain", name.removeprefix("pretrain-"), str(workdir)]
    if name.startswith("own-table"):
        return ["user-table", name.removeprefix("own-table"), str(workdir)]
    raise ValueError(f"no background job is called {name!r}")


@dataclass
class Job:
    """One started job: its command, process and log."""

    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log: Path


def started_by_a_job(process: psutil.Process) -> bool:
    """Whether ``process`` descends from a background job (not from the test: a test that
    looks for, say, simulation workers among its process's descendants skips these)."""
    try:
        return any(
            any("tests.support.prebuild" in part for part in parent.cmdline())
            for parent in process.parents()
        )
    except psutil.Error:
        return False


_session: BackgroundJobs | None = None


def session_jobs() -> BackgroundJobs | None:
    """The test session's jobs (while the ``background_jobs`` fixture is set up), else None."""
    return _session


class BackgroundJobs:
    """Jobs by name under ``root``, run one after another in the order they were queued
    (one lane: the core the tests leave free); a job a fixture waits for that has not
    started yet starts at once. As a context manager: the session's jobs
    (:func:`session_jobs`) until the block ends, then stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[str, Job] = {}
        self._queue: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._lane: threading.Thread | None = None

    def __enter__(self) -> BackgroundJobs:
        global _session  # one session's jobs, for helpers that have no fixtures
        _session = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _session
        _session = None
        self.stop()

    def queue(self, name: str) -> None:
        """Queue job ``name`` (once): ``python -m tests.support.prebuild`` with
        :func:`job_args`, writing in ``root/name``."""
        args = job_args(name, self.root / name)
        with self._lock:
            if name in self._jobs or any(queued == name for queued, _ in self._queue):
                return
            self._queue.append((name, list(args)))
            if self._lane is None:
                self._lane = threading.Thread(target=self._run_lane, name="jobs", daemon=True)
                self._lane.start()

    def finished(self, name: str, *, timeout: float = 1200.0) -> Path:
        """Job ``name``'s folder, once the job has finished (started now if it has not);
        AssertionError with its log's tail when it failed or ran past ``timeout`` seconds."""
        args = job_args(name, self.root / name)
        with self._lock:
            if name not in self._jobs:
                self._queue = [entry for entry in self._queue if entry[0] != name]
                self._start(name, args)
            job = self._jobs[name]
        deadline = time.monotonic() + timeout
        while job.popen.poll() is None:
            if time.monotonic() > deadline:
                self._kill(job)
                raise AssertionError(f"background job {name} ran past {timeout:.0f} s")
            time.sleep(_POLL)
        if job.popen.returncode != 0:
            tail = job.log.read_text("utf-8", errors="replace")[-4000:]
            raise AssertionError(
                f"background job {name} ({' '.join(job.args)}) exited "
                f"{job.popen.returncode}:\n{tail}"
            )
        return self.root / name

    def process_ids(self) -> set[int]:
        """The running jobs and every process they started."""
        with self._lock:
            jobs = list(self._jobs.values())
        found: set[int] = set()
        for job in jobs:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(job.popen.pid)
                found.add(root.pid)
                found.update(child.pid for child in root.children(recursive=True))
        return found

    def stop(self) -> None:
        """Start nothing more; kill every job still running (and what it started)."""
        with self._lock:
            self._stopping = True
            self._queue.clear()
            jobs, lane = list(self._jobs.values()), self._lane
        for job in jobs:
            if job.popen.poll() is None:
                self._kill(job)
        if lane is not None:
            lane.join(timeout=10)

    def _run_lane(self) -> None:
        while True:
            with self._lock:
                if self._stopping or not self._queue:
                    self._lane = None
                    return
                name, args = self._queue.pop(0)
                job = self._start(name, args)
            job.popen.wait()

    def _start(self, name: str, args: list[str]) -> Job:
        """Start job ``name`` (the caller holds the lock)."""
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        log = self.root / f"{name}.log"
        with open(log, "wb") as stream:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.support.prebuild", *args],
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )
        job = self._jobs[name] = Job(name, args, popen, log)
        return job

    @staticmethod
    def _kill(job: Job) -> None:
        """SIGKILL the job, its process group and its descendants (some start sessions of
        their own), and reap it."""
        try:
            descendants = psutil.Process(job.popen.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.popen.pid, signal.SIGKILL)
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
        job.popen.wait()
