"""`fedctl data kmeans`: HuBERT iteration-1 targets — MFCC k-means labels, per client or global.

Follows fairseq's `examples/hubert/simple_kmeans` (dump_mfcc_feature.py, learn_kmeans.py, dump_km_label.py):
39-dim MFCC features, scikit-learn MiniBatchKMeans with k-means++, batch 10,000, n_init 20,
max_no_improvement 100, tol 0, reassignment_ratio 0, fitted on a fraction of the train split's frames.

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
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from fedctl.data.speech.audio import load_audio
from fedctl.data.speech.features import (
    FEATURE_DIM,
    SAMPLE_RATE,
    MfccExtractor,
    _check_rate,
    label_frame_centers,
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


@dataclass
class KmeansResult:
    out: Path
    summary: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Utt:
    row: dict
    feats: np.ndarray  # (label frames, 39) at the label rate
    phones: np.ndarray | None  # (label frames,) phone strings, when the corpus has alignments


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


def _features(rows: list[dict], extractor, label_rate: int, batch: int = 32) -> list[_Utt]:
    # an extractor has .batch(audios) -> per-utterance (frames, dim) tensors; `rate` (Hz) is 100 for MFCCs
    # (default) or 50 for HuBERT layers, whose frames already number label_num_frames(n, 50)
    rate = getattr(extractor, "rate", 100)
    utts = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        feats = extractor.batch([_load_audio(r) for r in chunk])
        for row, f in zip(chunk, feats):
            f = f.numpy()
            if rate == 50:
                f = np.repeat(f, 2, axis=0)  # to 100 Hz, so the MFCC path's rate rule applies unchanged
            f = to_label_rate(f, row["num_samples"], label_rate)
            phones = frame_phones(row["phones"], len(f), label_rate) if row.get("phones") else None
            utts.append(_Utt(row, f, phones))
    return utts


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
    joint = np.zeros((len(phone_ids), len(cluster_ids)))
    np.add.at(joint, (y, z), 1.0)
    joint /= joint.sum()
    py, pz = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(py, pz)[nz])).sum())
    h_y = float(-(py[py > 0] * np.log(py[py > 0])).sum())
    return {
        "frames": int(len(phones)),
        "phones": int(len(phone_ids)),
        "phone_purity": float(joint.max(0).sum()),  # sum_z max_y p(y, z) = E_z[max_y p(y|z)]
        "cluster_purity": float(joint.max(1).sum()),  # sum_y max_z p(y, z) = E_y[max_z p(z|y)]
        "pnmi": mutual / h_y if h_y > 0 else 0.0,
    }


def _usage(labels: np.ndarray, clusters: int) -> dict:
    counts = np.bincount(labels, minlength=clusters)
    p = counts[counts > 0] / counts.sum()
    return {
        "clusters_used": int((counts > 0).sum()),
        "usage_fraction": float((counts > 0).mean()),
        "usage_perplexity": float(np.exp(-(p * np.log(p)).sum())),  # effective number of clusters
    }


def _fit_frames(utts: list[_Utt], fraction: float, rng: np.random.Generator) -> np.ndarray:
    train = [u.feats for u in utts if u.row.get("split", "train") == "train"] or [u.feats for u in utts]
    frames = np.concatenate(train) if train else np.zeros((0, utts[0].feats.shape[1] if utts else FEATURE_DIM), np.float32)
    if fraction < 1.0 and len(frames):
        keep = rng.permutation(len(frames))[: max(1, int(round(fraction * len(frames))))]
        frames = frames[np.sort(keep)]
    return frames


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


def learn_kmeans_labels(
    parts: str | Path,
    out: str | Path,
    cfg: KmeansConfig | None = None,
    progress: Callable[[str], None] | None = None,
    extractor=None,
    overwrite: bool = False,
) -> KmeansResult:
    """Extract MFCCs for every utterance of a partition, fit k-means per `cfg.scope`, write labels to `out`."""
    cfg = cfg or KmeansConfig()
    _check_rate(cfg.label_rate)
    if cfg.scope not in SCOPES:
        raise FedctlError(f"--scope {cfg.scope!r} is not valid", "use --scope client or --scope global")
    if cfg.clusters < 2:
        raise FedctlError(f"--clusters must be >= 2, got {cfg.clusters}", "HuBERT uses 100 for MFCC targets")
    if not 0 < cfg.fit_fraction <= 1:
        raise FedctlError(f"--fit-fraction must be in (0, 1], got {cfg.fit_fraction}", "e.g. 0.1 on large data")
    check_not_input(out, [parts], "--out")
    check_out_dir(out, overwrite=overwrite)
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    _summary, manifests = read_partition(parts)
    if not any(manifests.values()):
        raise FedctlError(f"partition {parts} has no utterances", "re-run `fedctl data partition librispeech`")

    with _torch_threads(1):  # per-utterance MFCCs are tiny ops: threads only add contention
        extractor = extractor or MfccExtractor()  # or e.g. hubert_features.HubertLayerExtractor
        per_client: dict[str, list[_Utt]] = {}
        for client_id, rows in manifests.items():
            say(f"features {client_id}: {len(rows)} utterances")
            per_client[client_id] = _features(rows, extractor, cfg.label_rate)
    audio_seconds = sum(u.row["num_samples"] for us in per_client.values() for u in us) / SAMPLE_RATE
    feature_seconds = time.perf_counter() - started

    rng = np.random.default_rng(cfg.seed)
    warnings: list[str] = []
    groups = {"global": list(per_client)} if cfg.scope == "global" else {c: [c] for c in per_client}
    models: dict[str, dict] = {}
    labels: dict[str, list[np.ndarray]] = {}
    fit_started = time.perf_counter()
    for model_name, members in groups.items():
        utts = [u for c in members for u in per_client[c]]
        frames = _fit_frames(utts, cfg.fit_fraction, rng)
        k = _effective_clusters(model_name, len(frames), cfg.clusters, warnings)
        say(f"k-means {model_name}: {len(frames)} frames, {k} clusters")
        with threadpool_limits(cfg.threads):
            km = _fit(frames, k, cfg, seed=cfg.seed)
            inertia = -km.score(frames) / len(frames)  # mean squared distance per frame, as fairseq reports
            for c in members:
                labels[c] = [km.predict(u.feats).astype(np.int64) if len(u.feats) else np.zeros(0, np.int64)
                             for u in per_client[c]]
        all_labels = np.concatenate([lab for c in members for lab in labels[c]])
        models[model_name] = {
            "clients": members,
            "clusters": k,
            "fit_frames": int(len(frames)),
            "inertia": float(inertia),
            **_usage(all_labels, k),
            "centroids": km.cluster_centers_.astype(np.float32),
        }
    fit_seconds = time.perf_counter() - fit_started

    metrics = _phone_report(per_client, labels, groups, models, rng)
    summary = {
        "settings": {k: v for k, v in cfg.__dict__.items()},
        "features": {"type": getattr(extractor, "name", "mfcc+delta+delta2"), "dim": getattr(extractor, "dim", FEATURE_DIM),
                     "frame_rate_hz": getattr(extractor, "rate", 100),
                     "label_rate_hz": cfg.label_rate},
        "audio_hours": audio_seconds / 3600.0,
        "timing_seconds": {"features": feature_seconds, "fit_and_label": fit_seconds},
        "models": {name: {k: v for k, v in m.items() if k != "centroids"} for name, m in models.items()},
        "phone_metrics": metrics,
        "warnings": warnings,
    }
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, m in models.items():
            (tmp / name).mkdir(exist_ok=True)
            np.save(tmp / name / "centroids.npy", m["centroids"])
        for client_id, utts in per_client.items():
            k = models["global" if cfg.scope == "global" else client_id]["clusters"]
            folder = tmp / client_id
            folder.mkdir(exist_ok=True)
            (folder / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(k)))
            for split in ("train", "val"):
                chosen = [(u, lab) for u, lab in zip(utts, labels[client_id]) if u.row.get("split", "train") == split]
                (folder / f"{split}.tsv").write_text(_relative_tsv([u.row for u, _ in chosen]))
                (folder / f"{split}.km").write_text("".join(" ".join(map(str, lab.tolist())) + "\n" for _, lab in chosen))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return KmeansResult(out=out, summary=summary, warnings=warnings)


def _phone_report(per_client, labels, groups, models, rng) -> dict:
    """Phone metrics per model (and their frame-weighted mean), next to a random assignment's."""
    report: dict = {}
    for name, m in models.items():
        phones, clus = [], []
        for c in groups[name]:
            for u, lab in zip(per_client[c], labels[c]):
                if u.phones is not None:
                    phones.append(u.phones)
                    clus.append(lab)
        if not phones:
            continue
        y = np.concatenate(phones)
        z = np.concatenate(clus)
        report[name] = {
            "kmeans": phone_metrics(y, z),
            "random": phone_metrics(y, rng.integers(0, m["clusters"], len(y))),
        }
    if not report:
        return {"available": False, "reason": "no phone alignments (.phn) in the partition"}
    total = sum(r["kmeans"]["frames"] for r in report.values())
    mean = {
        which: {
            key: sum(r[which][key] * r[which]["frames"] for r in report.values()) / total
            for key in ("phone_purity", "cluster_purity", "pnmi")
        }
        for which in ("kmeans", "random")
    }
    return {"available": True, "frames": total, "mean": mean, "per_model": report}

