"""Server optimizers: apply an aggregated delta to the global model, with explicit state.

Following Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), the aggregated
client delta is treated as a pseudo-gradient (already pointing downhill) and fed to a server
optimizer. ``init(global_weights) -> ServerState`` and
``step(state, global_weights, delta) -> (new_global_weights, new_state)`` never mutate their
inputs; :class:`ServerState` round-trips through bytes so a coordinator can persist it.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedge.errors import ConfigError, WeightsFormatError
from fedge.validation import check_fraction, check_positive
from fedge.weights import Weights, decode_weights, encode_weights

__all__ = [
    "SERVER_OPTIMIZER_NAMES",
    "FedAdam",
    "FedAvgM",
    "FedAvgServer",
    "FedYogi",
    "ServerOptimizer",
    "ServerState",
    "build_server_optimizer",
    "server_optimizer_options",
]

Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ServerState:
    """What a server optimizer carries between rounds: its name, step count and slots.

    ``slots`` maps a slot name (``"m"``, ``"v"``, ``"momentum"``) to Weights shaped like the
    global model.
    """

    optimizer: str
    step: int
    slots: Mapping[str, Weights] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ConfigError(f"step must be an integer >= 0, got {self.step!r}")
        object.__setattr__(self, "slots", MappingProxyType(dict(self.slots)))

    def to_bytes(self) -> bytes:
        """safetensors bytes: tensors named ``<slot>/<tensor>``, the rest in the metadata."""
        layout = [[slot, list(weights.names)] for slot, weights in self.slots.items()]
        tensors = Weights.from_pairs(
            (f"{slot}/{name}", array)
            for slot, weights in self.slots.items()
            for name, array in weights.items()
        )
        metadata = {
            "server_state.optimizer": self.optimizer,
            "server_state.step": str(self.step),
            "server_state.slots": json.dumps(layout),
        }
        return encode_weights(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int | None = None) -> ServerState:
        tensors, metadata = decode_weights(data, max_bytes=max_bytes)
        try:
            optimizer = metadata["server_state.optimizer"]
            step = int(metadata["server_state.step"])
            layout = json.loads(metadata["server_state.slots"])
            slots = {
                slot: Weights({name: tensors[f"{slot}/{name}"] for name in names})
                for slot, names in layout
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsFormatError(f"not a server state: {exc!r}") from exc
        if sum(len(w) for w in slots.values()) != len(tensors):
            raise WeightsFormatError("server state holds tensors outside its slots")
        return cls(optimizer=optimizer, step=step, slots=slots)


class ServerOptimizer(ABC):
    """Turns (global weights, aggregated delta, state) into new global weights and state."""

    name: ClassVar[str]
    slot_names: ClassVar[tuple[str, ...]] = ()

    def init(self, global_weights: Weights) -> ServerState:
        """The state before the first round."""
        global_weights.check_finite()
        return ServerState(
            self.name, 0, {s: self._initial_slot(s, global_weights) for s in self.slot_names}
        )

    def step(
        self, state: ServerState, global_weights: Weights, aggregated_delta: Weights
    ) -> tuple[Weights, ServerState]:
        """Apply one round's aggregated delta; returns (new global weights, new state)."""
        if state.optimizer != self.name or tuple(state.slots) != self.slot_names:
            raise ConfigError(
                f"{self.name} cannot use a state of {state.optimizer!r} "
                f"with slots {list(state.slots)}"
            )
        aggregated_delta.validate_against(global_weights)
        for slot in state.slots.values():
            slot.validate_against(global_weights)
        new_x: dict[str, Float64Array] = {}
        new_slots: dict[str, dict[str, Float64Array]] = {s: {} for s in self.slot_names}
        for name in global_weights.names:
            x = global_weights[name].astype(np.float64)
            d = aggregated_delta[name].astype(np.float64)
            old = {s: state.slots[s][name].astype(np.float64) for s in self.slot_names}
            new_x[name], updated = self._update(x, d, old)
            for s in self.slot_names:
                new_slots[s][name] = updated[s]
        new_state = ServerState(
            self.name, state.step + 1, {s: Weights(t) for s, t in new_slots.items()}
        )
        return Weights(new_x), new_state

    def _initial_slot(self, slot: str, global_weights: Weights) -> Weights:
        return global_weights.zeros_like()

    @abstractmethod
    def _update(
        self, x: Float64Array, d: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        """One tensor's new value and new slot values, all in float64."""


@dataclass(frozen=True, kw_only=True)
class FedAvgServer(ServerOptimizer):
    """``x <- x + lr * delta``; with ``lr = 1`` this is plain FedAvg (McMahan et al. 2017)."""

    name: ClassVar[str] = "fedavg"
    lr: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")

    def _update(
        self, x: Float64Array, d: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        return x + self.lr * d, {}


@dataclass(frozen=True, kw_only=True)
class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019; Reddi et al. 2021): ``v <- momentum * v + delta``,
    ``x <- x + lr * v``, with ``v`` starting at zero."""

    name: ClassVar[str] = "fedavgm"
    slot_names: ClassVar[tuple[str, ...]] = ("momentum",)
    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")
        check_fraction(self.momentum, "momentum")

    def _update(
        self, x: Float64Array, d: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        v = self.momentum * slots["momentum"] + d
        return x + self.lr * v, {"momentum": v}


@dataclass(frozen=True, kw_only=True)
class _Adaptive(ServerOptimizer):
    """Reddi et al. 2021, Algorithm 2: ``m <- b1*m + (1-b1)*d``, second moment ``v`` per
    subclass, ``x <- x + lr * m / (sqrt(v) + tau)``. No bias correction, as in the paper.

    ``m`` starts at zero and ``v`` at ``tau**2`` (the paper asks for ``v_{-1} >= tau**2``).
    ``lr`` has no universal default; 0.01 is a cautious start, tune it per task.
    """

    slot_names: ClassVar[tuple[str, ...]] = ("m", "v")
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        check_positive(self.lr, "lr")
        check_fraction(self.beta1, "beta1")
        check_fraction(self.beta2, "beta2")
        check_positive(self.tau, "tau")

    def _initial_slot(self, slot: str, global_weights: Weights) -> Weights:
        zeros = global_weights.zeros_like()
        if slot == "v":
            return Weights({n: np.full(a.shape, self.tau**2) for n, a in zeros.items()})
        return zeros

    def _update(
        self, x: Float64Array, d: Float64Array, slots: dict[str, Float64Array]
    ) -> tuple[Float64Array, dict[str, Float64Array]]:
        m = self.beta1 * slots["m"] + (1.0 - self.beta1) * d
        v = self._second_moment(slots["v"], d * d)
        return x + self.lr * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}

    @abstractmethod
    def _second_moment(self, v: Float64Array, d2: Float64Array) -> Float64Array: ...


@dataclass(frozen=True, kw_only=True)
class FedAdam(_Adaptive):
    """FedAdam (Reddi et al. 2021): ``v <- b2*v + (1-b2)*d^2``."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: Float64Array, d2: Float64Array) -> Float64Array:
        return self.beta2 * v + (1.0 - self.beta2) * d2


@dataclass(frozen=True, kw_only=True)
class FedYogi(_Adaptive):
    """FedYogi (Reddi et al. 2021; Zaheer et al. 2018):
    ``v <- v - (1-b2) * d^2 * sign(v - d^2)``."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: Float64Array, d2: Float64Array) -> Float64Array:
        sign: Float64Array = np.sign(v - d2)
        return v - (1.0 - self.beta2) * d2 * sign


_SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    "fedavg": FedAvgServer,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}
SERVER_OPTIMIZER_NAMES: tuple[str, ...] = tuple(_SERVER_OPTIMIZERS)


def server_optimizer_options(name: str) -> tuple[str, ...]:
    """The keyword options :func:`build_server_optimizer` accepts for ``name``."""
    if name not in _SERVER_OPTIMIZERS:
        raise ConfigError(
            f"unknown server optimizer {name!r}; expected one of {list(SERVER_OPTIMIZER_NAMES)}"
        )
    return tuple(f.name for f in dataclasses.fields(_SERVER_OPTIMIZERS[name]))  # type: ignore[arg-type]


def build_server_optimizer(name: str, **options: float) -> ServerOptimizer:
    """Server optimizer ``name`` (one of :data:`SERVER_OPTIMIZER_NAMES`) with ``options``."""
    accepted = server_optimizer_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"server optimizer {name!r} takes the options {list(accepted)}, got {unknown}"
        )
    return _SERVER_OPTIMIZERS[name](**options)
