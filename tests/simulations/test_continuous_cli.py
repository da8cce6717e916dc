"""``fedge-simulate continuous``: the continuous simulation from the command line, in a fresh
interpreter, on the session's pretrained digits model: six rounds on six clients, a third of
them corrupted from round 3, with the quarantine and the cloud holdout gate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from simulations.pretrain import Pretrained
from tests.support.simulation import CliRunner

FLEET = ["--rounds", "6", "--clients", "6"]  # all 6 per round: the default, at most --clients
SCHEDULE = ["--corrupt-fraction", "0.34", "--corrupt-from-round", "3", "--gate"]


@pytest.fixture(scope="module")
def continuous_json(
    fedge_simulate: CliRunner, sim_cache: Path, digits_pretrained: Pretrained
) -> dict[str, Any]:
    result = fedge_simulate(
        ["continuous", *FLEET, *SCHEDULE, "--cache-dir", str(sim_cache), "--json"]
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_corrupted_clients_are_quarantined_from_the_corruption_round_only(
    continuous_json: dict[str, Any],
) -> None:
    document = continuous_json
    rounds = document["rounds"]
    assert [r["round_id"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    corrupted = set(document["corrupted"])
    assert len(corrupted) == 2  # round(0.34 * 6)
    for outcome in rounds:
        if outcome["round_id"] < 3:
            assert outcome["quarantined"] == [], outcome
        else:
            assert set(outcome["quarantined"]) == corrupted, outcome
    quarantined = document["quarantined"]
    assert {q["client"] for q in quarantined} == corrupted
    assert all(q["round"] >= 3 for q in quarantined)
    assert all(q["reason"].startswith("anomalies in pixels: ") for q in quarantined)
    assert document["summary"]["quarantined"] == len(quarantined) == 8


def test_no_promoted_version_is_worse_than_its_parent(continuous_json: dict[str, Any]) -> None:
    models = {m["version"]: m for m in continuous_json["models"]}
    promoted = [m for m in models.values() if m["stage"] != "rejected" and m["parent"]]
    rejected = [m for m in models.values() if m["stage"] == "rejected"]
    summary = continuous_json["summary"]
    assert promoted
    assert summary["promoted"] == len(promoted)
    assert summary["rejected"] == len(rejected)
    for model in promoted:
        parent = models[model["parent"]]
        assert model["holdout_accuracy"] >= parent["holdout_accuracy"], model
    failed = [r for r in continuous_json["rounds"] if r["state"] == "failed"]
    assert {r["version"] for r in failed} == {m["version"] for m in rejected}
    for outcome in failed:
        assert outcome["failure_reason"].startswith(f"the gate rejected {outcome['version']}: ")
        assert outcome["production"] not in {m["version"] for m in rejected}
        accuracy = models[outcome["production"]]["holdout_accuracy"]
        assert outcome["production_accuracy"] == pytest.approx(accuracy)


def test_the_text_output_shows_each_round_as_it_closes_and_a_summary(
    fedge_simulate: CliRunner, sim_cache: Path, digits_pretrained: Pretrained
) -> None:
    result = fedge_simulate(["continuous", *FLEET, *SCHEDULE, "--cache-dir", str(sim_cache)])
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "round " in line]
    assert [line.split(":")[1].strip() for line in progress] == [
        f"round {i}/6" for i in range(1, 7)
    ]
    assert progress[0].startswith("fedge-simulate: round 1/6: committed v2; quarantined: none;")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("round 1/6: committed v2; quarantined: none; production v2")
    assert "quarantined updates:" in lines
    (summary,) = [line for line in lines if line.startswith("summary: ")]
    assert " promoted, " in summary
    assert " rejected, 8 quarantined (6 rounds, " in summary


def _usage_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedge-simulate: error: ")
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gate-margin", "0.01"], "--gate-margin needs --gate"),
        (["--shift-from-round", "2"], "--shift-from-round needs --shift-region"),
        (
            ["--corrupt-fraction", "0", "--corrupt-from-round", "2"],
            "--corrupt-from-round needs a --corrupt-fraction above 0",
        ),
        (
            ["--rounds", "6", "--corrupt-from-round", "8"],
            "--corrupt-from-round 8 is after the last round (6, --rounds)",
        ),
        (["--shift-region", "east"], "shift_region 'east' is not one of ('north', 'south')"),
        (["--clients", "6", "--per-round", "7"], "clients_per_round must be an integer"),
        (["--per-round", "7", "--clients", "6"], "(--per-round)"),
        (["--corrupt-fraction", "1.5"], "(--corrupt-fraction)"),
        (["--rounds", "3", "--json", "--bogus"], "unrecognized arguments: --bogus"),
        (["--round", "3"], "unrecognized arguments: --round 3"),
    ],
)
def test_a_bad_command_line_is_one_error_line_and_exit_2(
    fedge_simulate: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    line = _usage_error(
        fedge_simulate(["continuous", *args, "--cache-dir", str(tmp_path / "cache")], timeout=60)
    )
    assert message in line
    assert not (tmp_path / "cache").exists()  # refused before any pretraining


def test_help_names_the_continuous_command(fedge_simulate: CliRunner) -> None:
    top = fedge_simulate(["--help"], timeout=60)
    assert top.returncode == 0
    assert "fedge-simulate continuous [options]" in top.stdout
    sub = fedge_simulate(["continuous", "--help"], timeout=60)
    assert sub.returncode == 0
    assert sub.stdout.startswith("usage: fedge-simulate continuous ")
    for flag in ("--corrupt-from-round", "--shift-region", "--gate-margin", "--json"):
        assert flag in sub.stdout
