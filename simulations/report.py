"""What a run measured, and how it is shown and written: tables, JSON, CSV and plots.

One module for both programs of :mod:`simulations`:

- ``fedge-simulate``: an engine returns an :class:`EngineResult` (one :class:`RoundStats`
  per round, the final head, the per-client :class:`ClientGain`); the runner adds the
  baselines (:class:`Evaluation` of the pretrained head and of the same head trained
  centrally) into a :class:`RunReport`, and :func:`write_report` writes::

    OUT/metrics.json        settings, every round, baselines, personalization, schedule
    OUT/metrics.csv         round, accuracy, loss, participants, bytes_up, bytes_down,
                            seconds, eval_seconds (then train_loss and, for two
                            classes, auc; the mode; each version's cumulative epsilon
                            and its delta)
    OUT/accuracy.png        the global model's test accuracy per round, baselines as lines
    OUT/personalization.png personalized minus global accuracy on each client's holdout
    OUT/summary.txt         the table :func:`summary_table` prints
    OUT/final_head.safetensors  the final global head (``--init`` of a later run)

- the demo: one :class:`RoundRow` per model version (round 0 is the pretrained ``v1``),
  each with its :class:`TestScore`, and each device's :class:`DeviceEvaluation`;
  :func:`round_table`, :func:`device_table` and :func:`lineage_table` are the text it
  prints, :func:`write_rounds_csv` and :func:`plot_demo_accuracy` its files.

Shared by both: number formatting, :func:`write_json` (NaN and infinities become null),
:func:`write_text` and :func:`write_csv` (atomic, :mod:`fedge.fileio`), and the accuracy
plot, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).
A plot is data first (:data:`FigureData`), so that ``fedge-simulate`` can have it drawn
by a helper process (:mod:`simulations.plotter`) that imported matplotlib during the run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from fedge.fileio import atomic_write_bytes, atomic_write_text
from fedge.weights import Weights

__all__ = [
    "CSV_COLUMNS",
    "DEMO_CSV_COLUMNS",
    "ClientGain",
    "DeviceEvaluation",
    "Drawer",
    "EngineResult",
    "Evaluation",
    "FigureData",
    "ProgressSink",
    "RoundRow",
    "RoundStats",
    "RunReport",
    "TestScore",
    "accuracy_figure",
    "device_table",
    "draw_figures",
    "lineage_table",
    "output_problem",
    "personalization_figure",
    "plot_accuracy",
    "plot_demo_accuracy",
    "plot_personalization",
    "round_table",
    "summary_table",
    "write_csv",
    "write_json",
    "write_report",
    "write_rounds_csv",
    "write_text",
]

CSV_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "participants",
    "bytes_up",
    "bytes_down",
    "seconds",
    "eval_seconds",
    "train_loss",
    "auc",
    "secure",
    "compression",
    "epsilon",
    "delta",
)
"""The columns of a simulation's ``metrics.csv``."""

DEMO_CSV_COLUMNS = (
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
"""The columns of the demo's ``rounds.csv``."""


# Shared: formatting and writers -------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)  # pragma: no cover


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns as wide as their widest cell; the ``right`` ones right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def output_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot become an output directory, or None when it can: it is not a
    directory, a parent of it is not one, or the nearest existing one is not writable.
    Checked before any work, so a run never fails at its very end for its output."""
    target = Path(path).absolute()
    for candidate in (target, *target.parents):
        if not candidate.exists():
            continue
        where = "" if candidate == target else f"{target}: "
        if not candidate.is_dir():
            return f"{where}{candidate} exists and is not a directory"
        if not os.access(candidate, os.W_OK | os.X_OK):
            return f"{where}{candidate} is not writable"
        return None
    return None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` (ending in a newline) as the file ``path``, atomically."""
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


def write_json(path: str | os.PathLike[str], document: Mapping[str, Any]) -> None:
    """``document`` as indented JSON, atomically; NaN and infinities become null."""
    write_text(path, json.dumps(_finite(document), indent=2, allow_nan=False))


def write_csv(
    path: str | os.PathLike[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> None:
    """A CSV with ``columns`` (other keys are ignored), atomically; None and non-finite
    numbers are blank cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if _finite(row.get(c)) is None else row[c] for c in columns])
    atomic_write_text(path, buffer.getvalue())


def _figure(width: float, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _accuracy_axes(
    axes: Any,
    rounds: Sequence[int],
    accuracy: Sequence[float],
    *,
    label: str,
    baseline: float,
    baseline_label: str,
    title: str,
) -> None:
    """Test accuracy per round (round 0: the starting model), the start as a dotted line."""
    from matplotlib.ticker import MaxNLocator

    axes.plot(rounds, accuracy, marker="o", markersize=3, label=label)
    axes.axhline(baseline, color="grey", linestyle=":", label=baseline_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)


def _save(figure: Any, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


# fedge-simulate -----------------------------------------------------------------------------


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
    ``bytes_up``/``bytes_down`` are the round record's counts (what its devices sent and
    fetched). ``secure`` says the round ran SecAgg+ (the coordinator saw only the sum),
    ``compression`` the devices' update codec; ``dropped_clients`` are those the dropout
    knob stopped, ``measurements`` the round's ``secagg_*`` figures (survivors, dropped,
    the error bound per coordinate of the mean). ``privacy`` is the model version's privacy
    record after the round (cumulative ``epsilon`` over its lineage, ``delta``,
    ``noise_multiplier``, ``rounds``, ``sampling_rate``; empty when the engine keeps none);
    an ``epsilon`` of None means no differential-privacy guarantee. ``seconds`` is the
    whole round on the native and Ray engines (opening it, the clients' work, the commit
    and the evaluation of the model after it), ``eval_seconds`` that evaluation alone
    (None where the engine does not time it: the tff engine's ``seconds`` is its
    ``next`` call).
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
    secure: bool = False
    compression: str = "none"
    dropped_clients: tuple[str, ...] = ()
    measurements: Mapping[str, float] = field(default_factory=dict)
    privacy: Mapping[str, Any] = field(default_factory=dict)
    eval_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "measurements", MappingProxyType(dict(self.measurements)))
        object.__setattr__(self, "privacy", MappingProxyType(dict(self.privacy)))

    @property
    def epsilon(self) -> float | None:
        """The model's cumulative epsilon after this round (None: no DP guarantee)."""
        value = self.privacy.get("epsilon")
        return None if value is None else float(value)

    @property
    def delta(self) -> float | None:
        value = self.privacy.get("delta")
        return None if value is None else float(value)

    @property
    def mode(self) -> str:
        """``plain`` or ``secure``, with the codec when there is one (``secure+q8``)."""
        mode = "secure" if self.secure else "plain"
        return mode if self.compression == "none" else f"{mode}+{self.compression}"

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
            "eval_seconds": self.eval_seconds,
            "version": self.version,
            "committed": self.committed,
            "clients": list(self.clients),
            "secure": self.secure,
            "compression": self.compression,
            "dropped_clients": list(self.dropped_clients),
            "measurements": dict(self.measurements),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "privacy": dict(self.privacy),
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
    stop_reason: str | None = None
    """Why the run stopped before its last scheduled round (the coordinator refused to
    start the next one, e.g. "privacy budget exhausted: ..."); None: it ran them all."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def rounds_per_second(self) -> float:
        return len(self.rounds) / self.seconds if self.seconds > 0 else math.nan

    @property
    def privacy(self) -> dict[str, Any] | None:
        """The final model's (epsilon, delta) and how they were reached; None when no
        round recorded privacy (the engine keeps no record)."""
        recorded = [r for r in self.rounds if r.privacy]
        if not recorded:
            return None
        last = recorded[-1]
        return {"epsilon": last.epsilon, "delta": last.delta, **dict(last.privacy)}


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
            "traffic": _traffic(self.result.rounds),
            "personalization": {
                "clients": [g.to_dict() for g in gains],
                "mean_gain": _finite(sum(g.gain for g in gains) / len(gains)) if gains else None,
            },
            "details": dict(self.result.details),
            "schedule": [list(r) for r in self.schedule],
            "privacy": self.result.privacy,
            "stop_reason": self.result.stop_reason,
        }


def _traffic(rounds: Sequence[RoundStats]) -> dict[str, int | None]:
    """The run's total bytes up and down (None where the engine counts none)."""
    ups = [r.bytes_up for r in rounds if r.bytes_up is not None]
    downs = [r.bytes_down for r in rounds if r.bytes_down is not None]
    return {
        "bytes_up": sum(ups) if ups else None,
        "bytes_down": sum(downs) if downs else None,
    }


FigureData = dict[str, Any]
"""A plot as plain data (JSON-able): ``kind`` (``accuracy`` or ``personalization``), the
``path`` of its PNG, and what :func:`draw_figures` draws."""
Drawer = Callable[[Sequence[FigureData]], None]
"""Draws figures (:func:`draw_figures` here, or :class:`simulations.plotter.Plotter`'s
helper process)."""


def write_report(
    report: RunReport, out: str | os.PathLike[str], *, draw: Drawer | None = None
) -> dict[str, Path]:
    """Write every output file into ``out`` (created if needed); returns name -> path.

    The plots are drawn by ``draw`` (default: :func:`draw_figures`, in this process)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics.json": root / "metrics.json",
        "metrics.csv": root / "metrics.csv",
        "summary.txt": root / "summary.txt",
        "accuracy.png": root / "accuracy.png",
        "final_head.safetensors": root / "final_head.safetensors",
    }
    write_json(paths["metrics.json"], report.to_dict())
    write_csv(paths["metrics.csv"], CSV_COLUMNS, (r.to_dict() for r in report.result.rounds))
    write_text(paths["summary.txt"], summary_table(report))
    atomic_write_bytes(paths["final_head.safetensors"], report.result.final_head.to_bytes())
    figures = [accuracy_figure(report, paths["accuracy.png"])]
    if report.result.personalization:
        paths["personalization.png"] = root / "personalization.png"
        gains = report.result.personalization
        figures.append(personalization_figure(gains, paths["personalization.png"]))
    (draw or draw_figures)(figures)
    return paths


def draw_figures(figures: Sequence[FigureData]) -> None:
    """Draw each figure into its ``path`` (a PNG, written atomically)."""
    drawers = {"accuracy": _draw_accuracy, "personalization": _draw_personalization}
    for figure in figures:
        drawers[figure["kind"]](figure)


def accuracy_figure(report: RunReport, path: str | os.PathLike[str]) -> FigureData:
    """The accuracy plot of ``report`` (see :func:`plot_accuracy`) as data."""
    return {
        "kind": "accuracy",
        "path": os.fspath(path),
        "rounds": [0, *(r.round for r in report.result.rounds)],
        "accuracy": [report.pretrained.accuracy, *(r.accuracy for r in report.result.rounds)],
        "label": f"{report.result.engine} (global)",
        "baseline": report.pretrained.accuracy,
        "baseline_label": report.initial_label,
        "title": f"{report.settings.get('task', '')}: global model accuracy per round",
        "centralized": None if report.centralized is None else report.centralized.accuracy,
    }


def plot_accuracy(report: RunReport, path: str | os.PathLike[str]) -> None:
    """Test accuracy of the global model per round (round 0: the pretrained model)."""
    draw_figures([accuracy_figure(report, path)])


def _draw_accuracy(spec: FigureData) -> None:
    figure = _figure(7)
    axes = figure.add_subplot(1, 1, 1)
    _accuracy_axes(
        axes,
        spec["rounds"],
        spec["accuracy"],
        label=spec["label"],
        baseline=spec["baseline"],
        baseline_label=spec["baseline_label"],
        title=spec["title"],
    )
    if spec["centralized"] is not None:
        axes.axhline(spec["centralized"], color="green", linestyle="--", label="centralized")
    axes.legend(loc="lower right")
    _save(figure, spec["path"])


def personalization_figure(gains: Sequence[ClientGain], path: str | os.PathLike[str]) -> FigureData:
    """The personalization plot of ``gains`` (see :func:`plot_personalization`) as data."""
    ordered = sorted(gains, key=lambda g: g.gain)
    return {
        "kind": "personalization",
        "path": os.fspath(path),
        "clients": [g.client_id for g in ordered],
        "gains": [g.gain for g in ordered],
    }


def plot_personalization(gains: Sequence[ClientGain], path: str | os.PathLike[str]) -> None:
    """Personalized minus global holdout accuracy, one bar per client (sorted)."""
    draw_figures([personalization_figure(gains, path)])


def _draw_personalization(spec: FigureData) -> None:
    clients: list[str] = spec["clients"]
    figure = _figure(7)
    axes = figure.add_subplot(1, 1, 1)
    values: list[float] = spec["gains"]
    colors = ["tab:green" if v >= 0 else "tab:red" for v in values]
    axes.bar(range(len(values)), values, color=colors, width=1.0 if len(values) > 50 else 0.8)
    if len(clients) <= 30:
        axes.set_xticks(range(len(clients)))
        axes.set_xticklabels(clients, rotation=60, ha="right", fontsize=7)
    else:
        axes.set_xlabel(f"{len(clients)} clients, sorted by gain")
    mean = sum(values) / len(values)
    axes.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:+.3f}")
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_ylabel("personalized - global accuracy")
    axes.set_title("personalization gain per client (local holdout)")
    axes.legend(loc="upper left")
    _save(figure, spec["path"])


# The summary table --------------------------------------------------------------------------


_TRANSPORT_NAMES = {"rest": "REST", "grpc": "gRPC"}


def summary_table(report: RunReport, *, max_rounds: int = 12) -> str:
    """Rounds (the first and last few when there are many), then each figure beside its
    baselines, then traffic, time and personalization."""
    rounds = list(report.result.rounds)
    private = any(r.epsilon is not None for r in rounds)
    transport = report.settings.get("transport", "memory")
    over = "" if transport == "memory" else f" (devices over {_TRANSPORT_NAMES[transport]})"
    lines = [
        f"fedge-simulate: {report.settings.get('task', '?')} with the {report.result.engine} "
        f"engine{over}, {report.settings.get('clients', '?')} clients, {len(rounds)} rounds",
        "",
        f"{'round':>5}  {'accuracy':>8}  {'loss':>7}  {'auc':>6}  {'clients':>7}  "
        f"{'bytes up':>10}  {'bytes down':>10}  {'seconds':>7}  "
        + (f"{'epsilon':>8}  " if private else "")
        + "mode",
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
            f"{_bytes(r.bytes_down):>10}  {r.seconds:>7.2f}  "
            + (f"{_epsilon(r.epsilon):>8}  " if private else "")
            + f"{r.mode}{mark}"
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
        f"down in total; engine time {report.result.seconds:.1f} s "
        f"({_number(report.result.rounds_per_second, 2)} rounds/s)",
    ]
    secure = [r for r in rounds if r.secure]
    if secure:
        dropped = sum(len(r.dropped_clients) for r in secure)
        lines.append(
            f"secure aggregation (SecAgg+): {len(secure)} of {len(rounds)} rounds; the "
            "coordinator saw only the sum of each round's updates"
            + (f" ({dropped} client dropouts by --secagg-dropout)" if dropped else "")
        )
    privacy = report.result.privacy
    if privacy is not None and (private or report.settings.get("dp_noise_multiplier") is not None):
        lines.append(_privacy_line(privacy))
    if report.result.stop_reason is not None:
        lines.append(f"stopped after {len(rounds)} rounds: {report.result.stop_reason}")
    gains = report.result.personalization
    if gains:
        values = sorted(g.gain for g in gains)
        lines.append(
            f"personalization gain over {len(gains)} clients: mean {statistics.fmean(values):+.4f}"
            f", median {statistics.median(values):+.4f}, min {values[0]:+.4f}, "
            f"max {values[-1]:+.4f}"
        )
    return "\n".join(lines)


def _epsilon(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def _privacy_line(privacy: Mapping[str, Any]) -> str:
    """The final model's guarantee, in one line."""
    epsilon, delta = privacy.get("epsilon"), privacy.get("delta")
    if epsilon is None:
        return (
            "differential privacy: none (a round without DP noise is in the final model's lineage)"
        )
    how = [
        f"{name.replace('_', ' ')} {privacy[name]:g}"
        for name in ("noise_multiplier", "sampling_rate", "rounds")
        if isinstance(privacy.get(name), int | float)
    ]
    return (
        f"differential privacy: (epsilon, delta) = ({epsilon:.4g}, "
        f"{'-' if delta is None else format(delta, '.3g')}) for the final model"
        + (f" ({', '.join(how)})" if how else "")
    )


# The demo -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestScore:
    """A version's global head on the held-out test set."""

    __test__ = False  # a result, not a pytest test class

    version: str
    accuracy: float
    loss: float
    int8_accuracy: float | None = None
    """The int8 path the device serves (``EdgeModel.serving_path``), where it has one."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceEvaluation:
    """One device's evaluation of a version on its own local holdout."""

    device: str
    client_id: str
    model_version: str
    holdout_examples: int
    global_accuracy: float
    personalized_accuracy: float | None

    @property
    def gain(self) -> float | None:
        if self.personalized_accuracy is None:
            return None
        return self.personalized_accuracy - self.global_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gain": self.gain}


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
            _number(r.train_loss, 3),
            _number(r.test.accuracy, 3),
            _number(r.seconds, 1),
        )
        for r in rows
    ]
    return _text_table(header, cells, right={0, 3, 4, 5, 6, 7})


def device_table(devices: Sequence[DeviceEvaluation], rows: Mapping[str, int]) -> str:
    """Each device's evaluation: its rows, holdout, global and personalized accuracy."""
    header = ("device", "client", "rows", "holdout", "global acc", "personalized acc", "gain")
    cells = [
        (
            d.device,
            d.client_id,
            _count(rows.get(d.device)),
            _count(d.holdout_examples),
            _number(d.global_accuracy, 3),
            _number(d.personalized_accuracy, 3),
            "-" if d.gain is None else f"{d.gain:+.3f}",
        )
        for d in devices
    ]
    return _text_table(header, cells, right={2, 3, 4, 5, 6})


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
    return _text_table(header, cells, right=set())


def write_rounds_csv(path: str | os.PathLike[str], rows: Sequence[RoundRow]) -> None:
    """The demo's ``rounds.csv`` (:data:`DEMO_CSV_COLUMNS`)."""
    write_csv(path, DEMO_CSV_COLUMNS, (r.to_dict() for r in rows))


def plot_demo_accuracy(
    path: str | os.PathLike[str],
    rows: Sequence[RoundRow],
    devices: Sequence[DeviceEvaluation],
    *,
    title: str,
) -> None:
    """Test accuracy of each version per round; beside it, when the devices evaluated the
    final version, their global and personalized holdout accuracy."""
    panels = 2 if devices else 1
    figure = _figure(6.5 * panels)
    axes = figure.add_subplot(1, panels, 1)
    _accuracy_axes(
        axes,
        [r.round for r in rows],
        [r.test.accuracy for r in rows],
        label="global model (TFLite, test set)",
        baseline=rows[0].test.accuracy,
        baseline_label=f"pretrained ({rows[0].version})",
        title=title,
    )
    for row in rows:
        axes.annotate(
            row.version,
            (row.round, row.test.accuracy),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
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
    _save(figure, path)
