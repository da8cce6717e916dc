"""The bundled Chicago taxi trips sample: predict whether a rider tips more than 20%."""

from __future__ import annotations

import logging
import os
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.data.dataset import Dataset
from fedge.data.tables import CsvSource, read_csv_columns
from fedge.errors import DataError
from fedge.schema import Schema

__all__ = ["BIG_TIP_FRACTION", "TAXI_SCHEMA", "big_tipper", "load_taxi"]

_LOG = logging.getLogger(__name__)

BIG_TIP_FRACTION = 0.2
"""A trip's rider is a *big tipper* when ``tips > BIG_TIP_FRACTION * fare``."""

TAXI_SCHEMA = Schema(
    numeric=(
        "fare",
        "trip_miles",
        "trip_seconds",
        "pickup_latitude",
        "pickup_longitude",
        "dropoff_latitude",
        "dropoff_longitude",
    ),
    categorical=(
        "payment_type",
        "company",
        "pickup_community_area",
        "dropoff_community_area",
        "trip_start_hour",
        "trip_start_day",
        "trip_start_month",
    ),
    label="big_tipper",
    num_classes=2,
    region="pickup_community_area",
    timestamp="trip_start_timestamp",
)
"""Taxi features. ``tips`` is the label's source and never a feature; the census tracts
(almost always empty) are left out; ``trip_start_timestamp`` (seconds since the epoch) is
kept as a column for spans and drift, not as a feature. Integer codes (areas, hour, day,
month) are categorical strings such as ``"8"``."""


def big_tipper(fare: NDArray[Any], tips: NDArray[Any]) -> NDArray[np.int64]:
    """int64 labels: 1 where ``tips > 0.2 * fare``, else 0. Missing values are a DataError."""
    fare = np.asarray(fare, dtype=np.float64)
    tips = np.asarray(tips, dtype=np.float64)
    if fare.shape != tips.shape:
        raise DataError(f"fare has shape {fare.shape}, tips {tips.shape}")
    if np.isnan(fare).any() or np.isnan(tips).any():
        raise DataError("cannot label trips whose fare or tips is missing")
    return (tips > BIG_TIP_FRACTION * fare).astype(np.int64)


def load_taxi(path: str | os.PathLike[str] | None = None) -> Dataset:
    """Load the taxi trips (the bundled ``fedge/datasets/taxi.csv`` by default).

    The file needs the ``TAXI_SCHEMA`` columns plus ``tips``. The label ``big_tipper`` is
    derived from ``tips`` and ``fare``; rows where either is missing cannot be labelled and
    are dropped (the bundled sample has none: all 15,002 rows are kept). Every other missing
    value stays missing (``NaN`` / ``None``) for the feature transform to handle.
    """
    if path is None:
        with resources.as_file(resources.files("fedge").joinpath("datasets", "taxi.csv")) as p:
            return _load(p)
    return _load(path)


def _load(source: CsvSource) -> Dataset:
    columns = read_csv_columns(
        source, schema=TAXI_SCHEMA, extra={"tips": "numeric"}, label="ignore"
    )
    tips = columns.pop("tips")
    fare = columns["fare"]
    keep = ~(np.isnan(tips) | np.isnan(fare))
    dropped = int((~keep).sum())
    if dropped:
        _LOG.info("dropped %d of %d taxi rows with no fare or tips", dropped, keep.size)
        columns = {name: column[keep] for name, column in columns.items()}
    return Dataset(
        name="taxi",
        schema=TAXI_SCHEMA,
        columns=columns,
        labels=big_tipper(fare[keep], tips[keep]),
    )
