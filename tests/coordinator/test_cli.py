"""fedge-coordinator: admin commands in direct (database) mode, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.cli import _round_config, build_parser, main
from tests.support.coordinator import REPO_ROOT, build_service, make_bundle, submission


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A database with v1 and a committed round 1 (v2 candidate, on-demand rounds)."""
    service = build_service(tmp_path, continuous=False, auto_promote=False, min_clients=2,
                            clients_per_round=2)  # fmt: skip
    for _ in range(2):
        service.register_client(region="north")
    round_ = service.open_round()
    for i, client_id in enumerate(round_.selected):
        client = service.store.get_client(client_id)
        assert client is not None
        service.submit_update(client, submission(1, client_id, seed=i))
    service.store.close()
    return tmp_path


def _direct(workdir: Path) -> list[str]:
    return ["--db", str(workdir / "state.db"), "--artifacts", str(workdir / "artifacts")]


def test_models_list_json(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", *_direct(workdir), "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [(m["version"], m["stage"], m["parent"]) for m in models] == [
        ("v1", "production", None),
        ("v2", "candidate", "v1"),
    ]


def test_models_list_table(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", *_direct(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["version", "stage", "parent", "round_id", "participants",
                                "created_at"]  # fmt: skip
    assert lines[2].split()[:5] == ["v2", "candidate", "v1", "1", "2"]


def test_promote_and_rollback_in_direct_mode(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "promote", "v2", *_direct(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stage"] == "production"
    assert main(["models", "show", "current", *_direct(workdir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"
    assert main(["models", "rollback", *_direct(workdir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "v1"
    assert [e["kind"] for e in shown["events"]] == ["registered", "promoted", "rolled_back"]


def test_rounds_list_and_show(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rounds", "list", *_direct(workdir), "--json"]) == 0
    (round_,) = json.loads(capsys.readouterr().out)
    assert (round_["round_id"], round_["state"], round_["num_updates"]) == (1, "committed", 2)
    assert main(["rounds", "show", "1", *_direct(workdir)]) == 0
    out = capsys.readouterr().out
    assert "state: committed" in out
    assert "result_version: v2" in out


def test_missing_model_fails_with_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "show", "v9", *_direct(workdir)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "fedge-coordinator: error: no model version 'v9'"


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["models", "list"], "give --server URL, or --db and --artifacts"),
        (["models", "list", "--server", "http://x", "--db", "d"], "either --server"),
        (["models", "list", "--server", "http://127.0.0.1:9"], "needs --admin-token-file"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str],
    phrase: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDGE_ADMIN_TOKEN", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err
    assert len(err.strip().splitlines()) == 1


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "frobnicate"]) == 2
    assert main(["serve", "--task", "taxi"]) == 2
    assert "required" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    assert "--clients-per-round" in capsys.readouterr().out


def test_unreachable_server_fails_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("admin-" + "z" * 20)
    argv = ["models", "list", "--server", "http://127.0.0.1:9", "--admin-token-file", str(token)]
    assert main(argv) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_serve_refuses_a_tampered_bundle_with_exit_2(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    (tmp_path / "bundle" / "inference.tflite").write_bytes(b"tampered")
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--task", "taxi", "--bundle",
         str(tmp_path / "bundle"), "--db", str(tmp_path / "db"), "--artifacts",
         str(tmp_path / "a"), "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "fedge-coordinator: error: bundle file 'inference.tflite' is 8 bytes" in result.stderr


def test_serve_refuses_an_invalid_round_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "bundle")
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "db"), "--artifacts", str(tmp_path / "a"), "--min-clients", "5",
            "--clients-per-round", "2"]  # fmt: skip
    assert main(argv) == 2
    assert "clients_per_round (2) must be >= min_clients (5)" in capsys.readouterr().err


def test_round_config_file_with_unknown_keys_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "bundle")
    (tmp_path / "rounds.json").write_text('{"clients_per_round": 4, "epochz": 2}')
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "db"), "--artifacts", str(tmp_path / "a"), "--round-config",
            str(tmp_path / "rounds.json")]  # fmt: skip
    assert main(argv) == 2
    assert "unknown round config keys ['epochz']" in capsys.readouterr().err


def test_task_options_merge_the_round_config_file_and_parse_their_values(
    tmp_path: Path,
) -> None:
    (tmp_path / "rounds.json").write_text('{"task_options": {"shuffle_seed": 1, "mu": 0.5}}')
    argv = ["serve", "--task", "taxi", "--bundle", "b", "--db", "d", "--artifacts", "a",
            "--round-config", str(tmp_path / "rounds.json"), "--task-option", "shuffle_seed=7",
            "--task-option", "proximal=true", "--task-option", "mode=fast",
            "--task-option", "lr_scale=1e-2"]  # fmt: skip
    config = _round_config(build_parser().parse_args(argv))
    assert dict(config.task_options) == {
        "shuffle_seed": 7, "mu": 0.5, "proximal": True, "mode": "fast", "lr_scale": 0.01,
    }  # fmt: skip
    assert isinstance(config.task_options["shuffle_seed"], int)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("shuffle_seed", "expected KEY=VALUE"),
        ("bad key=1", "invalid task_options"),
        ("drift=nan", "invalid task_options"),
    ],
)
def test_invalid_task_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    make_bundle(tmp_path / "bundle")
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), "--db",
            str(tmp_path / "db"), "--artifacts", str(tmp_path / "a"),
            "--task-option", option]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
