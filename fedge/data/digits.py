"""The bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

import gzip
import io
from importlib import resources

import numpy as np

from fedge.data.dataset import Dataset
from fedge.data.tables import flat_field_names, read_csv_columns
from fedge.errors import DataError
from fedge.schema import Schema

__all__ = ["DIGITS_SCHEMA", "load_digits"]

DIGITS_SCHEMA = Schema(
    numeric=("pixels",),
    categorical=(),
    label="digit",
    num_classes=10,
    shapes={"pixels": (8, 8)},
)
"""One numeric column ``pixels`` of shape (8, 8) with intensities 0..16; label ``digit``."""

_FIELDS = (*flat_field_names("pixels", (8, 8)), "digit")


def load_digits() -> Dataset:
    """Load ``fedge/datasets/digits.csv.gz``: 64 pixels (0..16, row-major) then the label.

    The file has no header; pixels are returned as ``float64`` of shape (n, 8, 8).
    """
    resource = resources.files("fedge").joinpath("datasets", "digits.csv.gz")
    try:
        text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the bundled digits: {exc}") from exc
    columns = read_csv_columns(
        io.StringIO(text, newline=""), schema=DIGITS_SCHEMA, label="required", fieldnames=_FIELDS
    )
    pixels = columns["pixels"]
    if np.isnan(pixels).any() or pixels.min() < 0 or pixels.max() > 16:
        raise DataError("the bundled digits hold pixels outside 0..16 or missing values")
    return Dataset.from_columns(name="digits", schema=DIGITS_SCHEMA, columns=columns)
