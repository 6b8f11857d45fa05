"""The utility cost of each client defence (issue #12): the same federated ASR victim trained with no defence,
with dropout, with update pruning and with client-level DP, and its validation CTC loss, CER and WER per round.

    PYTHONPATH=. nice -n 10 python bench/defence_utility.py --out /tmp/defence_utility   # the committed table (~25 min)
    python bench/defence_utility.py --out /tmp/du_quick --quick                           # a 2-round smoke run (~3 min)

The committed copy is `bench/results/defence_utility/utility.{md,csv}` (copied from `--out`).

The defences are the training-side twins of the attack's (`fedctl attack --defense-*`), one implementation each:
- dropout p: `task.dropout`, the model's own dropout that the attack's client switches on (DS1 after fc1-fc4,
  DS2 after both convolutions and on the output layer's input), in every training forward pass;
- prune p: `federation.prune`, each client's update (client − global) keeps only its largest-|Δ| (1 − p)
  entries per tensor (`fedctl.core.prune`, the attack's pruning function);
- DP: `federation.dp` with `mode: client`, each client's update clipped to C and given its own N(0, (zC)²) noise.
  C is the median client-update norm of the no-defence run (all rounds, all clients, over every floating
  tensor that travels, as the DP wrapper measures it; read from its saved client deltas), rounded to 2 digits.

Victim: `asr_ds2_tiny` (DeepSpeech 2, 2 conv channels, 2 BiGRU of 16, 4 clients of 2 speakers on the synth demo
corpus, FedAvg, 8 local AdamW steps per round), evaluated every round. It is the config that learns within a
CPU budget here (val CER ≈ 0.67 after 16 rounds, ~3–4 min a run on 2 loaded cores); DS1 does not: tiny needs ~100
rounds before its CER leaves 1, and with 128 hidden units it was still at 0.984 after 16 rounds (4.5 min). The
no-defence run is repeated with other seeds (`--extra-seeds`: model init, data order) to show the seed noise.
Each run is an ordinary run directory under `--out/runs/<name>`; a finished one is reused when the bench is run
again. Writes `--out/utility.csv` (one row per run and round) and `--out/utility.md`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedctl.core.events import Message, RoundFinished  # noqa: E402
from fedctl.core.strategies.dp import update_norm  # noqa: E402
from fedctl.data.speech.demo import demo_partition  # noqa: E402
from fedctl.run import recipe  # noqa: E402
from fedctl.utils.io import write_json, write_text  # noqa: E402

CONFIG = "asr_ds2_tiny"
COLUMNS = ["defence", "seed", "round", "val_loss", "val_cer", "val_wer", "dp_epsilon", "wall_s"]


def runs(clip: float | None, z_values: list[float], extra_seeds: list[int]) -> list[tuple[str, int, list[str]]]:
    """(name, seed, --set overrides) of every run; the DP runs need C from the no-defence run first."""
    out = [("none", 0, []), ("dropout 0.2", 0, ["task.dropout=0.2"]), ("prune 0.9", 0, ["federation.prune=0.9"])]
    if clip is not None:
        for z in z_values:
            out.append((f"dp C={clip:g} z={z:g}", 0, ["federation.dp.mode=client", "federation.dp.buffers=private",
                                                      f"federation.dp.clipping_norm={clip}",
                                                      f"federation.dp.noise_multiplier={z}"]))
    out += [(f"none (seed {seed})", seed, []) for seed in extra_seeds]
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name).strip("_")


def train(out: Path, name: str, seed: int, sets: list[str], parts: Path, rounds: int, save_deltas: bool) -> dict:
    """One run (or the record of a finished one): its eval history and wall seconds."""
    record_path = out / "records" / f"{slug(name)}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    run_dir = out / "runs" / slug(name)
    base = [f"task.parts={parts}", f"run.seed={seed}", f"federation.rounds={rounds}", "federation.eval_every=1",
            f"federation.checkpoint_every={rounds}"]
    if save_deltas:
        base += ["federation.save_deltas_every=1", "federation.save_deltas_entity=clients"]
    exp = recipe.resolve("asr", CONFIG, flags={"run": {"out": str(run_dir)}}, sets=base + sets)
    print(f"== {name}: {' '.join(sets) or 'no defence'} (seed {seed})", flush=True)
    t0 = time.perf_counter()

    def progress(event) -> None:
        if isinstance(event, Message):
            print(f"  {event.text}", file=sys.stderr, flush=True)
        elif isinstance(event, RoundFinished):
            m = event.metrics
            print(f"  round {event.server_round}: val_loss={m.get('val_loss', math.nan):.4f} "
                  f"val_cer={m.get('val_cer', math.nan):.4f} ({m.get('seconds', 0):.0f} s)", file=sys.stderr, flush=True)

    outcome = recipe.train(exp, on_event=progress)
    wall = time.perf_counter() - t0
    history = outcome.result.history
    evals = [r for r in history if r.get("type") == "eval" and r.get("scope") == "global"]
    eps = {r["round"]: r.get("dp_epsilon") for r in history if r.get("type") == "fit"}
    record = {"name": name, "seed": seed, "sets": sets, "wall_s": wall,
              "val_utterances": outcome.summary.get("val_utterances"),
              "evals": [{"round": r["round"], "val_loss": r["val_loss"], "val_cer": r["val_cer"],
                         "val_wer": r["val_wer"], "dp_epsilon": eps.get(r["round"])} for r in evals]}
    write_json(record_path, record)
    return record


def median_client_norm(run_dir: Path) -> tuple[float, int]:
    """Median L2 norm of the saved client updates (client − global, every floating tensor) over all rounds."""
    from safetensors.torch import load_file

    norms = []
    for path in sorted((run_dir / "deltas" / "clients").glob("round_*/*.safetensors")):
        delta = load_file(str(path))
        norms.append(update_norm(delta, {k: torch.zeros_like(v) for k, v in delta.items()}))
    if not norms:
        raise SystemExit(f"no client deltas under {run_dir}: run the no-defence run with saved deltas")
    return statistics.median(norms), len(norms)


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def negative_variances(out: Path, name: str) -> int:
    """BatchNorm running variances below 0 in a run's final model: DP noises every floating tensor that travels,
    BatchNorm statistics included, and a negative variance makes evaluation non-finite."""
    from safetensors.torch import load_file

    state = load_file(str(out / "runs" / slug(name) / "final" / "hf" / "model.safetensors"))
    return sum(int((v < 0).sum()) for k, v in state.items() if k.endswith("running_var"))


def last_mean(rec: dict, n: int = 4) -> float:
    """Mean val CER of the last `n` evaluations: smooths the round-to-round jitter of a small validation set."""
    return statistics.mean(e["val_cer"] for e in rec["evals"][-n:])


def write(out: Path, records: list[dict], clip: float, norm: float, updates: int, command: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for rec in records:
        for e in rec["evals"]:
            writer.writerow({"defence": rec["name"], "seed": rec["seed"], "round": e["round"],
                             "val_loss": e["val_loss"], "val_cer": e["val_cer"], "val_wer": e["val_wer"],
                             "dp_epsilon": e["dp_epsilon"], "wall_s": round(rec["wall_s"], 1)})
    write_text(out / "utility.csv", buf.getvalue())

    base = next(r for r in records if r["name"] == "none")
    noise = [r for r in records if r["name"].startswith("none")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rounds = base["evals"][-1]["round"]
    lines = [
        "# Utility cost of the client defences (federated DS2 tiny)",
        "",
        f"Command: `{command}` ({sum(r['wall_s'] for r in records) / 60:.0f} min wall, the runs together).",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (load ~{load:.1f} at the "
        f"end), torch {torch.__version__}, nice 10; wall seconds are therefore pessimistic.",
        f"Victim: `{CONFIG}` for {rounds} rounds (4 clients, FedAvg, 8 local AdamW steps of 8 utterances, lr 3e-3), "
        f"evaluated every round on the {records[0].get('val_utterances')} pooled held-out utterances (greedy decoding; "
        "WER > 1 counts insertions).",
        f"DP: `federation.dp` mode client, C = {clip:g} = the median client-update norm of the no-defence run "
        f"({norm:.3f} over {updates} updates), each client's update gets N(0, (zC)²) per entry; ε at δ = 1e-5 with all 4 "
        "clients every round (q = 1).",
        "",
        f"## After round {rounds}",
        "",
        f"| defence | val CTC loss | val CER | val WER | CER − none | mean CER, rounds {max(1, rounds - 3)}–{rounds} "
        "| wall s | ε | negative BN variances |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        e = rec["evals"][-1]
        eps = e["dp_epsilon"]
        lines.append(f"| {rec['name']} | {fmt(e['val_loss'])} | {fmt(e['val_cer'])} | {fmt(e['val_wer'])} | "
                     f"{e['val_cer'] - base['evals'][-1]['val_cer']:+.3f} | {fmt(last_mean(rec))} | "
                     f"{rec['wall_s']:.0f} | {'—' if eps is None else fmt(eps, 1)} | "
                     f"{negative_variances(out, rec['name'])} |")
    if len(noise) > 1:
        end = [r["evals"][-1]["val_cer"] for r in noise]
        tail = [last_mean(r) for r in noise]
        lines += ["", f"Seed noise (no defence, seeds {', '.join(str(r['seed']) for r in noise)}): final val CER "
                  f"{min(end):.3f}–{max(end):.3f} (range {max(end) - min(end):.3f}), mean CER of the last 4 rounds "
                  f"{min(tail):.3f}–{max(tail):.3f} (range {max(tail) - min(tail):.3f}). nan: a non-finite evaluation; "
                  "'negative BN variances' counts BatchNorm running variances below 0 in the final model (noise "
                  "that DP adds to them; evaluation then takes the square root of a negative number)."]
    for key, title in (("val_cer", "val CER"), ("val_loss", "val CTC loss")):
        lines += ["", f"## {title} per round", "", "| round | " + " | ".join(r["name"] for r in records) + " |",
                  "|---|" + "---|" * len(records)]
        for i in range(rounds):
            cells = [fmt(r["evals"][i][key]) if i < len(r["evals"]) else "" for r in records]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    write_text(out / "utility.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/defence_utility"))
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--dp-z", default="0.01,0.1,1", help="noise multipliers of the DP runs, comma-separated")
    p.add_argument("--extra-seeds", default="1,2", help="seeds of extra no-defence runs (the seed noise), comma-separated")
    p.add_argument("--quick", action="store_true", help="2 rounds, one DP run, no extra seed: a smoke run")
    args = p.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    z_values = [float(z) for z in args.dp_z.split(",") if z][: 1 if args.quick else None]
    extra_seeds = [] if args.quick else [int(k) for k in args.extra_seeds.split(",") if k]
    args.out.mkdir(parents=True, exist_ok=True)
    parts = demo_partition(args.out / "data", 4, 8, 24, lambda text: print(text, file=sys.stderr))
    records = [train(args.out, "none", 0, [], parts, rounds, save_deltas=True)]
    norm, updates = median_client_norm(args.out / "runs" / "none")
    clip = float(f"{norm:.2g}")
    for name, seed, sets in runs(clip, z_values, extra_seeds)[1:]:
        records.append(train(args.out, name, seed, sets, parts, rounds, save_deltas=False))
    command = "python bench/defence_utility.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write(args.out, records, clip, norm, updates, command.strip())
    print((args.out / "utility.md").read_text())
    return records


if __name__ == "__main__":
    main()
