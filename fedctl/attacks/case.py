"""The case: victim (model weights + BatchNorm buffers the attacker holds), client (what it computes and
shares, with optional defences) and data.

Threat model (honest-but-curious server, as the reference and Dang et al.): the attacker holds the victim's
weights and BatchNorm buffers, one client's shared gradient (FedSGD on one batch by default; `local_steps`
> 1 makes it (θ0 − θN)/lr of N local SGD steps), that client's transcripts and input lengths, and
reconstructs the input features. The client's dropout masks are unknown to the attacker (it reconstructs
without dropout). BatchNorm runs in the same mode with the same buffers for client and attacker: in train
mode with statistics over the client's batch, buffers not updated (the attacker holds the buffers the
client started from).

Transcripts withheld (`AttackConfig.transcripts=False`, `--no-transcripts`): the attacker holds the input
lengths but not the transcripts, and recovers them with the features (`objective.alignment_loss`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedctl.attacks.objective import matched_names, per_restart_gradients
from fedctl.core.config import check_dropout, check_prune, check_range, check_seed
from fedctl.core.prune import prune_smallest
from fedctl.core.strategies.dp import check_noise_multiplier
from fedctl.errors import FedctlError
from fedctl.tasks.asr.models import build_asr_model
from fedctl.utils.io import torch_load


@dataclass
class Defense:
    """Applied by the client before it shares its gradient; switchable and combinable. Each value is checked by
    the function that checks the training setting it mirrors (task.dropout, federation.prune,
    federation.dp.noise_multiplier): a value that would apply no defence is refused, never labelled defended."""

    dropout: float = field(default=0.0, metadata={"check": check_dropout})  # dropout probability in the client's forward pass (mask unknown to the attacker)
    prune: float = field(default=0.0, metadata={"check": check_prune})  # fraction of entries zeroed, smallest |g| first, per tensor (0.9 keeps the top 10%)
    clip: float = field(default=0.0, metadata={"check": check_range(
        low=0, hint="the global L2 clipping norm C > 0, e.g. 1.0; 0 is off")})  # global L2 clip C over all shared tensors (0: off)
    noise: float = field(default=0.0, metadata={"check": check_noise_multiplier})  # Gaussian noise σ per entry, added after clipping (DP-SGD mechanism: σ·C if clip)
    seed: int = field(default=0, metadata={"check": check_seed})

    @property
    def name(self) -> str:
        parts = []
        if self.dropout:
            parts.append(f"dropout{self.dropout:g}")
        if self.prune:
            parts.append(f"prune{self.prune:g}")
        if self.clip or self.noise:
            parts.append(f"dp(C={self.clip:g},σ={self.noise:g})")
        return "+".join(parts) or "none"


def load_victim(arch: str, preset: str, *, checkpoint: str | Path | None = None, seed: int = 0,
                overrides: dict | None = None) -> nn.Module:
    """The victim model: untrained and seeded (the reference setting), or weights from a checkpoint
    (a `.pt` with a "model" state dict and optional "config", or a bare state dict)."""
    overrides = dict(overrides or {})
    state = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.is_dir() and (path / "asr_config.json").is_file():  # a `fedctl train asr` export (final/hf)
            from fedctl.tasks.asr.task import load_asr_model

            found, model = load_asr_model(path)
            if found != arch:
                raise FedctlError(f"victim {path} is a {found} model, not {arch}",
                                  f"run `fedctl attack {found}` on it, or pass a {arch} checkpoint")
            for p in model.parameters():
                p.requires_grad_(True)
            return model.train()
        if path.is_dir():
            cands = sorted(path.glob("*.pt")) or sorted(path.glob("**/*.pt"))
            if not cands:
                raise FedctlError(f"no .pt checkpoint in {path}", "pass a checkpoints/round_NNN.pt file or a final/ folder")
            path = cands[-1]
        if not path.exists():
            raise FedctlError(f"victim checkpoint {path} does not exist", "pass a checkpoint .pt file")
        state, task = victim_state(path)
        if isinstance(task, dict) and task.get("arch") and task["arch"] != arch:
            raise FedctlError(f"victim checkpoint {path} is a {task['arch']} model, not {arch}",
                              f"run `fedctl attack {task['arch']}` on it, or pass a {arch} checkpoint")
        if isinstance(task, dict):
            # `fedctl train asr` keeps model settings as task keys (task.n_hidden=32) or under task.model
            from dataclasses import fields as dc_fields

            from fedctl.tasks.asr.models import ARCHITECTURES

            names = {f.name for f in dc_fields(ARCHITECTURES[arch][0])}
            flat = {k: v for k, v in task.items() if k in names}
            preset = task.get("preset", preset)
            overrides = {**flat, **(task.get("model") or {}), **overrides}
        is_ds1 = any(k.startswith("bi_lstm.") for k in state)
        if ("ds1" if is_ds1 else "ds2") != arch:
            raise FedctlError(f"victim checkpoint {path} holds a {'ds1' if is_ds1 else 'ds2'} model, not {arch}",
                              f"run `fedctl attack {'ds1' if is_ds1 else 'ds2'}` on it, or pass a {arch} checkpoint")
    torch.manual_seed(seed)
    model = build_asr_model(arch, preset, **overrides)
    if state is not None:
        from fedctl.tasks.asr.task import load_state

        load_state(model, state, f"victim checkpoint {checkpoint}", arch)  # names the first misfit tensor
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def victim_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, task config) of a victim `.pt`: a fedctl checkpoint (checked as every reader checks one) or a
    bare state dict of tensors; anything else is a FedctlError naming the file."""
    from fedctl.core.checkpoint import FORMAT, check_checkpoint, check_tensors

    blob = torch_load(path, what="victim checkpoint")
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        check_checkpoint(blob, path)
        state, config = blob.get("model") or {}, blob.get("config") or {}
    elif isinstance(blob, dict) and isinstance(blob.get("model"), dict):  # {"model": ..., "config": ...} by hand
        state, config = blob["model"], blob.get("config") or {}
    elif isinstance(blob, dict) and blob:
        state, config = blob, {}
    else:
        state, config = None, {}
    if not isinstance(state, dict) or not state or not isinstance(config, dict):
        raise FedctlError(f"victim checkpoint {path} holds neither a fedctl checkpoint nor a state dict of tensors",
                          "pass a checkpoints/round_NNN.pt of `fedctl train asr`, its final/hf folder or a state dict")
    check_tensors(state, path, "model")
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    return state, task


@contextlib.contextmanager
def client_dropout(model: nn.Module, p: float, generator: torch.Generator) -> Iterator[None]:
    """The client's dropout p in the forward passes inside the block, masks drawn from `generator` (unknown to
    the attacker, whose own forward passes run with the victim's dropout, 0). The model's own dropout
    (`DeepSpeech._drop`: DS1 after fc1-fc4, DS2 after both convolutions and on the output layer's input,
    the one that `task.dropout` trains with) is restored afterwards."""
    before = (model.dropout, model.dropout_generator)
    model.dropout, model.dropout_generator = max(0.0, float(p)), generator
    try:
        yield
    finally:
        model.dropout, model.dropout_generator = before


def client_update(model: nn.Module, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                  target_lengths: torch.Tensor, *, match: str = "last", defense: Defense | None = None,
                  local_steps: int = 1, local_lr: float = 1.0) -> list[torch.Tensor]:
    """What the client shares, restricted to the tensors the attacker matches.

    FedSGD (local_steps = 1): the gradient of the mean CTC/target length over its batch. Local SGD
    (local_steps = N): (θ0 − θN) / lr over N steps on the same batch. Defences: dropout in the forward pass;
    then pruning, clipping and noise on the whole shared update (every parameter), of which the matched
    tensors are returned. The model's weights and buffers are left as they were."""
    defense = defense or Defense()
    gen = torch.Generator().manual_seed(defense.seed)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with client_dropout(model, defense.dropout, gen):
            if local_steps <= 1:
                grads, _ = per_restart_gradients(model, features, lengths, targets, target_lengths, 1, "all",
                                                 create_graph=False)
                update = {n: g[0].detach() for n, g in zip(names, grads)}
            else:
                with torch.no_grad():
                    for _ in range(local_steps):
                        with torch.enable_grad():
                            grads, _ = per_restart_gradients(model, features, lengths, targets, target_lengths, 1,
                                                             "all", create_graph=False)
                        for n, g in zip(names, grads):
                            params[n].sub_(local_lr * g[0])
                    update = {n: (state[n] - params[n].detach()) / local_lr for n in names}
    finally:
        model.load_state_dict(state)
    update = apply_defense(update, defense, gen)
    return [update[n] for n in matched_names(model, match)]


def apply_defense(update: dict[str, torch.Tensor], defense: Defense, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Pruning (per tensor, smallest |g| zeroed: `fedctl.core.prune`, as `federation.prune` in training), then
    global L2 clipping, then Gaussian noise."""
    out = dict(update)
    if defense.prune > 0:
        out = {n: prune_smallest(g, defense.prune) for n, g in out.items()}
    if defense.clip > 0:
        norm = torch.sqrt(sum(g.double().square().sum() for g in out.values()))
        scale = min(1.0, defense.clip / (float(norm) + 1e-12))
        out = {n: g * scale for n, g in out.items()}
    if defense.noise > 0:
        sigma = defense.noise * (defense.clip if defense.clip > 0 else 1.0)
        out = {n: g + sigma * torch.randn(g.shape, generator=gen) for n, g in out.items()}
    return out




def run_update(run: str | Path, server_round: int, client_id: str, arch: str, preset: str, *, match: str = "last",
               client_lr: float = 1.0, overrides: dict | None = None) -> tuple[nn.Module, list[torch.Tensor]]:
    """The victim and shared gradient of client `client_id` in round `server_round` of a fedctl run: the
    global model the client started from (`checkpoints/round_{k-1}.pt`) and its saved update
    (`deltas/clients/round_k/<client>.safetensors` = client − previous global), turned into a gradient as
    −delta / client_lr (exact for one local SGD step; the cosine distance ignores the scale). fedctl's own
    clients take AdamW steps over shuffled micro-batches with clipping, which this reading (and the attacker's
    plain-SGD unroll, hence no `--local-steps` > 1 with a run) does not model: for them it is an approximation."""
    from safetensors.torch import load_file

    from fedctl.core.rundir import RunDir

    rundir = RunDir(run)
    ckpt = rundir.checkpoint_path(server_round - 1)
    if not ckpt.exists():
        raise FedctlError(f"{run} has no checkpoint of round {server_round - 1} (the global model client "
                          f"{client_id} started round {server_round} from)",
                          "attack a round right after a saved checkpoint (federation.checkpoint_every)")
    delta_path = rundir.delta_path(server_round, client_id)
    if not delta_path.exists():
        raise FedctlError(f"{run} has no update of client {client_id} in round {server_round} ({delta_path})",
                          "train with --save-deltas every=1 --save-deltas entity=clients")
    model = load_victim(arch, preset, checkpoint=ckpt, overrides=overrides)
    try:
        delta = load_file(str(delta_path))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign bytes
        raise FedctlError(f"{delta_path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})",
                          "the run's delta file is damaged; attack another round or client") from None
    missing = [n for n in matched_names(model, match) if n not in delta]
    if missing:
        raise FedctlError(f"{delta_path} lacks {', '.join(missing)}", "the run must share the matched tensors")
    params = dict(model.named_parameters())
    for n in matched_names(model, match):
        if tuple(delta[n].shape) != tuple(params[n].shape) or not delta[n].is_floating_point():
            raise FedctlError(f"{delta_path}: tensor '{n}' is {tuple(delta[n].shape)} {delta[n].dtype}, the victim's "
                              f"is {tuple(params[n].shape)} {params[n].dtype}",
                              "the delta must come from the same run as the checkpoint (same model settings)")
    return model, [(-delta[n].float() / client_lr) for n in matched_names(model, match)]
