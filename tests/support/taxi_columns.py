"""The bundled taxi CSV parsed with the stdlib alone: an independent check of fedge's readers."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.schema import Schema

TAXI_CSV = Path(__file__).resolve().parents[2] / "fedge" / "datasets" / "taxi.csv"
TAXI_SCHEMA = Schema(
    numeric=("fare", "trip_miles", "trip_seconds"),
    categorical=("payment_type", "company", "pickup_community_area"),
    label="big_tipper",
    num_classes=2,
)

Array = npt.NDArray[Any]
Columns = dict[str, Array]


@functools.cache
def taxi_columns() -> tuple[Columns, Array]:
    """Raw columns of TAXI_SCHEMA (NaN / None for missing) and the big-tipper labels."""
    with TAXI_CSV.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: Columns = {}
    for name in TAXI_SCHEMA.numeric:
        columns[name] = np.array([float(r[name]) if r[name] else math.nan for r in rows])
    for name in TAXI_SCHEMA.categorical:
        columns[name] = np.array([r[name] or None for r in rows], dtype=object)
    tips = np.array([float(r["tips"] or 0) for r in rows])
    labels = (tips > 0.2 * columns["fare"]).astype(np.int64)
    return columns, labels
