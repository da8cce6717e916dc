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
                                "epsilon", "created_at", "signing_key_id"]  # fmt: skip
    # v1 is an imported bundle (public data: epsilon 0); v2's round had no DP.
    assert lines[1].split()[:6] == ["v1", "production", "None", "None", "None", "0"]
    assert lines[2].split()[:6] == ["v2", "candidate", "v1", "1", "2", "none"]
    # the key that signed each version's manifest (16 hex digits)
    assert all(len(line.split()[-1]) == 16 for line in lines[1:3])


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
        (["models", "list"], "give --coordinator URL, or --db and --artifacts"),
        (["models", "list", "--coordinator", "http://x", "--db", "d"], "either --coordinator"),
        (["models", "list", "--coordinator", "http://127.0.0.1:9"], "needs --admin-token-file"),
        (["models", "list", "--server", "http://127.0.0.1:9"], "unrecognized arguments"),
        (["models", "list", "--coord", "http://127.0.0.1:9"], "unrecognized arguments"),
        (["models", "list", "--log-level", "DEBUG"], "unrecognized arguments"),
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


def test_argparse_errors_exit_2_with_one_line_and_no_usage_block(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "frobnicate"]) == 2
    assert main(["serve", "--task", "taxi"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("fedge-coordinator: error: ") for line in lines)
    assert "invalid choice: 'frobnicate'" in lines[0]
    assert "required" in lines[1]
    assert "(see 'fedge-coordinator serve --help')" in lines[1]


@pytest.mark.parametrize("verb", [["models", "list"], ["models", "show", "v1"],
                                  ["rounds", "list"], ["models", "rollback"]])  # fmt: skip
def test_admin_commands_refuse_a_database_that_does_not_exist(
    tmp_path: Path, verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "artifacts").mkdir()
    typo = tmp_path / "sate.db"
    argv = [*verb, "--db", str(typo), "--artifacts", str(tmp_path / "artifacts")]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fedge-coordinator: error: --db {typo}: no such database file (admin commands never "
        "create one; serve does)"
    ]
    assert list(tmp_path.iterdir()) == [tmp_path / "artifacts"]


def test_admin_commands_refuse_a_missing_artifact_directory(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["models", "list", "--db", str(workdir / "state.db"), "--artifacts",
            str(workdir / "artefacts")]  # fmt: skip
    assert main(argv) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (workdir / "artefacts").exists()


@pytest.mark.parametrize("command", ["serve", "models"])
def test_a_db_that_is_not_sqlite_fails_with_exit_1_without_traceback(
    tmp_path: Path, command: str
) -> None:
    make_bundle(tmp_path / "bundle")
    (tmp_path / "artifacts").mkdir()
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("these are notes, not a database\n" * 10)
    where = ["--db", str(not_sqlite), "--artifacts", str(tmp_path / "artifacts")]
    if command == "serve":
        argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"), *where,
                "--port", "0", "--open-enrollment"]  # fmt: skip
    else:
        argv = ["models", "list", *where]
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *argv],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"fedge-coordinator: error: cannot read the state database {not_sqlite}: "
        "file is not a database"
    ]
    assert not_sqlite.read_text() == "these are notes, not a database\n" * 10


def test_serve_refuses_a_missing_bundle_before_creating_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "no-bundle"), "--db",
            str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "a")]  # fmt: skip
    assert main(argv) == 2
    assert "is not a bundle directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_exits_0_and_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--clients-per-round" in out
    assert "SIGTERM (the normal stop\nof a service) then exits 0; SIGINT (Ctrl-C) exits 130" in out
    for argv in ([], ["models"], ["models", "list"], ["rounds", "show"]):
        assert main([*argv, "--help"]) == 0
        out = capsys.readouterr().out
        assert "\n  130  interrupted" in out
    assert "--coordinator URL" in out


def test_unreachable_server_fails_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("admin-" + "z" * 20)
    argv = ["models", "list", "--coordinator", "http://127.0.0.1:9", "--admin-token-file",
            str(token)]  # fmt: skip
    assert main(argv) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_serve_refuses_a_tampered_bundle_with_exit_2(tmp_path: Path) -> None:
    make_bundle(tmp_path / "bundle")
    (tmp_path / "bundle" / "inference.tflite").write_bytes(b"tampered")
    result = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--task", "taxi", "--bundle",
         str(tmp_path / "bundle"), "--db", str(tmp_path / "db"), "--artifacts",
         str(tmp_path / "a"), "--port", "0", "--open-enrollment"],
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


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--port", "99999", "--port must be an integer <= 65535"),
        ("--threads", "0", "--threads must be an integer >= 1"),
        ("--tick-seconds", "0", "--tick-seconds must be > 0"),
        ("--ui-behind-seconds", "0", "--ui-behind-seconds must be > 0"),
        ("--seed", "-1", "--seed must be an integer >= 0"),
        ("--host", "no such host.invalid", "--host 'no such host.invalid' is not an address"),
    ],
)
def test_serve_refuses_what_the_server_cannot_use_before_creating_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    make_bundle(tmp_path / "bundle")
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"),
            "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "a"),
            flag, value]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"fedge-coordinator: error: {message}")
    assert not (tmp_path / "state.db").exists()


def test_serve_without_an_enrollment_token_or_open_enrollment_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDGE_ENROLLMENT_TOKEN", raising=False)
    make_bundle(tmp_path / "bundle")
    argv = ["serve", "--task", "taxi", "--bundle", str(tmp_path / "bundle"),
            "--db", str(tmp_path / "state.db"), "--artifacts", str(tmp_path / "a")]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "fedge-coordinator: error: serve needs --enrollment-token-file "
        "(or $FEDGE_ENROLLMENT_TOKEN), or --open-enrollment to let anyone register"
    ]
    assert not (tmp_path / "state.db").exists()
