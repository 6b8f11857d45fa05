"""The encoder under evaluation: a HF HubertModel/Wav2Vec2Model (from a folder, a fedctl run or checkpoint, or
randomly initialised in the same shape) or a plain-feature baseline (39-dim MFCC, 80-dim log-mel).

`Upstream.hidden_states(audio)` gives every hidden state of one utterance, [L, T, D]: for a transformer the
input of the first layer (after the positional convolution and, in post-LN models, the layer norm) and the
output of every layer, as s3prl's HuBERT expert hooks them (13 for HuBERT Base); for a feature baseline a single
"layer". Utterances run one at a time, unpadded: HuBERT Base's group-norm feature encoder normalises over time,
so zero padding would change the features (pitfall 4 of the reference), and a cache of whole utterances is
then independent of batching.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedctl.data.speech.features import HUBERT_HOP, MFCC_HOP, SAMPLE_RATE
from fedctl.errors import FedctlError

FEATURE_BASELINES = ("mfcc", "fbank")
MODEL_TYPES = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model"}
HINT = ("pass a folder with a HubertModel/Wav2Vec2Model config.json (e.g. RUN/final/hf of `fedctl train hubert` or "
        "`train distill`), a hubert/distill run directory or checkpoint, or --upstream mfcc / fbank")


@dataclass
class Upstream:
    """An encoder that turns 16 kHz audio into hidden states; `forward_calls` counts utterances encoded."""

    name: str  # what the user passed
    kind: str  # "model" or a feature baseline name
    num_layers: int  # hidden states per utterance (L)
    dim: int  # feature size (D)
    hop: int  # samples per frame (320 for HuBERT, 160 for MFCC/fbank)
    model: nn.Module | None = None
    normalize: bool = False  # per-utterance zero mean, unit variance of the waveform (the checkpoint's setting)
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    forward_calls: int = 0

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    def num_frames(self, num_samples: int) -> int:
        """Frames for `num_samples` (25 ms window, snip edges: the conv encoder's rule for HuBERT)."""
        return 0 if num_samples < 400 else (num_samples - 400) // self.hop + 1

    def waveform(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(audio, dtype=torch.float32)
        if self.normalize:
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        return x

    @torch.no_grad()
    def hidden_states(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[L, T, D] float32 for one utterance (16 kHz float samples in [-1, 1])."""
        self.forward_calls += 1
        x = self.waveform(audio)
        if self.model is None:
            return self.features(x)[None]
        self.model.eval()
        device = next(self.model.parameters()).device
        out = self.model(x[None].to(device), output_hidden_states=True)
        return torch.stack([h[0] for h in out.hidden_states]).float().cpu()

    def fingerprint(self) -> str:
        """sha256 of what determines the hidden states: the weights (names, dtypes, shapes, bytes), the model's
        class and config, and the waveform normalisation; for a feature baseline its name and settings."""
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "normalize": self.normalize, "hop": self.hop, "dim": self.dim}).encode())
        if self.model is not None:
            h.update(type(self.model).__name__.encode())
            h.update(self.model.config.to_json_string(use_diff=False).encode())
            for name, t in sorted(self.model.state_dict().items()):
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


# ------------------------------------------------------------------------------------------- loading


def _mfcc() -> Callable[[torch.Tensor], torch.Tensor]:
    from fedctl.data.speech.features import MfccExtractor

    return MfccExtractor()


def _fbank() -> Callable[[torch.Tensor], torch.Tensor]:
    """80 log-mel filterbanks, Kaldi-compatible (lhotse, pure torch): 25 ms Povey window, 10 ms shift, snip
    edges, 20 Hz to Nyquist, no dither."""
    from lhotse.features.kaldi.layers import Wav2LogFilterBank

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lhotse warns that snip_edges differs from its own default
        layer = Wav2LogFilterBank(sampling_rate=SAMPLE_RATE, snip_edges=True, high_freq=0.0, low_freq=20.0,
                                  num_filters=80, dither=0.0).eval()

    def fbank(x: torch.Tensor) -> torch.Tensor:
        if x.numel() < 400:
            return torch.zeros(0, 80)
        with torch.no_grad():
            return layer(x.reshape(1, -1))[0]

    return fbank


def _model_class(model_type: str):
    import transformers

    return getattr(transformers, MODEL_TYPES[model_type])


def _from_folder(path: Path):
    config_file = path / "config.json"
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FedctlError(f"upstream {config_file} is unreadable ({type(exc).__name__})", HINT) from None
    model_type = meta.get("model_type")
    if model_type not in MODEL_TYPES:
        raise FedctlError(f"upstream {path} is a '{model_type}' model, not HuBERT or wav2vec 2.0", HINT)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # progress goes to stderr once per load: noise in every worker and eval
    try:
        model = _model_class(model_type).from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        first = (str(exc).splitlines() or [""])[0][:160]
        raise FedctlError(f"upstream {path} does not load as {MODEL_TYPES[model_type]} ({type(exc).__name__}: {first})",
                          HINT) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    normalize = False
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            normalize = bool(json.loads(pre.read_text(encoding="utf-8")).get("do_normalize", False))
        except ValueError:
            pass
    return model, normalize


def _config_from_run(task: str, task_cfg: dict, where: Path):
    """The HubertConfig of the encoder a hubert/distill run trains, from the run's resolved `task` section."""
    if task == "hubert":
        from fedctl.tasks.hubert.config import HubertPretrainConfig
        from fedctl.tasks.hubert.model import hubert_config
        from fedctl.tasks.hubert.presets import ARCH_KEYS, PRESETS
        from fedctl.tasks.hubert.task import resolve_preset

        cfg = HubertPretrainConfig(**{k: v for k, v in task_cfg.items() if k in HubertPretrainConfig.__dataclass_fields__})
        return hubert_config(resolve_preset(cfg, PRESETS, ARCH_KEYS), cfg.attn_implementation)
    if task == "distill":
        from transformers import HubertConfig

        from fedctl.tasks.distill import model as dm
        from fedctl.tasks.distill.config import DistillConfig

        cfg = DistillConfig(**{k: v for k, v in task_cfg.items() if k in DistillConfig.__dataclass_fields__})
        if not cfg.teacher or not (Path(cfg.teacher) / "config.json").is_file():
            raise FedctlError(f"{where}: its distill run's teacher {cfg.teacher} is gone, so the student's shape is unknown",
                              "pass the run's final/hf export instead (it carries its own config.json)")
        teacher = HubertConfig.from_pretrained(cfg.teacher, local_files_only=True)
        if cfg.recipe == "distilhubert":
            return dm.distilhubert_config(teacher, cfg.student_layers, cfg.attn_implementation)
        return dm.kd_config(teacher, cfg.kd_hidden_size, cfg.kd_num_layers, cfg.kd_num_heads, cfg.kd_ffn_size,
                            cfg.attn_implementation)
    raise FedctlError(f"upstream {where} is a checkpoint of task '{task}', not of a hubert or distill run", HINT)


def _from_checkpoint(path: Path):
    from transformers import HubertModel

    from fedctl.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    config = _config_from_run(str(ckpt["task"]), dict(ckpt["config"].get("task") or {}), path)
    state = {k.removeprefix("hubert."): v for k, v in ckpt["model"].items() if k.startswith("hubert.")}
    with torch.random.fork_rng(devices=[]):
        model = HubertModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FedctlError(f"upstream {path}: the checkpoint's encoder does not fit its run's config "
                          f"(missing {missing[:2]}, unexpected {unexpected[:2]})", HINT)
    return model


def load_upstream(name: str, *, random_init: bool = False, seed: int = 0, device: torch.device | str = "cpu",
                  finetune: bool = False) -> Upstream:
    """The upstream `name` names (see the module docstring); with `random_init` its architecture with fresh
    weights drawn from `seed` (global RNG untouched). Layerdrop is switched off (a fixed layer count, as s3prl)."""
    if name in FEATURE_BASELINES:
        if random_init:
            raise FedctlError(f"--random-init does not apply to --upstream {name} (plain features have no weights)",
                              "drop --random-init, or pass a model folder to randomise its architecture")
        if finetune:
            raise FedctlError(f"--mode finetune needs an encoder, but --upstream {name} is plain features",
                              "use --mode frozen for the feature baselines")
        if name == "mfcc":
            return Upstream(name, "mfcc", 1, 39, MFCC_HOP, features=_mfcc())
        return Upstream(name, "fbank", 1, 80, MFCC_HOP, features=_fbank())
    path = Path(name).expanduser()
    if not path.exists():
        raise FedctlError(f"upstream {path} does not exist", HINT)
    normalize = False
    if path.is_file():
        model = _from_checkpoint(path)
    else:
        if not (path / "config.json").is_file():
            for candidate in (path / "hf", path / "final" / "hf"):
                if (candidate / "config.json").is_file():
                    path = candidate
                    break
        if (path / "config.json").is_file():
            model, normalize = _from_folder(path)
        elif (path / "checkpoints").is_dir():
            from fedctl.core.rundir import RunDir

            model = _from_checkpoint(RunDir(path).latest_checkpoint())
        else:
            raise FedctlError(f"upstream {path} holds no config.json (not a model folder) and no checkpoints", HINT)
    model.config.layerdrop = 0.0
    if getattr(model.config, "apply_spec_augment", False):
        model.config.apply_spec_augment = False  # no masking in fine-tuning forwards: numpy RNG, not reproducible
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = type(model)(model.config)
    model.eval().requires_grad_(False).to(device)
    return Upstream(name, "model", model.config.num_hidden_layers + 1, model.config.hidden_size, HUBERT_HOP,
                    model=model, normalize=normalize)
