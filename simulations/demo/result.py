"""What one demo run measured and where it left its files: :class:`DemoResult`.

The job fills it step by step (:mod:`simulations.demo.job`); the CLI prints it with the
tables of :mod:`simulations.report`, and ``summary.json`` is its :meth:`DemoResult.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.demo.config import DemoConfig
from simulations.report import DeviceEvaluation, RoundRow

__all__ = ["DemoResult"]


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
    grpc_url: str = ""
    device_transports: dict[str, str] = field(default_factory=dict)
    """Each device's transport: ``rest`` or ``grpc``."""
    elapsed: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def pretrained(self) -> RoundRow:
        return self.rows[0]

    @property
    def final(self) -> RoundRow:
        return self.rows[-1]

    @property
    def improved(self) -> bool:
        """Whether the final version scores at least the pretrained one's test accuracy."""
        return self.final.test.accuracy >= self.pretrained.test.accuracy

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
            "status": "ok" if self.improved else "failed",
            "settings": self.config.to_dict(),
            "data": self.data,
            "coordinator": self.url,
            "coordinator_grpc": self.grpc_url,
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
                "transport": self.device_transports.get(name),
                "evaluation": evaluations.get(name),
                "status": self.device_status.get(name),
            }
            for name, rows in self.device_rows.items()
        ]
