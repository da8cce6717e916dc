"""Which registered clients train in a round: the :class:`ClientSelector` hook.

The round engine asks its selector once per round, when the round starts, for up to
``count`` of the registered ``candidates``; :func:`check_selection` then holds the answer
to the engine's rules (known, distinct client ids; between the round's ``min_clients`` and
``count`` of them), so a faulty selector stops the round from starting with a clear error
instead of assigning tasks to strangers. :class:`RandomSelector` is the default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedge.errors import ConfigError

__all__ = ["ClientSelector", "RandomSelector", "check_selection"]


class ClientSelector(Protocol):
    """Chooses a round's participants; ``rng`` is the service's seeded generator."""

    def select(
        self, round_id: int, candidates: Sequence[str], count: int, rng: np.random.Generator
    ) -> Sequence[str]: ...


class RandomSelector:
    """``count`` candidates drawn uniformly without replacement from ``rng``."""

    def select(
        self, round_id: int, candidates: Sequence[str], count: int, rng: np.random.Generator
    ) -> Sequence[str]:
        return [str(c) for c in rng.choice(list(candidates), size=count, replace=False)]


def check_selection(
    selected: object, candidates: Sequence[str], *, round_id: int, count: int, min_count: int
) -> tuple[str, ...]:
    """``selected`` as a tuple of client ids, or a ConfigError naming the broken rule."""
    what = f"the client selector's choice for round {round_id}"
    if isinstance(selected, str | bytes) or not isinstance(selected, Sequence | np.ndarray):
        raise ConfigError(f"{what} must be a sequence of client ids, got {selected!r}")
    chosen = list(selected)
    if not all(isinstance(c, str) for c in chosen):
        raise ConfigError(f"{what} must hold client id strings, got {chosen[:5]!r}")
    known = set(candidates)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ConfigError(
            f"{what} names {len(unknown)} clients that are not registered candidates, "
            f"e.g. {unknown[:3]}"
        )
    if len(set(chosen)) != len(chosen):
        repeated = sorted(c for c, n in Counter(chosen).items() if n > 1)
        raise ConfigError(f"{what} names clients more than once: {repeated[:3]}")
    if not min_count <= len(chosen) <= count:
        raise ConfigError(
            f"{what} must name between {min_count} and {count} clients, got {len(chosen)}"
        )
    return tuple(str(c) for c in chosen)
