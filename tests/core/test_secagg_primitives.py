"""Shamir sharing, key agreement, sealed bundles, the k-regular graph and the masks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedge.errors import SecAggError
from fedge.secagg import build_graph, combine_shares, default_degree, split_secret
from fedge.secagg.keys import agree, generate_key_pair, open_sealed, public_key_of, seal
from fedge.secagg.masking import (
    MaskingConfig,
    add_mod,
    encode_input,
    masked_input_bytes,
    pack_values,
    prg_mask,
    sub_mod,
    unpack_values,
)


def test_shamir_any_threshold_subset_recovers_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=4, holders=range(1, 8))
    for subset in ([1, 2, 3, 4], [7, 5, 3, 1], [2, 4, 5, 6, 7]):
        assert combine_shares({x: shares[x] for x in subset}, threshold=4) == secret


def test_shamir_extreme_secrets_round_trip() -> None:
    for secret in (bytes(32), b"\xff" * 32):
        shares = split_secret(secret, threshold=2, holders=[3, 9, 11])
        assert combine_shares(shares, threshold=2) == secret


def test_shamir_too_few_shares_is_a_clear_error() -> None:
    shares = split_secret(os.urandom(32), threshold=3, holders=range(1, 6))
    with pytest.raises(
        SecAggError, match="2 shares cannot recover a secret shared with threshold 3"
    ):
        combine_shares({1: shares[1], 2: shares[2]}, threshold=3)


def test_shamir_inconsistent_share_is_detected() -> None:
    shares = dict(split_secret(os.urandom(32), threshold=3, holders=range(1, 6)))
    tampered = bytearray(shares[5])
    tampered[-1] ^= 1
    shares[5] = bytes(tampered)
    with pytest.raises(SecAggError, match="share 5 is inconsistent"):
        combine_shares(shares, threshold=3)


def test_shamir_rejects_bad_inputs() -> None:
    with pytest.raises(SecAggError, match="32 bytes"):
        split_secret(b"short", threshold=1, holders=[1])
    with pytest.raises(SecAggError, match="distinct integers >= 1"):
        split_secret(bytes(32), threshold=1, holders=[0, 1])
    with pytest.raises(SecAggError, match="threshold must be in"):
        split_secret(bytes(32), threshold=4, holders=[1, 2, 3])


def test_ecdh_both_ends_derive_the_same_key() -> None:
    a, b, c = generate_key_pair(), generate_key_pair(), generate_key_pair()
    ab = agree(a.private, b.public, purpose=b"p")
    assert ab == agree(b.private, a.public, purpose=b"p")
    assert len(ab) == 32
    assert ab != agree(a.private, c.public, purpose=b"p")
    assert ab != agree(a.private, b.public, purpose=b"other purpose")
    assert public_key_of(a.private) == a.public
    assert a.private.hex() not in repr(a)


def test_aead_round_trip_and_tamper_detection() -> None:
    key = os.urandom(32)
    sealed = seal(key, b"bundle", associated_data=b"ids 1->2")
    assert open_sealed(key, sealed, associated_data=b"ids 1->2") == b"bundle"
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(key, bytes(flipped), associated_data=b"ids 1->2")
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(key, sealed, associated_data=b"ids 1->3")
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(os.urandom(32), sealed, associated_data=b"ids 1->2")


def test_graph_is_k_regular_symmetric_and_seeded() -> None:
    ids = list(range(100, 150))
    k = default_degree(len(ids))
    assert k % 2 == 0
    assert k == 12
    graph = build_graph(ids, degree=k, rng=np.random.default_rng(3))
    assert set(graph) == set(ids)
    for cid, neighbours in graph.items():
        assert len(neighbours) == k
        assert cid not in neighbours
        assert all(cid in graph[n] for n in neighbours)
    assert graph == build_graph(ids, degree=k, rng=np.random.default_rng(3))
    assert graph != build_graph(ids, degree=k, rng=np.random.default_rng(4))


def test_graph_rejects_odd_or_too_large_degree() -> None:
    with pytest.raises(SecAggError, match="degree must be even"):
        build_graph(range(10), degree=3, rng=np.random.default_rng(0))
    with pytest.raises(SecAggError, match="degree must be even"):
        build_graph(range(10), degree=10, rng=np.random.default_rng(0))
    assert default_degree(4) == 2
    with pytest.raises(SecAggError, match="at least 3 clients"):
        default_degree(2)


def test_pairwise_and_self_masks_cancel_in_the_sum() -> None:
    bits, length = 32, 500
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 2**16, length, dtype=np.uint64) for _ in range(3)]
    pair = {(i, j): os.urandom(32) for i in range(3) for j in range(i + 1, 3)}
    masked = []
    for i, x in enumerate(inputs):
        y = x
        for (a, b), seed in pair.items():
            if i == a:
                y = add_mod(y, prg_mask(seed, length, bits), bits)
            elif i == b:
                y = sub_mod(y, prg_mask(seed, length, bits), bits)
        masked.append(y)
        assert not np.array_equal(y, x)
    total = np.zeros(length, dtype=np.uint64)
    for y in masked:
        total = add_mod(total, y, bits)
    assert np.array_equal(total, sum(x for x in inputs) & np.uint64(2**bits - 1))


def test_stochastic_rounding_is_unbiased_and_within_one_step() -> None:
    config = MaskingConfig(dimension=3, clip=1.0, example_cap=1, quantization_bits=4)
    vector = np.array([0.1, -0.37, 0.9])
    rng = np.random.default_rng(5)
    draws = np.array([encode_input(vector, 1, config, rng=rng)[:-1] for _ in range(4000)])
    exact = (vector + 1.0) / 2.0 * config.levels
    assert np.all(np.abs(draws - exact) < 1)
    assert np.allclose(draws.mean(axis=0), exact, atol=0.03)


def test_masking_config_refuses_bad_values() -> None:
    with pytest.raises(SecAggError, match="modulus_bits"):
        MaskingConfig(dimension=1, clip=1.0, example_cap=1, modulus_bits=64)
    with pytest.raises(SecAggError, match="clip"):
        MaskingConfig(dimension=1, clip=0.0, example_cap=1)


@pytest.mark.parametrize("bits", range(8, 63))
def test_packed_values_round_trip_in_ceil_b_over_8_bytes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    top = 2**bits - 1
    values = np.concatenate(
        [np.array([0, 1, top], dtype=np.uint64), prg_mask(os.urandom(32), 97, bits)]
    )
    packed = pack_values(values, modulus_bits=bits)
    assert len(packed) == values.size * -(-bits // 8)
    assert packed[: -(-bits // 8)] == b"\x00" * -(-bits // 8)
    assert int.from_bytes(packed[2 * -(-bits // 8) : 3 * -(-bits // 8)], "little") == top
    unpacked = unpack_values(packed, length=values.size, modulus_bits=bits)
    assert unpacked.dtype == np.uint64
    assert np.array_equal(unpacked, values)
    config = MaskingConfig(
        dimension=int(rng.integers(1, 50)),
        clip=1.0,
        example_cap=1,
        modulus_bits=bits,
        quantization_bits=min(16, bits - 1),
    )
    assert masked_input_bytes(config) == (config.dimension + 1) * -(-bits // 8)


@pytest.mark.parametrize("bits", [9, 20, 33, 62])
def test_packed_value_at_or_above_the_modulus_is_refused(bits: int) -> None:
    width = -(-bits // 8)
    good = pack_values(np.array([5, 2**bits - 1], dtype=np.uint64), modulus_bits=bits)
    bad = good[:width] + (2**bits).to_bytes(width, "little")
    with pytest.raises(SecAggError, match=f"not reduced mod 2\\^{bits}"):
        unpack_values(bad, length=2, modulus_bits=bits)
    with pytest.raises(SecAggError, match=f"not reduced mod 2\\^{bits}"):
        pack_values(np.array([2**bits], dtype=np.uint64), modulus_bits=bits)


def test_packed_vector_of_the_wrong_length_is_refused() -> None:
    packed = pack_values(np.arange(10, dtype=np.uint64), modulus_bits=24)
    assert len(packed) == 30
    for data in (packed[:-1], packed + b"\x00", b""):
        with pytest.raises(SecAggError, match=r"expected 30 \(10 values of 3 bytes\)"):
            unpack_values(data, length=10, modulus_bits=24)
    with pytest.raises(SecAggError, match="1-d uint64"):
        pack_values(np.arange(10, dtype=np.int64), modulus_bits=24)
