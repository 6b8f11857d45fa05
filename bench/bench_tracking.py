"""What tracking costs: tiny Mamba (templates/mamba_tiny.yaml), trackers off vs all three on (TensorBoard, W&B
offline, MLflow SQLite), one run each. Reports the steady round (median wall time between RoundFinished events,
round 1 left out), the time the trackers themselves spend per round (measured around their event handler), the
ratio of the two, and the one-off cost of opening the trackers.

    python bench/run.py --only tracking [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def _train(out: Path, rounds: int, track: list[str]) -> dict:
    from fedctl.core.events import RoundFinished, RunStarted
    from fedctl.run import recipe
    from fedctl.run.tracking import Tracking

    exp = recipe.resolve("mamba", "mamba_tiny", sets=[f"federation.rounds={rounds}", f"run.out={out}",
                                                     "run.workers=1", f"run.track={track}"])
    marks: list[float] = []
    spent = {"open": 0.0, "rounds": []}
    tracking = Tracking()

    def on_event(event):
        if isinstance(event, RoundFinished):
            marks.append(time.perf_counter())
        t0 = time.perf_counter()
        tracking(event)
        dt = time.perf_counter() - t0
        if isinstance(event, RunStarted):
            spent["open"] += dt
            marks.append(time.perf_counter())
        elif isinstance(event, RoundFinished):
            spent["rounds"].append(dt)

    with tracking:
        recipe.train(exp, on_event=on_event)
    walls = [b - a for a, b in zip(marks, marks[1:])]
    steady = statistics.median(walls[1:])
    return {"steady_round_s": steady, "tracker_per_round_s": statistics.mean(spent["rounds"][1:]),
            "open_s": spent["open"]}


def main(quick: bool = False) -> dict:
    rounds = 4 if quick else 8
    with tempfile.TemporaryDirectory() as tmp:
        off = _train(Path(tmp) / "off", rounds, [])
        on = _train(Path(tmp) / "on", rounds, ["tensorboard", "wandb", "mlflow"])
    return {"rounds": rounds, "off": off, "on": on,
            "tracker_share_of_round": on["tracker_per_round_s"] / on["steady_round_s"],
            "steady_round_ratio_on_off": on["steady_round_s"] / off["steady_round_s"]}


def report(r: dict) -> None:
    print(f"tiny Mamba, {r['rounds']} rounds, one run each")
    print(f"  steady round  off {r['off']['steady_round_s']:.3f} s   on {r['on']['steady_round_s']:.3f} s   "
          f"(on/off {r['steady_round_ratio_on_off']:.3f})")
    print(f"  trackers per round {r['on']['tracker_per_round_s'] * 1e3:.1f} ms = "
          f"{100 * r['tracker_share_of_round']:.2f}% of a steady round (target ≤ 1%)")
    print(f"  opening the three trackers once: {r['on']['open_s']:.1f} s")
