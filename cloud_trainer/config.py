"""A training job's settings, validated when built (no TensorFlow, so CLIs check them fast)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.data import TASK_NAMES
from fedge.errors import ConfigError
from fedge.validation import check_fraction, check_int, check_positive

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
            check_int(getattr(self, name), name, low=low)
        if self.workers is not None:
            check_int(self.workers, "workers", low=1)
        if self.workers is not None and self.strategy == "default":
            raise ConfigError("workers applies to the mirrored and multi-worker strategies only")
        check_fraction(self.test_fraction, "test_fraction", zero_ok=False)
        check_fraction(self.data_fraction, "data_fraction", zero_ok=False, one_ok=True)
        check_positive(self.learning_rate, "learning_rate")
