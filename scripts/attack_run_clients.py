"""Optimizer x local steps -> how well `fedctl attack --run` recovers a real client's features (README table).

For each client optimizer (sgd, momentum, adamw) and N = 1, 2, 4 local steps: a 2-round `fedctl train asr` run
(DS1 tiny with hidden 256, float64, clipping 1.0, 2 clients of 2 one-speaker demo utterances each, whole
utterances), then `fedctl attack ds1 --run RUN --round 2 --client client_000` (output-layer cosine, L-BFGS)
replaying that client exactly. Prints MAE ratio (to the random start) and cosine per utterance and per cell.

    python scripts/attack_run_clients.py --out /tmp/atk_table [--max-iter 150]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.data.speech.demo import demo_partition

CLIENTS = {"sgd": ["task.optimizer=sgd", "task.lr=0.05"],
           "momentum": ["task.optimizer=sgd", "task.momentum=0.9", "task.lr=0.05"],
           "adamw": ["task.lr=0.003"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-iter", type=int, default=150)
    ap.add_argument("--steps", default="1,2,4")
    args = ap.parse_args()
    parts = demo_partition(args.out / "data", 2, 2, 3, lambda _: None)
    runner, rows = CliRunner(), []
    for name, sets in CLIENTS.items():
        for steps in map(int, args.steps.split(",")):
            run = args.out / f"run-{name}-{steps}"
            cli = ["train", "asr", "--config", "asr_ds1_tiny", "--rounds", "2", "--clients", "2", "--parts", str(parts),
                   "--out", str(run), "--save-deltas", "entity=clients"]
            for s in [*sets, f"task.local_updates={steps}", "task.batch_size=2", "task.precision=fp64",
                      "task.n_hidden=256", "task.grad_clip=1.0", "run.workers=1", "federation.checkpoint_every=1"]:
                cli += ["--set", s]
            if not (run / "final").is_dir():
                res = runner.invoke(app, cli)
                assert res.exit_code == 0, res.output
            atk = args.out / f"atk-{name}-{steps}"
            res = runner.invoke(app, ["attack", "ds1", "--run", str(run), "--round", "2", "--client", "client_000",
                                      "--max-iter", str(args.max_iter), "--seeds", "2", "--out", str(atk)])
            assert res.exit_code == 0, res.output
            with open(atk / "metrics.csv", newline="") as fh:
                utts = list(csv.DictReader(fh))
            ratio = sum(float(u["mae_ratio"]) for u in utts) / len(utts)
            cos = sum(float(u["cosine"]) for u in utts) / len(utts)
            rows.append({"optimizer": name, "steps": steps, "utterances": len(utts), "mae_ratio": ratio, "cosine": cos,
                         "frames": sum(int(u["frames"]) for u in utts), "budget": float(utts[0]["budget"])})
            print(json.dumps(rows[-1]), flush=True)
    print("| optimizer | N | utterances | frames | budget | MAE ratio | cosine |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizer']} | {r['steps']} | {r['utterances']} | {r['frames']} | {r['budget']:.1f}x "
              f"| {r['mae_ratio']:.3g} | {r['cosine']:.4f} |")


if __name__ == "__main__":
    main()
