"""Federated distillation of a HuBERT teacher: only the student travels between clients and server.

Setup: load the frozen teacher from RUN/final/hf, build the student for the recipe (see model.py), load the
audio the same way as `train hubert`. Train: the engine's client trainer runs the distillation loss on each
client's length batches, the teacher computing targets on the fly. Evaluate: the distillation loss on held-out audio (kd: also
masked accuracy against the labels and agreement with the teacher). Export: the student like the teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedctl.core.client import check_spec as check_client_spec
from fedctl.core.client import optimizer_keys
from fedctl.core.config import require_in_range
from fedctl.core.local import LocalTraining, autocast
from fedctl.core.task import Task, TaskContext
from fedctl.core.weights import warm_start
from fedctl.data.speech.features import SAMPLE_RATE
from fedctl.errors import FedctlError
from fedctl.tasks.audio import SpeechBatches, SpeechClients, autocast_dtype, make_demo_or_load
from fedctl.tasks.distill import model as dm
from fedctl.tasks.distill.config import DistillConfig
from fedctl.tasks.hubert import data as hdata
from fedctl.tasks.hubert.model import IGNORE, encode, export_pretrained
from fedctl.utils.io import torch_save, write_json

RECIPES = ("distilhubert", "kd")


class DistillTask(SpeechClients, Task):
    """The `distill` workload. Build with `DistillTask(cfg, ctx)`; the model the engine holds is the student."""

    name = "distill"

    def __init__(self, cfg: DistillConfig, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        if cfg.recipe not in RECIPES:
            raise FedctlError(f"task.recipe = {cfg.recipe!r} is not a distillation recipe", f"use one of: {', '.join(RECIPES)}")
        if not cfg.teacher:
            raise FedctlError("distillation needs a teacher: --teacher is missing",
                              "train one first (`fedctl train hubert --config hubert_tiny`) and pass --teacher RUN/final/hf")
        self._check()
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.training = LocalTraining(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2), eps=1e-6,
                                      warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip, grad_accum=cfg.grad_accum,
                                      batch_size=1, local_updates=cfg.local_updates, local_epochs=cfg.local_epochs,
                                      amp_dtype=self.amp_dtype, **optimizer_keys(cfg))
        check_client_spec(self.training)
        self.teacher, self.teacher_head = dm.load_teacher(cfg.teacher, cfg.attn_implementation, need_head=cfg.recipe == "kd")
        self.teacher.to(self.device)
        if self.teacher_head is not None:
            self.teacher_head.to(self.device).eval()
        tconf = self.teacher.config
        if cfg.recipe == "distilhubert":
            self.target_layers = dm.parse_target_layers(cfg.target_layers, tconf.num_hidden_layers)
            if not 1 <= cfg.student_layers:
                raise FedctlError(f"task.student_layers = {cfg.student_layers} must be at least 1", "DistilHuBERT uses 2")
            if cfg.student_layers > tconf.num_hidden_layers:
                raise FedctlError(f"task.student_layers = {cfg.student_layers} exceeds the teacher's {tconf.num_hidden_layers} layers",
                                  f"use at most {tconf.num_hidden_layers} (the student copies the teacher's first layers)")
        # audio-only for distilhubert with --parts and no --labels; kd needs labels with the teacher's cluster count
        clusters = self.teacher_head.num_classes if self.teacher_head is not None and cfg.recipe == "kd" else None
        if cfg.recipe == "distilhubert" and cfg.parts is not None and cfg.labels is None:
            self.data = hdata.load_speech(cfg.parts, None, ctx.num_clients, cfg.label_tolerance, None)
        else:
            if cfg.recipe == "kd" and cfg.parts is None and cfg.labels is None and cfg.demo_clusters != clusters:
                raise FedctlError(f"the teacher predicts {clusters} clusters but task.demo_clusters = {cfg.demo_clusters}",
                                  f"--set task.demo_clusters={clusters}")
            self.data = self._load(clusters)
        self.batches = SpeechBatches(self.data, cfg.max_batch_seconds, cfg.max_sample_seconds)
        sizes = self.sizes()
        ctx.log(f"{cfg.recipe} student: {sizes['student_params'] / 1e6:.2f}M parameters vs teacher "
                f"{sizes['teacher_params'] / 1e6:.2f}M ({sizes['param_reduction']:.1%} fewer; transformer "
                f"{sizes['student_transformer_params'] / 1e6:.2f}M vs {sizes['teacher_transformer_params'] / 1e6:.2f}M)")

    def _load(self, clusters: int | None) -> hdata.SpeechData:
        try:
            return make_demo_or_load(self.cfg, self.ctx, clusters)
        except FedctlError as exc:
            if clusters is not None and "clusters but task.clusters" in exc.message:
                raise FedctlError(exc.message.replace("task.clusters", "the teacher predicts"),
                                  f"kd needs the labels the teacher was trained on ({clusters} clusters): "
                                  f"pass that --labels folder, or use --recipe distilhubert") from None
            raise

    def _check(self) -> None:
        c = self.cfg
        checks = [
            ("cos_weight", c.cos_weight >= 0, "DistilHuBERT: 1"),
            ("temperature", c.temperature > 0, "e.g. 2"),
            ("alpha", 0 <= c.alpha <= 1, "in [0, 1]; 1 = teacher only"),
            ("mask_prob", 0 < c.mask_prob <= 1, "0.8"),
            ("mask_length", c.mask_length >= 1, "10"),
            ("grad_accum", c.grad_accum >= 1, "1"),
            ("lr", c.lr > 0, "2e-4"),
            ("warmup_steps", c.warmup_steps >= 0, "0 disables warmup"),
            ("local_updates", c.local_updates >= 0, "0 switches to local_epochs"),
            ("grad_clip", c.grad_clip >= 0, "0 disables clipping"),
            ("eval_batches", c.eval_batches >= 0, "0 = all"),
        ]
        require_in_range(checks, lambda key: getattr(c, key))

    # ------------------------------------------------------------------------------ model

    def build_student(self) -> nn.Module:
        c = self.cfg
        if c.recipe == "distilhubert":
            return dm.build_distilhubert(self.teacher, c.student_layers, self.target_layers, c.attn_implementation)
        head = self.teacher_head
        return dm.build_kd_student(self.teacher, head.num_classes, c.kd_final_dim or head.final_proj.out_features,
                                   head.logit_temp, c.kd_hidden_size, c.kd_num_layers, c.kd_num_heads, c.kd_ffn_size,
                                   c.attn_implementation)

    def build_model(self) -> nn.Module:
        """The student, deterministic for ctx.seed (teacher-initialised parts are copies); global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            model = self.build_student()
        if self.cfg.init is not None:
            warm_start(model, self.cfg.init, self.ctx.log)
        if self.cfg.gradient_checkpointing:
            model.hubert.gradient_checkpointing_enable()
        model.train()
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        return list(model.state_dict().keys())  # the student only: the teacher is no part of the model

    def sizes(self) -> dict[str, Any]:
        """Parameter counts of teacher and student (the student built on the meta device: no memory)."""
        import warnings

        with torch.device("meta"), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying teacher weights into meta tensors is the intended no-op
            student = self.build_student()
        teacher_params = dm.count(self.teacher) + (dm.count(self.teacher_head) - dm.count(self.teacher)
                                                   if self.teacher_head is not None else 0)
        student_params = dm.count(student)
        return {
            "teacher_params": teacher_params,
            "student_params": student_params,
            "param_reduction": 1 - student_params / teacher_params,
            "teacher_transformer_params": dm.count(self.teacher.encoder),
            "student_transformer_params": dm.count(student.hubert.encoder),
        }

    # ------------------------------------------------------------------------------ training

    def objective(self, model: nn.Module, audio: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
        """The recipe's loss terms (key `loss`: the objective) of one batch; the teacher runs without gradients."""
        audio = audio.to(self.device)
        if self.cfg.recipe == "distilhubert":
            with torch.no_grad():
                states = encode(self.teacher, audio, output_hidden_states=True).hidden_states
                target = torch.stack([states[i] for i in self.target_layers], dim=2)
            return dm.distilhubert_loss(model(audio), target, self.cfg.cos_weight)
        mask = mask.to(self.device)
        with torch.no_grad():
            teacher_logits, _ = self.teacher_head(audio, mask)
        student_logits, _ = model(audio, mask)
        return dm.kd_loss(student_logits, teacher_logits, labels.to(self.device), mask, self.cfg.temperature, self.cfg.alpha)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.objective(model, *batch)["loss"], {}


    @torch.no_grad()
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """Distillation loss on held-out audio (distilhubert: + L1 and cosine; kd: + KL, CE, masked accuracy,
        agreement with the teacher), batch-weighted by frames."""
        if client_id is not None:
            self._client(client_id)
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        weight = 0.0
        try:
            for audio, labels, mask in self.batches.eval_batches(client_id, self.cfg.eval_batches, self.cfg):
                with autocast(self.device, self.amp_dtype):
                    parts = self.objective(model, audio, labels, mask)
                w = float(mask.sum()) if self.cfg.recipe == "kd" else float(labels.numel())
                weight += w
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * w
        finally:
            model.train(was_training)
        return {("val_loss" if k == "loss" else f"val_{k}"): v / max(weight, 1.0) for k, v in sums.items()}

    # ------------------------------------------------------------------------------ client statistics (kd)

    def supports_client_stats(self) -> bool:
        """kd only: the distilhubert student regresses hidden states and has no predictive distribution."""
        if self.cfg.recipe != "kd":
            raise FedctlError(
                "FedEntropy/FedFisher need a predictive distribution, but the distilhubert student regresses hidden states",
                "use --recipe kd (the student predicts cluster distributions) or another strategy (e.g. fedavg)")
        return True

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        return self.batches.stat_examples(client_id, max_examples, self.client_ids().index(client_id), self.cfg, self.device)

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = model(inputs["audio"], inputs["mask"])
        return logits, torch.where(inputs["mask"], inputs["labels"], torch.full_like(inputs["labels"], IGNORE))

    # ------------------------------------------------------------------------------ artefacts

    def export(self, model: nn.Module, out_dir: str | Path) -> Path:
        """Like the teacher: `hf/` (HubertModel.save_pretrained + head files); kd also writes `../s3prl.pt`."""
        out_dir = Path(out_dir)
        if self.cfg.recipe == "kd":
            from fedctl.tasks.hubert.s3prl import to_s3prl

            export_pretrained(model, out_dir)
            torch_save(to_s3prl(model, cfg_extra={"mask_prob": self.cfg.mask_prob, "mask_length": self.cfg.mask_length}),
                       out_dir.parent / "s3prl.pt")
            return out_dir
        from safetensors.torch import save_file

        from fedctl.utils.io import atomic_dir

        with atomic_dir(out_dir) as tmp:
            model.hubert.save_pretrained(tmp)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.pred_heads.state_dict().items()},
                      str(tmp / "pred_heads.safetensors"))
            write_json(tmp / "fedctl_distilhubert.json", {"target_layers": model.target_layers,
                                                         "teacher_hidden_size": self.teacher.config.hidden_size})
        return out_dir

    def describe(self) -> dict[str, Any]:
        c = self.cfg
        out = {"recipe": c.recipe, "teacher": c.teacher, **self.sizes(), "data": self.data.source,
               "train_utterances": [len(u) for u in self.data.train.values()],
               "val_utterances": len(self.data.all_val()),
               "train_seconds": [round(self.batches.seconds(k), 1) for k in self.data.train]}
        if c.recipe == "distilhubert":
            out.update(student_layers=c.student_layers, target_layers=self.target_layers)
        else:
            out.update(student=f"{c.kd_hidden_size} x {c.kd_num_layers}", temperature=c.temperature, alpha=c.alpha)
        out["audio_seconds_total"] = sum(u.frames for us in self.data.train.values() for u in us) * 320 / SAMPLE_RATE
        return out
