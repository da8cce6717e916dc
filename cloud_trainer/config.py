"""A training job's settings, validated when built (no TensorFlow, so CLIs check them fast)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.data import TASK_NAMES
from fedge.errors import ConfigError
from fedge.validation import check_fraction, check_int, check_positive

__all__ = ["DEFAULT_TEST_FRACTION", "STRATEGY_NAMES", "TABLE_TASK", "TrainConfig"]

DEFAULT_TEST_FRACTION = 0.2
STRATEGY_NAMES: tuple[str, ...] = ("default", "mirrored", "multi-worker", "parameter-server")
TABLE_TASK = "table"
"""The task name of a run on a user's own file (``fedge-train --data``)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training job. ``batch_size`` is per replica; ``workers`` sizes the cluster of
    ``multi-worker`` or the workers of ``parameter-server`` (launched by the CLI), or the
    CPU replicas of ``mirrored``; ``ps`` is the parameter servers of ``parameter-server``.

    A run on a user's own file has ``task=TABLE_TASK`` and ``data_path`` (CSV or TFRecord,
    see :func:`fedge.data.infer_table`) with ``label_column`` and the optional column kind
    overrides ``numeric``/``categorical``/``exclude``; ``ablation`` then also retrains
    without each feature (default strategy only)."""

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
    data_path: str | None = None
    label_column: str | None = None
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    ablation: bool = False
    ps: int | None = None

    def __post_init__(self) -> None:
        for name in ("numeric", "categorical", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.data_path is not None:
            if self.task != TABLE_TASK:
                raise ConfigError(
                    f"a run on a data file has task {TABLE_TASK!r}, not {self.task!r}"
                )
            if not self.label_column:
                raise ConfigError("a run on a data file needs its label column")
        elif self.task not in TASK_NAMES:
            raise ConfigError(f"unknown task {self.task!r}; known: {list(TASK_NAMES)}")
        elif self.label_column or self.numeric or self.categorical or self.exclude:
            raise ConfigError("label and column options apply to a run on a data file only")
        if self.ablation and self.data_path is None:
            raise ConfigError("ablation applies to a run on a data file only")
        if self.ablation and self.strategy != "default":
            raise ConfigError("ablation runs with the default strategy only")
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; known: {list(STRATEGY_NAMES)}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            check_int(getattr(self, name), name, low=low)
        if self.workers is not None:
            check_int(self.workers, "workers", low=1)
        if self.workers is not None and self.strategy == "default":
            raise ConfigError(
                "workers applies to the mirrored, multi-worker and parameter-server strategies only"
            )
        if self.ps is not None:
            if self.strategy != "parameter-server":
                raise ConfigError("ps applies to the parameter-server strategy only")
            check_int(self.ps, "ps", low=1)
        check_fraction(self.test_fraction, "test_fraction", zero_ok=False)
        check_fraction(self.data_fraction, "data_fraction", zero_ok=False, one_ok=True)
        check_positive(self.learning_rate, "learning_rate")
