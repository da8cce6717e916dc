"""The conventions every fedge tool keeps, proven on the real processes.

``fedge-train``, ``fedge-quantize``, ``fedge-coordinator``, ``fedge-edge`` and
``fedge-pipeline`` run as ``python -m <module>`` subprocesses:

- a bad command line (an unknown flag, a missing input path, a prefix of a longer flag)
  exits 2 with exactly one ``prog: error: ...`` line on stderr: no usage block, no traceback,
  nothing on stdout, nothing created;
- ``--version`` prints ``prog VERSION`` and exits 0;
- SIGINT in the middle of the long-running command stops it cleanly and exits 130: no
  descendant process is left, no partial output remains (the training and conversion output
  directories do not exist), servers close their port. SIGTERM, the normal stop of the
  coordinator and of the edge daemon, stops them the same way and exits 0; it stops
  training with 130 too, but keeps the output directory that a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fedge.cli import ExitCode, tool_version
from tests.support import REPO_ROOT
from tests.support.coordinator import make_bundle, write_admin_token

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # Keras, training the export
)
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Tool:
    prog: str
    module: str

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", self.module, *args]


TRAIN = Tool("fedge-train", "cloud_trainer.cli")
QUANTIZE = Tool("fedge-quantize", "quantize.cli")
COORDINATOR = Tool("fedge-coordinator", "coordinator.cli")
EDGE = Tool("fedge-edge", "edge_client.cli")
PIPELINE = Tool("fedge-pipeline", "pipelines.cli")
TOOLS = {tool.prog: tool for tool in (TRAIN, QUANTIZE, COORDINATOR, EDGE, PIPELINE)}


def _env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return env


def _run(tool: Tool, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tool.command(*args),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# 1. Bad command lines: exit 2, one line ---------------------------------------------------


def _bad_command_lines(tmp: Path) -> dict[str, dict[str, tuple[list[str], str]]]:
    """Per tool: case -> (arguments, what the error line names). Every path is under ``tmp``;
    nothing there may exist afterwards but what this function created."""
    blocker = tmp / "a-file"
    blocker.write_text("not a directory\n")
    (tmp / "data").mkdir()
    token = tmp / "token"
    token.write_text("t" * 32 + "\n")
    out = str(tmp / "out")
    train = ["--task=digits", "--epochs=1", f"--out={out}"]
    convert = [str(tmp / "model"), "--mode", "int8", "--out", out]
    serve = ["serve", "--task", "taxi", "--bundle", str(tmp / "bundle"), "--db",
             str(tmp / "state.db"), "--artifacts", str(tmp / "artifacts")]  # fmt: skip
    run = ["run", "--coordinator", "http://127.0.0.1:9", "--token-file", str(token), "--data",
           str(tmp / "data"), "--state", str(tmp / "state")]  # fmt: skip
    local = ["run-local", "--data", str(tmp / "rows.csv"), "--label-column", "y", "--schema",
             str(token), "--db", str(tmp / "state.db"), "--artifacts", str(tmp / "artifacts"),
             "--workdir", str(tmp / "work")]  # fmt: skip
    return {
        "fedge-train": {
            "unknown-flag": ([*train, "--no-such-flag"], "--no-such-flag"),
            # With a built-in task fedge-train reads no input file: its one path is OUT, here
            # below a regular file.
            "missing-input": (
                ["--task=digits", "--epochs=1", f"--out={blocker / 'out'}"],
                str(blocker / "out"),
            ),
            "flag-prefix": (
                [*train, "--data-frac", "0.5"],
                "unrecognized arguments: --data-frac 0.5",
            ),
        },
        "fedge-quantize": {
            "unknown-flag": ([*convert, "--no-such-flag"], "--no-such-flag"),
            "missing-input": (convert, str(tmp / "model")),
            "flag-prefix": (
                [*convert, "--test-frac", "0.2"],
                "unrecognized arguments: --test-frac",
            ),
        },
        "fedge-coordinator": {
            "unknown-flag": ([*serve, "--no-such-flag"], "--no-such-flag"),
            "missing-input": (serve, str(tmp / "bundle")),
            "flag-prefix": ([*serve, "--learn", "0.1"], "unrecognized arguments: --learn 0.1"),
        },
        "fedge-edge": {
            "unknown-flag": ([*run, "--no-such-flag"], "--no-such-flag"),
            "missing-input": (
                ["predict", "--bundle", str(tmp / "bundle"), "--input", str(tmp / "rows.csv")],
                str(tmp / "rows.csv"),
            ),
            "flag-prefix": ([*run, "--holdout", "0.1"], "unrecognized arguments: --holdout 0.1"),
        },
        "fedge-pipeline": {
            "unknown-flag": ([*local, "--no-such-flag"], "--no-such-flag"),
            "missing-input": (local, str(tmp / "rows.csv")),
            "flag-prefix": ([*local, "--epoch", "1"], "unrecognized arguments: --epoch 1"),
        },
    }


@pytest.mark.parametrize("case", ["unknown-flag", "missing-input", "flag-prefix"])
@pytest.mark.parametrize("prog", sorted(TOOLS))
def test_a_bad_command_line_exits_2_with_one_error_line(
    prog: str, case: str, tmp_path: Path
) -> None:
    args, named = _bad_command_lines(tmp_path)[prog][case]
    before = sorted(tmp_path.rglob("*"))

    result = _run(TOOLS[prog], *args)

    assert result.returncode == ExitCode.USAGE, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: ")
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert "usage:" not in result.stderr
    assert result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before  # nothing created: no out, no database


@pytest.mark.parametrize("prog", sorted(TOOLS))
def test_version_prints_the_package_version(prog: str) -> None:
    result = _run(TOOLS[prog], "--version")
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout == f"{prog} {tool_version()}\n"
    assert result.stderr == ""


# 2. SIGINT in the middle of a long run: 130, no process, no partial output ----------------


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextlib.contextmanager
def _started(command: list[str], workdir: Path) -> Iterator[Started]:
    """``command`` with stdout/stderr in files (a full pipe cannot stall it); killed with its
    descendants if the test leaves it running."""
    workdir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / "stderr.log"
    with open(workdir / "stdout.log", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, cwd=REPO_ROOT, env=_env(), start_new_session=True
        )
    started = Started(process, stderr_path)
    try:
        yield started
    finally:
        if process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
            process.kill()
            process.wait(timeout=30)


def _wait_until(started: Started, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        code = started.process.poll()
        assert code is None, f"exited with {code} before {what}:\n{started.stderr()}"
        assert time.monotonic() < deadline, f"no sign of {what}:\n{started.stderr()}"
        time.sleep(0.02)


def _stop(started: Started, signum: int) -> tuple[int, list[psutil.Process]]:
    """Send ``signum``; (exit code, the descendants it had just before)."""
    family = psutil.Process(started.process.pid).children(recursive=True)
    started.process.send_signal(signum)
    return started.process.wait(timeout=STOP_TIMEOUT_S), family


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _assert_interrupted(prog: str, started: Started, code: int) -> None:
    assert code == ExitCode.INTERRUPTED, started.stderr()
    assert started.stderr().splitlines()[-1] == f"{prog}: error: interrupted"
    assert "Traceback" not in started.stderr()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_training_leaves_no_output_but_sigterm_keeps_the_resume_state(
    signum: int, tmp_path: Path, no_leftover_children: None
) -> None:
    out = tmp_path / "runs" / "digits"
    command = TRAIN.command("--task=digits", "--epochs=100000", "--data-fraction=0.2",
                            "--batch-size=64", f"--out={out}", "-q")  # fmt: skip
    with _started(command, tmp_path / "logs") as run:
        # Epoch 2's checkpoint: epoch 1 is complete, its backup (written last) included.
        _wait_until(run, (out / "checkpoints" / "epoch-002.index").exists, "two epochs")
        code, family = _stop(run, signum)
    _assert_interrupted("fedge-train", run, code)
    assert _alive(family) == []
    if signum == signal.SIGINT:  # Ctrl-C: the run is cancelled
        assert not (tmp_path / "runs").exists()  # OUT and the parent the run created
    else:  # a supervisor's stop (preemption): the same command resumes from OUT/backup
        assert (out / "backup").is_dir()
        assert not (out / "training_record.json").exists()


def test_sigint_stops_a_conversion_and_leaves_no_output(
    tiny_digits_export: Path, tmp_path: Path, no_leftover_children: None
) -> None:
    out = tmp_path / "converted" / "int8"
    command = QUANTIZE.command(str(tiny_digits_export), "--mode", "int8", "--out", str(out))
    with _started(command, tmp_path / "logs") as run:

        def converting() -> bool:  # the hidden staging directory beside OUT exists
            return any(out.parent.glob(f".{out.name}.partial-*")) if out.parent.exists() else False

        _wait_until(run, converting, "the conversion")
        code, family = _stop(run, signal.SIGINT)
    _assert_interrupted("fedge-quantize", run, code)
    assert _alive(family) == []
    assert not (tmp_path / "converted").exists()  # no staging dir, no OUT, no parent


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.OK)],
    ids=["SIGINT", "SIGTERM"],
)
def test_coordinator_serve_stops_gracefully_and_closes_its_port(
    signum: int, expected: ExitCode, tmp_path: Path, no_leftover_children: None
) -> None:
    from coordinator.client import is_healthy

    make_bundle(tmp_path / "bundle")
    port = _free_port()
    command = COORDINATOR.command(
        "serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"),
        "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port),
        "--admin-token-file", str(write_admin_token(tmp_path)), "--tick-seconds", "0.2",
        "--open-enrollment",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with _started(command, tmp_path / "logs") as server:
        _wait_until(server, lambda: is_healthy(url), "/healthz answering")
        code, family = _stop(server, signum)
    if signum == signal.SIGINT:
        _assert_interrupted("fedge-coordinator", server, code)
    else:
        assert code == expected, server.stderr()
        assert "error" not in server.stderr().splitlines()[-1]
    assert "fedge coordinator stopped" in server.stderr()
    assert _alive(family) == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.OK)],
    ids=["SIGINT", "SIGTERM"],
)
def test_edge_daemon_stops_gracefully_and_records_it(
    signum: int, expected: ExitCode, tmp_path: Path, no_leftover_children: None
) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    (tmp_path / "data").mkdir()
    state = tmp_path / "state"
    # Nothing listens there: the daemon backs off, and a signal must end the wait at once.
    command = EDGE.command("run", "--coordinator", f"http://127.0.0.1:{_free_port()}",
                           "--token-file", str(token), "--data", str(tmp_path / "data"),
                           "--state", str(state), "--backoff-base", "0.2", "--backoff-cap",
                           "1", "--timeout", "2")  # fmt: skip
    with _started(command, tmp_path / "logs") as daemon:

        def running() -> bool:
            with contextlib.suppress(OSError, ValueError):
                status = json.loads((state / "status.json").read_text())
                return bool(status.get("state") == "running")
            return False

        _wait_until(daemon, running, "the daemon running")
        code, family = _stop(daemon, signum)
    if signum == signal.SIGINT:
        _assert_interrupted("fedge-edge", daemon, code)
    else:
        assert code == expected, daemon.stderr()
    assert f"received {signal.Signals(signum).name}" in daemon.stderr()
    assert json.loads((state / "status.json").read_text())["state"] == "stopped"
    assert _alive(family) == []
