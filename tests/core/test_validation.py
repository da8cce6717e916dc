"""Shared range validators: what was expected and what arrived, in the caller's error class."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from fedge.errors import ConfigError, ProtocolError
from fedge.validation import check_fraction, check_int, check_number, check_positive


def test_check_int_accepts_bounds_and_refuses_bools_and_floats() -> None:
    assert check_int(3, "epochs", low=1, high=3) == 3
    with pytest.raises(ConfigError, match=r"epochs must be an integer >= 1, got 0"):
        check_int(0, "epochs", low=1)
    with pytest.raises(ConfigError, match=r"epochs must be an integer <= 3, got 4"):
        check_int(4, "epochs", high=3)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ConfigError, match="must be an integer"):
            check_int(bad, "epochs")


def test_check_number_refuses_non_finite_and_out_of_range() -> None:
    assert check_number(2, "lr") == 2.0
    assert isinstance(check_number(2, "lr"), float)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="must be finite"):
            check_number(bad, "lr")
    with pytest.raises(ConfigError, match=r"lr must be > 0, got 0"):
        check_positive(0, "lr")
    assert check_positive(1e-9, "lr") == 1e-9
    with pytest.raises(ConfigError, match="must be a number"):
        check_number(False, "lr")


def test_check_fraction_ends_are_chosen_by_the_caller() -> None:
    assert check_fraction(0.0, "f") == 0.0
    with pytest.raises(ConfigError, match=r"f must be < 1, got 1"):
        check_fraction(1, "f")
    assert check_fraction(1, "f", one_ok=True) == 1.0
    with pytest.raises(ConfigError, match=r"f must be > 0, got 0"):
        check_fraction(0, "f", zero_ok=False)


def test_the_error_class_is_the_callers() -> None:
    with pytest.raises(ProtocolError, match="num_examples must be an integer >= 1"):
        check_int(0, "num_examples", low=1, error=ProtocolError)


def test_numpy_scalars_count_as_the_numbers_they_hold() -> None:
    assert check_int(np.int64(3), "rows", low=0) == 3
    assert type(check_int(np.int64(3), "rows")) is int
    assert check_number(np.float32(0.5), "rate") == 0.5
    with pytest.raises(ConfigError, match="must be an integer"):
        check_int(np.float64(2.0), "rows")
    with pytest.raises(ConfigError, match="must be a number"):
        check_number(np.bool_(True), "rate")


def test_the_error_can_be_built_by_a_callable() -> None:
    with pytest.raises(ProtocolError, match="round_id must be an integer >= 1") as info:
        check_int(0, "round_id", low=1, error=functools.partial(ProtocolError, field="round_id"))
    assert info.value.field == "round_id"
