"""Who this process is in a multi-worker or parameter-server cluster, read from
``TF_CONFIG`` (no TensorFlow).

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
    "local_ps_tf_configs",
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
    num_ps: int = 0
    """Parameter servers (``ps`` tasks); with any, the chief is the coordinator and
    ``num_workers`` counts the ``worker`` tasks only."""

    @property
    def is_server(self) -> bool:
        """True for a ``worker`` or ``ps`` task of a parameter-server cluster: it serves."""
        return self.num_ps > 0 and self.task_type in ("worker", "ps")

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
        servers = list(cluster.get("ps", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{TF_CONFIG} is not a valid cluster description: {exc!r}") from exc
    members = {"worker": workers, "chief": chiefs, "ps": servers}
    if task_type not in members or not 0 <= task_id < len(members[task_type]):
        raise ConfigError(
            f"{TF_CONFIG} names task {task_type}:{task_id}, which its cluster does not hold"
        )
    return ClusterRole(
        task_type=task_type,
        task_id=task_id,
        num_workers=len(workers) if servers else len(workers) + len(chiefs),
        has_chief=bool(chiefs),
        num_ps=len(servers),
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


def local_ps_tf_configs(
    chief_port: int,
    worker_ports: Sequence[int],
    ps_ports: Sequence[int],
    *,
    host: str = "127.0.0.1",
) -> list[tuple[str, int, str]]:
    """``(task type, index, TF_CONFIG)`` of every task of a parameter-server cluster on
    ``host``: one chief (the coordinator), a worker per ``worker_ports``, a ps per ``ps_ports``."""
    ports = [chief_port, *worker_ports, *ps_ports]
    if not worker_ports or not ps_ports or len(set(ports)) != len(ports):
        raise ConfigError(
            f"need distinct ports: a chief, at least one worker and one ps, got {ports}"
        )
    cluster = {
        "chief": [f"{host}:{chief_port}"],
        "worker": [f"{host}:{port}" for port in worker_ports],
        "ps": [f"{host}:{port}" for port in ps_ports],
    }
    return [
        (kind, i, json.dumps({"cluster": cluster, "task": {"type": kind, "index": i}}))
        for kind in ("chief", "worker", "ps")
        for i in range(len(cluster[kind]))
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
