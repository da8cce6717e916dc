"""Tests for fedge.weights: construction, the safetensors byte format, validation, arithmetic."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
import safetensors.numpy

from fedge.errors import (
    ConfigError,
    DtypeMismatchError,
    MissingTensorError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownTensorError,
    WeightsError,
    WeightsFormatError,
)
from fedge.weights import Weights, decode_weights, encode_weights


def _model() -> Weights:
    return Weights.from_pairs(
        [
            ("dense/kernel", np.arange(6, dtype=np.float32).reshape(2, 3) / 4),
            ("dense/bias", np.array([0.5, -1.5, 2.0], np.float32)),
            ("scale", np.float32(3.0)),
        ]
    )


def _raw_file(
    tensors: dict[str, npt.NDArray[np.generic]], fedge_metadata: dict[str, object]
) -> bytes:
    """A safetensors file with a hand-written fedge metadata entry."""
    return bytes(safetensors.numpy.save(tensors, metadata={"fedge": json.dumps(fedge_metadata)}))


def _assert_bit_exact(got: Weights, expected: Weights) -> None:
    assert got.names == expected.names
    for name in expected:
        assert got[name].dtype == np.float32
        assert got[name].shape == expected[name].shape
        assert got[name].tobytes() == expected[name].tobytes()


# Construction --------------------------------------------------------------------------------


def test_construction_copies_and_freezes_input_arrays() -> None:
    source = np.ones(3, np.float64)
    weights = Weights({"w": source})
    source[0] = 7.0
    assert weights["w"].tolist() == [1.0, 1.0, 1.0]
    assert weights["w"].dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        weights["w"][0] = 2.0


def test_construction_keeps_insertion_order_and_describes_itself() -> None:
    weights = _model()
    assert list(weights) == ["dense/kernel", "dense/bias", "scale"]
    assert weights.names == ("dense/kernel", "dense/bias", "scale")
    assert weights.shapes == {"dense/kernel": (2, 3), "dense/bias": (3,), "scale": ()}
    assert weights.num_parameters == 10
    assert weights.nbytes == 40
    assert len(weights) == 3


def test_construction_casts_integers_to_float32() -> None:
    weights = Weights({"w": [1, 2, 3]})
    assert weights["w"].dtype == np.float32
    assert weights["w"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("value", [np.array(["a", "b"]), np.array([1 + 2j]), np.array([True])])
def test_construction_rejects_non_real_arrays(value: npt.NDArray[np.generic]) -> None:
    with pytest.raises(DtypeMismatchError, match="'w'") as info:
        Weights({"w": value})
    assert info.value.tensor == "w"


def test_construction_rejects_ragged_input() -> None:
    with pytest.raises(WeightsError, match="'w'"):
        Weights({"w": [[1.0], [1.0, 2.0]]})


@pytest.mark.parametrize("name", ["", "__metadata__", 3])
def test_construction_rejects_bad_names(name: object) -> None:
    with pytest.raises(ConfigError):
        Weights({name: [1.0]})  # type: ignore[dict-item]


def test_construction_rejects_pairs_given_to_the_mapping_constructor() -> None:
    with pytest.raises(ConfigError, match="from_pairs"):
        Weights([("w", [1.0])])  # type: ignore[arg-type]


def test_from_pairs_rejects_a_repeated_name() -> None:
    with pytest.raises(ConfigError, match="'w'"):
        Weights.from_pairs([("w", [1.0]), ("w", [2.0])])


# Bytes ---------------------------------------------------------------------------------------


def test_bytes_round_trip_is_bit_exact_for_awkward_values() -> None:
    rng = np.random.default_rng(0)
    every_bit_pattern = rng.integers(0, 2**32, size=4096, dtype=np.uint32).view(np.float32)
    special = np.array(
        [-0.0, 0.0, 1e-45, -1e-45, 1.1754942e-38, np.inf, -np.inf, np.nan], np.float32
    )
    weights = Weights.from_pairs(
        [
            ("zeta", special),
            ("alpha", np.float32(-0.0)),  # 0-d
            ("large", rng.standard_normal((256, 1024)).astype(np.float32)),
            ("bits", every_bit_pattern.reshape(64, 64)),
            ("empty", np.zeros((0, 5), np.float32)),
            ("mid", np.array([[7.0]], np.float32)),
        ]
    )
    restored = Weights.from_bytes(weights.to_bytes())
    _assert_bit_exact(restored, weights)
    assert restored == weights
    assert restored.digest() == weights.digest()


def test_bytes_round_trip_of_empty_weights() -> None:
    empty = Weights({})
    assert Weights.from_bytes(empty.to_bytes()).names == ()


def test_bytes_are_deterministic_within_and_across_processes() -> None:
    first, second = _model(), _model()
    assert first.to_bytes() == second.to_bytes()
    with_metadata = {f"key{i}": str(i) for i in range(10)}
    assert encode_weights(first, metadata=with_metadata) == encode_weights(
        second, metadata=dict(reversed(with_metadata.items()))
    )
    code = (
        "import numpy as np; from fedge.weights import Weights, encode_weights; import hashlib; "
        "w = Weights.from_pairs([('z', np.arange(5) / 3), ('a', -0.0)]); "
        "print(hashlib.sha256(encode_weights(w, metadata={'x': '1', 'y': '2'})).hexdigest())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    here = Weights.from_pairs([("z", np.arange(5) / 3), ("a", -0.0)])
    assert other == hashlib.sha256(encode_weights(here, metadata={"y": "2", "x": "1"})).hexdigest()


def test_digest_changes_with_a_single_bit_or_the_order() -> None:
    base = Weights({"a": [1.0, 2.0], "b": [3.0]})
    flipped = Weights({"a": [1.0, 2.0], "b": np.nextafter(np.float32(3.0), np.float32(4.0))})
    reordered = Weights.from_pairs([("b", [3.0]), ("a", [1.0, 2.0])])
    assert len({base.digest(), flipped.digest(), reordered.digest()}) == 3
    assert len(base.digest()) == 64


def test_metadata_round_trips_through_encode_and_decode() -> None:
    weights, extra = decode_weights(encode_weights(_model(), metadata={"round": "3"}))
    assert extra == {"round": "3"}
    assert weights == _model()


def test_from_bytes_names_the_tensor_cut_off_by_truncation() -> None:
    data = _model().to_bytes()
    with pytest.raises(WeightsFormatError, match="truncated") as info:
        Weights.from_bytes(data[:-3])
    # safetensors lays data out sorted by name; "scale" comes last.
    assert info.value.tensor == "scale"
    assert "'scale'" in str(info.value)


@pytest.mark.parametrize("cut", [0, 5, 8, 40])
def test_from_bytes_rejects_a_truncated_header(cut: int) -> None:
    with pytest.raises(WeightsFormatError, match=r"truncated|corrupt"):
        Weights.from_bytes(_model().to_bytes()[:cut])


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"\xff" * 64, b"\x02\x00\x00\x00\x00\x00\x00\x00[]"]
)
def test_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(WeightsFormatError):
        Weights.from_bytes(data)


def test_from_bytes_rejects_trailing_bytes() -> None:
    with pytest.raises(WeightsFormatError, match="safetensors"):
        Weights.from_bytes(_model().to_bytes() + b"\x00")


def test_from_bytes_rejects_plain_safetensors_without_fedge_metadata() -> None:
    data = bytes(safetensors.numpy.save({"w": np.ones(2, np.float32)}))
    with pytest.raises(WeightsFormatError, match="not a fedge weights file"):
        Weights.from_bytes(data)


def test_from_bytes_rejects_an_unknown_version() -> None:
    data = _raw_file(
        {"w": np.ones(2, np.float32)},
        {"format": "fedge.weights", "version": 99, "order": ["w"], "metadata": {}},
    )
    with pytest.raises(WeightsFormatError, match="version 99"):
        Weights.from_bytes(data)


def test_from_bytes_rejects_a_float64_tensor_naming_it() -> None:
    data = _raw_file(
        {"w": np.ones(2, np.float32), "wide": np.ones(2, np.float64)},
        {"format": "fedge.weights", "version": 1, "order": ["w", "wide"], "metadata": {}},
    )
    with pytest.raises(DtypeMismatchError, match="'wide'") as info:
        Weights.from_bytes(data)
    assert info.value.tensor == "wide"


@pytest.mark.parametrize(
    ("order", "culprit"), [(["w"], "extra"), (["w", "extra", "ghost"], "ghost")]
)
def test_from_bytes_rejects_an_order_list_that_disagrees_with_the_file(
    order: list[str], culprit: str
) -> None:
    data = _raw_file(
        {"w": np.ones(2, np.float32), "extra": np.ones(1, np.float32)},
        {"format": "fedge.weights", "version": 1, "order": order, "metadata": {}},
    )
    with pytest.raises(WeightsFormatError, match=f"'{culprit}'") as info:
        Weights.from_bytes(data)
    assert info.value.tensor == culprit


def test_from_bytes_enforces_max_bytes() -> None:
    data = _model().to_bytes()
    assert Weights.from_bytes(data, max_bytes=len(data)) == _model()
    with pytest.raises(WeightsFormatError, match="limit"):
        Weights.from_bytes(data, max_bytes=len(data) - 1)


# Validation ----------------------------------------------------------------------------------


def test_bad_inputs_raise_distinct_error_classes_naming_the_tensor() -> None:
    reference = _model()
    good = dict(reference.items())
    cases: dict[str, Callable[[], object]] = {
        "truncated": lambda: Weights.from_bytes(reference.to_bytes()[:-3]),
        "shape": lambda: Weights({**good, "dense/bias": np.zeros(4)}).validate_against(reference),
        "nan": lambda: Weights({**good, "scale": np.nan}).validate_against(reference),
        "unknown": lambda: Weights({**good, "stray": [1.0]}).validate_against(reference),
        "missing": lambda: Weights.from_pairs(list(good.items())[:2]).validate_against(reference),
    }
    names = {
        "truncated": "scale",
        "shape": "dense/bias",
        "nan": "scale",
        "unknown": "stray",
        "missing": "scale",
    }
    classes = {}
    for case, run in cases.items():
        with pytest.raises(WeightsError) as info:
            run()
        assert names[case] in str(info.value), case
        assert info.value.tensor == names[case], case
        classes[case] = type(info.value)
    assert classes == {
        "truncated": WeightsFormatError,
        "shape": ShapeMismatchError,
        "nan": NonFiniteError,
        "unknown": UnknownTensorError,
        "missing": MissingTensorError,
    }


def test_validate_against_checks_unknown_before_missing_before_shape_before_finite() -> None:
    reference = Weights({"a": [1.0], "b": [1.0]})
    with pytest.raises(UnknownTensorError):
        Weights({"a": [np.nan, 1.0], "c": [1.0]}).validate_against(reference)
    with pytest.raises(MissingTensorError):
        Weights({"a": [np.nan, 1.0]}).validate_against(reference)
    with pytest.raises(ShapeMismatchError, match=r"expected shape \(1,\), got \(2,\)"):
        Weights({"a": [np.nan, 1.0], "b": [np.nan]}).validate_against(reference)
    with pytest.raises(NonFiniteError):
        Weights({"b": [np.nan], "a": [1.0]}).validate_against(reference)


def test_validate_against_allows_non_finite_values_when_asked() -> None:
    reference = Weights({"a": [1.0]})
    Weights({"a": [np.inf]}).validate_against(reference, check_finite=False)
    with pytest.raises(NonFiniteError):
        Weights({"a": [np.inf]}).validate_against(reference)


def test_check_finite_counts_nan_and_inf() -> None:
    weights = Weights({"ok": [1.0], "bad": [np.nan, np.inf, -np.inf, np.nan, 0.0]})
    with pytest.raises(NonFiniteError, match="'bad' holds 2 NaN and 2 Inf values out of 5"):
        weights.check_finite()
    Weights({"ok": [1.0]}).check_finite()


# Arithmetic ----------------------------------------------------------------------------------


def test_delta_then_apply_recovers_the_weights() -> None:
    base = _model()
    target = Weights({name: array * 2 + 1 for name, array in base.items()})
    delta = target.delta(base)
    assert delta["dense/bias"].tolist() == [1.5, -0.5, 3.0]
    assert base.apply(delta) == target
    assert base.apply(delta, scale=0.5)["dense/bias"].tolist() == [1.25, -1.75, 3.5]


def test_arithmetic_validates_names_and_shapes() -> None:
    base = Weights({"a": [1.0, 2.0]})
    with pytest.raises(ShapeMismatchError, match="'a'"):
        base.delta(Weights({"a": [1.0]}))
    with pytest.raises(UnknownTensorError, match="'b'"):
        base.apply(Weights({"a": [1.0, 2.0], "b": [1.0]}))
    with pytest.raises(MissingTensorError, match="'a'"):
        base.delta(Weights({}))


def test_arithmetic_never_mutates_its_inputs() -> None:
    base, other = _model(), _model().scale(3.0)
    before = (base.digest(), other.digest())
    base.apply(other, scale=2.0)
    other.delta(base)
    base.scale(-1.0)
    assert (base.digest(), other.digest()) == before


def test_scale_and_zeros_like() -> None:
    weights = Weights({"a": [1.0, -2.0]})
    assert weights.scale(-0.5)["a"].tolist() == [-0.5, 1.0]
    assert weights.zeros_like()["a"].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError):
        weights.scale(float("nan"))


def test_l2_norm_is_the_global_norm_in_float64() -> None:
    weights = Weights({"a": [3.0], "b": [[4.0, 12.0]]})
    assert weights.l2_norm() == 13.0
    big = Weights({"a": np.full(1000, 3e30, np.float32)})  # squares overflow float32
    assert big.l2_norm() == pytest.approx(float(np.float32(3e30)) * np.sqrt(1000), rel=1e-12)


def test_unflatten_lays_a_vector_out_in_name_order_each_tensor_c_ordered() -> None:
    weights = _model()
    laid_out = weights.unflatten(np.arange(10))
    assert laid_out.names == weights.names
    assert laid_out["dense/kernel"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert laid_out["dense/bias"].tolist() == [6, 7, 8]
    assert laid_out["scale"].shape == ()
    assert float(laid_out["scale"]) == 9.0


def test_unflatten_rejects_a_wrong_length() -> None:
    with pytest.raises(ShapeMismatchError, match=r"\(10,\)"):
        _model().unflatten(np.zeros(9))


def test_equal_is_bit_exact_and_allclose_is_tolerant() -> None:
    zero, negative_zero = Weights({"a": [0.0]}), Weights({"a": [-0.0]})
    assert zero != negative_zero
    assert zero.allclose(negative_zero)
    assert not zero.allclose(Weights({"b": [0.0]}))
    nan = Weights({"a": [np.nan]})
    assert nan == Weights({"a": [np.nan]})
