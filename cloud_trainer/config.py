"""A training job's settings, validated when built (no TensorFlow, so CLIs check them fast)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.data import TASK_NAMES
from fedge.errors import ConfigError

__all__ = ["DEFAULT_TEST_FRACTION", "STRATEGY_NAMES", "TrainConfig"]

DEFAULT_TEST_FRACTION = 0.2
STRATEGY_NAMES: tuple[str, ...] = ("default", "mirrored", "multi-worker")


@dataclass(frozen=True)
class TrainConfig:
    """One training job. ``batch_size`` is per replica; ``workers`` sizes the cluster of
    ``multi-worker`` (launched by the CLI) or the CPU replicas of ``mirrored``."""

    task: str
    out_dir: str
    strategy: str = "default"
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    test_fraction: float = DEFAULT_TEST_FRACTION
    data_fraction: float = 1.0
    workers: int | None = None
    learning_rate: float = 1e-3
    tfrecord_path: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(f"unknown task {self.task!r}; known: {list(TASK_NAMES)}")
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; known: {list(STRATEGY_NAMES)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ConfigError(f"workers must be an int >= 1, got {self.workers!r}")
        if self.workers is not None and self.strategy == "default":
            raise ConfigError("workers applies to the mirrored and multi-worker strategies only")
        for name, one_ok in (("test_fraction", False), ("data_fraction", True)):
            value = getattr(self, name)
            if not _fraction(value, one_ok=one_ok):
                bound = "(0, 1]" if one_ok else "(0, 1)"
                raise ConfigError(f"{name} must be a number in {bound}, got {value!r}")
        rate = self.learning_rate
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")


def _fraction(value: object, *, one_ok: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return 0 < value < 1 or (one_ok and value == 1)
