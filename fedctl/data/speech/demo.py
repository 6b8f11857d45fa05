"""The speech workloads' demo data: a synth corpus (made once under a folder) partitioned by speaker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedctl.errors import FedctlError

DEMO_SEED = 1234  # the demo corpus is fixed, independent of the run seed, so runs compare


def demo_partition(root: Path, num_clients: int, speakers: int, utterances: int,
                   log: Callable[[str], None]) -> Path:
    """Synthesize (once) `speakers` x `utterances` under `root` and partition them by speaker across the
    clients (20% held out per client); returns the partition folder. Reused when already there."""
    from fedctl.data.speech.partition import partition_librispeech
    from fedctl.data.speech.synth import synth_corpus

    if speakers < num_clients:
        raise FedctlError(f"task.demo_speakers = {speakers} is fewer than the {num_clients} clients",
                          f"raise --set task.demo_speakers={num_clients} or lower --clients")
    tag = f"synth-s{speakers}-u{utterances}-seed{DEMO_SEED}"
    corpus, parts = root / tag, root / f"{tag}-parts{num_clients}"
    if not (corpus / "SPEAKERS.TXT").is_file():
        log(f"demo data: synthesizing {speakers} speakers x {utterances} utterances with eSpeak NG into {corpus}")
        synth_corpus(corpus, speakers=speakers, utterances=utterances, seed=DEMO_SEED)
    if not (parts / "summary.json").is_file():
        log(f"demo data: partitioning by speaker across {num_clients} clients into {parts}")
        partition_librispeech([corpus], parts, clients=num_clients, by="speaker", val_fraction=0.2, seed=DEMO_SEED)
    return parts
