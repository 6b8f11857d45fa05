"""Quantity-skew partitioners against flwr-datasets (run, not read: flwr_datasets 0.6.1 is a test dependency)."""

import numpy as np
import pytest

from fedctl.data.glue.shard import make_shards
from fedctl.data.quantity import (
    client_sizes,
    inner_dirichlet,
    parse_sizes,
    scheme_sizes,
    shuffled_ranges,
    snap_to_groups,
)
from fedctl.data.speech.partition import speaker_quantity_split
from fedctl.errors import FedctlError

CASES = [(103, 4), (30, 3), (1000, 10), (5000, 7), (12345, 25), (17, 2), (1, 1), (97, 5)]


def _flwr():
    import datasets
    import flwr_datasets.partitioner

    return flwr_datasets.partitioner, datasets


def _flwr_sizes(partitioner, n):
    _, datasets = _flwr()
    partitioner.dataset = datasets.Dataset.from_dict({"x": list(range(n))})
    try:
        return [len(partitioner.load_partition(i)) for i in range(partitioner.num_partitions)]
    except ValueError:
        return None  # flwr-datasets refuses (a client would be empty)


def test_sizes_hand_computed():
    # linear, N=103, K=4: 103*k/10 = 10.3, 20.6, 30.9, 41.2 -> 10, 20, 30, 41 (+2 left over to the last)
    assert scheme_sizes(103, 4, "linear") == [10, 20, 30, 43]
    # square: 103*k^2/30 = 3.43, 13.7, 30.9, 54.9 -> 3, 13, 30, 54 (+3)
    assert scheme_sizes(103, 4, "square") == [3, 13, 30, 57]
    # exponential: 103*e^k/(e+e^2+e^3+e^4) = 3.30, 8.98, 24.4, 66.3 -> 3, 8, 24, 66 (+2)
    assert scheme_sizes(103, 4, "exponential") == [3, 8, 24, 68]
    with pytest.raises(FedctlError, match="client 0 only 0"):
        scheme_sizes(1000, 10, "exponential")


@pytest.mark.parametrize("scheme", ["linear", "square", "exponential"])
@pytest.mark.parametrize("n,k", CASES)
def test_scheme_sizes_equal_flwr_datasets(scheme, n, k):
    part, _ = _flwr()
    cls = {"linear": part.LinearPartitioner, "square": part.SquarePartitioner,
           "exponential": part.ExponentialPartitioner}[scheme]
    expected = _flwr_sizes(cls(num_partitions=k), n)
    if expected is None:
        with pytest.raises(FedctlError):
            scheme_sizes(n, k, scheme)
    else:
        assert scheme_sizes(n, k, scheme) == expected


@pytest.mark.parametrize("sizes,n", [([5, 3, 2], 10), ([5, 3, 2], 14), ([1], 1), ([40, 1, 7, 7], 60)])
def test_explicit_sizes_equal_flwr_size_partitioner(sizes, n):
    part, _ = _flwr()
    assert client_sizes(n, len(sizes), sizes) == _flwr_sizes(part.SizePartitioner(sizes), n) == sizes
    with pytest.raises(FedctlError, match="sum to"):
        client_sizes(sum(sizes) - 1, len(sizes), sizes)


@pytest.mark.parametrize("scheme", ["linear", "square", "exponential"])
def test_shuffled_ranges_equal_flwr_indices_after_dataset_shuffle(scheme):
    part, datasets = _flwr()
    n, k, seed = 211, 4, 7
    ds = datasets.Dataset.from_dict({"x": list(range(n))}).shuffle(seed=seed)  # as FederatedDataset does
    p = {"linear": part.LinearPartitioner, "square": part.SquarePartitioner,
         "exponential": part.ExponentialPartitioner}[scheme](num_partitions=k)
    p.dataset = ds
    expected = [sorted(p.load_partition(i)["x"]) for i in range(k)]
    assert shuffled_ranges(n, scheme_sizes(n, k, scheme), seed) == expected


@pytest.mark.parametrize("alpha,seed", [(0.3, 42), (1.0, 0), (5.0, 3)])
def test_inner_dirichlet_equals_flwr_draw_for_draw(alpha, seed):
    part, datasets = _flwr()
    labels = [int(v) for v in np.random.default_rng(1).integers(0, 3, 150)]
    sizes = [60, 40, 30, 20]
    p = part.InnerDirichletPartitioner(partition_sizes=sizes, partition_by="label", alpha=alpha, seed=seed)
    p.dataset = datasets.Dataset.from_dict({"label": labels, "i": list(range(150))})
    expected = [p.load_partition(k)["i"] for k in range(4)]
    got = inner_dirichlet(labels, sizes, alpha, seed)
    assert got == expected
    assert [len(g) for g in got] == sizes


def test_glue_quantity_modes_give_flwr_sizes():
    labels = [i % 2 for i in range(103)]
    for mode in ("linear", "square", "exponential"):
        assert [len(s) for s in make_shards(labels, 4, mode, seed=3)] == scheme_sizes(103, 4, mode)
    shards = make_shards(labels, 3, "size", seed=3, sizes=[50, 30, 20])
    assert [len(s) for s in shards] == [50, 30, 20] and len(set().union(*map(set, shards))) == 100
    inner = make_shards(labels, 3, "inner-dirichlet", seed=3, alpha=0.5, sizes="linear")
    assert [len(s) for s in inner] == scheme_sizes(103, 3, "linear")
    assert [len(s) for s in make_shards(labels, 4, "inner-dirichlet", seed=3)] == [26, 26, 26, 25]
    with pytest.raises(FedctlError, match="needs explicit client sizes"):
        make_shards(labels, 3, "size")
    with pytest.raises(FedctlError, match="does not apply"):
        make_shards(labels, 3, "iid", sizes=[1, 2, 3])


def test_parse_sizes():
    assert parse_sizes("square") == "square" and parse_sizes("3, 2,1") == [3, 2, 1]
    for bad in ("", "0,3", "a,b", "quadratic", "-1"):
        with pytest.raises(FedctlError, match="--sizes"):
            parse_sizes(bad)


def test_snap_to_groups_hand_computed():
    # groups 4,4,4,4,4 (boundaries 0,4,8,12,16,20); targets 6,14 -> cuts at 6 (tie 4/8: first) and 20
    assert snap_to_groups([4] * 5, [6, 14]) == [1, 4]
    # a tiny target still gets one group; later runs keep room
    assert snap_to_groups([10, 10, 10], [1, 1, 28]) == [1, 1, 1]
    with pytest.raises(FedctlError, match="only 2 speakers"):
        snap_to_groups([3, 3], [2, 2, 2])


def _speakers(seed: int, n_speakers: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_speakers):
        out += [f"spk{s}"] * int(rng.integers(1, 60))
    return [out[i] for i in rng.permutation(len(out))]  # speakers interleaved, as in a real index


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("scheme", ["linear", "square", "exponential", [50, 40, 30]])
def test_speaker_quantity_split_keeps_speakers_whole_within_one_speaker_of_flwr(seed, scheme):
    speakers = _speakers(seed, 40)
    k = 3 if isinstance(scheme, list) else 2 + seed % 4
    if scheme == "exponential" and k > 3:
        k = 3
    parts, targets = speaker_quantity_split(speakers, scheme, k, np.random.default_rng(seed))
    assert targets == client_sizes(len(speakers), k, scheme)  # flwr-datasets' sizes, in utterances
    owner = {}
    for c, p in enumerate(parts):
        assert p, "every client holds a speaker"
        for i in p:
            assert owner.setdefault(speakers[i], c) == c
    if not isinstance(scheme, list):  # every utterance assigned; explicit sizes may leave some out
        assert sum(len(p) for p in parts) == len(speakers)
    largest = max(speakers.count(s) for s in set(speakers))
    if min(targets) >= largest:  # no client pushed to hold a speaker its target is too small for
        assert all(abs(len(p) - t) <= largest for p, t in zip(parts, targets))


def test_speaker_unit_sizes_are_exact():
    part, datasets = _flwr()
    speakers = _speakers(5, 30)
    parts, targets = speaker_quantity_split(speakers, "square", 4, np.random.default_rng(0), unit="speakers")
    expected = _flwr_sizes(part.SquarePartitioner(num_partitions=4), 30)
    assert targets == expected == [len({speakers[i] for i in p}) for p in parts]


@pytest.mark.parametrize("seed", range(20))
def test_speaker_deviation_bound_many_small_speakers(seed):
    rng = np.random.default_rng(seed)
    speakers = [f"s{s}" for s in range(200) for _ in range(int(rng.integers(1, 11)))]
    for scheme, k in (("linear", 6), ("square", 5), ("exponential", 3), ([300, 200, 100], 3)):
        parts, targets = speaker_quantity_split(speakers, scheme, k, rng)
        largest = max(speakers.count(s) for s in {speakers[i] for p in parts for i in p})
        assert min(targets) >= 10  # the bound's premise holds in every case here
        assert all(abs(len(p) - t) <= largest for p, t in zip(parts, targets))
