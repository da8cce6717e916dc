"""The cloud's part of a simulation: pretrain on a small proxy share, build the edge bundle.

The cloud holds only a seeded, stratified ``proxy_fraction`` of a task's training split
(``cloud_trainer``'s ``data_fraction``); it trains the whole zoo model there and builds the
edge bundle with ``quantize`` (int8 inference model, trainable head, weights, manifest). The
rest of the training split lives only on the simulated clients (see
:mod:`simulations.scenario`).

Both steps take tens of seconds and need TensorFlow, so their result is cached under
``cache_dir/<task>-<key>/{export,bundle}``, where the key is a digest of every setting that
changes the result; a warm cache is found without importing TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cloud_trainer.config import DEFAULT_TEST_FRACTION
from cloud_trainer.record import RECORD_FILE
from fedge.bundle import MANIFEST_NAME, BundleManifest, verify_bundle
from fedge.data import TASK_NAMES
from fedge.errors import BundleError, ConfigError
from fedge.fileio import publish_directory
from fedge.validation import check_fraction, check_int

__all__ = [
    "DEFAULT_PRETRAIN_EPOCHS",
    "DEFAULT_PROXY_FRACTION",
    "PretrainConfig",
    "Pretrained",
    "find_pretrained",
    "pretrain",
]

logger = logging.getLogger(__name__)

DEFAULT_PROXY_FRACTION = 0.1
DEFAULT_PRETRAIN_EPOCHS = {"digits": 20, "taxi": 5}
"""Enough for a useful backbone from the proxy share alone (digits ~0.88 test accuracy,
taxi ~0.94 AUC) without overfitting it much further."""
_CACHE_FORMAT = 1  # bump when the cached layout or the recipe changes
EXPORT_DIR = "export"
BUNDLE_DIR = "bundle"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PretrainConfig:
    """How the cloud pretrains ``task`` and bundles it; every field enters the cache key.

    ``device_batch_size`` is the bundle's static on-device training batch.
    """

    task: str
    seed: int = 0
    proxy_fraction: float = DEFAULT_PROXY_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 3e-3
    device_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(f"unknown task {self.task!r}; known: {list(TASK_NAMES)}")
        check_fraction(self.proxy_fraction, "the proxy fraction", zero_ok=False)
        if self.epochs is None:
            object.__setattr__(self, "epochs", DEFAULT_PRETRAIN_EPOCHS[self.task])
        for name in ("epochs", "batch_size", "device_batch_size"):
            check_int(getattr(self, name), f"pretraining {name}", low=1)

    def key(self) -> str:
        """A digest of the settings: equal keys mean the same export and bundle."""
        document = json.dumps({"format": _CACHE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(document.encode()).hexdigest()

    @property
    def version(self) -> str:
        """The bundle's model version: task and cache key."""
        return f"{self.task}-proxy-{self.key()[:12]}"


@dataclass(frozen=True)
class Pretrained:
    """A pretrained export (``saved_model/`` + record + spec) and its verified edge bundle."""

    config: PretrainConfig
    export_dir: Path
    bundle_dir: Path
    manifest: BundleManifest
    reused: bool
    """True when the cache already held it (nothing was trained)."""


def _entry(config: PretrainConfig, cache_dir: Path) -> Path:
    return cache_dir / f"{config.task}-{config.key()[:16]}"


def find_pretrained(config: PretrainConfig, cache_dir: str | Path) -> Pretrained | None:
    """The cached result for ``config``, verified, or None; never imports TensorFlow."""
    entry = _entry(config, Path(cache_dir))
    export, bundle = entry / EXPORT_DIR, entry / BUNDLE_DIR
    if not (export / RECORD_FILE).is_file() or not (bundle / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        logger.warning("ignoring the damaged cached bundle %s: %s", bundle, exc)
        return None
    return Pretrained(config, export, bundle, manifest, reused=True)


def pretrain(
    config: PretrainConfig, cache_dir: str | Path, *, progress: Progress | None = None
) -> Pretrained:
    """The pretrained export and bundle of ``config``: from the cache, or made now.

    A fresh result is built in a hidden staging directory and renamed into the cache at the
    end, so an interrupted run leaves no half-built entry (and two runs racing both finish
    with one entry).
    """
    step = progress or (lambda _: None)
    found = find_pretrained(config, cache_dir)
    if found is not None:
        logger.info("reusing the pretrained %s model in %s", config.task, found.bundle_dir.parent)
        return found
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{config.task}-{uuid.uuid4().hex[:8]}.partial"
    try:
        _build(config, staging, step)
        try:
            publish_directory(staging, _entry(config, root))
        except OSError:
            if find_pretrained(config, root) is None:  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    found = find_pretrained(config, root)
    if found is None:
        raise BundleError(f"the pretrained bundle in {_entry(config, root)} does not verify")
    return replace(found, reused=False)


def _build(config: PretrainConfig, staging: Path, step: Progress) -> None:
    from cloud_trainer.config import TrainConfig
    from cloud_trainer.train import train
    from quantize.jobs import bundle_export

    assert config.epochs is not None  # resolved in __post_init__
    step(
        f"pretraining the {config.task} model on a {config.proxy_fraction:.0%} proxy share "
        f"({config.epochs} epochs)"
    )
    result = train(
        TrainConfig(
            task=config.task,
            out_dir=str(staging / EXPORT_DIR),
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            test_fraction=config.test_fraction,
            data_fraction=config.proxy_fraction,
            learning_rate=config.learning_rate,
            progress=False,
        )
    )
    logger.info("pretrained %s: %s", config.task, result.record.metrics)
    step("building the edge bundle")
    bundle_export(
        staging / EXPORT_DIR,
        staging / BUNDLE_DIR,
        batch_size=config.device_batch_size,
        version=config.version,
    )
