"""Measuring the demo's models: every version on the held-out test set, and the devices'
own evaluation of the final one.

:class:`VersionScorer` downloads a version from the coordinator the way a device does
(:class:`edge_client.BundleStore`: the manifest, then every file checked against its
sha256; round versions differ only in ``weights.safetensors``, so the ``.tflite`` files
are copied locally) and scores its global head with the TFLite runtime
(:class:`edge_client.EdgeModel`, the float trainable model with that version's weights;
the int8 path the device serves too, for every version of a bundle with ``head.tflite``).
No TensorFlow is involved.

:func:`wait_for_evaluations` waits for the devices' answers to an ``evaluate`` task round,
listing them with the admin token (``GET /v1/reports?kind=evaluate``). The figures are
:class:`~simulations.report.TestScore` and :class:`~simulations.report.DeviceEvaluation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from edge_client import BundleStore, CoordinatorClient, EdgeModel, HttpTransport, ModelCache
from edge_client.model import FLOAT_PATH, accuracy, cross_entropy
from fedge.data import Dataset
from simulations.demo.coordinator import AdminApi
from simulations.errors import DemoError
from simulations.report import DeviceEvaluation, TestScore

__all__ = [
    "VersionScorer",
    "device_evaluation",
    "wait_for_evaluations",
]

_POLL = 0.2


class VersionScorer:
    """Downloads and verifies versions into ``mirror`` and scores them on ``test``."""

    def __init__(self, url: str, token: str, mirror: Path, test: Dataset) -> None:
        self._client = CoordinatorClient(url, HttpTransport(), token=token)
        self._bundles = BundleStore(mirror)
        self._models = ModelCache(self._fetch, max_versions=2, num_threads=1)
        self._test = test

    def _fetch(self, version: str) -> Path:
        return self._bundles.fetch(self._client, version)

    def model(self, version: str) -> EdgeModel:
        return self._models.model(version)

    def score(self, version: str) -> TestScore:
        model = self.model(version)
        x, y = model.transform(self._test.columns), self._test.labels
        logits = model.logits(x)
        served_int8 = model.serving_path() != FLOAT_PATH
        int8 = accuracy(model.predict_scores(x), y) if served_int8 else None
        return TestScore(version, accuracy(logits, y), cross_entropy(logits, y), int8)

    def close(self) -> None:
        self._client.close()


def wait_for_evaluations(
    api: AdminApi,
    task_ids: Collection[str],
    *,
    timeout: float,
    check: Callable[[], None],
) -> list[dict[str, Any]]:
    """The evaluation reports (``GET /v1/reports`` documents) answering ``task_ids``, once
    all have arrived (bounded; ``check`` runs on every poll and raises when a device died)."""
    deadline = time.monotonic() + timeout
    while True:
        reports = [r for r in api.list_reports("evaluate") if r["task_id"] in task_ids]
        if len(reports) >= len(task_ids):
            return reports
        if time.monotonic() >= deadline:
            raise DemoError(
                f"only {len(reports)} of {len(task_ids)} devices answered the evaluate "
                f"task within {timeout:.0f} s"
            )
        check()
        time.sleep(_POLL)


def device_evaluation(report: Mapping[str, Any], device: str) -> DeviceEvaluation:
    """The figures of one listed evaluation report."""
    document = report["document"]
    personalized = document.get("personalized_metrics") or {}
    return DeviceEvaluation(
        device=device,
        client_id=report["client_id"],
        model_version=str(document.get("model_version", report["model_version"])),
        holdout_examples=int(document.get("num_examples", 0)),
        global_accuracy=float(document.get("metrics", {}).get("accuracy", float("nan"))),
        personalized_accuracy=(
            float(personalized["accuracy"]) if "accuracy" in personalized else None
        ),
    )
