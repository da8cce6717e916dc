"""Who this process is in a multi-worker cluster, read from ``TF_CONFIG`` (no TensorFlow).

Only the chief writes durable outputs. Other workers must still take part in every save
(checkpoints and SavedModels may run collective ops), so they write to a temporary
directory that is removed afterwards: the ``write_filepath`` pattern of the TensorFlow
multi-worker Keras tutorial, with the same ``workertemp_<id>`` names Keras uses.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedge.errors import ConfigError

__all__ = [
    "TF_CONFIG",
    "ClusterRole",
    "cluster_role",
    "local_tf_configs",
    "remove_worker_temp",
    "write_filepath",
]

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class ClusterRole:
    """This process's task in the cluster; ``task_type`` None means no cluster (a chief)."""

    task_type: str | None = None
    task_id: int = 0
    num_workers: int = 1
    has_chief: bool = False
    """Whether the cluster has a ``chief`` task (else worker 0 acts as chief)."""

    @property
    def is_chief(self) -> bool:
        """True for the ``chief`` task, worker 0 of a chief-less cluster, or no cluster."""
        return (
            self.task_type is None
            or self.task_type == "chief"
            or (self.task_type == "worker" and self.task_id == 0 and not self.has_chief)
        )


def cluster_role(environ: Mapping[str, str] | None = None) -> ClusterRole:
    """Parse ``TF_CONFIG`` from ``environ`` (``os.environ`` by default).

    ConfigError when it is set but not a valid cluster description.
    """
    text = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not text:
        return ClusterRole()
    try:
        config = json.loads(text)
        cluster = config["cluster"]
        task = config["task"]
        task_type = str(task["type"])
        task_id = int(task["index"])
        workers = list(cluster.get("worker", []))
        chiefs = list(cluster.get("chief", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{TF_CONFIG} is not a valid cluster description: {exc!r}") from exc
    members = {"worker": workers, "chief": chiefs}
    if task_type not in members or not 0 <= task_id < len(members[task_type]):
        raise ConfigError(
            f"{TF_CONFIG} names task {task_type}:{task_id}, which its cluster does not hold"
        )
    return ClusterRole(
        task_type=task_type,
        task_id=task_id,
        num_workers=len(workers) + len(chiefs),
        has_chief=bool(chiefs),
    )


def local_tf_configs(ports: Sequence[int], *, host: str = "127.0.0.1") -> list[str]:
    """One ``TF_CONFIG`` per port for a chief-less cluster on ``host``; index 0 is the chief."""
    if not ports or len(set(ports)) != len(ports):
        raise ConfigError(f"need distinct ports, one per worker, got {list(ports)}")
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(len(ports))
    ]


def write_filepath(filepath: str | os.PathLike[str], role: ClusterRole) -> str:
    """Where this worker writes ``filepath``: itself on the chief, else a temp sibling dir."""
    path = os.fspath(filepath)
    if role.is_chief:
        return path
    dirpath, base = os.path.split(path)
    temp = os.path.join(dirpath, f"workertemp_{role.task_id}")
    os.makedirs(temp, exist_ok=True)
    return os.path.join(temp, base)


def remove_worker_temp(written: str | os.PathLike[str], role: ClusterRole) -> None:
    """Remove the temp dir :func:`write_filepath` made for a non-chief (no-op on the chief)."""
    if role.is_chief:
        return
    shutil.rmtree(os.path.dirname(os.fspath(written)), ignore_errors=True)
