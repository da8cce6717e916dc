"""Session-wide trained exports of the two reference tasks, for tests that need a real model.

Each export is trained once per test session with the ``cloud_trainer`` Python API (the
same code ``fedge-train`` runs) into a pytest temporary directory, and shared by every test
that asks for it. Use them read-only: copy an export before changing it.

The session fixtures over them are in ``tests/quantize/conftest.py`` and ``tests/conftest.py``;
background jobs (``tests/support/background.py``) train them while the first tests run.
Nothing here imports TensorFlow at import time, so a module that imports this one can still
run as a TensorFlow-free device probe.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["EPOCHS", "copy_export", "load_model", "train_export"]

EPOCHS = {"digits": 10, "taxi": 3}
"""Enough for stable held-out figures (digits ~0.95 accuracy, taxi ~0.95 AUC) in seconds."""


def train_export(task: str, out_dir: Path, *, epochs: int | None = None, seed: int = 0) -> Path:
    """Train ``task``'s zoo model and export it to ``out_dir``; returns ``out_dir``."""
    from cloud_trainer.config import TrainConfig
    from cloud_trainer.train import train

    config = TrainConfig(
        task=task,
        out_dir=str(out_dir),
        epochs=EPOCHS[task] if epochs is None else epochs,
        seed=seed,
        learning_rate=3e-3,
        progress=False,
    )
    train(config)
    return out_dir


def copy_export(export_dir: Path, destination: Path) -> Path:
    """A private copy of an export (model, spec, record; no checkpoints or logs)."""
    destination.mkdir(parents=True)
    for name in ("saved_model", "feature_spec.json", "training_record.json"):
        source = export_dir / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy2(source, destination / name)
    return destination


def load_model(export_dir: Path) -> tf.keras.Model:
    """A fresh Keras instance of the exported model (safe to change)."""
    from cloud_trainer.export import load_exported_model

    model: Any = load_exported_model(export_dir)
    return model
