"""Model zoo, tf.data pipelines and tf.distribute training of the global model.

Names load lazily: ``import cloud_trainer`` does not import TensorFlow, so the CLI can
check its arguments and launch worker processes without paying for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # config / data / records (no TensorFlow)
    "DEFAULT_TEST_FRACTION": "config",
    "STRATEGY_NAMES": "config",
    "TABLE_TASK": "config",
    "TrainConfig": "config",
    "TaskData": "data",
    "build_feature_spec": "data",
    "prepare_table_data": "data",
    "prepare_task_data": "data",
    "split_task": "data",
    "RECORD_FILE": "record",
    "TrainingRecord": "record",
    "load_training_record": "record",
    "ClusterRole": "cluster",
    "cluster_role": "cluster",
    "local_ps_tf_configs": "cluster",
    "local_tf_configs": "cluster",
    "write_filepath": "cluster",
    "ClusterError": "errors",
    "WorkerOutcome": "launcher",
    "launch_local_cluster": "launcher",
    "launch_local_ps_cluster": "launcher",
    "binary_auc": "evaluation",
    "logit_metrics": "evaluation",
    "slice_metrics": "evaluation",
    # TensorFlow
    "ABLATION_FILE": "ablation",
    "run_ablation": "ablation",
    "backbone_layer_names": "models",
    "build_model": "models",
    "compile_model": "models",
    "embedding_model": "models",
    "freeze_backbone": "models",
    "head_layer_names": "models",
    "array_dataset": "pipelines",
    "csv_dataset": "pipelines",
    "write_tfrecord": "pipelines",
    "build_strategy": "strategies",
    "configure_logical_cpus": "strategies",
    "serve": "strategies",
    "TrainResult": "train",
    "TrainingError": "errors",
    "backup_epoch": "train",
    "predict_logits": "train",
    "load_exported_model": "export",
    "load_feature_spec": "export",
    "write_export": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud_trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cloud_trainer.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
