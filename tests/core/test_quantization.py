"""Affine (de)quantization of TFLite tensors against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.errors import ConfigError
from fedge.quantization import dequantize_output, quantize_input

INT8 = {"name": "x", "dtype": np.int8, "quantization": (0.5, -3)}


def test_quantize_input_rounds_offsets_and_clips() -> None:
    x = np.array([0.0, 1.0, 1.2, -1.0, 100.0, -100.0], dtype=np.float32)
    # round(x / 0.5) - 3 = [-3, -1, -1 (2.4 -> 2), -5, 197 -> 127, -203 -> -128]
    expected = np.array([-3, -1, -1, -5, 127, -128], dtype=np.int8)
    np.testing.assert_array_equal(quantize_input(x, INT8), expected)


def test_dequantize_output_inverts_the_affine_map() -> None:
    q = np.array([-3, -1, 127, -128], dtype=np.int8)
    expected = np.array([0.0, 1.0, 65.0, -62.5], dtype=np.float32)  # (q + 3) * 0.5
    np.testing.assert_array_equal(dequantize_output(q, INT8), expected)


def test_float_tensors_pass_through() -> None:
    detail = {"name": "y", "dtype": np.float32, "quantization": (0.0, 0)}
    x = np.array([[1.5, -2.0]], dtype=np.float64)
    assert quantize_input(x, detail).dtype == np.float32
    np.testing.assert_array_equal(dequantize_output(x.astype(np.float32), detail), x)


def test_integer_tensor_without_scale_is_refused() -> None:
    detail = {"name": "z", "dtype": np.int8, "quantization": (0.0, 0)}
    with pytest.raises(ConfigError, match="'z'"):
        quantize_input(np.zeros(2, np.float32), detail)
    with pytest.raises(ConfigError, match="'z'"):
        dequantize_output(np.zeros(2, np.int8), detail)
