"""Client sizes with flwr-datasets' partitioner semantics, shared by the speech and GLUE splitters.

flwr-datasets (flwr_datasets.partitioner, checked against version 0.6.1 by tests/data/test_quantity.py) sizes
clients as follows, and these functions reproduce its numbers exactly on the same inputs:
- `linear`, `square`, `exponential` (LinearPartitioner, SquarePartitioner, ExponentialPartitioner, all built on
  IdToSizeFncPartitioner): client k of K (k = 1..K) holds units f(k) = k, k**2 or e**k; its size is
  int(f(k) / sum f * N) (float64, truncated) and the last client also takes the rows the truncation left over.
  Every client must get at least one row.
- explicit sizes (SizePartitioner): client k gets sizes[k] rows; the sizes may sum to less than N (the rest is
  left out), never to more.
- `inner-dirichlet` (InnerDirichletPartitioner): explicit client sizes; within each client, class proportions
  ~ Dir(alpha), drawn row by row exactly as flwr-datasets draws them (same seed, same indices).

flwr-datasets assigns contiguous row ranges of a dataset the user shuffled (FederatedDataset shuffles with a seed);
`shuffled_ranges` does the same with `numpy.random.default_rng(seed).permutation`, which is what
`datasets.Dataset.shuffle(seed=seed)` uses, so the index lists match too. flwr-datasets is not a runtime
dependency: it pins `datasets<5` and pulls matplotlib/seaborn; the arithmetic is a few lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedctl.errors import FedctlError

SIZE_SCHEMES = ("linear", "square", "exponential")
_UNITS = {"linear": lambda x: x, "square": np.square, "exponential": np.exp}


def parse_sizes(text: str, flag: str = "--sizes") -> str | list[int]:
    """`linear` | `square` | `exponential` | a comma-separated list of positive integers."""
    text = text.strip()
    if text in SIZE_SCHEMES:
        return text
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise FedctlError(
            f"{flag} {text!r} is neither a size scheme nor a list of positive integers",
            f"use one of {', '.join(SIZE_SCHEMES)}, or explicit client sizes such as {flag} 300,200,100",
        )
    return sizes


def scheme_sizes(num_rows: int, num_clients: int, scheme: str, unit: str = "rows") -> list[int]:
    """Client sizes of flwr-datasets' Linear/Square/ExponentialPartitioner for `num_rows` rows."""
    if scheme not in _UNITS:
        raise FedctlError(f"size scheme {scheme!r} is not known", f"use one of: {', '.join(SIZE_SCHEMES)}")
    if num_clients < 1:
        raise FedctlError(f"--clients must be >= 1, got {num_clients}", "e.g. --clients 10")
    units = _UNITS[scheme](np.linspace(start=1, stop=num_clients, num=num_clients))
    sizes = np.array(units / units.sum() * num_rows, dtype=np.int64)  # the same float ops as flwr-datasets
    sizes[-1] += num_rows - sizes.sum()
    if sizes.min() < 1:
        raise FedctlError(
            f"--sizes {scheme} over {num_rows} {unit} gives client 0 only {int(sizes[0])} {unit} with {num_clients} clients",
            f"lower --clients, or use a flatter scheme ({'linear' if scheme != 'linear' else 'explicit --sizes'})",
        )
    return [int(s) for s in sizes]


def explicit_sizes(num_rows: int, sizes: Sequence[int], unit: str = "rows") -> list[int]:
    """SizePartitioner's check: explicit sizes may leave rows out but never ask for more than exist."""
    if sum(sizes) > num_rows:
        raise FedctlError(
            f"--sizes sum to {sum(sizes)} {unit} but the data has only {num_rows}",
            f"lower the sizes so they sum to at most {num_rows}",
        )
    return [int(s) for s in sizes]


def client_sizes(num_rows: int, num_clients: int, sizes: str | Sequence[int], unit: str = "rows") -> list[int]:
    """Sizes for a scheme name or an explicit list (whose length must equal `num_clients`)."""
    if isinstance(sizes, str):
        return scheme_sizes(num_rows, num_clients, sizes, unit)
    if len(sizes) != num_clients:
        raise FedctlError(
            f"--sizes lists {len(sizes)} clients but --clients is {num_clients}",
            f"drop --clients (it follows --sizes) or pass --clients {len(sizes)}",
        )
    return explicit_sizes(num_rows, sizes, unit)


def shuffled_ranges(num_rows: int, sizes: Sequence[int], seed: int) -> list[list[int]]:
    """Contiguous ranges of a seeded shuffle (as `Dataset.shuffle(seed)` + a flwr size partitioner), sorted."""
    order = np.random.default_rng(seed).permutation(num_rows)
    cuts = np.concatenate([[0], np.cumsum(sizes)])
    return [sorted(order[cuts[k] : cuts[k + 1]].tolist()) for k in range(len(sizes))]


def inner_dirichlet(labels: Sequence, sizes: Sequence[int], alpha: float, seed: int) -> list[list[int]]:
    """InnerDirichletPartitioner(partition_sizes=sizes, alpha=alpha, seed=seed, shuffle=True), draw for draw.

    Classes are the sorted distinct labels (flwr-datasets requires them to be 0..C-1 already; for such labels the
    two coincide). Each client's list is returned in flwr-datasets' (shuffled) order.
    """
    if not (alpha > 0 and alpha != float("inf")):
        raise FedctlError(f"--alpha {alpha} must be a finite number > 0", "e.g. --alpha 0.5 (smaller: more label skew)")
    explicit_sizes(len(labels), sizes)
    rng = np.random.default_rng(seed)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    num_classes, num_clients = len(classes), len(sizes)
    priors = rng.dirichlet(alpha=np.full(num_classes, float(alpha)), size=num_clients)
    members = [np.where(targets == c)[0] for c in range(num_classes)]
    left_in_class = [len(m) for m in members]
    out = [np.zeros(s, dtype=np.int64) for s in sizes]
    left = dict(zip(range(num_clients), sizes))
    open_clients = list(range(num_clients))
    while sum(left.values()) != 0:
        k = rng.choice(open_clients)
        if left[k] == 0:
            open_clients.pop(open_clients.index(k))
            continue
        left[k] -= 1
        p = priors[k]
        while True:
            c = rng.choice(list(range(num_classes)), p=p)
            if left_in_class[c] == 0:  # class used up: drop it everywhere and renormalise, as flwr-datasets does
                priors[:, c] = 0
                priors = priors / priors.sum(axis=1, keepdims=True)
                p = priors[k]
                continue
            left_in_class[c] -= 1
            out[k][left[k]] = members[c][left_in_class[c]]
            break
    result = [o.tolist() for o in out]
    for indices in result:
        rng.shuffle(indices)
    return result


def snap_to_groups(group_sizes: Sequence[int], targets: Sequence[int]) -> list[int]:
    """Cut a sequence of whole groups (e.g. speakers, `group_sizes` rows each) into len(targets) consecutive runs
    whose row counts come as close as possible to `targets`.

    The flwr-datasets cut points (running sums of the targets) are moved to the nearest group boundary, so each
    run's size is within max(group_sizes) of its target (each of its two cut points moves at most half a group).
    Every run gets at least one group: where two cuts would fall on one boundary the later one moves on (the bound
    then does not hold for that run; callers report the realised sizes). Groups after the last cut are left out
    (explicit sizes that sum to less than the data). Returns the number of groups in each run.
    """
    if len(targets) > len(group_sizes):
        raise FedctlError(
            f"{len(targets)} clients but only {len(group_sizes)} speakers: each client needs a speaker of its own",
            f"use --clients {len(group_sizes)} or fewer",
        )
    bounds = np.concatenate([[0], np.cumsum(group_sizes)])
    num_groups, num_runs = len(group_sizes), len(targets)
    cuts = []
    for want in np.cumsum(targets):
        nearest = int(np.argmin(np.abs(bounds - want)))  # first of equally near boundaries
        cuts.append(nearest)
    for j in range(num_runs):  # forward: at least one group per run
        cuts[j] = max(cuts[j], (cuts[j - 1] if j else 0) + 1)
    for j in range(num_runs - 1, -1, -1):  # backward: leave room for the runs after
        cuts[j] = min(cuts[j], num_groups - (num_runs - 1 - j))
        if j + 1 < num_runs:
            cuts[j] = min(cuts[j], cuts[j + 1] - 1)
    counts = np.diff(np.concatenate([[0], cuts]))
    return [int(c) for c in counts]
