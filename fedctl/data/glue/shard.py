"""Split a GLUE training set across simulated clients: `fedctl data shard glue`.

Modes (every one seeded, so a partition is reproducible):
- iid: stratified by label — each label's examples are shuffled and dealt round-robin, so every client's
  count of every label is within 1 of n_label / K (STS-B scores are stratified by rounded score);
- overlap: round(overlap_ratio · N) examples are held by every client, the rest split as iid;
- category: whole categories (labels, or MNLI genres with --category-key genre) go to clients: category c
  to clients k ≡ c (mod C) when K ≥ C (its examples split evenly among them), else client k gets every c ≡ k
  (mod K). No example and no category appears on two clients unless K > C forces a category to be shared
  (its examples still are not);
- dirichlet: per label, client proportions ~ Dir(alpha) (Hsu et al. 2019): smaller alpha, more label skew;
- linear, square, exponential, size: quantity skew with flwr-datasets' client sizes (Linear/Square/Exponential/
  SizePartitioner; `size` takes `--sizes 300,200,100`), contiguous runs of a seeded shuffle
  (fedctl/data/quantity.py);
- inner-dirichlet: flwr-datasets' InnerDirichletPartitioner: client sizes from `--sizes` (a list, or linear /
  square / exponential; default equal), label proportions within each client ~ Dir(alpha), same draws as
  flwr-datasets for the same seed.

Output: `client_<k>.json` = {"client_id", "indices", ...} (indices into the train split, sorted) and
`summary.json` (sizes and label histograms per client). `fedctl merge --shard-manifests` reads the same files.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedctl.data.quantity import client_sizes, inner_dirichlet, shuffled_ranges
from fedctl.errors import FedctlError

QUANTITY_MODES = ("linear", "square", "exponential", "size")
MODES = ("iid", "overlap", "category", "dirichlet", *QUANTITY_MODES, "inner-dirichlet")


def _groups(keys: Sequence[Any]) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def stratify_key(labels: Sequence[float | int], regression: bool) -> list[Any]:
    """What iid/dirichlet stratify by: the label, or the rounded score for regression (STS-B 0..5)."""
    return [int(round(float(y))) for y in labels] if regression else list(labels)


def iid_shards(keys: Sequence[Any], num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    """Stratified split: per key, shuffle and deal round-robin; the dealing continues where the previous
    key stopped, so client sizes differ by at most 1 too."""
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    start = 0
    for members in _groups(keys).values():
        order = rng.permutation(len(members))
        for j, pos in enumerate(order):
            shards[(start + j) % num_clients].append(members[pos])
        start = (start + len(members)) % num_clients
    return [sorted(s) for s in shards]


def overlap_shards(keys: Sequence[Any], num_clients: int, overlap_ratio: float, rng: np.random.Generator) -> list[list[int]]:
    """round(overlap_ratio · N) examples (a stratified sample) on every client; the rest split iid."""
    if not 0.0 <= overlap_ratio <= 1.0:
        raise FedctlError(f"--overlap-ratio {overlap_ratio} is outside [0, 1]", "e.g. --overlap-ratio 0.2")
    n_shared = round(overlap_ratio * len(keys))
    shared = set(stratified_order(keys, rng)[:n_shared]) if n_shared else set()
    rest = [i for i in range(len(keys)) if i not in shared]
    parts = iid_shards([keys[i] for i in rest], num_clients, rng)
    return [sorted(shared | {rest[j] for j in part}) for part in parts]


def stratified_order(keys: Sequence[Any], rng: np.random.Generator) -> list[int]:
    """All indices in an order whose every prefix is (to within 1 per key) stratified: each key's shuffled
    members are placed at fractional ranks (j + 0.5) / n_key and everything is sorted by rank."""
    ranked = []
    for members in _groups(keys).values():
        perm = rng.permutation(len(members))
        ranked += [((j + 0.5) / len(members), members[p]) for j, p in enumerate(perm)]
    return [i for _, i in sorted(ranked)]


def category_shards(categories: Sequence[Any], num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    """Whole categories to clients (see the module docstring for the rule)."""
    groups = list(_groups(categories).values())
    num_cat = len(groups)
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    if num_clients >= num_cat:
        for c, members in enumerate(groups):
            owners = [k for k in range(num_clients) if k % num_cat == c]
            perm = [members[p] for p in rng.permutation(len(members))]
            for j, owner in enumerate(owners):
                shards[owner].extend(perm[j :: len(owners)])
    else:
        for c, members in enumerate(groups):
            shards[c % num_clients].extend(members)
    return [sorted(s) for s in shards]


def dirichlet_shards(keys: Sequence[Any], num_clients: int, alpha: float, rng: np.random.Generator,
                     max_tries: int = 100) -> list[list[int]]:
    """Per key, split its examples by proportions ~ Dir(alpha·1_K); redrawn until no client is empty."""
    if not (alpha > 0 and alpha != float("inf")):  # nan fails `> 0`; Dir(inf) is undefined
        raise FedctlError(f"--alpha {alpha} must be a finite number > 0", "e.g. --alpha 0.5 (smaller: more label skew)")
    groups = list(_groups(keys).values())
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for members in groups:
            perm = [members[p] for p in rng.permutation(len(members))]
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(perm)).astype(int)[:-1]
            for k, part in enumerate(np.split(np.asarray(perm, dtype=np.int64), cuts)):
                shards[k].extend(part.tolist())
        if all(shards):
            return [sorted(s) for s in shards]
    raise FedctlError(
        f"dirichlet(alpha={alpha}) left a client empty in {max_tries} draws",
        "raise --alpha, lower --clients, or use more data",
    )


def make_shards(
    labels: Sequence[float | int],
    num_clients: int,
    mode: str,
    *,
    seed: int = 0,
    regression: bool = False,
    overlap_ratio: float = 0.2,
    alpha: float = 0.5,
    categories: Sequence[Any] | None = None,
    sizes: str | Sequence[int] | None = None,
) -> list[list[int]]:
    """Client index lists for a training set with these labels (see the module docstring for the modes).

    `sizes`: for `size` and `inner-dirichlet`, explicit client sizes (their count must equal `num_clients`); for
    `inner-dirichlet` also a scheme name (linear, square, exponential) or None (equal sizes, as np.array_split)."""
    if mode not in MODES:
        raise FedctlError(f"unknown shard mode '{mode}'", f"use one of: {', '.join(MODES)}")
    if num_clients < 1:
        raise FedctlError(f"--clients {num_clients} must be at least 1", "e.g. --clients 5")
    if mode in ("linear", "square", "exponential"):
        if sizes is not None:
            raise FedctlError(f"--sizes does not apply to --mode {mode} (the mode sets the sizes)",
                              "drop --sizes, or use --mode size --sizes 300,200,100")
        return [sorted(s) for s in shuffled_ranges(len(labels), client_sizes(len(labels), num_clients, mode), seed)]
    if mode == "size":
        if sizes is None or isinstance(sizes, str):
            raise FedctlError("--mode size needs explicit client sizes", "e.g. --mode size --sizes 300,200,100")
        return [sorted(s) for s in shuffled_ranges(len(labels), client_sizes(len(labels), num_clients, sizes), seed)]
    if mode == "inner-dirichlet":
        n = len(labels)
        chosen = ([len(c) for c in np.array_split(np.arange(n), num_clients)] if sizes is None
                  else client_sizes(n, num_clients, sizes))
        return [sorted(s) for s in inner_dirichlet(stratify_key(labels, regression), chosen, alpha, seed)]
    if sizes is not None:
        raise FedctlError(f"--sizes does not apply to --mode {mode}",
                          "use it with --mode size or --mode inner-dirichlet")
    if len(labels) < num_clients:
        raise FedctlError(f"{len(labels)} training examples cannot fill {num_clients} clients", "lower --clients")
    rng = np.random.default_rng(seed)
    keys = stratify_key(labels, regression)
    if mode == "iid":
        return iid_shards(keys, num_clients, rng)
    if mode == "overlap":
        return overlap_shards(keys, num_clients, overlap_ratio, rng)
    if mode == "dirichlet":
        return dirichlet_shards(keys, num_clients, alpha, rng)
    return category_shards(keys if categories is None else categories, num_clients, rng)


def histogram(values: Sequence[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def shard_glue(
    task: str | None,
    num_clients: int,
    mode: str,
    out: str | Path,
    *,
    seed: int = 0,
    overlap_ratio: float = 0.2,
    category_key: str = "label",
    alpha: float = 0.5,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    sizes: str | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Load a GLUE task's training split, shard it, write client_<k>.json + summary.json to `out`
    (atomically); return the summary."""
    from fedctl.data.glue.load import load_glue
    from fedctl.data.glue.tasks import get_spec
    from fedctl.utils.io import atomic_dir, check_not_input, check_out_dir

    check_not_input(out, [data_dir] if data_dir is not None else [], "--out")
    check_out_dir(out, overwrite=overwrite)
    spec = get_spec(task)
    train = load_glue(task, data_dir, log=log)["train"]
    if mode == "category" and category_key not in spec.categories:
        raise FedctlError(
            f"--category-key {category_key} does not apply to {spec.name}",
            f"use one of: {', '.join(spec.categories)}",
        )
    categories = train.column(category_key) if mode == "category" else None
    if categories is not None and category_key == "label":
        categories = stratify_key(categories, spec.is_regression)
    shards = make_shards(train.labels, num_clients, mode, seed=seed, regression=spec.is_regression,
                         overlap_ratio=overlap_ratio, alpha=alpha, categories=categories, sizes=sizes)
    keys = stratify_key(train.labels, spec.is_regression)
    per_client = []
    for k, idx in enumerate(shards):
        entry: dict[str, Any] = {"client_id": f"client_{k}", "num_examples": len(idx),
                                 "labels": histogram(keys[i] for i in idx)}
        if mode == "category":
            entry["categories"] = sorted({str(categories[i]) for i in idx})
        per_client.append(entry)
    counts = Counter(i for idx in shards for i in idx)
    summary = {
        "task": spec.name, "mode": mode, "clients": num_clients, "seed": seed,
        "train_examples": len(train), "assigned_examples": len(counts),
        "left_out_examples": len(train) - len(counts),
        "shared_examples": sum(1 for c in counts.values() if c > 1),
        "overlap_ratio": overlap_ratio if mode == "overlap" else None,
        "alpha": alpha if mode in ("dirichlet", "inner-dirichlet") else None,
        "sizes": sizes,
        "category_key": category_key if mode == "category" else None,
        "labels": histogram(keys),
        "per_client": per_client,
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for k, idx in enumerate(shards):
            manifest = {"client_id": f"client_{k}", "task": spec.name, "mode": mode, "seed": seed, "indices": idx}
            (tmp / f"client_{k}.json").write_text(json.dumps(manifest) + "\n")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_shards(path: str | Path, train_size: int) -> list[list[int]]:
    """The client index lists of a shard folder (client_0.json, client_1.json, …), checked against the data."""
    path = Path(path)
    if not path.is_dir():
        raise FedctlError(f"shard folder not found: {path}", "make one with `fedctl data shard glue --out DIR`")
    files = sorted(path.glob("client_*.json"), key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else math.inf)
    if not files:
        raise FedctlError(f"{path} holds no client_<k>.json files", "make them with `fedctl data shard glue --out DIR`")
    shards = []
    for k, file in enumerate(files):
        if file.stem != f"client_{k}":
            raise FedctlError(f"{path}: expected client_{k}.json, found {file.name}", "client files must be numbered 0..K-1")
        try:
            obj = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FedctlError(f"{file} is not valid JSON ({exc})", "re-run `fedctl data shard glue`") from None
        idx = obj.get("indices") if isinstance(obj, dict) else obj
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise FedctlError(f"{file} holds no list of integer indices", 'expected {"indices": [0, 5, 9]}')
        bad = [i for i in idx if not 0 <= i < train_size]
        if bad:
            raise FedctlError(
                f"{file}: index {bad[0]} is beyond the training set ({train_size} examples)",
                "these shards were made for other data; re-run `fedctl data shard glue` with the same task and --data-dir",
            )
        if not idx:
            raise FedctlError(f"{file} holds no indices", "every client needs data; re-shard with fewer --clients")
        shards.append(idx)
    return shards


def count_shards(path: str | Path) -> int:
    """How many client_<k>.json files a shard folder holds (the CLI sets --clients from it)."""
    path = Path(path)
    if not path.is_dir():
        raise FedctlError(f"shard folder not found: {path}", "make one with `fedctl data shard glue --out DIR`")
    return len(list(path.glob("client_*.json")))
