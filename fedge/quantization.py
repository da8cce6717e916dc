"""Affine int8/uint8 (de)quantization of TFLite tensors, in numpy.

The arithmetic a device does around a full-integer model: ``q = clip(round(x / scale) +
zero_point)`` on the way in, ``x = (q - zero_point) * scale`` on the way out. ``detail`` is a
TFLite tensor detail (``interpreter.get_input_details()[i]``): its ``dtype``, ``name`` and
``quantization`` ``(scale, zero_point)``. Float tensors pass through unchanged. Shared by the
edge runtime and the quantizer's measurements so both compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedge.errors import ConfigError

__all__ = ["dequantize_output", "quantize_input"]


def quantize_input(x: NDArray[Any], detail: Mapping[str, Any]) -> NDArray[Any]:
    """``x`` as the input tensor's dtype: quantized when that dtype is an integer type."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ConfigError(f"input tensor {detail['name']!r} is {dtype} but has no scale")
    info = np.iinfo(dtype)
    quantized: NDArray[Any] = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
    return quantized.astype(dtype)


def dequantize_output(q: NDArray[Any], detail: Mapping[str, Any]) -> NDArray[np.float32]:
    """The float32 values an output tensor ``q`` stands for (a copy for float tensors)."""
    if not np.issubdtype(q.dtype, np.integer):
        return np.array(q, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ConfigError(f"output tensor {detail['name']!r} is {q.dtype} but has no scale")
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
