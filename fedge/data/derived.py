"""Labels computed from other columns of a file, as the reference tasks define them.

The taxi task's CSV format carries ``tips`` and ``fare``, not its label ``big_tipper``
(``tips > 0.2 * fare``). Every reader of a labelled file goes through
:func:`derived_label_sources` and :func:`derive_label`, so a file in a task's own format is
labelled the same way by the cloud loader, the device daemon and ``fedge-edge predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.data.taxi import TAXI_SCHEMA, big_tipper
from fedge.errors import DataError

__all__ = ["DERIVED_LABELS", "DerivedLabel", "derive_label", "derived_label_sources"]


@dataclass(frozen=True)
class DerivedLabel:
    """A label computed from numeric ``sources`` columns; rows missing a source are dropped."""

    label: str
    sources: tuple[str, ...]
    compute: Callable[..., NDArray[np.int64]]


DERIVED_LABELS: Mapping[str, DerivedLabel] = {
    TAXI_SCHEMA.label: DerivedLabel(TAXI_SCHEMA.label, ("fare", "tips"), big_tipper),
}
"""Derived labels by label name."""


def derived_label_sources(label: str, header: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The source columns to read for ``label`` when ``header`` lacks it but has every source
    of its derivation; ``()`` when the label is read as is (or cannot be derived)."""
    derived = DERIVED_LABELS.get(label)
    if derived is None or label in header or not set(derived.sources) <= header:
        return ()
    return derived.sources


def derive_label(
    label: str, columns: Mapping[str, NDArray[Any]], *, keep_sources: set[str] | frozenset[str]
) -> tuple[dict[str, NDArray[Any]], int]:
    """``columns`` with ``label`` added (int64 class ids), the rows missing a source dropped,
    and the source columns not in ``keep_sources`` removed; also the count of dropped rows."""
    derived = DERIVED_LABELS.get(label)
    if derived is None:
        raise DataError(f"no derivation is known for the label {label!r}")
    sources = [np.asarray(columns[s], dtype=np.float64) for s in derived.sources]
    keep = ~np.logical_or.reduce([np.isnan(s) for s in sources])
    out = {
        name: np.asarray(column)[keep]
        for name, column in columns.items()
        if name not in derived.sources or name in keep_sources
    }
    out[label] = derived.compute(*(s[keep] for s in sources))
    return out, int((~keep).sum())
