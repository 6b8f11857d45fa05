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
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from dataclasses import fields as dc_fields
from pathlib import Path

import torch
from torch import nn

from fedctl.attacks.objective import ClientPlan, matched_names, per_restart_gradients
from fedctl.core.config import check_dropout, check_prune, check_range, check_seed
from fedctl.core.prune import prune_smallest
from fedctl.core.strategies.dp import check_noise_multiplier
from fedctl.errors import FedctlError
from fedctl.tasks.asr.models import ARCHITECTURES, build_asr_model
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
    """The victim model: untrained and seeded (the reference setting), or the weights of `checkpoint` in any
    form `fedctl train asr` leaves (see `victim_source`), or a `.pt` with a "model" state dict and optional
    `config["task"]`, or a bare state dict. A saved model's own config decides its sizes: `overrides` that
    contradict it are refused, as is a model of another architecture or workload."""
    overrides = dict(overrides or {})
    if checkpoint is None:
        torch.manual_seed(seed)
        model = build_asr_model(arch, preset, **overrides)
    else:
        model = _saved_victim(arch, preset, victim_source(checkpoint), overrides)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def victim_source(checkpoint: str | Path) -> Path:
    """The file or export folder that holds the victim named by `checkpoint`: a round checkpoint or `best.pt`
    as given; a run directory or its `checkpoints/` folder: the newest round checkpoint (the run's final
    global model, as `fedctl eval RUN` reads it); a `final/` folder: its `hf/` export."""
    from fedctl.core.config import load_yaml
    from fedctl.core.rundir import RunDir
    from fedctl.tasks.asr.task import CONFIG_FILE

    path = Path(checkpoint)
    if not path.exists():
        raise FedctlError(f"victim checkpoint {path} does not exist",
                          "pass a checkpoint .pt, a run directory or its final/hf export")
    if path.is_file():
        return path
    if (path / CONFIG_FILE).is_file() or (path / "hf" / CONFIG_FILE).is_file():
        return path if (path / CONFIG_FILE).is_file() else path / "hf"
    run = RunDir(path.parent if path.name == "checkpoints" and not (path / "config.yaml").is_file() else path)
    if run.config_path.is_file():
        task = (load_yaml(run.config_path).get("run") or {}).get("task")
        if task != "asr":
            raise FedctlError(f"victim {path} is a {task} run (fedctl train {task}), not an asr run",
                              "pass a run, checkpoint or final/hf of `fedctl train asr`")
    if run.list_checkpoints():
        return run.latest_checkpoint()
    if (path / "config.json").is_file():  # a Hugging Face export of another workload (mamba, hubert, …)
        try:
            kind = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") or "model"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            kind = "model"
        raise FedctlError(f"victim {path} is a Hugging Face {kind} export, not a DeepSpeech model of `fedctl "
                          "train asr`", "pass a run, checkpoint or final/hf of `fedctl train asr`")
    raise FedctlError(f"no victim model in {path} (no round checkpoint, no {CONFIG_FILE})",
                      "pass checkpoints/round_NNN.pt, checkpoints/best.pt, a run directory or final/hf")


def _saved_victim(arch: str, preset: str, path: Path, overrides: dict) -> nn.Module:
    from fedctl.core.checkpoint import FORMAT, check_tensors, load_checkpoint
    from fedctl.tasks.asr.task import build_model_from_config, load_asr_model, load_state

    def other_arch(found: str) -> FedctlError:
        return FedctlError(f"victim checkpoint {path} is a {found} model, not {arch}",
                           f"run `fedctl attack {found}` on it, or pass a {arch} checkpoint")

    if path.is_dir():  # a `fedctl train asr` export (final/hf)
        found, model = load_asr_model(path)
    else:
        blob = torch_load(path, what="victim checkpoint")
        if isinstance(blob, dict) and blob.get("format") == FORMAT:  # a fedctl checkpoint (round_NNN.pt, best.pt)
            ckpt = load_checkpoint(path)
            if ckpt["task"] != "asr":
                raise FedctlError(f"victim checkpoint {path} is a {ckpt['task']} checkpoint (fedctl train "
                                  f"{ckpt['task']}), not a DeepSpeech model",
                                  "pass a checkpoint, run or final/hf of `fedctl train asr`")
            task_cfg = ckpt["config"].get("task") if isinstance(ckpt["config"], dict) else None
            if not isinstance(task_cfg, dict) or task_cfg.get("arch") not in ("ds1", "ds2"):
                raise FedctlError(f"victim checkpoint {path} names no DeepSpeech architecture in config.task.arch",
                                  "the file was altered; use another checkpoint of the run")
            found = task_cfg["arch"]
            if found != arch:
                raise other_arch(found)
            model = build_model_from_config(task_cfg)  # the run's own reading of its config (None: the preset's)
            load_state(model, ckpt["model"], str(path), found)
        else:  # a hand-made `.pt`: {"model": state, "config": {"task": {...}}} or a bare state dict
            state = blob.get("model", blob) if isinstance(blob, dict) else blob
            if not isinstance(state, dict) or not state:
                raise FedctlError(f"victim checkpoint {path} holds neither a fedctl checkpoint nor a state dict "
                                  "of tensors", "pass a checkpoint of `fedctl train asr` or a .pt with a 'model' "
                                  "state dict")
            check_tensors(state, path, "model")  # names the first entry that is not a tensor
            task = (blob.get("config") or {}).get("task", {}) if isinstance(blob, dict) else {}
            task = task if isinstance(task, dict) else {}
            if task.get("arch") and task["arch"] != arch:
                raise other_arch(task["arch"])
            found = ("ds1" if any(k.startswith("bi_lstm.") for k in state)
                     else "ds2" if any(k.startswith("rnns.") or k.startswith("conv") for k in state) else None)
            if found is None:
                raise FedctlError(f"victim checkpoint {path} holds no DeepSpeech model (tensors: "
                                  f"{', '.join(list(state)[:3])}, …)", f"pass a {arch} checkpoint")
            if found != arch:
                raise FedctlError(f"victim checkpoint {path} holds a {found} model, not {arch}",
                                  f"run `fedctl attack {found}` on it, or pass a {arch} checkpoint")
            names = {f.name for f in dc_fields(ARCHITECTURES[arch][0])}
            saved = {k: v for k, v in task.items() if k in names and v is not None}
            model = build_asr_model(arch, task.get("preset") or preset, **{**saved, **overrides})
            try:
                load_state(model, state, str(path), found)
            except FedctlError as exc:  # no config to read the sizes from: the user's --preset/--hidden decide
                raise FedctlError(exc.message, "pass --preset / --hidden matching the checkpoint") from None
            return model
    if found != arch:
        raise other_arch(found)
    differ = {k: v for k, v in overrides.items() if getattr(model.config, k) != v}
    if differ:
        raise FedctlError(f"victim {path} has {', '.join(f'{k} = {getattr(model.config, k)!r}' for k in differ)}, "
                          f"not {', '.join(f'{k} = {v!r}' for k, v in differ.items())}",
                          "leave --hidden off: the saved model's config sets its sizes")
    return model


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
    global model the client started from (`checkpoints/round_{k-1}.pt`; for round 1 the run's initial model,
    rebuilt from its config.yaml and `run.seed` as training built it) and its saved update
    (`deltas/clients/round_k/<client>.safetensors` = client − previous global), turned into a gradient as
    −delta / client_lr (exact for one local SGD step; the cosine distance ignores the scale). fedctl's own
    clients take AdamW steps over shuffled micro-batches with clipping, which this reading (and the attacker's
    plain-SGD unroll, hence no `--local-steps` > 1 with a run) does not model: for them it is an approximation."""
    from safetensors.torch import load_file

    from fedctl.core.rundir import RunDir

    rundir = RunDir(run)
    if server_round < 1:
        raise FedctlError(f"--round {server_round} is not a training round", "rounds count from 1")
    delta_path = rundir.delta_path(server_round, client_id)
    if not delta_path.exists():
        raise FedctlError(f"{run} has no update of client {client_id} in round {server_round} ({delta_path})",
                          "train with --save-deltas every=1 --save-deltas entity=clients")
    ckpt = rundir.checkpoint_path(server_round - 1)
    if server_round == 1:
        model = _initial_victim(rundir, arch, overrides or {})
    elif ckpt.exists():
        model = load_victim(arch, preset, checkpoint=ckpt, overrides=overrides)
    else:
        raise FedctlError(f"{run} has no checkpoint of round {server_round - 1} (the global model client "
                          f"{client_id} started round {server_round} from)",
                          "attack round 1 or a round right after a saved checkpoint (federation.checkpoint_every)")
    try:
        delta = load_file(str(delta_path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
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


def _initial_victim(rundir, arch: str, overrides: dict) -> nn.Module:
    """Round 0's global model of `rundir`, rebuilt from its config.yaml (it has no checkpoint)."""
    from fedctl.tasks.asr.task import initial_model

    if not rundir.config_path.is_file():
        raise FedctlError(f"--run {rundir.path} has no config.yaml to rebuild round 1's starting model from",
                          "pass the --out folder of a `fedctl train asr` run, or attack a later round")
    config = rundir.read_config()
    task = (config.get("run") or {}).get("task")
    if task != "asr":
        raise FedctlError(f"--run {rundir.path} is a {task} run (fedctl train {task}), not an asr run",
                          "pass the --out folder of a `fedctl train asr` run")
    task_cfg = config.get("task") or {}
    if task_cfg.get("arch") != arch:
        raise FedctlError(f"--run {rundir.path} trained a {task_cfg.get('arch')} model, not {arch}",
                          f"run `fedctl attack {task_cfg.get('arch')}` on it")
    model = initial_model(task_cfg, int((config.get("run") or {}).get("seed", 0)))
    differ = {k: v for k, v in overrides.items() if getattr(model.config, k) != v}
    if differ:
        raise FedctlError(f"--run {rundir.path} has {', '.join(f'{k} = {getattr(model.config, k)!r}' for k in differ)}",
                          "leave --hidden off: the run's config sets the model's sizes")
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


@dataclass
class RunClient:
    """A client of a real `fedctl train asr` run in one round, as the attacker replays it (`run_client`)."""

    model: nn.Module  # the global model the client started the round from
    shared: list[torch.Tensor]  # its saved update as (θ0 − θN) / peak lr, restricted to the matched tensors
    utterances: list  # its training utterances, in the task's order (the positions the schedule names)
    batch: tuple[torch.Tensor, ...]  # their true (features [T, n, F], lengths, targets, target_lengths)
    plan: ClientPlan  # its local training: the run's client spec and the trainer's own schedule


def run_client(run: str | Path, server_round: int, client_id: str, arch: str, *, match: str = "last",
               overrides: dict | None = None) -> RunClient:
    """Client `client_id` of round `server_round` of a `fedctl train asr` run, exactly as it trained: the global
    model it started from, its saved delta, its training utterances (read as the run read them: the run's data
    or its demo corpus, the same normalisation and leave-outs) and its plan: the run's client spec (optimizer,
    warmup, clipping, micro-batches, accumulation) and the micro-batch order of the trainer's seeded schedule
    (`fedctl.core.local.schedule` with the engine's client seed). `fedctl.attacks.objective.client_updates` of
    that plan at the true features reproduces the saved delta (tests/attacks/test_client_unroll.py).

    Refused: clients that carry optimizer state across rounds (the attacker does not hold it) and FedProx
    (its proximal term is not replayed). Dropout (unknown masks), pruning and DP noise make the update differ
    from any replay: those are the defences the attack then faces."""
    from safetensors.torch import load_file

    from fedctl.core.config import apply_mapping
    from fedctl.core.local import client_schedule
    from fedctl.core.rundir import RunDir
    from fedctl.core.strategies import build_strategy
    from fedctl.core.task import TaskContext, client_seed
    from fedctl.data.speech.demo import demo_partition
    from fedctl.tasks.asr.config import AsrConfig
    from fedctl.tasks.asr.task import AsrTask

    rundir = RunDir(run)
    model, _ = run_update(run, server_round, client_id, arch, "tiny", match=match, overrides=overrides)
    config = rundir.read_config()
    fed, seed = config.get("federation") or {}, int((config.get("run") or {}).get("seed", 0))
    if fed.get("keep_optimizer_state"):
        raise FedctlError(f"--run {rundir.path} keeps client optimizer state across rounds "
                          "(federation.keep_optimizer_state), which the attacker does not hold",
                          "attack a run trained without it")
    instructions = build_strategy(fed.get("strategy", "fedavg"), fed.get("strategy_args") or {}).configure_fit(server_round)
    if instructions.proximal_mu > 0:
        raise FedctlError(f"--run {rundir.path} trains with FedProx's proximal term, which the attack does not replay",
                          "attack a run of another strategy (fedavg, fedadam, …)")
    cfg = AsrConfig()
    apply_mapping(cfg, dict(config.get("task") or {}), "task")
    clients = int(fed.get("clients", 1))
    if cfg.parts is None:  # the run's own demo corpus, made under its folder: read, never remade
        if not rundir.demo_data_dir.is_dir():
            raise FedctlError(f"--run {rundir.path} trained on the demo corpus but has no {rundir.demo_data_dir.name}/",
                              "pass the run folder as training left it")
        cfg.parts = str(demo_partition(rundir.demo_data_dir, clients, cfg.demo_speakers, cfg.demo_utterances,
                                       lambda _: None))
    task = AsrTask(cfg, TaskContext(num_clients=clients, seed=seed, device=torch.device("cpu"), log=lambda _: None))
    if client_id not in task.client_ids():
        raise FedctlError(f"--client {client_id} is not a client of {rundir.path}",
                          f"its clients: {', '.join(task.client_ids())}")
    index = task.client_ids().index(client_id)
    n = task.train_items(client_id)
    gen = torch.Generator().manual_seed(client_seed(seed, server_round, index))
    steps, _ = client_schedule(task, client_id, n, gen)  # the trainer's own sampler, seeded as the engine seeds it
    peak = task.training.lr if instructions.client_lr is None else instructions.client_lr
    plan = ClientPlan(task.training, steps, peak, (server_round - 1) * task.training.steps_per_round(n))
    batch = task.make_batch(client_id, torch.arange(n), gen)
    delta = load_file(str(rundir.delta_path(server_round, client_id)))
    shared = [(-delta[name]).to(torch.float64) / peak for name in matched_names(model, match)]
    return RunClient(model, shared, task.train[client_id], batch, plan)
