"""fedge.processes on real child processes: stopped for sure, failures named, nothing left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fedge import processes
from fedge.errors import ProcessError


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_stop_terminates_child_and_grandchild_in_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = processes.start(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], name="shell")
    grandchild = int(_wait_for_file(pidfile))
    processes.stop([child], timeout=5)
    assert child.outcome == "terminated"
    assert child.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)


def test_stop_kills_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = processes.start(
        ["sh", "-c", f"trap '' TERM; echo up > {ready}; while :; do sleep 0.1; done"],
        name="stubborn",
    )
    _wait_for_file(ready)
    started = time.monotonic()
    processes.stop([child], timeout=0.5)
    assert child.outcome == "killed"
    assert child.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_wait_all_names_first_failure_without_waiting_for_others(tmp_path: Path) -> None:
    slow = processes.start(["sleep", "60"], name="slow")
    bad = processes.start(
        ["sh", "-c", "echo 'error: disk on fire' >&2; exit 3"],
        name="bad",
        log_path=tmp_path / "bad.log",
    )
    started = time.monotonic()
    try:
        with pytest.raises(ProcessError, match=r"bad exited with code 3: error: disk on fire"):
            processes.wait_all([slow, bad], timeout=30)
        assert time.monotonic() - started < 10
        assert slow.alive()
    finally:
        processes.stop([slow, bad])
    assert not slow.alive()


def test_wait_all_times_out_naming_running_children() -> None:
    child = processes.start(["sleep", "60"], name="sleeper")
    try:
        with pytest.raises(ProcessError, match=r"sleeper still running after 0\.3 s") as info:
            processes.wait_all([child], timeout=0.3)
        assert info.value.returncode is None
    finally:
        processes.stop([child])


def test_wait_returns_child_that_exits_zero(tmp_path: Path) -> None:
    child = processes.start(
        ["sh", "-c", "echo hello"], name="echo", stdout_path=tmp_path / "echo.out"
    )
    assert processes.wait(child, timeout=10) is child
    assert child.read_stdout() == "hello\n"
    assert child.outcome == "exited"


def test_wait_until_reports_watched_child_that_exits_first() -> None:
    child = processes.start(["sh", "-c", "exit 7"], name="server")
    with pytest.raises(ProcessError, match=r"server \(before healthy\) exited with code 7"):
        processes.wait_until(lambda: False, timeout=10, watch=[child], what="healthy")


def test_wait_until_returns_once_ready(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    child = processes.start(["sh", "-c", f"sleep 0.2; touch {flag}; sleep 60"], name="server")
    try:
        processes.wait_until(flag.exists, timeout=10, watch=[child])
        assert flag.exists()
    finally:
        processes.stop([child])


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_supervisor_close_stops_descendant_that_left_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    script = f"setsid sleep 60 & echo $! > {pidfile}; wait"
    with processes.Supervisor(log_dir=tmp_path / "logs") as supervisor:
        supervisor.start("parent", ["sh", "-c", script])
        escaped = int(_wait_for_file(pidfile))
        # $! is known before the child has called setsid(): close only once it left the
        # group, or stopping the group kills it as an ordinary child (nothing escaped).
        _wait_until(lambda: _session_of(escaped) == escaped)
        leftovers = supervisor.close()
    assert [item.split()[0] for item in leftovers] == [str(escaped)]
    assert _gone(escaped)
    assert supervisor.remaining() == []
    assert (tmp_path / "logs" / "parent.log").read_text().startswith("$ sh -c")


def test_supervisor_run_raises_and_stops_child_that_overruns(tmp_path: Path) -> None:
    supervisor = processes.Supervisor(log_dir=tmp_path, stop_timeout=2)
    with pytest.raises(ProcessError, match="still running"):
        supervisor.run("slow", ["sleep", "60"], timeout=0.3)
    assert not supervisor.children[0].alive()


def test_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    parent_code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from fedge import processes
        child = processes.start(["sleep", "60"])
        Path({str(pidfile)!r}).write_text(str(child.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        child = int(_wait_for_file(pidfile, timeout=30))
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _interrupted_block(done: list[bool]) -> None:
    with processes.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        done.append(True)


def test_deferred_interrupts_raise_after_the_block() -> None:
    done: list[bool] = []
    with pytest.raises(KeyboardInterrupt):
        _interrupted_block(done)
    assert done == [True]


def test_kill_descendants_stops_and_reaps_children() -> None:
    existing = {p.pid for p in psutil.Process().children(recursive=True)}
    popen = subprocess.Popen(["sleep", "60"])
    found = processes.kill_descendants(2.0, exclude=existing)
    assert found == [popen.pid]
    assert _gone(popen.pid)
