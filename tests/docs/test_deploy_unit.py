"""deploy/fedge-edge.service is a unit systemd accepts, and its command is one that
`fedge-edge run` accepts with the example settings of deploy/fedge-edge.env."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from edge_client.cli import build_parser
from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _unit() -> ConfigParser:
    unit = ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "fedge-edge.service")
    return unit


def _settings() -> dict[str, str]:
    lines = (DEPLOY / "fedge-edge.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_units_command_is_a_valid_fedge_edge_run() -> None:
    service = _unit()["Service"]
    settings = _settings()
    words: list[str] = []
    for word in shlex.split(service["ExecStart"]):
        if word.startswith("${"):
            words.append(settings[word[2:-1]])
        elif word.startswith("$"):
            words.extend(shlex.split(settings[word[1:]]))
        else:
            words.append(word)
    assert words[0] == "/opt/fedge/venv/bin/fedge-edge"
    args = build_parser().parse_args(words[1:])
    assert args.command == "run"
    assert str(args.state) == "/var/lib/fedge-edge/state"
    assert str(args.token_file).startswith("/var/lib/fedge-edge/")  # rotate-token writes beside it
    assert service["StateDirectory"] == "fedge-edge"
    assert service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "fedge-edge.service").read_text()
    fedge_edge = Path(sys.executable).parent / "fedge-edge"
    unit = tmp_path / "fedge-edge.service"
    unit.write_text(text.replace("/opt/fedge/venv/bin/fedge-edge", str(fedge_edge)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # an unknown key is only a warning
