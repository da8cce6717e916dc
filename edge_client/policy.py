"""The device owner's privacy policy and the ledger of what the device has answered.

A :class:`DevicePolicy` is read from a JSON file the owner controls (``fedge-edge run
--policy FILE``; else ``STATE/policy.json`` when present; else the safe defaults below).
Every key is optional; an unknown key or a value out of range is refused with a
:class:`~fedge.errors.ConfigError` naming the file and the field::

    {
      "privacy": "on",                 # "off": the unsafe, unprotected baseline (below)
      "min_rows": 20,                  # rows behind any reply: train, evaluate, stats, features
      "task_kinds": ["train", "evaluate", "stats", "features",
                     "secagg_share", "secagg_mask", "secagg_unmask"],
      "epsilon_budget": 10.0,          # per device, summed over every private reply
      "delta": 1e-6,                   # the delta of each private reply
      "min_interval_seconds": {"evaluate": 600, "stats": 3600, "features": 3600},
      "allow_row_features": false,     # row-level features (local DP) only when true
      "features_epsilon": 1.0,
      "features_clip": 1.0,            # L2 bound of one embedding
      "stats_epsilon": 1.0,
      "evaluation_epsilon": 0.5,       # the class counts an evaluation reply carries
      "min_class_rows": 20             # k: rows behind a prototype, a bin or a category
    }

An evaluation reply carries the noised per-class counts of the global model's predictions
and of the labels (:func:`edge_client.privacy.private_class_counts`) at
``evaluation_epsilon`` while the budget can pay for it; once it cannot, the reply carries
its metrics alone (an evaluation is never refused for the budget).

``min_interval_seconds`` names only the kinds it changes (train and the secure-aggregation
stages default to 0). The :class:`PolicyLedger` remembers the epsilon and delta spent
(basic composition: they add up) and when each kind was last answered; the daemon keeps
it in ``STATE/policy_ledger.json`` (mode 0600, written atomically) so a restart does not
refill the budget.

``privacy: "off"`` restores the behaviour from before these protections: no minimum rows,
no interval, no budget, no ledger, row-level features with their true labels and exact
statistics. It exists for baselines and attack tests, is unsafe, and the daemon logs a
WARNING when it starts with it. Only ``task_kinds`` is still honoured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from edge_client.errors import PolicyRefusal
from fedge.errors import ConfigError
from fedge.messages import TASK_KINDS

__all__ = [
    "DEFAULT_MIN_INTERVALS",
    "UNPROTECTED",
    "DevicePolicy",
    "LedgerStore",
    "MemoryLedgerStore",
    "PolicyLedger",
    "load_policy",
]

DEFAULT_MIN_INTERVALS: Mapping[str, float] = MappingProxyType(
    {kind: 0.0 for kind in TASK_KINDS} | {"evaluate": 600.0, "stats": 3600.0, "features": 3600.0}
)
"""Seconds between two answers of one kind, unless the policy file says otherwise."""

_REMEMBERED_ANSWERS = 20


def _number(value: object, name: str, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"field {name}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"field {name}: expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _integer(value: object, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"field {name}: expected an integer >= {low}, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"field {name}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class DevicePolicy:
    """What the device owner allows (see the module docstring for each field)."""

    privacy: str = "on"
    min_rows: int = 20
    task_kinds: tuple[str, ...] = TASK_KINDS
    epsilon_budget: float = 10.0
    delta: float = 1e-6
    min_interval_seconds: Mapping[str, float] = field(default_factory=dict)
    allow_row_features: bool = False
    features_epsilon: float = 1.0
    features_clip: float = 1.0
    stats_epsilon: float = 1.0
    min_class_rows: int = 20
    evaluation_epsilon: float = 0.5

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.privacy not in ("on", "off"):
            raise ConfigError(f'field privacy: expected "on" or "off", got {self.privacy!r}')
        set_(self, "min_rows", _integer(self.min_rows, "min_rows", low=1))
        set_(self, "min_class_rows", _integer(self.min_class_rows, "min_class_rows", low=1))
        if not isinstance(self.task_kinds, tuple | list) or not all(
            isinstance(k, str) for k in self.task_kinds
        ):
            raise ConfigError(
                f"field task_kinds: expected a list of kinds, got {self.task_kinds!r}"
            )
        unknown = sorted(set(self.task_kinds) - set(TASK_KINDS))
        if unknown:
            raise ConfigError(
                f"field task_kinds: unknown kinds {unknown}; known: {list(TASK_KINDS)}"
            )
        set_(self, "task_kinds", tuple(self.task_kinds))
        set_(self, "epsilon_budget", _number(self.epsilon_budget, "epsilon_budget", low=0))
        set_(self, "delta", _number(self.delta, "delta", low=0, high=0.01))
        if self.delta <= 0:
            raise ConfigError(f"field delta: expected a number in (0, 0.01], got {self.delta!r}")
        for name in ("features_epsilon", "features_clip", "stats_epsilon", "evaluation_epsilon"):
            value = _number(getattr(self, name), name, low=0)
            if value <= 0:
                raise ConfigError(f"field {name}: expected a number > 0, got {value!r}")
            set_(self, name, value)
        set_(self, "allow_row_features", _flag(self.allow_row_features, "allow_row_features"))
        if not isinstance(self.min_interval_seconds, Mapping):
            raise ConfigError(
                "field min_interval_seconds: expected an object of kind to seconds, "
                f"got {self.min_interval_seconds!r}"
            )
        intervals = dict(DEFAULT_MIN_INTERVALS)
        for kind, seconds in self.min_interval_seconds.items():
            if kind not in TASK_KINDS:
                raise ConfigError(
                    f"field min_interval_seconds: unknown kind {kind!r}; known: {list(TASK_KINDS)}"
                )
            intervals[kind] = _number(seconds, f"min_interval_seconds.{kind}", low=0)
        set_(self, "min_interval_seconds", MappingProxyType(intervals))

    @property
    def protected(self) -> bool:
        """False for the unsafe ``privacy: "off"`` baseline."""
        return self.privacy == "on"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> DevicePolicy:
        """The policy a JSON document describes (ConfigError names a bad or unknown field)."""
        if not isinstance(document, Mapping):
            raise ConfigError(f"expected a JSON object, got {type(document).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ConfigError(f"field {unknown[0]}: unknown; known fields: {sorted(known)}")
        values = dict(document)
        if "task_kinds" in values and isinstance(values["task_kinds"], list):
            values["task_kinds"] = tuple(values["task_kinds"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "privacy": self.privacy,
            "min_rows": self.min_rows,
            "task_kinds": list(self.task_kinds),
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "min_interval_seconds": dict(self.min_interval_seconds),
            "allow_row_features": self.allow_row_features,
            "features_epsilon": self.features_epsilon,
            "features_clip": self.features_clip,
            "stats_epsilon": self.stats_epsilon,
            "min_class_rows": self.min_class_rows,
            "evaluation_epsilon": self.evaluation_epsilon,
        }

    # The checks ---------------------------------------------------------------------------

    def epsilon_for(self, kind: str) -> float:
        """The epsilon an answer of ``kind`` must find in the budget to be admitted (0 when
        it adds no noise here; an evaluation's class counts are paid only when
        :meth:`affords` them)."""
        if not self.protected:
            return 0.0
        return {"stats": self.stats_epsilon, "features": self.features_epsilon}.get(kind, 0.0)

    def affords(self, epsilon: float, ledger: PolicyLedger) -> bool:
        """Whether ``ledger``'s spending plus ``epsilon`` stays within the budget."""
        return ledger.epsilon_spent + epsilon <= self.epsilon_budget + 1e-12

    def admit(self, kind: str, ledger: PolicyLedger, *, now: float) -> None:
        """Raise :class:`PolicyRefusal` unless a task of ``kind`` may be answered at ``now``:
        a kind the owner answers, not sooner than its interval after the last answer of that
        kind, and within the epsilon budget."""
        if kind not in self.task_kinds:
            raise PolicyRefusal(
                f"the device policy does not answer {kind} tasks "
                f"(task_kinds: {list(self.task_kinds)})",
                reason="task_kind",
            )
        if not self.protected:
            return
        interval = self.min_interval_seconds.get(kind, 0.0)
        last = ledger.last_answered.get(kind)
        if interval > 0 and last is not None and now - last < interval:
            raise PolicyRefusal(
                f"the device answered a {kind} task {now - last:.0f} s ago; its policy "
                f"allows one every {interval:g} s",
                reason="interval",
            )
        cost = self.epsilon_for(kind)
        if cost > 0 and ledger.epsilon_spent + cost > self.epsilon_budget + 1e-12:
            raise PolicyRefusal(
                f"privacy budget exhausted: a {kind} answer costs epsilon {cost:g}, "
                f"{ledger.epsilon_spent:g} of the device's {self.epsilon_budget:g} is spent",
                reason="budget",
            )

    def check_rows(self, rows: int, kind: str) -> None:
        """Raise :class:`PolicyRefusal` when fewer than ``min_rows`` rows stand behind a
        reply of ``kind``."""
        if self.protected and rows < self.min_rows:
            raise PolicyRefusal(
                f"{rows} local rows stand behind this {kind} reply; the device policy "
                f"needs at least {self.min_rows} (min_rows)",
                reason="min_rows",
            )


def load_policy(path: str | Path) -> DevicePolicy:
    """The policy in the JSON file ``path``; ConfigError naming the file (and the field)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"policy file {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"policy file {path}: not valid JSON: {exc}") from exc
    try:
        return DevicePolicy.from_dict(document)
    except ConfigError as exc:
        raise ConfigError(f"policy file {path}: {exc}") from exc


@dataclass(frozen=True)
class PolicyLedger:
    """What the device has spent and answered: ``epsilon_spent``/``delta_spent`` (summed),
    ``last_answered`` (kind -> time of the last answer) and the latest ``answers``."""

    epsilon_spent: float = 0.0
    delta_spent: float = 0.0
    last_answered: Mapping[str, float] = field(default_factory=dict)
    answers: tuple[Mapping[str, Any], ...] = ()

    def charge(
        self, *, kind: str, task_id: str, now: float, epsilon: float, delta: float
    ) -> PolicyLedger:
        """The ledger after answering ``task_id`` (of ``kind``) at ``now`` for (epsilon, delta)."""
        answer = {"task_id": task_id, "kind": kind, "at": now, "epsilon": epsilon}
        return replace(
            self,
            epsilon_spent=self.epsilon_spent + epsilon,
            delta_spent=self.delta_spent + delta,
            last_answered={**self.last_answered, kind: now},
            answers=(*self.answers, answer)[-_REMEMBERED_ANSWERS:],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon_spent": self.epsilon_spent,
            "delta_spent": self.delta_spent,
            "last_answered": dict(self.last_answered),
            "answers": [dict(a) for a in self.answers],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> PolicyLedger:
        """A ledger from :meth:`to_dict`'s document; ConfigError when it is damaged (the
        caller must not treat a damaged ledger as an empty one: that would refill the budget)."""
        try:
            last = document.get("last_answered", {})
            answers = document.get("answers", [])
            if not isinstance(last, Mapping) or not isinstance(answers, list):
                raise TypeError("last_answered must be an object and answers a list")
            return cls(
                epsilon_spent=_number(document.get("epsilon_spent", 0.0), "epsilon_spent", low=0),
                delta_spent=_number(document.get("delta_spent", 0.0), "delta_spent", low=0),
                last_answered={str(k): _number(v, "last_answered", low=0) for k, v in last.items()},
                answers=tuple(dict(a) for a in answers if isinstance(a, Mapping)),
            )
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"the policy ledger is damaged: {exc}") from exc

    def summary(self, policy: DevicePolicy) -> dict[str, Any]:
        """The daemon status's ``policy`` section."""
        return {
            "privacy": policy.privacy,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_budget": policy.epsilon_budget,
            "delta_spent": self.delta_spent,
            "min_rows": policy.min_rows,
            "task_kinds": list(policy.task_kinds),
            "last_answers": [dict(a) for a in self.answers[-5:]],
        }


class LedgerStore(Protocol):
    """Where a device keeps its :class:`PolicyLedger`."""

    def load(self) -> PolicyLedger: ...

    def save(self, ledger: PolicyLedger) -> None: ...


class MemoryLedgerStore:
    """A ledger kept in memory (a simulated client, a test)."""

    def __init__(self, ledger: PolicyLedger | None = None) -> None:
        self._ledger = ledger if ledger is not None else PolicyLedger()

    def load(self) -> PolicyLedger:
        return self._ledger

    def save(self, ledger: PolicyLedger) -> None:
        self._ledger = ledger


UNPROTECTED = DevicePolicy(privacy="off")
"""The unsafe ``privacy: "off"`` baseline (the default of an in-memory
:class:`~edge_client.handler.ClientContext`; never of a device daemon)."""
