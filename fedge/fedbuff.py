"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

Clients train on whatever server version they downloaded, whenever they are available.
Each update names its base version; its *staleness* ``tau`` is the number of server
versions committed since that base. The server keeps a buffer:

- an update staler than ``max_staleness`` is dropped, and so is a malformed one (wrong
  tensors or shapes, non-finite values, a base from the future): neither touches the sum;
- an accepted update's delta is added to the buffer's sum with the weight
  ``s(tau) = (1 + tau) ** -staleness_exponent`` (``1/sqrt(1 + tau)`` by default);
- after ``buffer_size`` accepted updates the buffer commits: the new server model is
  ``global + server_learning_rate * sum(s(tau_k) * delta_k) / buffer_size`` and the
  buffer starts empty over the new version.

The sum is accumulated in place (float64), so memory is O(model size) whatever the buffer
size. Pure numpy; the coordinator and the simulations build on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedge.aggregation import check_delta
from fedge.errors import AggregationError, ConfigError
from fedge.validation import check_int, check_number
from fedge.weights import Weights

__all__ = [
    "Admission",
    "BufferCommit",
    "FedBuffBuffer",
    "FedBuffConfig",
    "staleness_weight",
]

Float64Array = npt.NDArray[np.float64]


def staleness_weight(staleness: int, *, exponent: float = 0.5) -> float:
    """``s(tau) = (1 + tau) ** -exponent``: 1 for a fresh update, smaller the staler it is."""
    tau = check_int(staleness, "staleness", low=0)
    power = check_number(exponent, "exponent", low=0.0)
    return float((1.0 + tau) ** -power)


@dataclass(frozen=True)
class FedBuffConfig:
    """``buffer_size`` (K) updates per commit; updates staler than ``max_staleness`` (S)
    are dropped; ``server_learning_rate`` scales the buffered mean."""

    buffer_size: int = 10
    max_staleness: int = 10
    server_learning_rate: float = 1.0
    staleness_exponent: float = 0.5

    def __post_init__(self) -> None:
        check_int(self.buffer_size, "buffer_size", low=1)
        check_int(self.max_staleness, "max_staleness", low=0)
        check_number(
            self.server_learning_rate, "server_learning_rate", low=0.0, low_inclusive=False
        )
        check_number(self.staleness_exponent, "staleness_exponent", low=0.0)


@dataclass(frozen=True)
class Admission:
    """What the buffer did with one offered update: ``accepted`` with its staleness and
    weight, or not, with the ``reason`` (``too_stale`` or ``malformed``) and a detail."""

    accepted: bool
    staleness: int
    weight: float
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class BufferCommit:
    """One commit: the new server model, its version number, its parent's, the updates
    that went into it (by the ids they were offered under) and their staleness."""

    weights: Weights
    version: int
    parent: int
    participants: tuple[str, ...]
    staleness: tuple[int, ...]

    @property
    def mean_staleness(self) -> float:
        return float(np.mean(self.staleness))

    @property
    def max_staleness(self) -> int:
        return max(self.staleness)


class FedBuffBuffer:
    """The server side of FedBuff over a global model numbered from ``version``.

    :meth:`offer` an update (its delta against its base version); when it returns a
    :class:`BufferCommit`, the global model moved on to the commit's version.
    """

    def __init__(self, config: FedBuffConfig, global_weights: Weights, *, version: int = 0) -> None:
        if not isinstance(config, FedBuffConfig):
            raise ConfigError(f"config must be FedBuffConfig, got {type(config).__name__}")
        global_weights.check_finite()
        self.config = config
        self._global = global_weights
        self._version = check_int(version, "version", low=0)
        self._reset()

    def _reset(self) -> None:
        self._sum: dict[str, Float64Array] = {
            name: np.zeros(tensor.shape, dtype=np.float64) for name, tensor in self._global.items()
        }
        self._ids: list[str] = []
        self._staleness: list[int] = []

    @property
    def version(self) -> int:
        """The current server version (what a newly started client trains on)."""
        return self._version

    @property
    def global_weights(self) -> Weights:
        return self._global

    @property
    def pending(self) -> int:
        """Accepted updates waiting in the buffer."""
        return len(self._ids)

    def staleness_of(self, base_version: int) -> int:
        """Server versions committed since ``base_version``."""
        return self._version - base_version

    def offer(
        self, update_id: str, delta: object, base_version: int
    ) -> tuple[Admission, BufferCommit | None]:
        """Offer one client's ``delta`` trained on ``base_version``.

        Returns the admission and, when this update filled the buffer, the commit.
        A dropped update leaves the buffer and the global model exactly as they were.
        """
        if isinstance(base_version, bool) or not isinstance(base_version, int):
            return Admission(False, 0, 0.0, "malformed", f"base version {base_version!r}"), None
        tau = self.staleness_of(base_version)
        if tau < 0 or base_version < 0:
            detail = f"base version {base_version} is not a committed version (<= {self._version})"
            return Admission(False, 0, 0.0, "malformed", detail), None
        if tau > self.config.max_staleness:
            detail = f"staleness {tau} > max_staleness {self.config.max_staleness}"
            return Admission(False, tau, 0.0, "too_stale", detail), None
        try:
            checked = check_delta(delta, self._global, len(self._ids))
        except AggregationError as exc:
            return Admission(False, tau, 0.0, "malformed", str(exc)), None
        weight = staleness_weight(tau, exponent=self.config.staleness_exponent)
        for name, tensor in checked.items():
            self._sum[name] += weight * tensor.astype(np.float64)
        self._ids.append(str(update_id))
        self._staleness.append(tau)
        admission = Admission(True, tau, weight)
        if len(self._ids) < self.config.buffer_size:
            return admission, None
        return admission, self._commit()

    def _commit(self) -> BufferCommit:
        scale = self.config.server_learning_rate / self.config.buffer_size
        new = Weights(
            {
                name: (tensor.astype(np.float64) + scale * self._sum[name]).astype(np.float32)
                for name, tensor in self._global.items()
            }
        )
        if not math.isfinite(new.l2_norm()):
            raise AggregationError("the buffered commit is not finite")
        commit = BufferCommit(
            weights=new,
            version=self._version + 1,
            parent=self._version,
            participants=tuple(self._ids),
            staleness=tuple(self._staleness),
        )
        self._global = new
        self._version += 1
        self._reset()
        return commit
