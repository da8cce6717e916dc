"""Session fixtures of real edge bundles: ``pytest_plugins = ["tests.edge_bundles"]``.

``edge_digits_bundle`` and ``edge_taxi_bundle`` are small models of the two reference tasks,
trained for 2 epochs with the cloud trainer (``tests.trained_models.train_export``) and
bundled by ``fedge-quantize bundle``: int8 inference model, trainable model, int8 backbone,
weights and manifest. Use them read-only: copy a bundle before changing it. Nothing here
imports TensorFlow until a fixture runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["BUNDLE_EPOCHS", "build_bundle", "edge_digits_bundle", "edge_taxi_bundle"]

BUNDLE_EPOCHS = 2


def build_bundle(task: str, workdir: Path, *, batch_size: int, version: str) -> Path:
    """Train ``task`` briefly and bundle it; returns the bundle directory."""
    from quantize.cli import quantize_cli
    from tests.trained_models import train_export

    export = train_export(task, workdir / f"{task}-export", epochs=BUNDLE_EPOCHS)
    out = workdir / f"{task}-bundle"
    args = ["bundle", str(export), "--out", str(out), "--quiet", "--batch-size", str(batch_size)]
    args += ["--version", version, "--representative", "100"]
    assert quantize_cli(args) == 0
    return out


@pytest.fixture(scope="session")
def edge_digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits CNN bundle (read-only: copy it before changing it)."""
    return build_bundle(
        "digits", tmp_path_factory.mktemp("edge-digits"), batch_size=32, version="digits-v1"
    )


@pytest.fixture(scope="session")
def edge_taxi_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A taxi MLP bundle (read-only: copy it before changing it)."""
    return build_bundle(
        "taxi", tmp_path_factory.mktemp("edge-taxi"), batch_size=16, version="taxi-v1"
    )
