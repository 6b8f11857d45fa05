"""One ASR round of a client that holds a single long utterance (fewer items than the batch size).

    python bench/bench_small_client.py                 # a 20 s utterance, batch 8, 8 local updates, ds1 tiny
    python bench/bench_small_client.py --seconds 74    # the issue's case

Before the trainer capped the micro-batch at the client's item count, such a client trained on 8 copies of its
one utterance per step; now it trains on it once per step. Prints the median wall time of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the client's one utterance")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--local-updates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from fedctl.core import local
    from fedctl.core.task import ClientConfig, TaskContext
    from fedctl.data.speech.demo import demo_partition
    from fedctl.tasks.asr import AsrConfig, AsrTask
    from fedctl.tasks.asr.data import AsrUtterance, read_audio
    from fedctl.tasks.asr.features import SAMPLE_RATE
    from fedctl.tasks.asr.text import encode

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="fedctl-bench-small-"))
    parts = demo_partition(tmp, 2, 2, 5, lambda _: None)
    task = AsrTask(AsrConfig(parts=str(parts), batch_size=args.batch_size, local_updates=args.local_updates),
                   TaskContext(num_clients=2, seed=0, device=torch.device("cpu"), log=lambda _: None))
    cid = task.client_ids()[0]
    # one long utterance: the client's demo utterances back to back until `seconds`, transcripts joined
    pieces, words = [], []
    while sum(len(p) for p in pieces) < args.seconds * SAMPLE_RATE:
        for u in task.train[cid]:
            pieces.append(read_audio(u.path))
            words.append(u.transcript)
    audio = np.concatenate(pieces)[: int(args.seconds * SAMPLE_RATE)]
    kept = max(1, int(len(words) * len(audio) / sum(len(p) for p in pieces)))
    transcript = " ".join(words[:kept])
    path = tmp / "long.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    utt = AsrUtterance(id="long", speaker="x", path=str(path), transcript=transcript, target=tuple(encode(transcript)),
                       duration_ms=len(audio) * 1000 // SAMPLE_RATE, num_samples=len(audio))
    task.train[cid] = [utt]
    task.features(utt)
    times = []
    for r in range(args.repeats):
        model = task.build_model()
        start = time.perf_counter()
        result = local.fit(task, model, cid, ClientConfig(server_round=1, client_index=0, seed=r))
        times.append(time.perf_counter() - start)
    print(f"one round, 1 utterance of {utt.duration_ms / 1000:.1f} s, batch_size {args.batch_size}, "
          f"{args.local_updates} updates: median {statistics.median(times):.2f} s over {args.repeats} "
          f"(items trained {result.metrics['items']:.0f}, audio {result.metrics['audio_s']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
