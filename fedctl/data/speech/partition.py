"""`fedctl data partition librispeech`: split indexed utterances across simulated clients.

Three schemes:
- `speaker`: each speaker lives on exactly one client (the natural federated split: a client is a user).
  Speakers are assigned largest first to the client with the fewest hours so far (greedy LPT), which
  guarantees max(client hours) - min(client hours) <= the largest single speaker's hours.
- `iid`: utterances shuffled and dealt out evenly.
- `dirichlet`: label skew with speakers as labels (Hsu et al. 2019, "Measuring the Effects of Non-Identical
  Data Distribution"): each speaker's utterances are divided among clients in proportions ~ Dir(alpha).
  Smaller alpha, more skew. Redrawn (seeded) until every client has at least one utterance.

Quantity skew (`--sizes`, flwr-datasets' semantics, see fedctl/data/quantity.py): `linear`, `square`,
`exponential` or explicit sizes `300,200,100`.
- with `--by iid`: exactly flwr-datasets' client sizes in utterances (contiguous runs of a seeded shuffle);
- with `--by speaker`: speakers stay whole. `--size-unit utterances` (default): the target sizes are flwr-datasets'
  sizes over the utterance count; speakers are taken in a seeded random order and the target cut points are moved
  to the nearest speaker boundary, so each client is within one speaker's utterance count of its target
  (`size_deviation` in summary.json). `--size-unit speakers`: flwr-datasets' sizes over the speaker count, met
  exactly (each client holds exactly that many speakers).

Validation (`--val-by`): `utterance` (default) marks a share of each client's utterances as val, so val speakers
are also training speakers; `speaker` holds out whole speakers of each client (the val share is met as closely as
whole speakers allow, at least one val and one train speaker per client).

Output: one JSON-lines manifest per client (`client_000.jsonl`, one utterance per line with id, path,
duration, num_samples, sample_rate, speaker, chapter, transcript, split, source_rate, channels, and phones
when present) plus `summary.json` (per-client utterances/hours/speakers, input formats, input sample rates
and channel counts with the resampling applied on reading, bad files). The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedctl.data.quantity import client_sizes, shuffled_ranges, snap_to_groups
from fedctl.data.speech.librispeech import BadFile, Utterance
from fedctl.data.speech.readers import read_corpus
from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_dir, check_not_input, check_out_dir

SCHEMES = ("speaker", "iid", "dirichlet")
SIZE_UNITS = ("utterances", "speakers")
VAL_BY = ("utterance", "speaker")
MAX_DIRICHLET_DRAWS = 100


@dataclass
class PartitionResult:
    out: Path
    summary: dict
    bad_files: list[BadFile]


def client_name(i: int) -> str:
    return f"client_{i:03d}"


def split_by_speaker(utterances: list[Utterance], clients: int) -> list[list[Utterance]]:
    """Greedy LPT over speakers: no speaker on two clients; hour spread <= the largest speaker's hours."""
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        by_speaker[u.speaker].append(u)
    if clients > len(by_speaker):
        raise FedctlError(
            f"--clients {clients} but the data has only {len(by_speaker)} speakers: with --by speaker "
            "each client needs at least one speaker of its own",
            f"use --clients {len(by_speaker)} or fewer, or --by iid / --by dirichlet",
        )
    # largest first; ties broken by speaker id so the split is deterministic
    speakers = sorted(by_speaker, key=lambda s: (-sum(u.duration for u in by_speaker[s]), s))
    parts: list[list[Utterance]] = [[] for _ in range(clients)]
    load = [0.0] * clients
    for s in speakers:
        k = min(range(clients), key=lambda i: (load[i], i))
        parts[k].extend(by_speaker[s])
        load[k] += sum(u.duration for u in by_speaker[s])
    return parts


def speaker_quantity_split(
    speakers: Sequence[str], sizes: str | Sequence[int], clients: int, rng: np.random.Generator,
    unit: str = "utterances",
) -> tuple[list[list[int]], list[int]]:
    """Quantity skew with whole speakers. `speakers[i]` is utterance i's speaker. Returns (index lists, target sizes).

    Speakers are shuffled (seeded); their utterances stay together in input order. Targets are flwr-datasets'
    client sizes over the utterance count (`unit="utterances"`: cut points snapped to speaker boundaries, each
    client within one speaker of its target) or over the speaker count (`unit="speakers"`: met exactly).
    """
    if unit not in SIZE_UNITS:
        raise FedctlError(f"--size-unit {unit!r} is not valid", f"use one of: {', '.join(SIZE_UNITS)}")
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        by_speaker[s].append(i)
    names = sorted(by_speaker)
    if clients > len(names):
        raise FedctlError(
            f"--clients {clients} but the data has only {len(names)} speakers: with --by speaker "
            "each client needs at least one speaker of its own",
            f"use --clients {len(names)} or fewer, or --by iid",
        )
    order = [names[i] for i in rng.permutation(len(names))]
    if unit == "speakers":
        targets = client_sizes(len(order), clients, sizes, unit="speakers")
        counts = targets
    else:
        targets = client_sizes(len(speakers), clients, sizes, unit="utterances")
        counts = snap_to_groups([len(by_speaker[s]) for s in order], targets)
    parts, start = [], 0
    for count in counts:
        parts.append(sorted(i for s in order[start : start + count] for i in by_speaker[s]))
        start += count
    return parts, targets


def split_iid(utterances: list[Utterance], clients: int, rng: np.random.Generator) -> list[list[Utterance]]:
    _need_utterances(utterances, clients)
    order = rng.permutation(len(utterances))
    return [[utterances[i] for i in chunk] for chunk in np.array_split(order, clients)]


def split_dirichlet(
    utterances: list[Utterance], clients: int, alpha: float, rng: np.random.Generator
) -> list[list[Utterance]]:
    """Per speaker, proportions over clients ~ Dir(alpha); redraw until no client is empty."""
    _need_utterances(utterances, clients)
    if not (alpha > 0 and alpha != float("inf")):  # nan fails `> 0`; Dir(inf) is undefined
        raise FedctlError(f"--alpha must be a finite number > 0, got {alpha}", "typical values: 0.1 (very skewed) to 100 (near iid)")
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        by_speaker[u.speaker].append(i)
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for s in sorted(by_speaker):
            idx = np.array(by_speaker[s])[rng.permutation(len(by_speaker[s]))]
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) > 0:
            return [[utterances[i] for i in sorted(p)] for p in parts]
    raise FedctlError(
        f"--by dirichlet --alpha {alpha} left a client empty in {MAX_DIRICHLET_DRAWS} draws "
        f"({len(utterances)} utterances, {clients} clients)",
        "raise --alpha or lower --clients",
    )


def _need_utterances(utterances: list[Utterance], clients: int) -> None:
    if clients > len(utterances):
        raise FedctlError(
            f"--clients {clients} but only {len(utterances)} usable utterances",
            f"use --clients {len(utterances)} or fewer",
        )


def assign_splits(part: list[Utterance], val_fraction: float, rng: np.random.Generator) -> None:
    """Mark round(val_fraction * n) of a client's utterances (at least 1 when 0 < fraction and n >= 2) as val."""
    n = len(part)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n >= 1 else 0
    val = set(rng.permutation(n)[:n_val].tolist())
    for i, u in enumerate(part):
        u.split = "val" if i in val else "train"


def assign_splits_by_speaker(part: list[Utterance], val_fraction: float, rng: np.random.Generator,
                             client_id: str = "a client") -> None:
    """Hold out whole speakers as val: speakers in a seeded order, the val set the prefix whose utterance count is
    nearest round(val_fraction * n), between one speaker and all but one."""
    speakers = sorted({u.speaker for u in part})
    if val_fraction == 0:
        for u in part:
            u.split = "train"
        return
    if len(speakers) < 2:
        raise FedctlError(
            f"--val-by speaker: {client_id} has {len(speakers)} speaker, so it cannot hold one out for validation",
            "lower --clients so that every client has two or more speakers, or use --val-by utterance",
        )
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    counts = np.cumsum([sum(u.speaker == s for u in part) for s in order])[:-1]  # prefixes of 1..S-1 speakers
    take = int(np.argmin(np.abs(counts - round(val_fraction * len(part))))) + 1
    val = set(order[:take])
    for u in part:
        u.split = "val" if u.speaker in val else "train"


def client_stats(part: list[Utterance]) -> dict:
    return {
        "utterances": len(part),
        "hours": sum(u.duration for u in part) / 3600.0,
        "speakers": len({u.speaker for u in part}),
        "train": sum(u.split == "train" for u in part),
        "val": sum(u.split == "val" for u in part),
        "val_speakers": len({u.speaker for u in part if u.split == "val"}),
    }


def partition_librispeech(
    roots: list[str | Path],
    out: str | Path,
    *,
    clients: int = 10,
    by: str = "speaker",
    alpha: float = 0.5,
    val_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    overwrite: bool = False,
    corpus_format: str = "auto",
    sizes: str | list[int] | None = None,
    size_unit: str = "utterances",
    val_by: str = "utterance",
) -> PartitionResult:
    """Read `roots` (LibriSpeech trees, fairseq/CSV manifests or local HF datasets, see
    `fedctl.data.speech.readers`), split across `clients`, write manifests + summary.json to `out` (atomically).

    `sizes`: None (balanced: hours for --by speaker, utterances for --by iid), a scheme name (linear, square,
    exponential) or explicit client sizes (then `clients` must equal their count)."""
    if by not in SCHEMES:
        raise FedctlError(f"--by {by!r} is not a partition scheme", f"use one of: {', '.join(SCHEMES)}")
    if val_by not in VAL_BY:
        raise FedctlError(f"--val-by {val_by!r} is not valid", f"use one of: {', '.join(VAL_BY)}")
    if sizes is not None and by == "dirichlet":
        raise FedctlError("--sizes does not apply to --by dirichlet (its sizes follow from the Dirichlet draws)",
                          "use --by speaker or --by iid with --sizes")
    if size_unit not in SIZE_UNITS:
        raise FedctlError(f"--size-unit {size_unit!r} is not valid", f"use one of: {', '.join(SIZE_UNITS)}")
    if size_unit == "speakers" and by != "speaker":
        raise FedctlError("--size-unit speakers needs --by speaker", "drop --size-unit, or use --by speaker")
    if clients < 1:
        raise FedctlError(f"--clients must be >= 1, got {clients}", "e.g. --clients 10")
    if not 0 <= val_fraction < 1:
        raise FedctlError(f"--val-fraction must be in [0, 1), got {val_fraction}", "e.g. --val-fraction 0.2")
    check_not_input(out, list(roots), "--out")
    check_out_dir(out, overwrite=overwrite)
    index = read_corpus(list(roots), corpus_format)
    bad = index.bad_files
    if bad and strict:
        listing = "; ".join(f"{b.path}: {b.reason}" for b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise FedctlError(
            f"{len(bad)} bad file(s) with --strict: {listing}{more}",
            "fix or remove these files, or drop --strict to skip them (they are then listed in summary.json)",
        )
    utterances = index.utterances
    if not utterances:
        raise FedctlError(
            f"no usable utterances under {', '.join(index.roots)} ({len(bad)} bad file(s), "
            f"first: {bad[0].path}: {bad[0].reason})" if bad else f"no usable utterances under {', '.join(index.roots)}",
            "check the tree has <speaker>/<chapter>/*.flac with matching .trans.txt lines",
        )
    rng = np.random.default_rng(seed)
    targets = None
    if sizes is not None and by == "speaker":
        index_parts, targets = speaker_quantity_split([u.speaker for u in utterances], sizes, clients, rng, size_unit)
        parts = [[utterances[i] for i in p] for p in index_parts]
    elif sizes is not None:
        targets = client_sizes(len(utterances), clients, sizes, unit="utterances")
        parts = [[utterances[i] for i in p] for p in shuffled_ranges(len(utterances), targets, seed)]
    elif by == "speaker":
        parts = split_by_speaker(utterances, clients)
    elif by == "iid":
        parts = split_iid(utterances, clients, rng)
    else:
        parts = split_dirichlet(utterances, clients, alpha, rng)
    for k, part in enumerate(parts):
        if val_by == "speaker":
            assign_splits_by_speaker(part, val_fraction, rng, client_name(k))
        else:
            assign_splits(part, val_fraction, rng)
    assigned = {id(u) for p in parts for u in p}
    left_out = [u for u in utterances if id(u) not in assigned]

    per_client = [{"client_id": client_name(k), "manifest": f"{client_name(k)}.jsonl", **client_stats(p)}
                  for k, p in enumerate(parts)]
    hours = [c["hours"] for c in per_client]
    speaker_hours: dict[str, float] = defaultdict(float)
    for u in (u for part in parts for u in part):
        speaker_hours[u.speaker] += u.duration / 3600.0
    summary = {
        "by": by,
        "clients": clients,
        **({"alpha": alpha} if by == "dirichlet" else {}),
        "sizes": sizes,
        **({"size_unit": size_unit if by == "speaker" else "utterances", "target_sizes": targets,
            "size_deviation": max(abs(len(set(u.speaker for u in p)) - t) if size_unit == "speakers" and by == "speaker"
                                  else abs(len(p) - t) for p, t in zip(parts, targets)),
            "left_out_utterances": len(left_out)} if targets is not None else {}),
        "val_fraction": val_fraction,
        "val_by": val_by,
        "seed": seed,
        "roots": index.roots,
        "formats": index.formats,
        "audio": audio_summary(utterances),
        "totals": {
            "utterances": len(utterances) - len(left_out),
            "hours": sum(hours),
            "speakers": len(speaker_hours),
        },
        "hours_spread": max(hours) - min(hours),
        # the greedy speaker split guarantees hours_spread <= this; reported for every scheme for comparison
        "largest_speaker_hours": max(speaker_hours.values()),
        "per_client": per_client,
        "num_bad_files": len(bad),
        "bad_files": [{"path": b.path, "reason": b.reason} for b in bad],
    }
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for k, part in enumerate(parts):
            (tmp / f"{client_name(k)}.jsonl").write_text(
                "".join(json.dumps(u.to_json()) + "\n" for u in part), encoding="utf-8"
            )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return PartitionResult(out=out, summary=summary, bad_files=bad)


def audio_summary(utterances: list[Utterance]) -> dict:
    """How the stored audio differs from what the models read (16 kHz mono), and how it is converted."""
    from fedctl.data.speech.audio import MODEL_RATE, resampler_version

    rates: dict[str, int] = defaultdict(int)
    channels: dict[str, int] = defaultdict(int)
    for u in utterances:
        rates[str(u.source_rate)] += 1
        channels[str(u.channels)] += 1
    resampled = sum(u.source_rate != MODEL_RATE for u in utterances)
    return {
        "model_rate_hz": MODEL_RATE,
        "input_rates_hz": dict(sorted(rates.items(), key=lambda kv: int(kv[0]))),
        "input_channels": dict(sorted(channels.items(), key=lambda kv: int(kv[0]))),
        "resampled": resampled,
        "downmixed": sum(u.channels != 1 for u in utterances),
        "resampler": resampler_version() if resampled else None,
        "downmix": "mean over channels",
    }


def read_partition(parts: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """Load `summary.json` and every client manifest of a partition folder."""
    parts = Path(parts)
    summary_path = parts / "summary.json"
    if not summary_path.is_file():
        raise FedctlError(
            f"{summary_path} not found: --parts must be a folder written by `fedctl data partition librispeech`",
            "run `fedctl data partition librispeech --root DIR --out PARTS` first",
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        manifests = {}
        if not isinstance(summary, dict) or not isinstance(summary.get("per_client"), list):
            raise ValueError("summary.json has no per_client list")
        for c in summary["per_client"]:
            if not isinstance(c, dict) or not isinstance(c.get("manifest"), str) or not isinstance(c.get("client_id"), str):
                raise ValueError(f"summary.json per_client entry {c!r:.80} lacks client_id / manifest names")
            path = parts / c["manifest"]
            manifests[c["client_id"]] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                         if line.strip()]
        for client_id, rows in manifests.items():
            for number, row in enumerate(rows, 1):
                problem = _row_problem(row)
                if problem:
                    raise ValueError(f"{client_id} manifest line {number}: {problem}")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FedctlError(
            f"partition folder {parts} is damaged ({type(exc).__name__}: {str(exc)[:200]})",
            "re-run `fedctl data partition librispeech` to rewrite it",
        ) from None
    return summary, manifests


def _row_problem(row) -> str | None:
    """What is wrong with one manifest row as later stages read it, or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("path"), str) or not os.path.isabs(row["path"]):
        return f"'path' = {row.get('path')!r:.80} is not an absolute path"
    n = row.get("num_samples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"'num_samples' = {n!r:.40} is not a positive integer"
    if row.get("phones") is not None and not isinstance(row["phones"], str):
        return f"'phones' = {row['phones']!r:.40} is not a path"
    if row.get("split", "train") not in ("train", "val"):
        return f"'split' = {row.get('split')!r:.40} is not train or val"
    return None
