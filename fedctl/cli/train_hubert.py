"""`fedctl train hubert` (federated HuBERT pretraining) and `fedctl train distill` (federated distillation)."""

from __future__ import annotations

from typing import Annotated

import typer

from fedctl.cli.options import (
    ClientsOpt,
    ConfigOpt,
    DeviceOpt,
    FractionOpt,
    JsonOpt,
    OutDirOpt,
    ResumeOpt,
    RoundsOpt,
    SaveDeltasOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
    WorkersOpt,
)
from fedctl.cli.train import TrainCommand, _run, app

PartsOpt = Annotated[str | None, typer.Option("--parts", help="Partition folder (`fedctl data partition librispeech`). Default: synth demo.")]
LabelsOpt = Annotated[str | None, typer.Option("--labels", help="k-means label folder (`fedctl data kmeans`) for the same partition.")]
HubertPresetOpt = Annotated[str | None, typer.Option("--preset", help="base (HuBERT Base, default) or tiny (CPU demo).")]
LocalUpdatesOpt = Annotated[int | None, typer.Option("--local-updates", help="Optimizer steps per client per round.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Client AdamW peak learning rate.")]
BatchSecondsOpt = Annotated[float | None, typer.Option("--max-batch-seconds", help="Audio seconds per micro-batch.")]
EvalClientsOpt = Annotated[bool | None, typer.Option("--eval-clients/--no-eval-clients", help="Also evaluate on each client's held-out audio.", show_default=False)]
TeacherOpt = Annotated[str | None, typer.Option("--teacher", help="Teacher: RUN/final/hf of `fedctl train hubert` (a HubertModel dir).")]
RecipeOpt = Annotated[str | None, typer.Option("--recipe", help="distilhubert (2-layer student, layer-prediction heads) or kd (smaller HuBERT, soft labels).")]


@app.command("hubert", cls=TrainCommand, epilog=(
    "Examples:\n\n  fedctl train hubert --preset tiny\n\n"
    "  fedctl train hubert --config hubert_tiny\n\n"
    "  fedctl train hubert --parts parts/ --labels labels/ --rounds 100 --strategy fedadam\n\n"
    "  fedctl train hubert --config hubert-base --parts parts/ --labels labels/ --eval-clients\n\n"
    "  fedctl train hubert --out runs/hubert --resume --rounds 200"))
def hubert(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    fraction: FractionOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    parts: PartsOpt = None,
    labels: LabelsOpt = None,
    preset: HubertPresetOpt = None,
    local_updates: LocalUpdatesOpt = None,
    lr: LrOpt = None,
    max_batch_seconds: BatchSecondsOpt = None,
    eval_clients: EvalClientsOpt = None,
    resume: ResumeOpt = False,
    save_deltas: SaveDeltasOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Federated HuBERT pretraining: masked prediction of k-means labels (transformers HubertModel)."""
    _run(
        "hubert", config=config, sets=sets,
        run_flags={"seed": seed, "out": str(out_dir) if out_dir else None, "device": device, "workers": workers},
        fed_flags={"rounds": rounds, "clients": clients, "fraction": fraction, "strategy": strategy,
                   "eval_clients": eval_clients},
        task_flags={"parts": parts, "labels": labels, "preset": preset, "local_updates": local_updates, "lr": lr,
                    "max_batch_seconds": max_batch_seconds},
        resume=resume, as_json=as_json, save_deltas=save_deltas,
    )


@app.command("distill", cls=TrainCommand, epilog=(
    "Examples:\n\n  fedctl train distill --teacher runs/hubert-tiny/final/hf --config distill_distilhubert\n\n"
    "  fedctl train distill --teacher runs/hubert/final/hf --recipe kd --parts parts/ --labels labels/\n\n"
    "  fedctl train distill --teacher runs/hubert/final/hf --recipe distilhubert --rounds 50 --strategy fedavgm"))
def distill(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    fraction: FractionOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    teacher: TeacherOpt = None,
    recipe: RecipeOpt = None,
    parts: PartsOpt = None,
    labels: LabelsOpt = None,
    local_updates: LocalUpdatesOpt = None,
    lr: LrOpt = None,
    max_batch_seconds: BatchSecondsOpt = None,
    eval_clients: EvalClientsOpt = None,
    resume: ResumeOpt = False,
    save_deltas: SaveDeltasOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Federated distillation of a HuBERT teacher into a student; only the student travels."""
    _run(
        "distill", config=config, sets=sets,
        run_flags={"seed": seed, "out": str(out_dir) if out_dir else None, "device": device, "workers": workers},
        fed_flags={"rounds": rounds, "clients": clients, "fraction": fraction, "strategy": strategy,
                   "eval_clients": eval_clients},
        task_flags={"teacher": teacher, "recipe": recipe, "parts": parts, "labels": labels,
                    "local_updates": local_updates, "lr": lr, "max_batch_seconds": max_batch_seconds},
        resume=resume, as_json=as_json, save_deltas=save_deltas,
    )
