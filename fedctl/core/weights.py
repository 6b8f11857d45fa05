"""Weights from disk into a built model: warm starts (`--init`) and `fedctl eval` of exports.

A source is a fedctl checkpoint (`.pt`, its global model), a run directory (its newest checkpoint), or a folder
of `.safetensors` (a Hugging Face `save_pretrained` folder, a run's `final/` or `final/hf/` export). Names may
differ by one wrapper prefix (an export of `model.hubert` names `encoder.…` where the model says
`hubert.encoder.…`); anything else that differs is an error naming the first differing tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedctl.errors import FedctlError


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, run directory or safetensors folder (see the module docstring)."""
    from fedctl.core import checkpoint as ckpt_io

    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return dict(ckpt_io.load_checkpoint(path)["model"])
    if not path.is_dir():
        raise FedctlError(f"{path} does not exist", "pass a checkpoint, a run directory or a model folder")
    if (path / "checkpoints").is_dir() and (path / "config.yaml").is_file():
        from fedctl.core.rundir import RunDir

        return dict(RunDir(path).load_checkpoint()[1]["model"])
    folder = path / "hf" if (path / "hf").is_dir() and not any(path.glob("*.safetensors")) else path
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FedctlError(f"{path} holds no .safetensors weights",
                          "pass a fedctl checkpoint (.pt), a run directory, a final/ export or a Hugging Face folder")
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _match(source_key: str, model_keys: dict[str, torch.Tensor]) -> str | None:
    if source_key in model_keys:
        return source_key
    hits = [k for k in model_keys if k.endswith("." + source_key) or source_key.endswith("." + k)]
    return hits[0] if len(hits) == 1 else None


@torch.no_grad()
def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path, *,
                 required: list[str] | None = None) -> list[str]:
    """Copy `state` into `model`; return the model's tensors the source did not cover (kept as built).

    Every source tensor must name a model tensor of the same shape, and every key in `required` must be
    covered; otherwise a FedctlError names the first differing tensor."""
    params = model.state_dict()
    covered: set[str] = set()
    for s, tensor in state.items():
        k = _match(s, params)
        if k is None:
            raise FedctlError(f"{where} does not match the model: first differing tensor '{s}' (the model has none "
                              "of that name)", "pass weights of the same architecture (same preset and config)")
        if tuple(tensor.shape) != tuple(params[k].shape):
            raise FedctlError(f"{where} does not match the model: first differing tensor '{k}' is "
                              f"{tuple(tensor.shape)} there, {tuple(params[k].shape)} here",
                              "pass weights of the same architecture (same preset and config)")
        params[k].copy_(tensor.to(params[k].dtype))
        covered.add(k)
    for k in required or []:
        if k not in covered:
            raise FedctlError(f"{where} does not match the model: first differing tensor '{k}' is missing there",
                              "pass weights of the same architecture (same preset and config)")
    return [k for k in params if k not in covered]


def warm_start(model: nn.Module, init: str | Path, log) -> None:
    """Load `init` (a HF folder, final/ export, run or checkpoint of this architecture) into the fresh model;
    tensors it lacks (e.g. a pretraining head next to a HubertModel export) keep their fresh values, and `log`
    says how many."""
    kept = load_weights(model, read_weights(init), f"--init {init}")
    if kept:
        log(f"--init {init}: {len(kept)} tensors not in it keep their fresh values (e.g. {kept[0]})")
