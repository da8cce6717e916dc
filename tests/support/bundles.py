"""Real edge bundles of the two reference tasks (fixtures: ``tests/conftest.py``, built by
background jobs: ``tests/support/background.py``).

``edge_digits_bundle`` and ``edge_taxi_bundle`` are small models of the two reference tasks,
trained for 2 epochs with the cloud trainer (``tests.support.trained_models.train_export``) and
bundled by ``fedge-quantize bundle``: int8 inference model, trainable model, int8 backbone,
weights and manifest. Use them read-only: copy a bundle before changing it. Nothing here
imports TensorFlow until a fixture runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["BUNDLE_EPOCHS", "build_bundle", "bundle_export"]

BUNDLE_EPOCHS = 2


def build_bundle(task: str, workdir: Path, *, batch_size: int, version: str) -> Path:
    """Train ``task`` briefly and bundle it; returns the bundle directory,
    ``workdir/<task>-bundle`` (the export: ``workdir/<task>-export``).

    In a test session, the model of ``edge_digits_bundle`` or ``edge_taxi_bundle`` (same
    task, batch size and version) is not trained again: this copies the session's export
    and bundle into ``workdir``.
    """
    from tests.support.background import bundle_job, session_jobs

    export, out = workdir / f"{task}-export", workdir / f"{task}-bundle"
    jobs, job = session_jobs(), bundle_job(task, batch_size, version)
    if jobs is not None and job is not None:
        made = jobs.finished(job)
        shutil.copytree(made / "export", export)
        shutil.copytree(made / "bundle", out)
        return out
    from tests.support.trained_models import train_export

    train_export(task, export, epochs=BUNDLE_EPOCHS)
    return bundle_export(export, out, batch_size=batch_size, version=version)


def bundle_export(export: Path, out: Path, *, batch_size: int, version: str) -> Path:
    """``fedge-quantize bundle`` of ``export`` into ``out``; returns ``out``."""
    from quantize.cli import quantize_cli

    args = ["bundle", str(export), "--out", str(out), "--quiet", "--batch-size", str(batch_size)]
    args += ["--model-version", version, "--representative", "100"]
    assert quantize_cli(args) == 0
    return out
