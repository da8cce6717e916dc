"""The privacy accountant: the (epsilon, delta) guarantee of every model version.

Each DP round (DP-FedAvg, :class:`fedge.strategy.DPFedAvg`) is one Poisson-sampled Gaussian
mechanism: noise multiplier z, sampling rate q = clients_per_round / n for the n clients
registered (not revoked) when it starts. A version's guarantee is the composition of every
DP round of its lineage, its base version's events plus its own, computed with the Rényi DP
accountant of ``dp-accounting`` (Mironov 2017, "Rényi Differential Privacy", CSF; Mironov,
Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism") at the
round's delta (``dp_delta``; default 1 / max(n, 2)^1.1).

What each version records (:attr:`ModelRecord.privacy`, :func:`round_privacy`):
``{"epsilon", "delta", "noise_multiplier", "rounds", "sampling_rate", "events"}``, with
``events`` the lineage's DP rounds grouped by (noise_multiplier, sampling_rate).

- A version registered outside rounds (an imported, pretrained bundle) is treated as
  trained on public data: epsilon 0, no events.
- A round without DP (or with noise multiplier 0) gives no guarantee: its version, and every
  version built on it, records epsilon null.
- A version of an older coordinator without a privacy record: epsilon 0 when no round made
  it, else null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.records import ModelRecord
from fedge.errors import ConfigError

__all__ = [
    "BUDGET_EXHAUSTED",
    "DPEvent",
    "Ledger",
    "compute_epsilon",
    "default_delta",
    "lineage_ledger",
    "public_privacy",
    "round_privacy",
    "sampling_rate",
]

BUDGET_EXHAUSTED = "privacy budget exhausted"
"""How the reason of a round refused by the privacy budget begins."""


@dataclass(frozen=True)
class DPEvent:
    """``rounds`` DP rounds of one noise multiplier and sampling rate."""

    noise_multiplier: float
    sampling_rate: float
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "rounds": self.rounds,
        }


@dataclass(frozen=True)
class Ledger:
    """A lineage's privacy history: its DP events (``None``: no guarantee, a round without
    DP is in it) and how many rounds it holds."""

    events: tuple[DPEvent, ...] | None
    rounds: int

    def plus(self, noise_multiplier: float | None, rate: float) -> Ledger:
        """This ledger after one more round (``noise_multiplier`` None or 0: without DP)."""
        if self.events is None or not noise_multiplier:
            return Ledger(None, self.rounds + 1)
        events = list(self.events)
        for i, event in enumerate(events):
            if event.noise_multiplier == noise_multiplier and event.sampling_rate == rate:
                events[i] = DPEvent(noise_multiplier, rate, event.rounds + 1)
                break
        else:
            events.append(DPEvent(noise_multiplier, rate, 1))
        return Ledger(tuple(events), self.rounds + 1)

    def epsilon(self, delta: float) -> float | None:
        """The composed epsilon at ``delta`` (0 without events; None: no guarantee)."""
        if self.events is None:
            return None
        return compute_epsilon(self.events, delta)


def compute_epsilon(events: Sequence[DPEvent], delta: float) -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (RDP accountant, default
    orders, add-or-remove-one neighbours); 0 without events, inf when unbounded."""
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if not events:
        return 0.0
    from dp_accounting import dp_event, rdp  # the accountant is cloud-side only

    accountant = rdp.RdpAccountant()
    for event in events:
        accountant.compose(
            dp_event.PoissonSampledDpEvent(
                event.sampling_rate, dp_event.GaussianDpEvent(event.noise_multiplier)
            ),
            event.rounds,
        )
    return float(accountant.get_epsilon(delta))


def default_delta(population: int) -> float:
    """1 / n^1.1 for a population of n clients (n below 2 counts as 2): smaller than 1/n,
    so a mechanism that reveals one client's data outright does not meet it."""
    return float(max(population, 2) ** -1.1)


def sampling_rate(clients_per_round: int, population: int) -> float:
    """q = clients_per_round / n, at most 1."""
    return min(1.0, clients_per_round / max(population, 1))


def public_privacy() -> dict[str, Any]:
    """The record of a version trained outside rounds (public data): epsilon 0."""
    return {
        "epsilon": 0.0,
        "delta": None,
        "noise_multiplier": None,
        "rounds": 0,
        "sampling_rate": None,
        "events": [],
    }


def lineage_ledger(model: ModelRecord) -> Ledger:
    """The ledger of ``model``'s lineage, from its privacy record."""
    privacy = model.privacy
    if privacy is None:  # a version of an older coordinator
        return Ledger((), 0) if model.round_id is None else Ledger(None, 0)
    rounds = int(privacy.get("rounds") or 0)
    if privacy.get("epsilon") is None:
        return Ledger(None, rounds)
    events = tuple(
        DPEvent(float(e["noise_multiplier"]), float(e["sampling_rate"]), int(e["rounds"]))
        for e in privacy.get("events") or ()
        if isinstance(e, Mapping)
    )
    return Ledger(events, rounds)


def round_privacy(
    base: ModelRecord, *, noise_multiplier: float | None, rate: float, delta: float
) -> dict[str, Any]:
    """The privacy record of a version a round makes on top of ``base``."""
    ledger = lineage_ledger(base).plus(noise_multiplier, rate)
    epsilon = ledger.epsilon(delta)
    if epsilon is not None and not math.isfinite(epsilon):
        epsilon = None
    guaranteed = epsilon is not None and ledger.events is not None
    return {
        "epsilon": epsilon,
        "delta": delta if guaranteed else None,
        "noise_multiplier": noise_multiplier,
        "rounds": ledger.rounds,
        "sampling_rate": rate,
        "events": [e.to_dict() for e in ledger.events or ()] if guaranteed else [],
    }
