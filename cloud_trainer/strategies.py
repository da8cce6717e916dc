"""tf.distribute strategies by name: ``default``, ``mirrored``, ``multi-worker`` and
``parameter-server``.

``mirrored`` uses every GPU; without GPUs it splits the CPU into logical devices so the
same code path (replicas, all-reduce, global batch) runs and is tested on a laptop. That
split must happen before TensorFlow initialises its runtime, i.e. before any op runs:
build the strategy first thing in a process. ``multi-worker`` reads its cluster from
``TF_CONFIG``; without one it is a one-worker cluster. ``parameter-server`` needs a
``TF_CONFIG`` cluster with a chief (the coordinator, which builds the strategy and runs
``fit``), workers and parameter servers; workers and parameter servers run :func:`serve`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import NoReturn

import tensorflow as tf

from cloud_trainer.config import STRATEGY_NAMES
from fedge.errors import ConfigError

__all__ = [
    "DEFAULT_CPU_REPLICAS",
    "build_strategy",
    "configure_logical_cpus",
    "serve",
]

logger = logging.getLogger(__name__)

DEFAULT_CPU_REPLICAS = 2
"""Logical CPU devices ``mirrored`` uses when there is no GPU and no ``workers`` is given."""


def configure_logical_cpus(count: int) -> list[str]:
    """Split the first physical CPU into ``count`` logical devices; their names.

    Must run before TensorFlow initialises. Afterwards it only succeeds when at least
    ``count`` logical CPUs already exist; otherwise a ConfigError says to use a new process.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the number of logical CPUs must be an int >= 1, got {count!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as exc:
        have = tf.config.list_logical_devices("CPU")
        if len(have) < count:
            raise ConfigError(
                f"cannot split the CPU into {count} logical devices: TensorFlow is already "
                f"initialised with {len(have)}; build the mirrored strategy first thing in a "
                "fresh process"
            ) from exc
    return [device.name for device in tf.config.list_logical_devices("CPU")[:count]]


def build_strategy(name: str, *, workers: int | None = None) -> tf.distribute.Strategy:
    """The strategy called ``name``; ``workers`` is the CPU replica count of ``mirrored``."""
    if name not in STRATEGY_NAMES:
        raise ConfigError(f"unknown strategy {name!r}; known: {list(STRATEGY_NAMES)}")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            logger.info("mirrored strategy over %d GPU(s)", len(gpus))
            return tf.distribute.MirroredStrategy()
        devices = configure_logical_cpus(workers or DEFAULT_CPU_REPLICAS)
        logger.info("no GPU: mirrored strategy over logical CPU devices %s", devices)
        # All-reduce through one device: NCCL needs GPUs.
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "parameter-server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if resolver.task_type != "chief" or not resolver.cluster_spec().as_dict().get("ps"):
            raise ConfigError(
                "the parameter-server strategy runs on the chief of a TF_CONFIG cluster "
                "with ps tasks"
            )
        return tf.distribute.experimental.ParameterServerStrategy(resolver)
    return tf.distribute.MultiWorkerMirroredStrategy()


def serve(*, poll_interval_s: float = 0.5) -> NoReturn:
    """Run this process's ``worker`` or ``ps`` task of the ``TF_CONFIG`` cluster until it is
    stopped (SIGINT/SIGTERM raise KeyboardInterrupt here; the server runs in its own threads).
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type not in ("worker", "ps"):
        raise ConfigError(f"only worker and ps tasks serve, not {resolver.task_type!r}")
    # A worker reports a lost peer to the coordinator instead of retrying forever.
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    logger.info("%s %d serving at %s", resolver.task_type, resolver.task_id, server.target)
    while True:
        time.sleep(poll_interval_s)
