"""Speech data throughput: synth time, LibriSpeech indexing rate, MFCC k-means feature+fit rate, PNMI.

    python bench/bench_speech.py            # default corpus (24 speakers x 40 utterances), 5,000-file index
    python bench/bench_speech.py --quick    # smaller corpus, 1,000-file index

The index tree is made of hard links to a small synthesized corpus under new speaker ids, so it holds real
FLAC headers; the page cache is warm (a cold disk is slower: this measures the parsing, not the drive).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def _link_tree(src: Path, dst: Path, files: int) -> int:
    """Replicate src's chapters under fresh speaker ids (hard links) until `files` audio files exist."""
    chapters = sorted(p for p in src.glob("*/*") if p.is_dir())
    made, copy = 0, 0
    while made < files:
        for chapter in chapters:
            speaker = f"{int(chapter.parent.name) + 1000 * (copy + 1)}"
            new_chapter = f"{speaker}{chapter.name[-2:]}"
            out = dst / speaker / new_chapter
            out.mkdir(parents=True, exist_ok=True)
            lines = []
            for line in next(chapter.glob("*.trans.txt")).read_text().splitlines():
                if made >= files:
                    break
                utt, words = line.split(" ", 1)
                new_utt = f"{speaker}-{new_chapter}-{utt.rsplit('-', 1)[1]}"
                os.link(chapter / f"{utt}.flac", out / f"{new_utt}.flac")
                lines.append(f"{new_utt} {words}\n")
                made += 1
            (out / f"{speaker}-{new_chapter}.trans.txt").write_text("".join(lines))
            if made >= files:
                break
        copy += 1
    return made


def main(quick: bool = False) -> dict:
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels
    from fedctl.data.speech.librispeech import index_librispeech
    from fedctl.data.speech.partition import partition_librispeech
    from fedctl.data.speech.synth import synth_corpus

    speakers, utterances, index_files = (8, 20, 1000) if quick else (24, 40, 5000)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="fedctl-bench-speech-") as tmp:
        tmp = Path(tmp)
        synth = synth_corpus(tmp / "corpus", speakers=speakers, utterances=utterances, seed=0)
        results["synth_utterances"] = synth.utterances
        results["synth_audio_hours"] = synth.seconds / 3600
        results["synth_seconds"] = synth.elapsed

        made = _link_tree(tmp / "corpus", tmp / "tree", index_files)
        start = time.perf_counter()
        index = index_librispeech([tmp / "tree"])
        elapsed = time.perf_counter() - start
        assert len(index.utterances) == made and not index.bad_files
        results["index_files"] = made
        results["index_files_per_second"] = made / elapsed

        parts = partition_librispeech([tmp / "corpus"], tmp / "parts", clients=min(10, speakers), seed=0)
        hours = parts.summary["totals"]["hours"]
        for scope in ("global", "client"):
            start = time.perf_counter()
            km = learn_kmeans_labels(tmp / "parts", tmp / f"labels-{scope}", KmeansConfig(clusters=100, scope=scope))
            minutes = (time.perf_counter() - start) / 60
            mean = km.summary["phone_metrics"]["mean"]
            results[f"kmeans_{scope}_audio_hours_per_minute"] = hours / minutes
            results[f"kmeans_{scope}_feature_seconds"] = km.summary["timing_seconds"]["features"]
            results[f"kmeans_{scope}_fit_seconds"] = km.summary["timing_seconds"]["fit_and_label"]
            results[f"kmeans_{scope}_pnmi"] = mean["kmeans"]["pnmi"]
            results[f"kmeans_{scope}_pnmi_random"] = mean["random"]["pnmi"]
            results[f"kmeans_{scope}_phone_purity"] = mean["kmeans"]["phone_purity"]
            results[f"kmeans_{scope}_phone_purity_random"] = mean["random"]["phone_purity"]
        results["kmeans_audio_hours"] = hours
    return results


def report(numbers: dict) -> None:
    width = max(len(k) for k in numbers)
    print(f"{'metric':<{width}}  value")
    for key, value in numbers.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    report(main(quick="--quick" in sys.argv[1:]))
