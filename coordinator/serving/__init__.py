"""Cloud serving: registry versions scored as devices score them, the predict route in
TensorFlow Serving's REST format, prediction tables and the hybrid cache."""

from coordinator.serving.model import ModelPool, ServedModel
from coordinator.serving.predict import MODES, Predictor, ServingConfig
from coordinator.serving.table import PredictionTable, TableStore

__all__ = [
    "MODES",
    "ModelPool",
    "PredictionTable",
    "Predictor",
    "ServedModel",
    "ServingConfig",
    "TableStore",
]
