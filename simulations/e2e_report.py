"""What the demo leaves behind: the round table, the registry lineage, CSV, JSON and a plot.

One :class:`RoundRow` per model version (round 0 is the pretrained ``v1`` the cloud
trained on its proxy share). :func:`round_table` and :func:`lineage_table` are the text
the demo prints; :func:`write_rounds_csv`, :func:`plot_accuracy` and :func:`write_json`
write ``rounds.csv``, ``accuracy.png`` and ``summary.json``. The plot uses matplotlib's
object API with the Agg canvas: no display, no pyplot global state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.e2e_config import DemoConfig
from simulations.e2e_evaluation import DeviceEvaluation, TestScore

__all__ = [
    "CSV_COLUMNS",
    "DemoResult",
    "RoundRow",
    "device_table",
    "lineage_table",
    "plot_accuracy",
    "round_table",
    "write_json",
    "write_rounds_csv",
    "write_text",
]

CSV_COLUMNS = (
    "round",
    "version",
    "parent",
    "participants",
    "examples",
    "train_loss",
    "train_accuracy",
    "test_accuracy",
    "test_loss",
    "seconds",
)


@dataclass(frozen=True)
class RoundRow:
    """One version: the round that made it (0: pretrained in the cloud) and its figures."""

    round: int
    version: str
    parent: str | None
    participants: int | None
    examples: int | None
    train_loss: float | None
    train_accuracy: float | None
    test: TestScore
    seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "version": self.version,
            "parent": self.parent,
            "participants": self.participants,
            "examples": self.examples,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "seconds": self.seconds,
        }


@dataclass
class DemoResult:
    """What one run measured and where it left its files."""

    config: DemoConfig
    out: Path
    rows: list[RoundRow] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    models_cli: str = ""
    rounds_cli: str = ""
    devices: list[DeviceEvaluation] = field(default_factory=list)
    device_rows: dict[str, int] = field(default_factory=dict)
    device_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    url: str = ""
    elapsed: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def pretrained(self) -> RoundRow:
        return self.rows[0]

    @property
    def final(self) -> RoundRow:
        return self.rows[-1]

    def personalization(self) -> tuple[float, float] | None:
        """Holdout-weighted mean (global, personalized) accuracy over the devices."""
        total = global_sum = personal_sum = 0.0
        for device in self.devices:
            if device.personalized_accuracy is not None:
                total += device.holdout_examples
                global_sum += device.global_accuracy * device.holdout_examples
                personal_sum += device.personalized_accuracy * device.holdout_examples
        return None if not total else (global_sum / total, personal_sum / total)

    def to_dict(self) -> dict[str, Any]:
        pair = self.personalization()
        return {
            "status": "ok",
            "settings": self.config.to_dict(),
            "data": self.data,
            "coordinator": self.url,
            "pretrained": {"version": self.pretrained.version, **self.pretrained.test.to_dict()},
            "final": {"version": self.final.version, **self.final.test.to_dict()},
            "improvement": self.final.test.accuracy - self.pretrained.test.accuracy,
            "rounds": [r.to_dict() for r in self.rows],
            "registry": self.models,
            "devices": self._devices(),
            "personalization": None
            if pair is None
            else {"global_accuracy": pair[0], "personalized_accuracy": pair[1]},
            "processes": self.processes,
            "leftover_processes": self.leftovers,
            "elapsed_seconds": round(self.elapsed, 2),
            "files": self.files,
        }

    def _devices(self) -> list[dict[str, Any]]:
        evaluations = {d.device: d.to_dict() for d in self.devices}
        return [
            {
                "device": name,
                "rows": rows,
                "evaluation": evaluations.get(name),
                "status": self.device_status.get(name),
            }
            for name, rows in self.device_rows.items()
        ]


def _fixed(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def round_table(rows: Sequence[RoundRow]) -> str:
    """Round, version, participants, examples, train loss, test accuracy, seconds."""
    header = (
        "round",
        "version",
        "parent",
        "participants",
        "examples",
        "train loss",
        "test acc",
        "seconds",
    )
    cells = [
        (
            str(r.round),
            r.version,
            r.parent or "-",
            "cloud" if r.round == 0 else _count(r.participants),
            _count(r.examples),
            _fixed(r.train_loss),
            _fixed(r.test.accuracy),
            _fixed(r.seconds, 1),
        )
        for r in rows
    ]
    return _columns(header, cells, right={0, 3, 4, 5, 6, 7})


def device_table(devices: Sequence[DeviceEvaluation], rows: Mapping[str, int]) -> str:
    """Each device's evaluation: its rows, holdout, global and personalized accuracy."""
    header = ("device", "client", "rows", "holdout", "global acc", "personalized acc", "gain")
    cells = [
        (
            d.device,
            d.client_id,
            _count(rows.get(d.device)),
            _count(d.holdout_examples),
            _fixed(d.global_accuracy),
            _fixed(d.personalized_accuracy),
            "-" if d.gain is None else f"{d.gain:+.3f}",
        )
        for d in devices
    ]
    return _columns(header, cells, right={2, 3, 4, 5, 6})


def _trained_by(model: Mapping[str, Any]) -> str:
    if model.get("round_id") is not None:
        return f"round {model['round_id']} ({model.get('participants')} clients, fedavg)"
    job = model.get("training_job") or "imported bundle"
    fingerprint = str(model.get("data_fingerprint") or "")
    return f"{job} (data {fingerprint[:12]})" if fingerprint else str(job)


def lineage_table(models: Sequence[Mapping[str, Any]]) -> str:
    """The registry as GET /v1/models returns it: version, parent, what trained it, stage,
    when it was created."""
    header = ("version", "parent", "trained by", "stage", "created")
    cells = [
        (
            str(m["version"]),
            str(m.get("parent") or "-"),
            _trained_by(m),
            str(m.get("stage")),
            str(m.get("created_at") or "-"),
        )
        for m in models
    ]
    return _columns(header, cells, right=set())


def _atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    _atomic(path, text if text.endswith("\n") else text + "\n")


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """``document`` as indented JSON; NaN and infinities become null."""
    _atomic(path, json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_rounds_csv(path: Path, rows: Sequence[RoundRow]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.to_dict().items()})
    _atomic(path, buffer.getvalue())


def plot_accuracy(
    path: Path, rows: Sequence[RoundRow], devices: Sequence[DeviceEvaluation], *, title: str
) -> None:
    """Test accuracy of each version per round; beside it, when the devices evaluated the
    final version, their global and personalized holdout accuracy."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 2 if devices else 1
    figure = Figure(figsize=(6.5 * panels, 4.2))
    axes = figure.add_subplot(1, panels, 1)
    axes.plot(
        [r.round for r in rows],
        [r.test.accuracy for r in rows],
        marker="o",
        label="global model (TFLite, test set)",
    )
    axes.axhline(rows[0].test.accuracy, color="grey", linestyle=":", label="pretrained (v1)")
    for row in rows:
        axes.annotate(
            row.version,
            (row.round, row.test.accuracy),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    if devices:
        bars = figure.add_subplot(1, 2, 2)
        positions = range(len(devices))
        width = 0.38
        bars.bar(
            [p - width / 2 for p in positions],
            [d.global_accuracy for d in devices],
            width,
            label="global",
        )
        bars.bar(
            [p + width / 2 for p in positions],
            [d.personalized_accuracy or 0.0 for d in devices],
            width,
            label="personalized",
        )
        bars.set_xticks(list(positions), [d.device for d in devices])
        bars.set_ylim(0, 1.05)
        bars.set_ylabel("accuracy on the device's holdout")
        bars.set_title(f"devices evaluating {devices[0].model_version}")
        bars.grid(alpha=0.3, axis="y")
        bars.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
