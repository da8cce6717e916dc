"""The REST side of serving: ``POST /v1/models/<version>:predict`` and the app's
:class:`~coordinator.serving.predict.Predictor`.

The route belongs to the ``admin`` blueprint (the admin token, like every model
operation); :func:`install_serving` keeps one predictor per app in ``app.extensions``
(no module-level state), built lazily so an app that never predicts loads no model.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from flask import Flask, current_app

from coordinator.rest.bodies import json_body
from coordinator.service import CoordinatorService
from coordinator.serving.predict import Predictor, ServingConfig
from coordinator.serving.stats import ServingStats

__all__ = ["EXTENSION", "PREDICT_RULE", "install_serving", "predict", "serving_stats"]

EXTENSION = "fedge.serving"
PREDICT_RULE = "/v1/models/<version>:predict"


class _Serving:
    def __init__(self, service: CoordinatorService, config: ServingConfig) -> None:
        self.service = service
        self.config = config
        self.stats = ServingStats()
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    @property
    def predictor(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                self._predictor = Predictor(
                    self.service.registry, self.service.artifacts, self.config, stats=self.stats
                )
            return self._predictor


def install_serving(app: Flask, service: CoordinatorService, config: ServingConfig) -> None:
    """Give ``app`` the predictor of ``service`` configured by ``config``."""
    app.extensions[EXTENSION] = _Serving(service, config)


def _serving() -> _Serving:
    return cast(_Serving, current_app.extensions[EXTENSION])


def serving_stats(app: Flask) -> ServingStats | None:
    """The predict route's counters of ``app`` (None for an app without serving)."""
    serving = app.extensions.get(EXTENSION)
    return serving.stats if isinstance(serving, _Serving) else None


def predict(version: str) -> Any:
    """TensorFlow Serving's predict: ``{"instances": [...]}`` -> ``{"predictions": [...]}``."""
    return _serving().predictor.predict(version, json_body())
