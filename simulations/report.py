"""What a simulation run measured, and its outputs: JSON, CSV, PNG plots and a summary table.

An engine returns an :class:`EngineResult` (one :class:`RoundStats` per round, the final
head, the per-client personalization figures); the runner adds the baselines (the
pretrained head and the same head trained centrally) and :func:`write_report` writes::

    OUT/metrics.json        settings, every round, baselines, personalization, schedule
    OUT/metrics.csv         round, accuracy, loss, participants, bytes_up, bytes_down,
                            seconds (then train_loss and, for two classes, auc)
    OUT/accuracy.png        the global model's test accuracy per round, baselines as lines
    OUT/personalization.png personalized minus global accuracy on each client's holdout
    OUT/summary.txt         the table :func:`summary_table` prints
    OUT/final_head.safetensors  the final global head (``--init`` of a later run)
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from fedge.weights import Weights

__all__ = [
    "CSV_COLUMNS",
    "ClientGain",
    "EngineResult",
    "Evaluation",
    "ProgressSink",
    "RoundStats",
    "RunReport",
    "summary_table",
    "write_report",
]

CSV_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "participants",
    "bytes_up",
    "bytes_down",
    "seconds",
    "train_loss",
    "auc",
)


class ProgressSink(Protocol):
    """Where an engine reports progress (the CLI draws a bar per round on stderr)."""

    def round_started(self, round_number: int, rounds: int, clients: int) -> None: ...

    def client_done(self) -> None: ...

    def round_finished(self, stats: RoundStats) -> None: ...


@dataclass(frozen=True)
class Evaluation:
    """One head on the test split: accuracy, mean cross-entropy, and AUC for two classes."""

    accuracy: float
    loss: float
    auc: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"accuracy": self.accuracy, "loss": self.loss, "auc": self.auc}


@dataclass(frozen=True)
class RoundStats:
    """One round: the global model after it on the test split, who took part, traffic, time.

    ``round`` counts from 1. ``loss`` is the test loss; ``train_loss`` the participants'
    example-weighted training loss. The TFF engine measures no traffic (``None``) and no
    test loss. ``committed`` is False for a round the coordinator failed (the model stayed).
    """

    round: int
    accuracy: float
    loss: float | None
    participants: int
    bytes_up: int | None
    bytes_down: int | None
    seconds: float
    train_loss: float | None = None
    auc: float | None = None
    version: str | None = None
    committed: bool = True
    clients: tuple[str, ...] = ()
    failed_clients: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "auc": self.auc,
            "train_loss": self.train_loss,
            "participants": self.participants,
            "failed_clients": self.failed_clients,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "seconds": self.seconds,
            "version": self.version,
            "committed": self.committed,
            "clients": list(self.clients),
        }


@dataclass(frozen=True)
class ClientGain:
    """A client's holdout accuracy under the final global head and under its personal head."""

    client_id: str
    examples: int
    global_accuracy: float
    personalized_accuracy: float

    @property
    def gain(self) -> float:
        return self.personalized_accuracy - self.global_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "examples": self.examples,
            "global_accuracy": self.global_accuracy,
            "personalized_accuracy": self.personalized_accuracy,
            "gain": self.gain,
        }


@dataclass(frozen=True, eq=False)
class EngineResult:
    """What an engine ran: every round, the final global head, personalization figures."""

    engine: str
    rounds: tuple[RoundStats, ...]
    final_head: Weights
    personalization: tuple[ClientGain, ...] = ()
    seconds: float = 0.0
    """Wall time of the engine (its set-up included, pretraining not)."""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def rounds_per_second(self) -> float:
        return len(self.rounds) / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True, eq=False)
class RunReport:
    """A finished run: settings, the engine's result and the figures to compare it with."""

    settings: Mapping[str, Any]
    result: EngineResult
    pretrained: Evaluation
    final: Evaluation
    centralized: Evaluation | None = None
    centralized_epochs: int | None = None
    schedule: tuple[tuple[str, ...], ...] = ()
    initial_label: str = "pretrained"
    """What the clients started from (the proxy-pretrained head, or the user's)."""

    @property
    def headline(self) -> str:
        """The metric the summary compares: AUC for two classes, else accuracy."""
        return "auc" if self.final.auc is not None else "accuracy"

    def figure(self, evaluation: Evaluation | None) -> float | None:
        if evaluation is None:
            return None
        return evaluation.auc if self.headline == "auc" else evaluation.accuracy

    def to_dict(self) -> dict[str, Any]:
        gains = self.result.personalization
        return {
            "format": "fedge.simulation/1",
            "engine": self.result.engine,
            "settings": dict(self.settings),
            "engine_seconds": self.result.seconds,
            "rounds_per_second": _finite(self.result.rounds_per_second),
            "headline_metric": self.headline,
            "pretrained": self.pretrained.to_dict(),
            "initial_label": self.initial_label,
            "federated": self.final.to_dict(),
            "centralized": None if self.centralized is None else self.centralized.to_dict(),
            "centralized_epochs": self.centralized_epochs,
            "rounds": [r.to_dict() for r in self.result.rounds],
            "personalization": {
                "clients": [g.to_dict() for g in gains],
                "mean_gain": _finite(sum(g.gain for g in gains) / len(gains)) if gains else None,
            },
            "details": dict(self.result.details),
            "schedule": [list(r) for r in self.schedule],
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# Writers ------------------------------------------------------------------------------------


def write_report(report: RunReport, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every output file into ``out`` (created if needed); returns name -> path."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics.json": root / "metrics.json",
        "metrics.csv": root / "metrics.csv",
        "summary.txt": root / "summary.txt",
        "accuracy.png": root / "accuracy.png",
    }
    _atomic_text(
        paths["metrics.json"], json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    )
    _write_csv(paths["metrics.csv"], report.result.rounds)
    _atomic_text(paths["summary.txt"], summary_table(report) + "\n")
    paths["final_head.safetensors"] = root / "final_head.safetensors"
    paths["final_head.safetensors"].write_bytes(report.result.final_head.to_bytes())
    plot_accuracy(report, paths["accuracy.png"])
    if report.result.personalization:
        paths["personalization.png"] = root / "personalization.png"
        plot_personalization(report.result.personalization, paths["personalization.png"])
    return paths


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _write_csv(path: Path, rounds: Sequence[RoundStats]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for r in rounds:
            row = {**r.to_dict()}
            writer.writerow([_cell(row[column]) for column in CSV_COLUMNS])
    os.replace(tmp, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(report: RunReport, path: Path) -> None:
    """Test accuracy of the global model per round (round 0: the pretrained model)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.2))
    rounds = [0, *(r.round for r in report.result.rounds)]
    accuracy = [report.pretrained.accuracy, *(r.accuracy for r in report.result.rounds)]
    axes.plot(rounds, accuracy, marker="o", markersize=3, label=f"{report.result.engine} (global)")
    axes.axhline(
        report.pretrained.accuracy, color="grey", linestyle=":", label=report.initial_label
    )
    if report.centralized is not None:
        axes.axhline(
            report.centralized.accuracy, color="green", linestyle="--", label="centralized"
        )
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{report.settings.get('task', '')}: global model accuracy per round")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_personalization(gains: Sequence[ClientGain], path: Path) -> None:
    """Personalized minus global holdout accuracy, one bar per client (sorted)."""
    plt = _pyplot()
    ordered = sorted(gains, key=lambda g: g.gain)
    figure, axes = plt.subplots(figsize=(7, 4.2))
    values = [g.gain for g in ordered]
    colors = ["tab:green" if v >= 0 else "tab:red" for v in values]
    axes.bar(range(len(values)), values, color=colors, width=1.0 if len(values) > 50 else 0.8)
    if len(ordered) <= 30:
        axes.set_xticks(range(len(ordered)))
        axes.set_xticklabels([g.client_id for g in ordered], rotation=60, ha="right", fontsize=7)
    else:
        axes.set_xlabel(f"{len(ordered)} clients, sorted by gain")
    mean = sum(values) / len(values)
    axes.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:+.3f}")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_ylabel("personalized - global accuracy")
    axes.set_title("personalization gain per client (local holdout)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# The summary table --------------------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)  # pragma: no cover


def summary_table(report: RunReport, *, max_rounds: int = 12) -> str:
    """Rounds (the first and last few when there are many), then each figure beside its
    baselines, then traffic, time and personalization."""
    rounds = list(report.result.rounds)
    lines = [
        f"fedge-simulate: {report.settings.get('task', '?')} with the {report.result.engine} "
        f"engine, {report.settings.get('clients', '?')} clients, {len(rounds)} rounds",
        "",
        f"{'round':>5}  {'accuracy':>8}  {'loss':>7}  {'auc':>6}  {'clients':>7}  "
        f"{'bytes up':>10}  {'bytes down':>10}  {'seconds':>7}",
    ]
    shown: list[RoundStats | None] = list(rounds)
    if len(rounds) > max_rounds:
        half = max_rounds // 2
        shown = [*rounds[:half], None, *rounds[-half:]]
    for r in shown:
        if r is None:
            lines.append(f"{'...':>5}")
            continue
        mark = "" if r.committed else "  (failed: model unchanged)"
        lines.append(
            f"{r.round:>5}  {_number(r.accuracy):>8}  {_number(r.loss):>7}  "
            f"{_number(r.auc, 3):>6}  {r.participants:>7}  {_bytes(r.bytes_up):>10}  "
            f"{_bytes(r.bytes_down):>10}  {r.seconds:>7.2f}{mark}"
        )
    name = report.headline
    width = max(24, len(report.initial_label) + 2)
    lines += ["", f"{'test ' + name:<{width}}{'value':>8}  {'federated - it':>14}"]
    federated = report.figure(report.final)
    for label, evaluation in (
        (report.initial_label, report.pretrained),
        ("federated", report.final),
        ("centralized", report.centralized),
    ):
        value = report.figure(evaluation)
        gap = "" if value is None or federated is None else f"{federated - value:+14.4f}"
        if label == "federated":
            gap = ""
        lines.append(f"{label:<{width}}{_number(value):>8}  {gap}".rstrip())
    if report.centralized_epochs is not None:
        lines.append(
            f"(centralized: the same head on the union of the clients' rows, "
            f"{report.centralized_epochs} epochs)"
        )
    ups = [r.bytes_up for r in rounds if r.bytes_up is not None]
    downs = [r.bytes_down for r in rounds if r.bytes_down is not None]
    lines += [
        "",
        f"traffic: {_bytes(sum(ups)) if ups else '-'} up, {_bytes(sum(downs)) if downs else '-'} "
        f"down; engine time {report.result.seconds:.1f} s "
        f"({_number(report.result.rounds_per_second, 2)} rounds/s)",
    ]
    gains = report.result.personalization
    if gains:
        values = sorted(g.gain for g in gains)
        lines.append(
            f"personalization gain over {len(gains)} clients: mean {statistics.fmean(values):+.4f}"
            f", median {statistics.median(values):+.4f}, min {values[0]:+.4f}, "
            f"max {values[-1]:+.4f}"
        )
    return "\n".join(lines)
