"""Tests for fedge.data partitioners: splits, IID, Dirichlet, natural keys, specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.data import (
    ClientSplit,
    Dataset,
    Partition,
    PartitionScheme,
    by_key,
    dirichlet,
    iid,
    load_digits,
    load_taxi,
    parse_partition,
    train_test_split,
)
from fedge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="module")
def taxi() -> Dataset:
    return load_taxi()


def _assert_disjoint_and_covering(partition: Partition, indices: np.ndarray) -> None:
    held = [split.indices for split in partition.values()] + [partition.unassigned]
    joined = np.concatenate(held)
    assert joined.size == np.unique(joined).size, "an index is held twice"
    np.testing.assert_array_equal(np.sort(joined), np.sort(indices))


def _assert_no_empty_client(partition: Partition) -> None:
    assert partition.num_clients >= 1
    assert all(split.train.size >= 1 for split in partition.values())


def _mean_label_entropy(partition: Partition, labels: np.ndarray) -> float:
    entropies = []
    for split in partition.values():
        counts = np.bincount(labels[split.indices], minlength=10)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# --- train/test split -----------------------------------------------------------------------


def test_train_test_split_is_disjoint_and_covering() -> None:
    train, test = train_test_split(103, test_fraction=0.25, seed=0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(103))
    assert test.size == 26
    assert train.dtype == np.int64


def test_train_test_split_is_stratified_by_label(digits: Dataset) -> None:
    train, test = train_test_split(digits, test_fraction=0.2, seed=3)
    assert test.size == round(0.2 * len(digits))
    overall = np.bincount(digits.labels, minlength=10) / len(digits)
    in_test = np.bincount(digits.labels[test], minlength=10) / test.size
    assert np.abs(overall - in_test).max() < 0.01
    assert train.size + test.size == len(digits)


def test_train_test_split_depends_only_on_seed() -> None:
    first = train_test_split(500, seed=7)
    again = train_test_split(500, seed=7)
    other = train_test_split(500, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        train_test_split(10, test_fraction=fraction, seed=0)


def test_train_test_split_rejects_single_example() -> None:
    with pytest.raises(DataError, match="1 example"):
        train_test_split(1, seed=0)


# --- IID ------------------------------------------------------------------------------------


def test_iid_is_disjoint_covering_and_balanced() -> None:
    indices = np.arange(5, 108)
    partition = iid(indices, num_clients=10, seed=0)
    _assert_disjoint_and_covering(partition, indices)
    _assert_no_empty_client(partition)
    assert set(partition.sizes.values()) == {10, 11}
    assert next(iter(partition)) == "client_000"
    assert partition.unassigned.size == 0


def test_iid_same_seed_identical_other_seed_different() -> None:
    indices = np.arange(200)
    assert iid(indices, num_clients=4, seed=1) == iid(indices, num_clients=4, seed=1)
    assert iid(indices, num_clients=4, seed=1) != iid(indices, num_clients=4, seed=2)


def test_iid_rejects_more_clients_than_examples() -> None:
    with pytest.raises(DataError, match="5 non-empty clients from 4"):
        iid(np.arange(4), num_clients=5, seed=0)


@pytest.mark.parametrize("num_clients", [0, -1])
def test_iid_rejects_client_count_below_one(num_clients: int) -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        iid(np.arange(4), num_clients=num_clients, seed=0)


def test_iid_rejects_duplicate_indices() -> None:
    with pytest.raises(DataError, match="distinct"):
        iid(np.array([1, 2, 2, 3]), num_clients=2, seed=0)


# --- holdout --------------------------------------------------------------------------------


def test_holdout_takes_fraction_and_keeps_train_nonempty() -> None:
    partition = iid(np.arange(100), num_clients=5, seed=0, holdout_fraction=0.25)
    for split in partition.values():
        assert split.holdout.size == 5
        assert split.train.size == 15
        assert np.intersect1d(split.train, split.holdout).size == 0


def test_holdout_is_empty_only_for_one_example_client() -> None:
    partition = iid(np.arange(5), num_clients=3, seed=0, holdout_fraction=0.01)
    sizes = sorted((s.train.size, s.holdout.size) for s in partition.values())
    assert sizes == [(1, 0), (1, 1), (1, 1)]
    single = iid(np.arange(2), num_clients=2, seed=0, holdout_fraction=0.9)
    assert all(s.train.size == 1 and s.holdout.size == 0 for s in single.values())


def test_holdout_never_takes_all_examples() -> None:
    partition = iid(np.arange(4), num_clients=1, seed=0, holdout_fraction=0.99)
    split = partition["client_000"]
    assert split.train.size == 1
    assert split.holdout.size == 3


def test_holdout_rejects_fraction_of_one() -> None:
    with pytest.raises(ConfigError, match="holdout_fraction"):
        iid(np.arange(10), num_clients=2, seed=0, holdout_fraction=1.0)


# --- Dirichlet ------------------------------------------------------------------------------


def test_dirichlet_is_disjoint_covering_with_no_empty_client(digits: Dataset) -> None:
    train, _ = train_test_split(digits, seed=0)
    partition = dirichlet(train, digits.labels, num_clients=10, alpha=0.5, seed=0)
    _assert_disjoint_and_covering(partition, train)
    _assert_no_empty_client(partition)
    assert partition.num_clients == 10
    assert min(partition.sizes.values()) >= 2


def test_dirichlet_same_seed_identical_other_seed_different(digits: Dataset) -> None:
    train, _ = train_test_split(digits, seed=0)
    first = dirichlet(train, digits.labels, num_clients=5, alpha=0.3, seed=4)
    again = dirichlet(train, digits.labels, num_clients=5, alpha=0.3, seed=4)
    other = dirichlet(train, digits.labels, num_clients=5, alpha=0.3, seed=5)
    assert first == again
    assert first != other


def test_dirichlet_small_alpha_is_more_skewed_than_large(digits: Dataset) -> None:
    train, _ = train_test_split(digits, seed=0)
    skewed = dirichlet(train, digits.labels, num_clients=10, alpha=0.1, seed=0)
    uniform = dirichlet(train, digits.labels, num_clients=10, alpha=100.0, seed=0)
    low = _mean_label_entropy(skewed, digits.labels)
    high = _mean_label_entropy(uniform, digits.labels)
    assert low < high - 0.5
    assert high > 0.95 * np.log(10)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet(np.arange(10), np.zeros(10, dtype=np.int64), num_clients=2, alpha=alpha, seed=0)


def test_dirichlet_gives_up_with_clear_error() -> None:
    labels = np.repeat(np.arange(2), 20)
    with pytest.raises(DataError, match=r"no Dirichlet.*raise alpha"):
        dirichlet(np.arange(40), labels, num_clients=8, alpha=0.01, seed=0, min_size=5, max_tries=3)


def test_dirichlet_rejects_impossible_min_size() -> None:
    with pytest.raises(DataError, match="cannot give 5 clients 3 examples"):
        dirichlet(
            np.arange(10), np.zeros(10, dtype=np.int64), num_clients=5, alpha=1, seed=0, min_size=3
        )


def test_dirichlet_rejects_labels_too_short() -> None:
    with pytest.raises(DataError, match="out of range"):
        dirichlet(np.arange(10), np.zeros(5, dtype=np.int64), num_clients=2, alpha=1, seed=0)


# --- by key ---------------------------------------------------------------------------------


def test_by_key_one_client_per_pickup_area_present(taxi: Dataset) -> None:
    train, _ = train_test_split(taxi, seed=0)
    areas = taxi.columns["pickup_community_area"]
    partition = by_key(train, areas, seed=0, key_name="pickup_community_area")
    present = {v for v in areas[train] if v is not None}
    assert set(partition) == {f"pickup_community_area={v}" for v in present}
    assert "pickup_community_area=8" in partition
    for client_id, split in partition.items():
        assert {areas[i] for i in split.indices} == {client_id.split("=", 1)[1]}
    _assert_disjoint_and_covering(partition, train)
    _assert_no_empty_client(partition)


def test_by_key_missing_keys_go_to_unassigned(taxi: Dataset) -> None:
    areas = taxi.columns["pickup_community_area"]
    everything = np.arange(len(taxi))
    partition = by_key(everything, areas, seed=0, key_name="area")
    missing = np.array([i for i, v in enumerate(areas) if v is None])
    assert missing.size == 2
    np.testing.assert_array_equal(partition.unassigned, missing)


def test_by_key_drops_small_groups_into_unassigned() -> None:
    keys = np.array(["a", "a", "a", "b", None, "c", "c"], dtype=object)
    partition = by_key(np.arange(7), keys, seed=0, min_size=2)
    assert list(partition) == ["key=a", "key=c"]
    np.testing.assert_array_equal(partition.unassigned, [3, 4])


def test_by_key_orders_integer_keys_numerically_and_caps_clients() -> None:
    keys = np.array([10.0, 2.0, 2.0, np.nan, 10.0, 10.0, 3.0])
    partition = by_key(np.arange(7), keys, seed=0, holdout_fraction=0.0)
    assert list(partition) == ["key=2", "key=3", "key=10"]
    capped = by_key(np.arange(7), keys, seed=0, max_clients=2)
    assert list(capped) == ["key=2", "key=10"]
    np.testing.assert_array_equal(capped.unassigned, [3, 6])


def test_by_key_same_seed_identical_other_seed_different(taxi: Dataset) -> None:
    areas = taxi.columns["pickup_community_area"]
    train = np.arange(0, len(taxi), 2)
    first = by_key(train, areas, seed=1)
    assert first == by_key(train, areas, seed=1)
    assert first != by_key(train, areas, seed=2)


def test_by_key_with_no_large_group_is_data_error() -> None:
    with pytest.raises(DataError, match="no key value"):
        by_key(np.arange(3), np.array(["a", "b", None], dtype=object), seed=0, min_size=2)


# --- Partition type -------------------------------------------------------------------------


def test_partition_round_trips_through_json() -> None:
    partition = by_key(np.arange(9), np.array([*list("aabbbcc"), None, "a"], dtype=object), seed=0)
    document = json.loads(json.dumps(partition.to_dict()))
    assert Partition.from_dict(document) == partition
    assert document["clients"]["key=b"]["train"] == partition["key=b"].train.tolist()


def test_partition_reads_hand_written_form() -> None:
    partition = Partition.from_dict({"alice": [0, 1, 2], "bob": [5]})
    assert list(partition) == ["alice", "bob"]
    np.testing.assert_array_equal(partition["alice"].train, [0, 1, 2])
    assert partition.sizes == {"alice": 3, "bob": 1}
    split = Partition.from_dict({"alice": list(range(10))}, holdout_fraction=0.3, seed=0)
    assert split["alice"].holdout.size == 3


def test_partition_rejects_index_held_by_two_clients() -> None:
    with pytest.raises(DataError, match=r"held twice.*\[2\]"):
        Partition.from_dict({"alice": [0, 1, 2], "bob": [2, 3]})


def test_partition_rejects_no_clients_and_bad_indices() -> None:
    with pytest.raises(DataError, match="at least one client"):
        Partition(clients={})
    with pytest.raises(DataError, match="non-negative"):
        Partition.from_dict({"alice": [0, -1]})
    with pytest.raises(DataError, match="list of integers"):
        Partition.from_dict({"alice": [0.5]})


def test_client_split_rejects_empty_train() -> None:
    with pytest.raises(DataError, match="at least one training example"):
        ClientSplit(train=np.array([], dtype=np.int64), holdout=np.array([1]))


# --- partition specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("iid", PartitionScheme(kind="iid")),
        (" IID ", PartitionScheme(kind="iid")),
        ("dirichlet:0.5", PartitionScheme(kind="dirichlet", alpha=0.5)),
        ("by:pickup_community_area", PartitionScheme(kind="by", key="pickup_community_area")),
    ],
)
def test_parse_partition_accepts_three_forms(spec: str, expected: PartitionScheme) -> None:
    scheme = parse_partition(spec)
    assert scheme == expected
    assert parse_partition(str(scheme)) == scheme


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "iid:3",
        "dirichlet",
        "dirichlet:",
        "dirichlet:abc",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "by",
        "by:",
        "random",
        "shards:2",
    ],
)
def test_parse_partition_rejects_garbage_listing_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"'iid', 'dirichlet:<alpha>'.*'by:<column>'"):
        parse_partition(spec)


def test_scheme_apply_dispatches_to_partitioner(digits: Dataset, taxi: Dataset) -> None:
    train, _ = train_test_split(digits, seed=0)
    by_spec = parse_partition("dirichlet:0.5").apply(digits, train, num_clients=6, seed=3)
    direct = dirichlet(train, digits.labels, num_clients=6, alpha=0.5, seed=3)
    assert by_spec == direct
    assert parse_partition("iid").apply(digits, train, num_clients=6, seed=3) == iid(
        train, num_clients=6, seed=3
    )
    areas = parse_partition("by:pickup_community_area").apply(
        taxi, np.arange(len(taxi)), num_clients=5, seed=0
    )
    assert areas.num_clients == 5
    assert "pickup_community_area=8" in areas


def test_scheme_apply_unknown_column_is_config_error(digits: Dataset) -> None:
    with pytest.raises(ConfigError, match="no column 'region'"):
        parse_partition("by:region").apply(digits, np.arange(10), num_clients=2, seed=0)


def test_scheme_apply_iid_needs_client_count(digits: Dataset) -> None:
    with pytest.raises(ConfigError, match="needs num_clients"):
        parse_partition("iid").apply(digits, np.arange(10), num_clients=None, seed=0)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    clients=st.integers(min_value=1, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    holdout=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    kind=st.sampled_from(["iid", "dirichlet", "by_key"]),
)
def test_partitions_are_disjoint_and_covering_property(
    n: int, clients: int, seed: int, holdout: float, kind: str
) -> None:
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(2 * n, size=n, replace=False))
    clients = min(clients, n)
    if kind == "iid":
        partition = iid(indices, num_clients=clients, seed=seed, holdout_fraction=holdout)
        assert partition.num_clients == clients
    elif kind == "dirichlet":
        labels = rng.integers(0, 3, size=2 * n)
        clients = min(clients, max(1, n // 20))
        partition = dirichlet(
            indices,
            labels,
            num_clients=clients,
            alpha=1.0,
            seed=seed,
            holdout_fraction=holdout,
            min_size=1,
        )
        assert partition.num_clients == clients
    else:
        keys = np.array([None, "x", "y", "z"], dtype=object)[rng.integers(0, 4, size=2 * n)]
        if all(k is None for k in keys[indices]):
            return
        partition = by_key(indices, keys, seed=seed, holdout_fraction=holdout)
    _assert_disjoint_and_covering(partition, indices)
    _assert_no_empty_client(partition)
    for split in partition.values():
        assert split.holdout.size >= (1 if holdout > 0 and len(split) > 1 else 0)
