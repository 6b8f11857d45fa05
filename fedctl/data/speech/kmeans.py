"""`fedctl data kmeans`: HuBERT iteration-1 targets — MFCC k-means labels, per client or global.

Follows fairseq's `examples/hubert/simple_kmeans` (dump_mfcc_feature.py, learn_kmeans.py, dump_km_label.py):
39-dim MFCC features, scikit-learn MiniBatchKMeans with k-means++, batch 10,000, n_init 20,
max_no_improvement 100, tol 0, reassignment_ratio 0, fitted on a fraction of the train split's frames.

Bounded memory, as fairseq's three steps: (1) features are dumped once, one float32 .npy shard per client
(feature_shards.py; removed at the end unless `keep_features`, then under `<out>/features/`); (2) the model is fitted
on a seeded sample of the train frames, at most `max_fit_frames` of them; (3) labels are predicted block by block
from the shards and written as they come. Peak memory is the fit sample plus one block, whatever the corpus hours.
When the sample is every train frame (fit_fraction 1 and fewer train frames than max_fit_frames) the model and the
labels are those of the former all-in-memory code; a fraction below 1 draws the same sample as before up to 2**20
train frames, and a different (equally uniform) one above.

`scope="client"` fits one model per client on that client's frames only (nothing leaves the client; the
federated setting). `scope="global"` pools every client's frames (the centralized reference).

Written under `out/` (atomically):

    summary.json                  settings, per-model clusters/inertia/usage, phone metrics
    <client>/train.tsv, val.tsv   fairseq manifests: first line a root folder, then "<relpath>\\t<num_samples>"
    <client>/train.km, val.km     one line per utterance (same order): space-separated cluster ids, exactly
                                  `label_num_frames(num_samples, label_rate)` of them (see features.py)
    <client>/dict.km.txt          fairseq dictionary: "<id> 1" per cluster
    <model>/centroids.npy         (clusters, 39) float32; <model> is the client id, or "global"

Phone metrics (HuBERT paper, Hsu et al. 2021, sec. IV-F), over frames z (cluster) and y (phone at the frame
centre, from the corpus' .phn files): phone purity = E_z[max_y p(y|z)], cluster purity = E_y[max_z p(z|y)],
PNMI = I(y; z) / H(y). A random assignment (uniform cluster per frame, same cluster count) is reported
alongside as the floor. Per-client scope reports each client's metrics and their frame-weighted mean.
Phones come from the corpus' .phn files, or from `alignments` (MFA TextGrids or frame labels: alignments.py).

Speaker information, always reported: I(z; speaker) / H(speaker) over every labelled frame, per model (models
whose frames hold one speaker have no speaker entropy and are left out of the mean), with the random floor.
High values mean the targets encode who speaks, not only what is said.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fedctl.data.speech.alignments import Alignments
from fedctl.data.speech.audio import load_audio
from fedctl.data.speech.feature_shards import ShardReader, ShardWriter, sample_without_replacement
from fedctl.data.speech.features import (
    FEATURE_DIM,
    SAMPLE_RATE,
    MfccExtractor,
    _check_rate,
    label_frame_centers,
    label_num_frames,
    to_label_rate,
)
from fedctl.data.speech.partition import read_partition
from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_dir, check_not_input, check_out_dir

SCOPES = ("client", "global")
MIN_FRAMES_PER_CLUSTER = 10  # below this many fit frames per cluster, lower the cluster count
SILENCE = "sil"


@dataclass
class KmeansConfig:
    clusters: int = 100
    scope: str = "client"
    label_rate: int = 50  # Hz: 50 matches HuBERT's 20 ms frames
    fit_fraction: float = 1.0  # fraction of train frames the model is fitted on (fairseq's --percent)
    seed: int = 0
    batch_size: int = 10000  # fairseq learn_kmeans.py defaults from here down
    n_init: int = 20
    max_iter: int = 100
    max_no_improvement: int = 100
    init_size: int | None = None  # None: scikit-learn's 3 * batch_size
    threads: int = 1  # BLAS/OpenMP threads for fitting; 1 is ~4x faster than 2 on a busy 2-core box,
    # raise it for LibriSpeech-scale data on a machine with free cores
    max_fit_frames: int | None = 1_000_000  # cap on the fit sample (1M x 39 float32 = 156 MB); None: no cap
    block_frames: int = 65536  # frames read and labelled at a time
    keep_features: bool = False  # keep the per-client feature shards under <out>/features/
    alignments: str | None = None  # TextGrid folder or frame-label file (alignments.py)
    tier: str = "phones"  # TextGrid tier holding phones (MFA: "phones")
    alignment_rate: int = 100  # Hz of frame-label files


@dataclass
class KmeansResult:
    out: Path
    summary: dict
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def read_phones(path: str) -> tuple[np.ndarray, list[str]]:
    """TIMIT-style .phn: "<start> <end> <phone>" in samples. Returns (segment starts, phones)."""
    starts, phones = [], []
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                start, _end, phone = line.split()
                starts.append(int(start))
                phones.append(phone)
    except (OSError, ValueError) as exc:
        raise FedctlError(f"phone alignment {path} is unreadable ({exc})", "regenerate the corpus") from exc
    return np.asarray(starts), phones


def frame_phones(phn_path: str, num_frames: int, label_rate: int) -> np.ndarray:
    """The phone under the centre of each label frame."""
    starts, phones = read_phones(phn_path)
    if not phones:
        return np.full(num_frames, SILENCE, dtype=object)
    idx = np.searchsorted(starts, label_frame_centers(num_frames, label_rate), side="right") - 1
    return np.asarray(phones, dtype=object)[np.clip(idx, 0, len(phones) - 1)]


def _load_audio(row: dict) -> np.ndarray:
    path = row["path"]
    audio = load_audio(path)  # 16 kHz mono, resampled / down-mixed once, here as everywhere
    if len(audio) != row["num_samples"]:
        raise FedctlError(
            f"{path} has {len(audio)} samples at 16 kHz but the manifest says {row['num_samples']}",
            "the file changed since partitioning: re-run `fedctl data partition`",
        )
    return audio


def _dump_features(rows: list[dict], extractor, label_rate: int, path: Path, dim: int, batch: int = 32) -> np.ndarray:
    """Write one client's label-rate features to a shard; return the frame count of each row (manifest order)."""
    # an extractor has .batch(audios) -> per-utterance (frames, dim) tensors; `rate` (Hz) is 100 for MFCCs
    # (default) or 50 for HuBERT layers, whose frames already number label_num_frames(n, 50)
    rate = getattr(extractor, "rate", 100)
    lengths = np.array([label_num_frames(r["num_samples"], label_rate) for r in rows], dtype=np.int64)
    with ShardWriter(path, int(lengths.sum()), dim) as shard:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            feats = extractor.batch([_load_audio(r) for r in chunk])
            for row, f in zip(chunk, feats):
                f = f.numpy()
                if rate == 50:
                    f = np.repeat(f, 2, axis=0)  # to 100 Hz, so the MFCC path's rate rule applies unchanged
                shard.append(to_label_rate(f, row["num_samples"], label_rate) if len(f) else f.reshape(0, dim))
    return lengths


def _fit(frames: np.ndarray, clusters: int, cfg: KmeansConfig, seed: int):
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=clusters,
        init="k-means++",
        max_iter=cfg.max_iter,
        batch_size=cfg.batch_size,
        verbose=0,
        compute_labels=False,
        tol=0.0,
        max_no_improvement=cfg.max_no_improvement,
        init_size=cfg.init_size,
        n_init=cfg.n_init,
        reassignment_ratio=0.0,
        random_state=seed,
    )
    km.fit(frames)
    return km


def phone_metrics(phones: np.ndarray, clusters: np.ndarray) -> dict:
    """Phone purity, cluster purity and PNMI (HuBERT paper) from aligned per-frame phones and cluster ids."""
    if len(phones) == 0:
        return {"frames": 0}
    phone_ids, y = np.unique(phones.astype(str), return_inverse=True)
    cluster_ids, z = np.unique(clusters, return_inverse=True)
    joint = np.zeros((len(phone_ids), len(cluster_ids)), dtype=np.int64)
    np.add.at(joint, (y, z), 1)
    return contingency_metrics(joint)


def normalised_mutual_information(counts: np.ndarray) -> float | None:
    """I(y; z) / H(y) from a (y values, clusters) table of frame counts; None when H(y) = 0 (one y value)."""
    from sklearn.metrics import mutual_info_score

    counts = np.asarray(counts)
    py = counts.sum(1)[counts.sum(1) > 0] / counts.sum()
    h_y = float(-(py * np.log(py)).sum())
    if h_y <= 0:
        return None
    return float(mutual_info_score(None, None, contingency=counts[:, counts.sum(0) > 0])) / h_y


def contingency_metrics(counts: np.ndarray) -> dict:
    """Phone purity, cluster purity and PNMI from a (phones, clusters) table of frame counts."""
    counts = np.asarray(counts)
    total = int(counts.sum())
    if total == 0:
        return {"frames": 0}
    joint = counts / total
    pnmi = normalised_mutual_information(counts)
    return {
        "frames": total,
        "phones": int((counts.sum(1) > 0).sum()),
        "phone_purity": float(joint.max(0).sum()),  # sum_z max_y p(y, z) = E_z[max_y p(y|z)]
        "cluster_purity": float(joint.max(1).sum()),  # sum_y max_z p(y, z) = E_y[max_z p(z|y)]
        "pnmi": 0.0 if pnmi is None else pnmi,
    }


def _usage(counts: np.ndarray) -> dict:
    p = counts[counts > 0] / counts.sum()
    return {
        "clusters_used": int((counts > 0).sum()),
        "usage_fraction": float((counts > 0).mean()),
        "usage_perplexity": float(np.exp(-(p * np.log(p)).sum())),  # effective number of clusters
    }


@dataclass
class _Client:
    rows: list[dict]
    shard: Path
    lengths: np.ndarray  # label frames per row

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])


def _fit_sample(clients: list[_Client], cfg: KmeansConfig, rng: np.random.Generator) -> np.ndarray:
    """The frames k-means is fitted on: a seeded sample of the members' train frames (all rows if none is train),
    in manifest order, at most `max_fit_frames`."""
    any_train = any(r.get("split", "train") == "train" for c in clients for r in c.rows)
    owner, first, count = [], [], []  # every fitted utterance: its client, first shard row, frames
    for ci, c in enumerate(clients):
        for row, start, n in zip(c.rows, c.offsets[:-1], c.lengths):
            if n and (not any_train or row.get("split", "train") == "train"):
                owner.append(ci)
                first.append(int(start))
                count.append(int(n))
    owner_a, first_a = np.array(owner, dtype=np.int64), np.array(first, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(count, dtype=np.int64)])
    total = int(starts[-1])
    want = total
    if cfg.fit_fraction < 1.0 and total:
        want = max(1, int(round(cfg.fit_fraction * total)))
    if cfg.max_fit_frames is not None:
        want = min(want, cfg.max_fit_frames)
    picked = sample_without_replacement(total, want, rng)  # indices into the concatenated fitted frames
    which = np.searchsorted(starts, picked, side="right") - 1
    positions = first_a[which] + (picked - starts[which]) if len(picked) else picked
    dim = ShardReader(clients[0].shard).dim
    out = np.empty((len(picked), dim), dtype=np.float32)
    for ci, c in enumerate(clients):
        mask = owner_a[which] == ci if len(picked) else np.zeros(0, bool)
        if mask.any():  # picked is sorted and clients come in order, so each client's positions are sorted
            out[mask] = ShardReader(c.shard).take(positions[mask], cfg.block_frames)
    return out


class _Tally:
    """Streaming counts for one model: cluster usage and the (phone, cluster) and (speaker, cluster) tables."""

    def __init__(self, clusters: int):
        self.clusters = clusters
        self.usage = np.zeros(clusters, dtype=np.int64)
        self.phone: dict[str, np.ndarray] = {}
        self.phone_random: dict[str, np.ndarray] = {}
        self.speaker: dict[str, np.ndarray] = {}
        self.speaker_random: dict[str, np.ndarray] = {}

    @staticmethod
    def _add(table: dict[str, np.ndarray], keys: np.ndarray, labels: np.ndarray, clusters: int) -> None:
        names, inverse = np.unique(keys.astype(str), return_inverse=True)
        counts = np.zeros((len(names), clusters), dtype=np.int64)
        np.add.at(counts, (inverse, labels), 1)
        for name, row in zip(names.tolist(), counts):
            if name in table:
                table[name] += row
            else:
                table[name] = row

    def add(self, labels: np.ndarray, speaker: str, phones: np.ndarray | None, rng: np.random.Generator) -> None:
        self.usage += np.bincount(labels, minlength=self.clusters)
        random = rng.integers(0, self.clusters, len(labels))
        for table, lab in ((self.speaker, labels), (self.speaker_random, random)):
            counts = np.bincount(lab, minlength=self.clusters)
            table[speaker] = table[speaker] + counts if speaker in table else counts
        if phones is not None:
            self._add(self.phone, phones, labels, self.clusters)
            self._add(self.phone_random, phones, random, self.clusters)


def _effective_clusters(name: str, n_frames: int, clusters: int, warnings: list[str]) -> int:
    k = min(clusters, n_frames // MIN_FRAMES_PER_CLUSTER)
    if k < 2:
        raise FedctlError(
            f"{name} has only {n_frames} training frames: too few for k-means "
            f"(need {2 * MIN_FRAMES_PER_CLUSTER} or more)",
            "raise --fit-fraction, give this client more data, or use --scope global",
        )
    if k < clusters:
        warnings.append(
            f"{name}: {n_frames} training frames < {MIN_FRAMES_PER_CLUSTER} x {clusters} clusters; "
            f"using {k} clusters for this client"
        )
    return k


def _relative_tsv(rows: list[dict]) -> str:
    paths = [r["path"] for r in rows]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else "/"
    return root + "\n" + "".join(f"{os.path.relpath(r['path'], root)}\t{r['num_samples']}\n" for r in rows)


def _check_config(cfg: KmeansConfig) -> None:
    _check_rate(cfg.label_rate)
    if cfg.scope not in SCOPES:
        raise FedctlError(f"--scope {cfg.scope!r} is not valid", "use --scope client or --scope global")
    if cfg.clusters < 2:
        raise FedctlError(f"--clusters must be >= 2, got {cfg.clusters}", "HuBERT uses 100 for MFCC targets")
    if not 0 < cfg.fit_fraction <= 1:
        raise FedctlError(f"--fit-fraction must be in (0, 1], got {cfg.fit_fraction}", "e.g. 0.1 on large data")
    if cfg.max_fit_frames is not None and cfg.max_fit_frames < 1:
        raise FedctlError(f"--max-fit-frames must be >= 1, got {cfg.max_fit_frames}",
                          "e.g. --max-fit-frames 1000000 (about 5.6 h of speech at 50 Hz)")
    if cfg.block_frames < 1:
        raise FedctlError(f"block_frames must be >= 1, got {cfg.block_frames}", "e.g. 65536")


def learn_kmeans_labels(
    parts: str | Path,
    out: str | Path,
    cfg: KmeansConfig | None = None,
    progress: Callable[[str], None] | None = None,
    extractor=None,
    overwrite: bool = False,
) -> KmeansResult:
    """Dump features of every utterance of a partition to per-client shards, fit k-means per `cfg.scope` on a
    sample, label every utterance block by block; write labels, centroids and summary.json to `out`."""
    cfg = cfg or KmeansConfig()
    _check_config(cfg)
    check_not_input(out, [parts], "--out")
    check_out_dir(out, overwrite=overwrite)
    say = progress or (lambda _msg: None)
    _summary, manifests = read_partition(parts)
    if not any(manifests.values()):
        raise FedctlError(f"partition {parts} has no utterances", "re-run `fedctl data partition librispeech`")
    alignments = Alignments(cfg.alignments, cfg.tier, cfg.alignment_rate) if cfg.alignments else None
    if alignments is not None and not any(r["id"] in alignments for rows in manifests.values() for r in rows):
        raise FedctlError(f"--alignments {cfg.alignments} covers none of the partition's utterances",
                          "the TextGrid file names (or the first word of each line) must be the utterance ids")
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        result = _run(manifests, tmp, cfg, say, extractor, alignments)
    return KmeansResult(out=out, summary=result.summary, warnings=result.warnings)


def _run(manifests, tmp: Path, cfg: KmeansConfig, say, extractor, alignments) -> KmeansResult:
    started = time.perf_counter()
    features_dir = tmp / "features"
    features_dir.mkdir()
    clients: dict[str, _Client] = {}
    with _torch_threads(1):  # per-utterance MFCCs are tiny ops: threads only add contention
        extractor = extractor or MfccExtractor()  # or e.g. hubert_features.HubertLayerExtractor
        dim = getattr(extractor, "dim", FEATURE_DIM)
        for client_id, rows in manifests.items():
            say(f"features {client_id}: {len(rows)} utterances")
            shard = features_dir / f"{client_id}.npy"
            clients[client_id] = _Client(rows, shard, _dump_features(rows, extractor, cfg.label_rate, shard, dim))
    audio_seconds = sum(r["num_samples"] for c in clients.values() for r in c.rows) / SAMPLE_RATE
    feature_seconds = time.perf_counter() - started

    rng = np.random.default_rng(cfg.seed)
    warnings: list[str] = []
    groups = {"global": list(clients)} if cfg.scope == "global" else {c: [c] for c in clients}
    models: dict[str, dict] = {}
    tallies: dict[str, _Tally] = {}
    fit_seconds = label_seconds = 0.0
    aligned = 0
    for model_name, members in groups.items():
        t0 = time.perf_counter()
        frames = _fit_sample([clients[c] for c in members], cfg, rng)
        k = _effective_clusters(model_name, len(frames), cfg.clusters, warnings)
        say(f"k-means {model_name}: {len(frames)} frames, {k} clusters")
        with threadpool_limits(cfg.threads):
            km = _fit(frames, k, cfg, seed=cfg.seed)
            inertia = -km.score(frames) / len(frames)  # mean squared distance per frame, as fairseq reports
        n_fit = len(frames)
        del frames
        t1 = time.perf_counter()
        tally = tallies[model_name] = _Tally(k)
        for c in members:
            aligned += _label_client(c, clients[c], km, tmp, cfg, tally, alignments, rng)
        label_seconds += time.perf_counter() - t1
        fit_seconds += t1 - t0
        models[model_name] = {"clients": members, "clusters": k, "fit_frames": int(n_fit), "inertia": float(inertia),
                              **_usage(tally.usage)}
        (tmp / model_name).mkdir(exist_ok=True)
        np.save(tmp / model_name / "centroids.npy", km.cluster_centers_.astype(np.float32))
    if not cfg.keep_features:
        shutil.rmtree(features_dir)

    total_utts = sum(len(c.rows) for c in clients.values())
    summary = {
        "settings": dict(cfg.__dict__),
        "features": {"type": getattr(extractor, "name", "mfcc+delta+delta2"), "dim": dim,
                     "frame_rate_hz": getattr(extractor, "rate", 100), "label_rate_hz": cfg.label_rate,
                     "shards": "features/" if cfg.keep_features else None},
        "audio_hours": audio_seconds / 3600.0,
        "timing_seconds": {"features": feature_seconds, "fit": fit_seconds, "label": label_seconds,
                           "fit_and_label": fit_seconds + label_seconds},
        "models": models,
        "phone_metrics": _phone_report(tallies, alignments, aligned, total_utts),
        "speaker_metrics": _speaker_report(tallies),
        "warnings": warnings,
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return KmeansResult(out=tmp, summary=summary, warnings=warnings)


def _label_client(client_id: str, client: _Client, km, tmp: Path, cfg: KmeansConfig, tally: _Tally,
                  alignments: Alignments | None, rng: np.random.Generator) -> int:
    """Predict every utterance of one client block by block; write <client>/{train,val}.{tsv,km} and dict.km.txt.
    Returns how many utterances had a phone alignment."""
    folder = tmp / client_id
    folder.mkdir(exist_ok=True)
    (folder / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(tally.clusters)))
    for split in ("train", "val"):
        (folder / f"{split}.tsv").write_text(_relative_tsv([r for r in client.rows if r.get("split", "train") == split]))
    reader = ShardReader(client.shard)
    offsets = client.offsets
    aligned = 0
    with open(folder / "train.km", "w") as train_km, open(folder / "val.km", "w") as val_km:
        files = {"train": train_km, "val": val_km}
        row = 0
        while row < len(client.rows):
            stop = row + 1  # at least one utterance per block, more while they fit in block_frames
            while stop < len(client.rows) and offsets[stop + 1] - offsets[row] <= cfg.block_frames:
                stop += 1
            block = reader.read(int(offsets[row]), int(offsets[stop]))
            with threadpool_limits(cfg.threads):
                labels = km.predict(block).astype(np.int64) if len(block) else np.zeros(0, np.int64)
            for i in range(row, stop):
                lab = labels[offsets[i] - offsets[row] : offsets[i + 1] - offsets[row]]
                meta = client.rows[i]
                files[meta.get("split", "train")].write(" ".join(map(str, lab.tolist())) + "\n")
                phones = _row_phones(meta, len(lab), cfg.label_rate, alignments)
                aligned += phones is not None
                if len(lab):
                    tally.add(lab, str(meta.get("speaker", "")), phones, rng)
            row = stop
    return aligned


def _row_phones(row: dict, num_frames: int, label_rate: int, alignments: Alignments | None) -> np.ndarray | None:
    if alignments is not None:
        return alignments.frame_phones(row["id"], num_frames, label_rate)
    if row.get("phones"):
        return frame_phones(row["phones"], num_frames, label_rate)
    return None


def _weighted_mean(per_model: dict, which: str, keys: tuple[str, ...]) -> dict:
    rows = [r[which] for r in per_model.values() if r[which].get(keys[0]) is not None]
    total = sum(r["frames"] for r in rows)
    return {key: (sum(r[key] * r["frames"] for r in rows) / total if total else None) for key in keys}


def _phone_report(tallies: dict[str, _Tally], alignments, aligned: int, total_utts: int) -> dict:
    """Phone metrics per model (and their frame-weighted mean), next to a random assignment's."""
    report: dict = {}
    for name, t in tallies.items():
        if not t.phone:
            continue
        report[name] = {"kmeans": contingency_metrics(np.stack(list(t.phone.values()))),
                        "random": contingency_metrics(np.stack(list(t.phone_random.values())))}
    source = (f"{alignments.path} (tier {alignments.tier!r})" if alignments is not None and alignments.path.is_dir()
              else str(alignments.path) if alignments is not None else ".phn files")
    if not report:
        return {"available": False, "reason": "no phone alignments (.phn files, or --alignments) for this partition"}
    total = sum(r["kmeans"]["frames"] for r in report.values())
    keys = ("phone_purity", "cluster_purity", "pnmi")
    mean = {which: _weighted_mean(report, which, keys) for which in ("kmeans", "random")}
    return {"available": True, "source": source, "aligned_utterances": aligned, "utterances": total_utts,
            "frames": total, "mean": mean, "per_model": report}


def _speaker_report(tallies: dict[str, _Tally]) -> dict:
    """I(cluster; speaker) / H(speaker) per model; models with one speaker have none (no speaker entropy)."""
    per_model = {}
    for name, t in tallies.items():
        counts = np.stack(list(t.speaker.values()))
        rand = np.stack(list(t.speaker_random.values()))
        per_model[name] = {
            "speakers": len(t.speaker),
            "kmeans": {"frames": int(counts.sum()), "nmi": normalised_mutual_information(counts)},
            "random": {"frames": int(rand.sum()), "nmi": normalised_mutual_information(rand)},
        }
    mean = {which: _weighted_mean(per_model, which, ("nmi",))["nmi"] for which in ("kmeans", "random")}
    scored = [n for n, m in per_model.items() if m["kmeans"]["nmi"] is not None]
    return {"nmi": mean["kmeans"], "random_nmi": mean["random"], "models_scored": len(scored),
            "models": len(per_model), "per_model": per_model}
