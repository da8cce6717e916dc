"""``fedge-pipeline``: the compiled Kubeflow pipeline, and the same steps run here.

The pipeline is compiled by the real command and read back with the kfp SDK (the
PipelineSpec protobuf and kfp's component loader). ``run-local`` runs on a user table from
nothing (no database, no model): every step is a process of a fedge tool, and the registered
version is production and is what a coordinator started on that database serves.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedge.cli import ExitCode
from tests.support import REPO_ROOT
from tests.support.coordinator import (
    admin_request,
    production_digest,
    running_server,
    serve_command,
    write_admin_token,
)
from tests.support.user_tables import write_user_table

STEP_NAMES = ["ingest", "validate", "train", "quantize", "register", "deploy"]
COMMANDS = {
    "ingest": ["fedge-coordinator", "data", "stats"],
    "validate": ["fedge-coordinator", "data", "anomalies"],
    "train": ["fedge-train", "--data"],
    "quantize": ["fedge-quantize", "bundle"],
    "register": ["fedge-coordinator", "models", "register"],
    "deploy": ["fedge-coordinator", "models", "promote"],
}


def _pipeline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("FEDGE_ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def _coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def test_the_compiled_pipeline_loads_with_kfp_and_names_every_step(tmp_path: Path) -> None:
    pytest.importorskip("kfp")
    from google.protobuf import json_format
    from kfp import components
    from kfp.pipeline_spec import pipeline_spec_pb2

    out = tmp_path / "pipeline.yaml"
    result = _pipeline("compile", "--out", str(out), "--image", "registry.local/fedge:1")

    assert result.returncode == ExitCode.OK, result.stderr
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(yaml.safe_load(out.read_text()), spec)
    assert spec.pipeline_info.name == "fedge-train-and-deploy"
    assert set(spec.root.input_definitions.parameters) == {
        "data", "label_column", "schema", "epochs", "db", "artifacts",
    }  # fmt: skip
    tasks = spec.root.dag.tasks
    assert sorted(tasks) == sorted(STEP_NAMES)
    for before, after in itertools.pairwise(STEP_NAMES):
        assert list(tasks[after].dependent_tasks) == [before]  # one chain, in order
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    for name in STEP_NAMES:
        container = executors[f"exec-{name}"]["container"]
        assert container["image"] == "registry.local/fedge:1"
        assert container["command"][: len(COMMANDS[name])] == COMMANDS[name]
        assert tasks[name].component_ref.name == f"comp-{name}"
    # Files pass between steps as artifacts, the version as a parameter.
    assert tasks["quantize"].inputs.artifacts["train_model"].task_output_artifact.producer_task == (
        "train"
    )
    version = tasks["deploy"].inputs.parameters["register_version"].task_output_parameter
    assert (version.producer_task, version.output_parameter_key) == ("register", "version")
    assert components.load_component_from_file(str(out)).name == "fedge-train-and-deploy"


def _table_and_schema(tmp_path: Path) -> tuple[Path, Path]:
    data, stats, schema = tmp_path / "users.csv", tmp_path / "s.pbtxt", tmp_path / "schema.pbtxt"
    write_user_table(data, rows=200)
    for args in (
        ["data", "stats", "--data", str(data), "--label-column", "churned", "--out", str(stats)],
        ["data", "infer-schema", "--stats", str(stats), "--out", str(schema)],
    ):
        assert _coordinator(*args).returncode == 0
    return data, schema


def _run_local(tmp_path: Path, data: Path, schema: Path) -> subprocess.CompletedProcess[str]:
    return _pipeline(
        "run-local", "--data", str(data), "--label-column", "churned", "--schema", str(schema),
        "--epochs", "1", "--db", str(tmp_path / "state.db"),
        "--artifacts", str(tmp_path / "artifacts"), "--workdir", str(tmp_path / "work"),
    )  # fmt: skip


def test_run_local_registers_and_deploys_a_version_that_a_coordinator_serves(
    tmp_path: Path,
) -> None:
    data, schema = _table_and_schema(tmp_path)

    result = _run_local(tmp_path, data, schema)

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    done = [line.split()[1].rstrip(":") for line in result.stdout.splitlines() if ": ok (" in line]
    assert done == STEP_NAMES
    assert "fedge-coordinator models register" in result.stdout
    assert "fedge-coordinator models promote v1" in result.stdout
    listed = _coordinator(
        "models", "list", "--db", str(tmp_path / "state.db"),
        "--artifacts", str(tmp_path / "artifacts"), "--json",
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [(m["version"], m["stage"]) for m in yaml.safe_load(listed.stdout)] == [
        ("v1", "production")
    ]
    bundle = tmp_path / "work" / "quantize" / "bundle"
    token = write_admin_token(tmp_path)
    command = serve_command(tmp_path, bundle, token, "--task", "table")
    with running_server(command, tmp_path) as server:
        current = admin_request(server.url, "/v1/models/current")
        assert (current["version"], current["stage"]) == ("v1", "production")
        weights = (bundle / "weights.safetensors").read_bytes()
        assert production_digest(server.url) == hashlib.sha256(weights).hexdigest()


def test_run_local_stops_at_the_first_failing_step_with_its_log(tmp_path: Path) -> None:
    data = tmp_path / "users.csv"
    write_user_table(data, rows=50)
    taxi_schema = REPO_ROOT / "fedge" / "datasets" / "taxi_schema.pbtxt"  # not this table's

    result = _run_local(tmp_path, data, taxi_schema)

    assert result.returncode == ExitCode.FAILED, result.stderr
    assert "[2/6] validate: FAILED (exit 1" in result.stdout
    assert "train" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fedge-pipeline: error: step validate failed with exit code 1")
    assert "Column is completely missing" in result.stderr  # the step's own output
    assert not (tmp_path / "work" / "train").exists()
    assert not (tmp_path / "state.db").exists()


def test_run_local_refuses_a_missing_table_before_any_step(tmp_path: Path) -> None:
    result = _run_local(tmp_path, tmp_path / "nope.csv", tmp_path / "schema.pbtxt")

    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip() == (
        f"fedge-pipeline: error: --data {tmp_path / 'nope.csv'}: no such file"
    )
    assert result.stdout == ""
    assert not (tmp_path / "work").exists()
