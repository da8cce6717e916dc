"""A table the project has never seen, as a user would bring it: numeric and categorical
columns, empty fields, a text label; written as CSV and as TFRecord."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.tfrecord import write_examples
from tests.support import REPO_ROOT

__all__ = [
    "LABELS",
    "RUNS_FILE",
    "ToolRun",
    "read_tool_runs",
    "run_changed_table",
    "run_every_tool",
    "write_user_table",
    "write_user_tfrecord",
]

LABELS = ("left", "stayed")


def write_user_table(path: Path, rows: int = 300, seed: int = 7) -> list[dict[str, str]]:
    """A churn table: age (numeric), income (numeric, unscaled, 10% empty), city
    (categorical, 10% empty), plan (categorical) and the text label ``churned``, which
    depends on age and plan."""
    rng = np.random.default_rng(seed)
    table = []
    for _ in range(rows):
        age = int(rng.integers(18, 80))
        plan = str(rng.choice(["basic", "pro"]))
        score = (age - 45) / 15 + (1.5 if plan == "pro" else -1.0) + rng.normal(0, 0.5)
        row = {
            "age": str(age),
            "income": f"{rng.normal(50_000, 15_000):.2f}" if rng.random() > 0.1 else "",
            "city": str(rng.choice(["Lyon", "Oslo", "Quito"])) if rng.random() > 0.1 else "",
            "plan": plan,
            "churned": LABELS[int(score > 0)],
        }
        table.append(row)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return table


def write_user_tfrecord(path: Path, table: list[dict[str, str]]) -> None:
    """The same rows as ``tf.train.Example`` records; an empty field is an absent feature."""
    examples = []
    for row in table:
        example: dict[str, list[float] | list[str]] = {}
        for name, value in row.items():
            if value and name in ("age", "income"):
                example[name] = [float(value)]
            elif value:
                example[name] = [value]
        examples.append(example)
    write_examples(path, examples)  # type: ignore[arg-type]


# Every tool on a user table, each as its own process ---------------------------------------

RUNS_FILE = "runs.json"
"""What :func:`run_every_tool` and :func:`run_changed_table` write in their folder: each
step's command and output."""


@dataclass(frozen=True)
class ToolRun:
    """One tool's process: its arguments, exit code and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> ToolRun:
        """This run, after asserting that it exited 0 (the message: its stderr's tail)."""
        assert self.returncode == 0, f"{self.args}: {self.stderr[-3000:]}"
        return self


def _tool(module: str, *args: str) -> ToolRun:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return ToolRun([module, *args], -1, str(exc.stdout or ""), f"timed out: {exc}")
    return ToolRun([module, *args], result.returncode, result.stdout, result.stderr)


def run_every_tool(workdir: Path, suffix: str) -> dict[str, ToolRun]:
    """The user table (``workdir/users.csv``, and ``users.tfrecord`` for ``.tfrecord``)
    through ``fedge-train --data`` (``workdir/export``), ``fedge-quantize bundle``
    (``workdir/bundle``), then side by side (each reads only what those two wrote):
    ``fedge-simulate --model`` the export (``workdir/sim``) and the bundle
    (``workdir/sim-bundle``), and ``fedge-edge predict --json`` on the table. A step that
    fails ends the run. Returns the runs by step name, also written to ``workdir/runs.json``.
    """
    table = write_user_table(workdir / "users.csv")
    data = workdir / f"users{suffix}"
    if suffix == ".tfrecord":
        write_user_tfrecord(data, table)
    export, bundle = workdir / "export", workdir / "bundle"
    runs: dict[str, ToolRun] = {}
    runs["trained"] = _tool(
        "cloud_trainer.cli", "--data", str(data), "--label-column", "churned",
        "--epochs", "2", "--out", str(export),
    )  # fmt: skip
    if runs["trained"].returncode == 0:
        runs["bundled"] = _tool("quantize.cli", "bundle", str(export), "--out", str(bundle))
    if runs.get("bundled") is not None and runs["bundled"].returncode == 0:
        simulate = [
            "--data", str(data), "--rounds", "2", "--clients", "3", "--epochs", "1",
            "--cache-dir", str(workdir / "cache"),
        ]  # fmt: skip
        steps = {
            "simulated": ("simulations.cli", *simulate, "--model", str(export), "--out",
                          str(workdir / "sim")),
            "simulated_bundle": ("simulations.cli", *simulate, "--model", str(bundle), "--out",
                                 str(workdir / "sim-bundle")),
            "predicted": ("edge_client.cli", "predict", "--bundle", str(bundle), "--input",
                          str(data), "--json"),
        }  # fmt: skip
        with ThreadPoolExecutor(max_workers=len(steps)) as pool:
            futures = {name: pool.submit(_tool, *command) for name, command in steps.items()}
        runs.update({name: future.result() for name, future in futures.items()})
    _write_runs(workdir, runs)
    return runs


def run_changed_table(workdir: Path) -> dict[str, ToolRun]:
    """``fedge-train --data workdir/users.csv`` (200 rows, 1 epoch; ``workdir/export``), a
    row appended to the table, ``fedge-quantize bundle`` (``workdir/b1``; step "changed"),
    the table deleted, ``fedge-quantize bundle`` again (``workdir/b2``; step "gone"). A
    training that fails ends the run. Returns the runs by step name, also written to
    ``workdir/runs.json``."""
    data, export = workdir / "users.csv", workdir / "export"
    write_user_table(data, rows=200)
    runs: dict[str, ToolRun] = {}
    runs["trained"] = _tool(
        "cloud_trainer.cli", "--data", str(data), "--label-column", "churned",
        "--epochs", "1", "--out", str(export),
    )  # fmt: skip
    if runs["trained"].returncode == 0:
        with open(data, "a", encoding="utf-8") as stream:
            stream.write("40,50000,Oslo,pro,stayed\n")
        runs["changed"] = _tool("quantize.cli", "bundle", str(export), "--out", str(workdir / "b1"))
        data.unlink()
        runs["gone"] = _tool("quantize.cli", "bundle", str(export), "--out", str(workdir / "b2"))
    _write_runs(workdir, runs)
    return runs


def _write_runs(workdir: Path, runs: dict[str, ToolRun]) -> None:
    document = {name: run.__dict__ for name, run in runs.items()}
    (workdir / RUNS_FILE).write_text(json.dumps(document), encoding="utf-8")


def read_tool_runs(workdir: Path) -> dict[str, ToolRun]:
    """What :func:`run_every_tool` or :func:`run_changed_table` wrote in ``workdir``."""
    document: dict[str, dict[str, Any]] = json.loads((workdir / RUNS_FILE).read_text("utf-8"))
    return {name: ToolRun(**fields) for name, fields in document.items()}
