"""Run :data:`pipelines.steps.STEPS` in order on this machine, each step one process.

A step runs ``python -m MODULE ARGS`` (the tool its console script starts, with the
arguments the Kubeflow step gets); its output and errors go to ``WORKDIR/logs/STEP.log``,
its outputs to ``WORKDIR/STEP/NAME``. The first step that fails stops the run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedge import processes
from pipelines.steps import STEPS, Input, Output, Param, Step

__all__ = ["StepResult", "local_command", "run_local"]

_POLL_S = 0.1


@dataclass(frozen=True)
class StepResult:
    """One step's process: its command, exit status, duration and log."""

    name: str
    command: tuple[str, ...]
    returncode: int
    seconds: float
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])


def _output_path(workdir: Path, step: str, name: str) -> Path:
    return workdir / step / name


def local_command(step: Step, values: Mapping[str, str | int], workdir: Path) -> list[str]:
    """The arguments of ``step`` with parameters, inputs and outputs filled in."""
    args: list[str] = []
    for token in step.args:
        if isinstance(token, Param):
            args.append(str(values[token.name]))
        elif isinstance(token, Input):
            path = _output_path(workdir, token.step, token.name)
            args.append(path.read_text(encoding="utf-8").strip() if token.value else str(path))
        elif isinstance(token, Output):
            args.append(str(_output_path(workdir, step.name, token.name)))
        else:
            args.append(token)
    return args


def run_local(
    values: Mapping[str, str | int],
    workdir: Path,
    *,
    report: Callable[[str], None] = print,
) -> list[StepResult]:
    """Run every step in order; returns the results up to the first that failed."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    results: list[StepResult] = []
    for number, step in enumerate(STEPS, start=1):
        (workdir / step.name).mkdir(exist_ok=True)
        args = local_command(step, values, workdir)
        report(f"[{number}/{len(STEPS)}] {step.name}: {step.program} {' '.join(args)}")
        log = workdir / "logs" / f"{step.name}.log"
        command = (sys.executable, "-m", step.module, *args)
        started = time.monotonic()
        child = processes.start(command, name=step.name, env=env, log_path=log)
        try:
            while child.returncode is None:
                time.sleep(_POLL_S)
        finally:
            processes.stop([child])
        code = child.popen.returncode
        result = StepResult(step.name, command, code, time.monotonic() - started, log)
        results.append(result)
        report(f"[{number}/{len(STEPS)}] {step.name}: {'ok' if code == 0 else 'FAILED'} "
               f"(exit {code}, {result.seconds:.1f} s)")  # fmt: skip
        if code != 0:
            break
    return results
