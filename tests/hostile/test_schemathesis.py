"""Schemathesis against the live OpenAPI document of a real coordinator: every operation,
with generated valid and invalid inputs, answers no 5xx and nothing the document does not
describe (status, content type, headers, body schema), refuses invalid input with a 4xx and
refuses a missing or wrong token.

Each operation is called with the token its ``security`` names (admin, a registered device,
enrollment: :mod:`tests.support.schemathesis_hooks`). The command and schemathesis' summary
line are printed, so a CI log shows them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support import REPO_ROOT
from tests.support.coordinator import ADMIN_TOKEN, HTTP_TIMEOUT, ServerProcess, bearer

pytestmark = pytest.mark.timeout(240)

StartServer = Callable[..., ServerProcess]
ENROLLMENT_TOKEN = "enroll-" + "5a" * 16
MAX_EXAMPLES = 50
_SUMMARY = re.compile(r"^=+ (?P<summary>.*\bin [0-9.]+s) =+$", re.MULTILINE)


def _schemathesis_command(url: str) -> list[str]:
    return [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/v1/openapi.json",
        "--checks", "all",
        "--experimental", "openapi-3.1",
        "--hypothesis-max-examples", str(MAX_EXAMPLES),
        "--hypothesis-derandomize",
        "--request-timeout", "10000",
        "--no-color",
    ]  # fmt: skip


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    serve: StartServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "enrollment-token"
    token_file.write_text(ENROLLMENT_TOKEN + "\n")
    server = serve("--enrollment-token-file", str(token_file), "--on-demand")
    registered = requests.post(
        f"{server.url}/v1/clients",
        json={"region": "north"},
        headers=bearer(ENROLLMENT_TOKEN),
        timeout=HTTP_TIMEOUT,
    )
    assert registered.status_code == 201, registered.text
    command = _schemathesis_command(server.url)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "FEDGE_ST_ADMIN_TOKEN": ADMIN_TOKEN,
        "FEDGE_ST_CLIENT_TOKEN": registered.json()["token"],
        "FEDGE_ST_ENROLLMENT_TOKEN": ENROLLMENT_TOKEN,
    }
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=200, check=False
    )
    output = result.stdout + result.stderr
    found = _SUMMARY.findall(output)
    summary = found[-1] if found else "(no summary line)"
    print("$", shlex.join(["st", *command[3:]]))
    failures = sum(int(n) for n in re.findall(r"(\d+) failed", summary))
    errors = sum(int(n) for n in re.findall(r"(\d+) errored", summary))
    print(f"schemathesis: {summary} ({errors} errors, {failures} failures)")
    assert result.returncode == 0, output[-6000:]
    assert "passed" in summary
    assert (errors, failures) == (0, 0), output[-6000:]
    assert not re.search(r"\b(failed|errored)\b", summary), output[-6000:]
    # Nothing it sent took the server down.
    assert requests.get(f"{server.url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200
    assert server.coordinator.alive()
