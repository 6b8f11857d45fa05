"""One bounded GPU check: everything fedctl needs measured on CUDA, in one command, written down.

    python bench/gpu_check.py [--out DIR]     # on a GPU machine: <= 8 minutes, writes gpu_check.json + .md
    python bench/gpu_check.py --dry           # tiny sizes on CPU (< 1 minute): proves the script itself
    python bench/run.py --gpu [--dry]         # the same

Parts (each under its own time budget, checked between iterations, plus a watchdog that interrupts it;
a part that cannot run says why in `{"skipped": reason}` and the others go on):
  hubert        HuBERT Base pretraining step: audio s/s and peak memory, fp32 / bf16 / fp16+GradScaler x SDPA/eager
                x gradient checkpointing off/on
  hubert_round  one federated round of 2 clients through fedctl.core.engine.run_federated (HubertTask, synth corpus)
  mamba         Mamba2 pure_ssm_2_layer training tokens/s: mamba-ssm kernels vs the pure-torch path
  inversion     DeepSpeech 1/2 (reference size) gradient inversion: s/iteration, output-layer vs all-layer matching,
                8 restarts batched vs sequential
  fedavg        WeightedMean of K=8 x 70M float32 on the device: GB/s vs a device-to-device copy
  parallel      1, 2, 4 concurrent clients on one device: steady round time
  lora_merge    svd merge (K=10, r=8) at roberta-base shapes and a 4096^2 module: device vs CPU

Nothing is installed or downloaded at run time. Results are written after every part, so a killed run
still leaves what it measured.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TOTAL_LIMIT_S = 480  # the promise: 8 minutes on one GPU, whatever happens
# Per-part budgets, seconds (sum 430 s, leaving room for imports and the environment block).
BUDGETS = {"hubert": 150, "hubert_round": 50, "mamba": 45, "inversion": 90, "fedavg": 25, "parallel": 40,
           "lora_merge": 30}
# --dry proves every code path once at tiny size; on 2 shared CPU cores most of a part's time is per-op overhead
DRY_BUDGETS = {"hubert": 30, "hubert_round": 25, "mamba": 10, "inversion": 20, "fedavg": 5, "parallel": 8, "lora_merge": 5}


class BudgetExhausted(Exception):
    pass


class Budget:
    """A part's time budget, checked between iterations (a watchdog catches what runs past it)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str = "") -> None:
        if self.left() <= 0:
            raise BudgetExhausted(f"time budget of {self.seconds:.0f} s exhausted{' before ' + what if what else ''}")


def skip_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(exc).splitlines()[0][:200]
    if isinstance(exc, BudgetExhausted):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "watchdog: the part ran past its budget and was interrupted"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def guarded(fn, *args, **kwargs) -> dict:
    """fn's figures, or {"skipped": reason} for OOM, budget and any other failure of this one row."""
    try:
        return fn(*args, **kwargs)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 — one row failing must not stop the check
        if isinstance(exc, KeyboardInterrupt) and not getattr(guarded, "watchdog_fired", False):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"skipped": skip_reason(exc)}


class Ctx:
    """What every part gets: the device, dry or not, its budget."""

    def __init__(self, device: torch.device, dry: bool, budget: Budget):
        self.device, self.dry, self.budget = device, dry, budget

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None


def timed_steps(ctx: Ctx, step, warmup: int, steps: int, what: str) -> list[float]:
    """Seconds of each timed call of step() after `warmup` untimed ones; stops early when the budget runs out
    (at least one timed step is required)."""
    for _ in range(warmup):
        ctx.budget.check(what)
        step()
    ctx.sync()
    times = []
    for _ in range(steps):
        if times and ctx.budget.left() <= 0:
            break
        ctx.budget.check(what)
        t0 = time.perf_counter()
        step()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------------ hubert


def _hubert_step_row(ctx: Ctx, precision: str, attn: str, ckpt: bool) -> dict:
    from fedctl.core.local import autocast
    from fedctl.tasks.hubert.model import (
        HubertPretrainModel,
        hubert_config,
        masked_prediction_loss,
        num_frames,
        span_mask,
    )
    from fedctl.tasks.hubert.presets import PRESETS

    if precision == "fp16" and not ctx.cuda:
        return {"skipped": "fp16 + GradScaler needs CUDA (fedctl refuses precision fp16 on CPU)"}
    preset = "tiny" if ctx.dry else "base"
    arch = PRESETS[preset]
    batch, seconds = (1, 0.5) if ctx.dry else (8, 10.0)  # GPU: 80 s of audio, near fairseq's 87.5 s per GPU
    classes = 20 if ctx.dry else 500
    torch.manual_seed(0)
    model = HubertPretrainModel(hubert_config(arch, attn), classes, arch["final_dim"], 0.1,
                                arch["feature_grad_mult"]).to(ctx.device).train()
    if ckpt:
        model.hubert.gradient_checkpointing_enable()
    samples = int(seconds * 16000)
    frames = num_frames(samples)
    audio = torch.randn(batch, samples, device=ctx.device)
    labels = torch.randint(0, classes, (batch, frames), device=ctx.device)
    mask = span_mask(batch, frames, 0.8, 10, 2, 0).to(ctx.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    # the client trainer's step (fedctl/core/local.py): autocast, GradScaler for fp16, unscale, clip, AdamW
    scaler = torch.amp.GradScaler(ctx.device.type) if dtype == torch.float16 else None
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    def step():
        with autocast(ctx.device, dtype):
            logits, pen = model(audio, mask)
            loss = masked_prediction_loss(logits, labels, mask)["masked_loss"] + 10.0 * pen
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    ctx.reset_peak()
    times = timed_steps(ctx, step, 1, 1 if ctx.dry else 4, f"hubert {precision}/{attn}/ckpt={ckpt}")
    row = {"audio_s_per_s": batch * seconds / statistics.median(times), "step_s": statistics.median(times),
           "peak_mb": ctx.peak_mb(), "steps_timed": len(times)}
    if dtype == torch.bfloat16 and not ctx.cuda:
        row["note"] = "CPU stand-in (bf16 autocast on CPU)"
    return row


def part_hubert(ctx: Ctx) -> dict:
    preset = "tiny" if ctx.dry else "base"
    from fedctl.tasks.hubert.presets import PRESETS

    with torch.device("meta"):
        from fedctl.tasks.hubert.model import HubertPretrainModel, hubert_config

        n = sum(p.numel() for p in HubertPretrainModel(hubert_config(PRESETS[preset]), 500, PRESETS[preset]["final_dim"]).parameters())
    out = {"preset": preset, "parameters_m": n / 1e6, "rows": {}}
    # most informative first: if the budget runs out, the rows that matter most exist
    precisions = ("fp32", "bf16", "fp16") if ctx.dry else ("bf16", "fp32", "fp16")  # bf16 on CPU is only a stand-in
    order = [(p, a, c) for c in (False, True) for p in precisions for a in ("sdpa", "eager")]
    for precision, attn, ckpt in order:
        name = f"{precision}/{attn}/{'ckpt' if ckpt else 'no-ckpt'}"
        out["rows"][name] = guarded(_hubert_step_row, ctx, precision, attn, ckpt)
    return out


def part_hubert_round(ctx: Ctx) -> dict:
    from fedctl.core.config import FederationConfig
    from fedctl.core.engine import run_federated
    from fedctl.core.events import RoundFinished
    from fedctl.core.strategies import build_strategy
    from fedctl.core.task import TaskContext
    from fedctl.tasks.hubert import HubertPretrainConfig, HubertTask

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = HubertPretrainConfig(preset="tiny" if ctx.dry else "base", demo_speakers=2, demo_utterances=2 if ctx.dry else 6,
                                   demo_clusters=5 if ctx.dry else 20, local_updates=1 if ctx.dry else 5, eval_batches=1,
                                   max_batch_seconds=8.0 if ctx.dry else 40.0, precision="auto")
        task = HubertTask(cfg, TaskContext(num_clients=2, seed=0, device=ctx.device, run_dir=Path(tmp), log=lambda _: None))
        data_s = time.perf_counter() - t0
        ctx.budget.check("the federated round")
        rounds: list[dict] = []

        def on_event(event):
            if isinstance(event, RoundFinished):
                rounds.append(dict(event.metrics))

        fed = FederationConfig(rounds=2, clients=2, eval_every=10**6, checkpoint_every=10**6)
        t0 = time.perf_counter()
        run_federated(task, build_strategy("fedavg", {}), fed, seed=0, on_event=on_event)
        ctx.sync()
        total = time.perf_counter() - t0
    secs = [r.get("seconds") for r in rounds]
    return {"preset": cfg.preset, "clients": 2, "local_updates": cfg.local_updates, "precision": str(task.amp_dtype),
            "synth_data_s": data_s, "round_s": secs, "run_s_incl_final_eval": total,
            "note": "round 1 includes warm-up; round 2 is the steady figure"}


# ------------------------------------------------------------------------------------------ mamba


def _mamba_rate(device: torch.device, dry: bool, seconds_left: float) -> dict:
    """Training tokens/s of Mamba2ForCausalLM at the preset (transformers picks kernels or torch at import)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from fedctl.tasks.mamba.presets import PRESETS

    a = PRESETS["tiny" if dry else "pure_ssm_2_layer"]
    cfg = Mamba2Config(vocab_size=2048, hidden_size=a["hidden_size"], num_hidden_layers=a["num_layers"],
                       state_size=a["state_size"], head_dim=a["head_dim"], num_heads=a["expand"] * a["hidden_size"] // a["head_dim"],
                       expand=a["expand"], n_groups=a["n_groups"], chunk_size=a["chunk_size"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(cfg).to(device).train()
    batch, seq = (2, 64) if dry else (8, 1024)
    ids = torch.randint(0, 2048, (batch, seq), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctx = Ctx(device, dry, Budget(seconds_left))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ctx.reset_peak()
    times = timed_steps(ctx, step, 1, 2 if dry else 5, "mamba steps")
    return {"tokens_per_s": batch * seq / statistics.median(times), "step_s": statistics.median(times),
            "batch": batch, "seq_len": seq, "peak_mb": ctx.peak_mb()}


def part_mamba(ctx: Ctx) -> dict:
    out = {"preset": "tiny" if ctx.dry else "pure_ssm_2_layer"}
    try:
        import mamba_ssm  # noqa: F401

        have_kernels = True
    except Exception as exc:  # noqa: BLE001 — ImportError, or a build that does not load against this torch
        have_kernels = False
        kernel_reason = f"mamba_ssm not importable ({type(exc).__name__}: {exc}); install the `cuda` extra (mamba-ssm>=2.2)"
    if not have_kernels:
        out["kernels"] = {"skipped": kernel_reason}
        out["torch_path"] = guarded(_mamba_rate, ctx.device, ctx.dry, ctx.budget.left())
        return out
    if not ctx.cuda:
        out["kernels"] = {"skipped": "mamba-ssm kernels need CUDA"}
    else:
        out["kernels"] = guarded(_mamba_rate, ctx.device, ctx.dry, ctx.budget.left() / 2)
    # the pure-torch path in a child process where mamba_ssm and causal_conv1d cannot be imported
    try:
        proc = subprocess.run([sys.executable, __file__, "--mamba-torch-child", ctx.device.type, str(int(ctx.dry)),
                               str(max(5.0, ctx.budget.left() - 10))],
                              capture_output=True, text=True, timeout=max(10.0, ctx.budget.left()), cwd=ROOT)
        lines = proc.stdout.strip().splitlines()
        out["torch_path"] = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
            {"skipped": f"child failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
    except subprocess.TimeoutExpired:
        out["torch_path"] = {"skipped": "time budget exhausted (child killed)"}
    if "tokens_per_s" in out.get("kernels", {}) and "tokens_per_s" in out["torch_path"]:
        out["kernel_speedup"] = out["kernels"]["tokens_per_s"] / out["torch_path"]["tokens_per_s"]
    return out


# ------------------------------------------------------------------------------------------ gradient inversion


def _cosine_distance(grads, target) -> torch.Tensor:
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    gn = sum(g.square().sum() for g in grads).sqrt()
    tn = sum(t.square().sum() for t in target).sqrt()
    return 1 - dot / (gn * tn + 1e-12)


def _inversion_rows(ctx: Ctx, arch: str) -> dict:
    """The attacker's loop on one DeepSpeech model: target gradient once, then Adam on dummy features whose
    gradient (create_graph=True, through the twice-differentiable CTC) is matched by cosine distance."""
    from fedctl.tasks.asr.ctc import ctc_loss
    from fedctl.tasks.asr.models import build_asr_model, double_backward_safe

    torch.manual_seed(0)
    model = build_asr_model(arch, "tiny" if ctx.dry else "reference").to(ctx.device).train()  # cuDNN RNN backward needs train()
    n_feat = model.config.n_mfcc if arch == "ds1" else model.config.n_freq
    frames, label_len = (20, 3) if ctx.dry else (200, 20)  # ~2 s of speech, 20 characters
    out_layer = model.out if arch == "ds1" else model.fc
    iters = 1 if ctx.dry else 5

    def ctc(features, labels):
        restarts = features.shape[1]
        lengths = torch.full((restarts,), frames, dtype=torch.long, device=ctx.device)
        logp, out_len = model(features, lengths)
        return ctc_loss(logp, labels.expand(restarts, -1), out_len, torch.full((restarts,), label_len), reduction="none")

    labels = torch.randint(1, model.config.num_classes, (1, label_len), device=ctx.device)
    victim = torch.randn(frames, 1, n_feat, device=ctx.device)
    rows = {"parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}

    def run(matching: str, restarts: int, batched: bool) -> dict:
        slow_vmap = matching == "all" and restarts > 1
        if slow_vmap and ctx.dry:
            # per-restart all-layer gradients go through autograd's vmap (is_grads_batched) over the RNN and the
            # CTC recursion: ~48 s per iteration on 2 CPU cores even at tiny size, so GPU only
            return {"skipped": "dry: all-layer batched restarts (is_grads_batched over the RNN) take ~48 s/iter on CPU; GPU only"}
        params = list(out_layer.parameters()) if matching == "output" else [p for p in model.parameters()]
        guard = double_backward_safe(model) if matching == "all" else contextlib.nullcontext()
        with guard:
            target = [g.detach() for g in torch.autograd.grad(ctc(victim, labels).sum(), params)]
            dummy = torch.randn(frames, restarts, n_feat, device=ctx.device, requires_grad=True)
            opt = torch.optim.Adam([dummy], lr=0.1)
            captured = {}
            hook = out_layer.register_forward_hook(lambda m, i, o: captured.update(h=i[0], z=o))

            def step():
                losses = ctc(dummy, labels)
                if restarts == 1:
                    grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
                    distance = _cosine_distance(grads, target)
                elif matching == "output":
                    # per-restart output-layer gradients in one pass: dL_r/dz is restart r's own (its loss sees only
                    # its column), and the layer's gradient is its outer product with the layer input
                    dz = torch.autograd.grad(losses.sum(), captured["z"], create_graph=True)[0]
                    gw = torch.einsum("tro,tri->roi", dz, captured["h"])
                    per = [gw] + ([dz.sum(0)] if len(params) == 2 else [])
                    distance = sum(_cosine_distance([g[r] for g in per], target) for r in range(restarts))
                else:
                    eye = torch.eye(restarts, device=ctx.device)
                    grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True, create_graph=True)
                    distance = sum(_cosine_distance([g[r] for g in grads], target) for r in range(restarts))
                opt.zero_grad(set_to_none=True)
                distance.backward()
                opt.step()

            try:
                times = timed_steps(ctx, step, 1, 1 if slow_vmap else iters, f"{arch} {matching} inversion")
            finally:
                hook.remove()
        row = {"s_per_iter": statistics.median(times), "restarts": restarts, "iters_timed": len(times)}
        if restarts > 1:
            row["how"] = ("per-restart gradients: autograd.grad(is_grads_batched=True)" if matching == "all" else
                          "per-restart output-layer gradients from dL/dlogits and the layer input (one backward)")
        return row

    for matching in ("output", "all"):
        seq = guarded(run, matching, 1, False)
        bat = guarded(run, matching, 8, True)
        row = {"sequential_1": seq, "batched_8": bat}
        if "s_per_iter" in seq and "s_per_iter" in bat:
            row["batched_speedup"] = 8 * seq["s_per_iter"] / bat["s_per_iter"]
        if matching == "all":
            row["cudnn"] = "off (double_backward_safe: cuDNN RNNs have no double backward)" if ctx.cuda else \
                "n/a on CPU (double_backward_safe is a no-op)"
        else:
            row["cudnn"] = "on" if ctx.cuda and torch.backends.cudnn.enabled else "n/a on CPU"
        rows[matching] = row
    return rows


def part_inversion(ctx: Ctx) -> dict:
    # half the budget each, so a slow DS1 row (vmap over the RNN) cannot starve DS2
    ds1 = guarded(_inversion_rows, Ctx(ctx.device, ctx.dry, Budget(ctx.budget.left() / 2)), "ds1")
    ds2 = guarded(_inversion_rows, ctx, "ds2")
    return {"preset": "tiny" if ctx.dry else "reference", "ds1": ds1, "ds2": ds2,
            "note": "DS2 restarts batched share BatchNorm batch statistics (train mode); figures are timing only"}


# ------------------------------------------------------------------------------------------ fedavg


def part_fedavg(ctx: Ctx) -> dict:
    from bench.bench_engine import MODEL_SHAPES
    from fedctl.core.aggregate import WeightedMean

    k = 8
    shapes = [(512, 512)] * 4 if ctx.dry else MODEL_SHAPES
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    updates = [{f"t{i}": torch.randn(*s, device=ctx.device, generator=gen) for i, s in enumerate(shapes)} for _ in range(k)]
    workspace = {n: torch.empty_like(t) for n, t in updates[0].items()}
    dst = {n: torch.empty_like(t) for n, t in updates[0].items()}
    nbytes = sum(t.numel() * t.element_size() for t in updates[0].values()) * k

    def mean():
        acc = WeightedMean(workspace)
        for i, u in enumerate(updates):
            acc.add(u, 100 + 10 * i)
        acc.result()

    def copy():
        for u in updates:
            for n, t in u.items():
                dst[n].copy_(t)

    t_mean = min(timed_steps(ctx, mean, 1, 3, "fedavg"))
    t_copy = min(timed_steps(ctx, copy, 1, 3, "copy"))
    return {"k": k, "parameters_m": sum(t.numel() for t in updates[0].values()) / 1e6, "gigabytes": nbytes / 1e9,
            "weighted_mean_gbps": nbytes / t_mean / 1e9, "copy_gbps": nbytes / t_copy / 1e9,
            "ratio": t_copy / t_mean}


# ------------------------------------------------------------------------------------------ parallel clients


def part_parallel(ctx: Ctx) -> dict:
    for name in ("fedctl.core.parallel", "fedctl.core.executors"):
        try:
            importlib.import_module(name)
            found = name
            break
        except ImportError:
            found = None
    from concurrent.futures import ThreadPoolExecutor

    from fedctl.tasks.hubert.model import (
        HubertPretrainModel,
        hubert_config,
        masked_prediction_loss,
        num_frames,
        span_mask,
    )
    from fedctl.tasks.hubert.presets import PRESETS

    arch = PRESETS["tiny"] if ctx.dry else {**PRESETS["base"], "num_layers": 4}
    clients, steps = 4, (1 if ctx.dry else 3)
    batch, samples = (1, 8000) if ctx.dry else (4, 80000)
    frames = num_frames(samples)
    models = []
    for c in range(clients):
        torch.manual_seed(c)
        models.append(HubertPretrainModel(hubert_config(arch), 50, arch["final_dim"]).to(ctx.device).train())
    audio = torch.randn(batch, samples, device=ctx.device)
    labels = torch.randint(0, 50, (batch, frames), device=ctx.device)
    mask = span_mask(batch, frames, 0.8, 10, 2, 0).to(ctx.device)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]

    def client(c: int):
        stream = torch.cuda.Stream(ctx.device) if ctx.cuda else None
        with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            for _ in range(steps):
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda):
                    logits, pen = models[c](audio, mask)
                    loss = masked_prediction_loss(logits, labels, mask)["masked_loss"] + pen
                loss.backward()
                opts[c].step()
                opts[c].zero_grad(set_to_none=True)
        if stream:
            stream.synchronize()

    rows = {}
    for workers in (1, 2, 4):
        def round_(workers=workers):
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(client, range(clients)))

        rows[f"workers_{workers}"] = guarded(lambda fn=round_, n=workers: {"round_s": statistics.median(
            timed_steps(ctx, fn, 1, 2, f"{n} concurrent clients"))})
    base = rows["workers_1"].get("round_s")
    for r in rows.values():
        if base and "round_s" in r:
            r["speedup_vs_1"] = base / r["round_s"]
    how = ("self-contained: threads, one CUDA stream per client" if ctx.cuda else
           "CPU stand-in: threads without streams (intra-op threads compete; not a GPU figure)")
    return {"how": how + (f"; {found} is importable but not measured here (its API is not on this branch)" if found else
                          "; no parallel executor importable on this branch (fedctl.core.parallel)"),
            "clients_per_round": clients, "steps_per_client": steps, "model": "HuBERT " + ("tiny" if ctx.dry else "base width, 4 layers"),
            "rows": rows}


# ------------------------------------------------------------------------------------------ lora merge


def part_lora_merge(ctx: Ctx) -> dict:
    from bench.bench_merge import ALPHA, Case, K, R, _client_factors
    from fedctl.lora.merge import merge_state_dicts

    cases = [Case("roberta-base 24 x 768^2", 4 if ctx.dry else 24, 768, 768, 0),
             Case("4096^2", 1, 1024 if ctx.dry else 4096, 1024 if ctx.dry else 4096, 0)]
    out = {"k": K, "r": R}
    for case in cases:
        factors = _client_factors(case)

        def state_dicts(device, factors=factors):
            return [{key: t.to(device) for m, (b, a) in enumerate(client)
                     for key, t in ((f"layers.{m}.lora_B.weight", b), (f"layers.{m}.lora_A.weight", a))}
                    for client in factors]

        row = {}
        for where, device in (("cpu", torch.device("cpu")), ("device", ctx.device)):
            if where == "device" and not ctx.cuda:
                row["device"] = {"skipped": "no CUDA device (dry run: the CPU row is the only one)"}
                continue
            sds = state_dicts(device)
            sub = Ctx(device, ctx.dry, ctx.budget)

            def merge(sds=sds):
                merge_state_dicts(sds, [1.0] * K, method="svd", svd_rank=R, scales=ALPHA / R, out_scale=1.0)

            row[where] = guarded(lambda sub=sub, fn=merge, what=f"merge {case.name}":
                                 {"seconds": min(timed_steps(sub, fn, 1, 3, what))})
        if "seconds" in row.get("device", {}) and "seconds" in row["cpu"]:
            row["device_speedup"] = row["cpu"]["seconds"] / row["device"]["seconds"]
        out[case.name if not ctx.dry else case.name + f" (dry: {case.n_modules} x {case.d}^2)"] = row
    return out


PARTS = {"hubert": part_hubert, "hubert_round": part_hubert_round, "mamba": part_mamba, "inversion": part_inversion,
         "fedavg": part_fedavg, "parallel": part_parallel, "lora_merge": part_lora_merge}


# ------------------------------------------------------------------------------------------ environment and report


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device": str(device), "gpu": None, "driver": None, "cpu_threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        import transformers

        env["transformers"] = transformers.__version__
    for package in ("mamba_ssm", "causal_conv1d"):  # transformers' Mamba2 kernels come from these two
        try:
            env[package] = getattr(importlib.import_module(package), "__version__", "importable")
        except Exception:  # noqa: BLE001 — absent, or a build that does not load against this torch
            env[package] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = p.name
        env["gpu_memory_gb"] = p.total_memory / 1e9
        env["capability"] = f"{p.major}.{p.minor}"
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        with contextlib.suppress(Exception):
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=ROOT, timeout=10).stdout.strip()
    return env


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _rows(prefix: str, d: dict):
    """(where, measure, value) rows of a nested result dict; a skip is one row."""
    if "skipped" in d:
        yield prefix, "skipped", d["skipped"]
        return
    leaf = {k: v for k, v in d.items() if not isinstance(v, dict)}
    if leaf:
        yield prefix, "; ".join(f"{k}" for k in leaf), "; ".join(_fmt(v) for v in leaf.values())
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _rows(f"{prefix} / {k}" if prefix else k, v)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# fedctl GPU check{' (--dry: tiny sizes on CPU, not GPU figures)' if report['dry'] else ''}", "",
             "Environment: " + ", ".join(f"{k} {_fmt(v)}" for k, v in env.items()), "",
             f"Total {report['total_s']:.1f} s." + (f" {report['note']}." if report.get("note") else ""), "", "| part | row | measures | values |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        secs = report["part_seconds"].get(name)
        for where, measure, value in _rows("", part):
            lines.append(f"| {name} ({secs:.1f} s) | {where or '-'} | {measure} | {value} |".replace("\n", " "))
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out_dir / "gpu_check.json")
    (out_dir / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU, to prove the script without a GPU")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(PARTS))
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda" if cuda else "cpu")
    budgets = DRY_BUDGETS if args.dry else BUDGETS
    chosen = [p for p in args.only.split(",") if p] or list(PARTS)
    unknown = set(chosen) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; valid: {', '.join(PARTS)}")
    # imports before the clock: part budgets should measure work, not module loading
    import transformers.models.hubert.modeling_hubert  # noqa: F401
    import transformers.models.mamba2.modeling_mamba2  # noqa: F401

    import fedctl.core.engine  # noqa: F401
    import fedctl.tasks.asr.models  # noqa: F401
    import fedctl.tasks.hubert.task  # noqa: F401

    start = time.monotonic()
    report = {"dry": args.dry, "environment": environment(device), "parts": {}, "part_seconds": {}, "total_s": 0.0}
    if not args.dry and not torch.cuda.is_available():
        report["note"] = "no CUDA device: every part was skipped (use --dry for the CPU proof run)"

    # The whole-run watchdog: at TOTAL_LIMIT_S, write what exists and leave, whatever is running.
    def total_watchdog():
        report["total_s"] = time.monotonic() - start
        report["note"] = f"stopped by the {TOTAL_LIMIT_S} s total watchdog"
        with contextlib.suppress(Exception):
            write(report, out_dir)
        os._exit(3)

    total_timer = threading.Timer(TOTAL_LIMIT_S, total_watchdog)
    total_timer.daemon = True
    total_timer.start()
    for name in chosen:
        t0 = time.monotonic()
        if not args.dry and not torch.cuda.is_available():
            result = {"skipped": "no CUDA device available (torch.cuda.is_available() is False)"}
        else:
            budget = Budget(min(budgets[name], TOTAL_LIMIT_S - 20 - (t0 - start)))
            guarded.watchdog_fired = False

            def fire():
                guarded.watchdog_fired = True
                _thread.interrupt_main()  # KeyboardInterrupt at the next bytecode: lands between CUDA calls

            # the part's own watchdog: its budget plus half again (a last iteration may straddle the deadline)
            timer = threading.Timer(budget.seconds * 1.5 + 5, fire)
            timer.daemon = True
            timer.start()
            try:
                print(f"[gpu_check] {name} (budget {budget.seconds:.0f} s)", file=sys.stderr, flush=True)
                result = guarded(PARTS[name], Ctx(device, args.dry, budget))
            finally:
                timer.cancel()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        report["parts"][name] = result
        report["part_seconds"][name] = time.monotonic() - t0
        report["total_s"] = time.monotonic() - start
        write(report, out_dir)
    total_timer.cancel()
    table = markdown(report)
    print(table)
    print(f"✓ Saved {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}", file=sys.stderr)
    return report


def _mamba_torch_child(device: str, dry: bool, seconds: float) -> None:
    # Make mamba-ssm and causal-conv1d unimportable before transformers looks for them: the pure-torch path.
    sys.modules["mamba_ssm"] = None
    sys.modules["causal_conv1d"] = None
    print(json.dumps(_mamba_rate(torch.device(device), dry, seconds)))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--mamba-torch-child":
        _mamba_torch_child(sys.argv[2], bool(int(sys.argv[3])), float(sys.argv[4]))
    else:
        main()
