"""The command-line contract of ``fedge-simulate`` and ``python -m simulations.demo``.

Each runs in a fresh interpreter: a bad command line or input path exits 2 with exactly
one ``prog: error:`` line and no traceback, before any work; ``--version`` prints the
version; and SIGINT in the middle of a run exits 130 after a clean stop, leaving no
process (fleet workers, TFF's ``worker_binary``, the demo's coordinator and daemons) and
no output directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
import pytest

from fedge.cli import tool_version
from tests.support import REPO_ROOT

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"
)

SIMULATE = ("fedge-simulate", [sys.executable, "-m", "simulations.cli"])
DEMO = ("python -m simulations.demo", [sys.executable, "-m", "simulations.demo"])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(command: Sequence[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=_env(),
        check=False,
    )


def _assert_usage_error(result: subprocess.CompletedProcess[str], prog: str, text: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: ")
    assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize(("prog", "command"), [SIMULATE, DEMO], ids=["simulate", "demo"])
def test_unknown_flag_exits_2_with_one_line(prog: str, command: list[str], tmp_path: Path) -> None:
    result = _run(command, "--bogus", "--out", str(tmp_path / "out"))
    _assert_usage_error(result, prog, "unrecognized arguments: --bogus")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("prog", "command", "prefix"),
    [(*SIMULATE, "--learning"), (*DEMO, "--pretrain-epoch")],
    ids=["simulate", "demo"],
)
def test_prefix_of_a_longer_flag_exits_2(
    prog: str, command: list[str], prefix: str, tmp_path: Path
) -> None:
    result = _run(command, prefix, "3", "--out", str(tmp_path / "out"))
    _assert_usage_error(result, prog, f"unrecognized arguments: {prefix} 3")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("--partition-file", "partition file"),
        ("--schedule-file", "schedule file"),
        ("--init", "init file"),
        ("--data", "data file"),
    ],
)
def test_simulate_missing_input_file_exits_2_before_any_work(
    flag: str, name: str, tmp_path: Path
) -> None:
    args = ["--model", str(tmp_path / "model.keras")] if flag == "--data" else []
    result = _run(SIMULATE[1], flag, "/nope", *args, "--out", str(tmp_path / "out"))
    _assert_usage_error(result, SIMULATE[0], f"{name} /nope")
    assert result.stderr.strip().endswith(
        f"({flag})"
    )  # the library names the file, the CLI its flag
    assert not (tmp_path / "out").exists()


def test_every_setting_a_message_can_name_has_its_flag() -> None:
    from simulations.cli import build_parser, setting_flag
    from simulations.settings import Settings

    options = {o for action in build_parser()._actions for o in action.option_strings}
    fields = set(Settings.__dataclass_fields__) - {"state_dir"}  # not on the command line
    assert {f: setting_flag(f) for f in fields if setting_flag(f) not in options} == {}


def test_a_bad_setting_exits_2_naming_the_setting_and_its_flag(tmp_path: Path) -> None:
    result = _run(SIMULATE[1], "--per-round", "0", "--out", str(tmp_path / "out"))
    _assert_usage_error(
        result, SIMULATE[0], "per_round must be an integer >= 1, got 0 (--per-round)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("prog", "command"), [SIMULATE, DEMO], ids=["simulate", "demo"])
def test_output_under_a_file_exits_2_before_any_work(
    prog: str, command: list[str], a_file: Path
) -> None:
    started = time.monotonic()
    result = _run(command, "--out", str(a_file / "out"))
    _assert_usage_error(result, prog, f"{a_file} exists and is not a directory")
    assert time.monotonic() - started < 60  # refused before pretraining
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "name"),
    [(SIMULATE[1], "fedge-simulate"), (DEMO[1], "fedge demo")],
    ids=["simulate", "demo"],
)
def test_version_prints_the_version(command: list[str], name: str) -> None:
    result = _run(command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{name} {tool_version()}"


# SIGINT in the middle of a run ---------------------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def _command_line(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _interrupt_when(
    command: Sequence[str], ready: Callable[[list[psutil.Process]], bool], tmp_path: Path
) -> tuple[int, str, list[psutil.Process]]:
    """Start ``command``, wait until its descendants satisfy ``ready``, SIGINT it; returns
    its exit code, its stderr and every descendant it had when interrupted."""
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=err, cwd=REPO_ROOT, env=_env(),
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        seen: list[psutil.Process] = []
        while not ready(seen):
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "the run never reached the point to interrupt"
            time.sleep(0.2)
            seen = _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return code, (tmp_path / "stderr").read_text(), seen


def _assert_clean_interrupt(
    code: int, stderr: str, seen: list[psutil.Process], prog: str, out: Path
) -> None:
    try:
        assert code == 130, stderr
        assert stderr.strip().splitlines()[-1] == f"{prog}: error: interrupted", stderr
        assert "Traceback" not in stderr
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [_command_line(p) for p in seen if _alive(p)] == []
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    finally:
        for process in seen:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.slow
def test_simulate_interrupted_mid_run_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"  # the default cache goes in it: created by the run, then removed
    command = [
        *SIMULATE[1], "--task", "digits", "--clients", "4", "--rounds", "200",
        "--workers", "2", "--no-baseline", "--quiet", "--out", str(out),
    ]  # fmt: skip

    def workers_running(seen: list[psutil.Process]) -> bool:
        return sum("simulations.fleet" in _command_line(p) for p in seen) == 2

    code, stderr, seen = _interrupt_when(command, workers_running, tmp_path)
    _assert_clean_interrupt(code, stderr, seen, SIMULATE[0], out)


@pytest.mark.slow
def test_simulate_tff_interrupted_mid_run_stops_worker_binary(
    tmp_path: Path, sim_cache: Path, digits_pretrained: object
) -> None:
    out = tmp_path / "out"
    command = [
        *SIMULATE[1], "--task", "digits", "--clients", "4", "--rounds", "200",
        "--engine", "tff", "--no-baseline", "--quiet", "--cache-dir", str(sim_cache),
        "--out", str(out),
    ]  # fmt: skip

    def tff_running(seen: list[psutil.Process]) -> bool:
        return any("worker_binary" in _command_line(p) for p in seen)

    code, stderr, seen = _interrupt_when(command, tff_running, tmp_path)
    _assert_clean_interrupt(code, stderr, seen, SIMULATE[0], out)


@pytest.mark.slow
def test_demo_interrupted_mid_run_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo-output"
    command = [
        *DEMO[1], "--devices", "2", "--rounds", "200", "--pretrain-epochs", "2",
        "--no-evaluate", "--no-secure-aggregation", "--quiet", "--out", str(out),
    ]  # fmt: skip

    def daemons_running(seen: list[psutil.Process]) -> bool:
        lines = [_command_line(p) for p in seen]
        daemons = [line for line in lines if " run " in line and "--coordinator" in line]
        return len(daemons) == 2 and any(" serve " in line for line in lines)

    code, stderr, seen = _interrupt_when(command, daemons_running, tmp_path)
    _assert_clean_interrupt(code, stderr, seen, DEMO[0], out)
