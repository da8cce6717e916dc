"""The command lines the demo runs: each fedge tool as a user would type it.

Each function returns an argument list for :class:`fedge.processes.Supervisor`; the
console script comes from :func:`tool_command`, and the tools run in
:func:`child_environment`. Secrets are never on a command line: the admin token travels in
a file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "admin_list_command",
    "bundle_command",
    "child_environment",
    "daemon_command",
    "register_command",
    "status_command",
    "tool_command",
    "train_command",
]

_SECRET_VARIABLES = ("FEDGE_ADMIN_TOKEN", "FEDGE_ENROLLMENT_TOKEN")


def tool_command(script: str, module: str) -> list[str]:
    """The command of a fedge console script: the script beside this interpreter (how a
    user runs it from the virtual environment), else ``python -m module``."""
    candidate = Path(sys.executable).parent / script
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    return [sys.executable, "-m", module]


def child_environment() -> dict[str, str]:
    """This environment for the tools, without admin or enrollment secrets (the demo passes
    its own token in a file) and with TensorFlow's native logging quiet."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(
    *,
    task: str,
    epochs: int,
    proxy_fraction: float,
    test_fraction: float,
    learning_rate: float,
    seed: int,
    out: Path,
) -> list[str]:
    """``fedge-train`` on the proxy share (``--data-fraction``), one device, no progress bar."""
    command = [
        *tool_command("fedge-train", "cloud_trainer.cli"),
        "--task", task, "--strategy", "default", "--epochs", str(epochs),
        "--data-fraction", repr(proxy_fraction), "--test-fraction", repr(test_fraction),
        "--learning-rate", repr(learning_rate), "--seed", str(seed), "--quiet", "--out", str(out),
    ]  # fmt: skip
    return command


def bundle_command(export: Path, out: Path, *, batch_size: int) -> list[str]:
    """``fedge-quantize bundle`` of a ``fedge-train`` export."""
    command = [
        *tool_command("fedge-quantize", "quantize.cli"), "bundle", str(export),
        "--out", str(out), "--batch-size", str(batch_size), "--quiet",
    ]  # fmt: skip
    return command


def register_command(
    url: str, *, token_file: Path, state: Path, enrollment_token_file: Path
) -> list[str]:
    """``fedge-edge register`` with the enrollment token; its ``--json`` answer names the
    client id."""
    command = [
        *tool_command("fedge-edge", "edge_client.cli"), "register", "--coordinator", url,
        "--token-file", str(token_file), "--state", str(state),
        "--enrollment-token-file", str(enrollment_token_file), "--json",
    ]  # fmt: skip
    return command


def daemon_command(url: str, *, token_file: Path, data: Path, state: Path, seed: int) -> list[str]:
    """``fedge-edge run``: the device daemon, one TFLite thread (several share two cores),
    short backoff (the coordinator is local), data files read as soon as they appear (the
    demo writes them atomically)."""
    command = [
        *tool_command("fedge-edge", "edge_client.cli"), "run", "--coordinator", url,
        "--token-file", str(token_file), "--data", str(data), "--state", str(state),
        "--settle-seconds", "0", "--seed", str(seed), "--threads", "1",
        "--backoff-base", "0.5", "--backoff-cap", "5",
    ]  # fmt: skip
    return command


def status_command(state: Path) -> list[str]:
    """``fedge-edge status --json`` of a device's state directory."""
    command = [
        *tool_command("fedge-edge", "edge_client.cli"), "status", "--state", str(state), "--json",
    ]  # fmt: skip
    return command


def admin_list_command(what: str, url: str, *, admin_token_file: Path) -> list[str]:
    """``fedge-coordinator models list`` or ``rounds list`` against the running server."""
    command = [
        *tool_command("fedge-coordinator", "coordinator.cli"), what, "list",
        "--coordinator", url, "--admin-token-file", str(admin_token_file), "--quiet",
    ]  # fmt: skip
    return command
