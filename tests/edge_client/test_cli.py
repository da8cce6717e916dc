"""``fedge-edge``: register, predict and status, their output and exit codes (0/1/2)."""

from __future__ import annotations

import json
import shutil
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edge_client.cli import main
from edge_client.model import EdgeModel
from edge_client.personalize import FileHeadStore, PersonalizationConfig, fine_tune
from edge_client.state import ClientState
from edge_client.transport import FunctionTransport, HttpResponse
from fedge.cli import ExitCode
from fedge.data import load_taxi
from tests.support.edge import taxi_rows, write_csv

pytestmark = pytest.mark.filterwarnings(
    "ignore:non-integer arguments to randrange:DeprecationWarning"  # inside Keras' fit
)


@pytest.fixture
def query(tmp_path: Path) -> Path:
    path = tmp_path / "query.csv"
    write_csv(path, taxi_rows(1000, 25))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str, **kwargs: object) -> tuple[int, str, str]:
    code = main(list(argv), **kwargs)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["run"], ["predict"], ["status"], ["register"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, *command, "--help")
    assert code == ExitCode.OK
    assert "exit codes" in out


def test_predict_scores_every_row_with_the_int8_model(
    edge_taxi_bundle: Path, query: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "predict", "--bundle", str(edge_taxi_bundle), "--input", str(query),
                        "--json")  # fmt: skip
    assert code == ExitCode.OK
    document = json.loads(out)
    assert (document["model_version"], document["head"], document["count"]) == (
        "taxi-v1",
        "int8",
        25,
    )
    model = EdgeModel.load(edge_taxi_bundle)
    from fedge.data import read_csv_columns

    x = model.transform(read_csv_columns(query, schema=model.schema))
    expected = model.int8_logits(x).argmax(axis=1)
    assert [p["class"] for p in document["predictions"]] == expected.tolist()
    code, out, _ = _run(capsys, "predict", "--bundle", str(edge_taxi_bundle), "--input", str(query))
    assert code == ExitCode.OK
    assert len(out.splitlines()) == 26


def test_predict_uses_the_personal_head_of_the_same_version(
    edge_taxi_bundle: Path, query: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = EdgeModel.load(edge_taxi_bundle)
    taxi = load_taxi()
    head = fine_tune(
        model,
        taxi.take(np.arange(300)),
        config=PersonalizationConfig(epochs=2),
        rng=np.random.default_rng(0),
    )
    assert head is not None
    state = ClientState(tmp_path / "state")
    FileHeadStore(state.directory / "personal").put(head)
    args = ["predict", "--bundle", str(edge_taxi_bundle), "--input", str(query), "--json"]
    code, out, _ = _run(capsys, *args, "--personal-state", str(state.directory))
    assert code == ExitCode.OK
    assert json.loads(out)["head"] == "personal"
    code, out, _ = _run(capsys, *args, "--personal-state", str(state.directory), "--global")
    assert code == ExitCode.OK
    assert json.loads(out)["head"] == "int8"


def test_predict_with_a_corrupted_bundle_fails_with_one_line(
    edge_taxi_bundle: Path, query: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(edge_taxi_bundle, bundle)
    data = bytearray((bundle / "inference.tflite").read_bytes())
    data[100] ^= 0xFF
    (bundle / "inference.tflite").write_bytes(bytes(data))
    code, out, err = _run(capsys, "predict", "--bundle", str(bundle), "--input", str(query))
    assert code == ExitCode.FAILED
    assert out == ""
    assert err.count("\n") == 1
    assert "sha256" in err
    assert err.startswith("fedge-edge: error:")


def test_predict_input_errors_are_usage_errors(
    edge_taxi_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.csv"
    code, _, err = _run(
        capsys, "predict", "--bundle", str(edge_taxi_bundle), "--input", str(missing)
    )
    assert code == ExitCode.USAGE
    assert "is not a file" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("fare,company\n1.0,x\n")
    code, _, err = _run(capsys, "predict", "--bundle", str(edge_taxi_bundle), "--input", str(bad))
    assert code == ExitCode.USAGE
    assert "missing columns" in err
    code, _, err = _run(capsys, "predict", "--bundle", str(tmp_path), "--input", str(bad))
    assert code == ExitCode.USAGE
    assert "not a bundle directory" in err
    code, _, err = _run(capsys, "predict", "--state", str(tmp_path), "--input", str(bad))
    assert code == ExitCode.USAGE
    assert "holds no model yet" in err


def test_run_without_a_token_says_to_register_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "run", "--coordinator", "http://127.0.0.1:9", "--token-file",
                        str(tmp_path / "token"), "--data", str(tmp_path), "--state",
                        str(tmp_path / "state"))  # fmt: skip
    assert code == ExitCode.USAGE
    assert "register first" in err


def test_register_writes_a_private_token_and_the_client_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[dict[str, object]] = []

    def server(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        seen.append({"url": url, "body": json.loads(body or b"{}")})
        answer = {"client_id": "c-123", "token": "secret-token", "token_type": "Bearer"}
        return HttpResponse(201, {}, json.dumps(answer).encode())

    token = tmp_path / "token"
    code, out, _ = _run(capsys, "register", "--coordinator", "http://c.test", "--token-file",
                        str(token), "--state", str(tmp_path / "state"), "--region", "north",
                        "--json", transport=FunctionTransport(server))  # fmt: skip
    assert code == ExitCode.OK
    assert json.loads(out)["client_id"] == "c-123"
    assert seen == [{"url": "http://c.test/v1/clients", "body": {"region": "north"}}]
    assert token.read_text().strip() == "secret-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert ClientState(tmp_path / "state").client()["client_id"] == "c-123"
    assert "secret-token" not in out


def test_register_against_an_unreachable_coordinator_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = _run(capsys, "register", "--coordinator", f"http://127.0.0.1:{port}",
                        "--token-file", str(tmp_path / "token"))  # fmt: skip
    assert code == ExitCode.FAILED
    assert "ConnectionError" in err
    assert not (tmp_path / "token").exists()


def test_status_reports_the_state_and_a_dead_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ClientState(tmp_path)
    state.save_client(client_id="c-1", coordinator="http://c.test", registered_at=1.0)
    state.save_status({"state": "running", "pid": 2**22 + 12345, "tasks": {"train": 3}})
    code, out, _ = _run(capsys, "status", "--state", str(tmp_path), "--json")
    assert code == ExitCode.OK
    document = json.loads(out)
    assert document["client_id"] == "c-1"
    assert document["state"] == "dead"
    assert document["tasks"] == {"train": 3}
    assert document["outbox_pending"] == 0
    assert document["model_version"] is None
    code, out, _ = _run(capsys, "status", "--state", str(tmp_path))
    assert code == ExitCode.OK
    assert "client_id: c-1" in out
    code, _, _err = _run(capsys, "status", "--state", str(tmp_path / "nope"))
    assert code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--holdout-fraction", "1.5", "--holdout-fraction must be < 1"),
        ("--seed", "-1", "--seed must be an integer >= 0"),
        ("--settle-seconds", "-1", "--settle-seconds must be >= 0"),
        ("--timeout", "0", "--timeout must be > 0"),
        ("--threads", "0", "--threads must be an integer >= 1"),
        ("--max-tasks", "0", "--max-tasks must be an integer >= 1"),
    ],
)
def test_run_refuses_bad_numbers_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    code, _, err = _run(capsys, "run", "--coordinator", "http://127.0.0.1:9", "--token-file",
                        str(token), "--data", str(tmp_path), "--state", str(tmp_path / "state"),
                        flag, value)  # fmt: skip
    assert code == ExitCode.USAGE
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"fedge-edge: error: {message}")
    assert not (tmp_path / "state").exists()
