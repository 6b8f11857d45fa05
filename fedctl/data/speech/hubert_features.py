"""HuBERT iteration-2 features: hidden states of one transformer layer of a (federated) HuBERT model.

As in fairseq's `examples/hubert/simple_kmeans/dump_hubert_feature.py`: the model's layer-N output (N=6 for
HuBERT Base's second iteration) at 50 Hz, one frame per 20 ms, for k-means targets of the next iteration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedctl.errors import FedctlError


class HubertLayerExtractor:
    """Layer-`layer` hidden states of a HubertModel folder (e.g. RUN/final/hf), each utterance on its own.

    Utterances are run one at a time (no padding): HuBERT Base was pretrained without attention masks, so
    padding would change the features. Long utterances are cut into `max_seconds` chunks, as fairseq does.
    """

    rate = 50  # frames per second

    def __init__(self, model_dir: str | Path, layer: int, device: str = "cpu", max_seconds: float = 100.0):
        import json

        hint = "pass --model RUN/final/hf written by `fedctl train hubert` (a HubertModel folder)"
        config = Path(model_dir) / "config.json"
        if not config.is_file():
            raise FedctlError(f"--model {model_dir} is not a model folder (no config.json)", hint)
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise FedctlError(f"--model {model_dir}: config.json is not valid JSON", hint) from None
        if not isinstance(meta, dict) or meta.get("model_type") != "hubert":
            raise FedctlError(f"--model {model_dir} is not a HuBERT model", hint)
        from transformers import HubertModel  # after the cheap checks: importing it costs seconds

        try:
            self.model = HubertModel.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, SafetensorError … on damaged folders
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise FedctlError(f"--model {model_dir} cannot be loaded ({first})", hint) from None
        n = self.model.config.num_hidden_layers
        if not 1 <= layer <= n:
            raise FedctlError(f"--layer {layer} is outside the model's layers 1..{n}", f"HuBERT iteration 2 uses layer {min(6, n)}")
        self.layer = layer
        self.dim = self.model.config.hidden_size
        self.name = f"hubert layer {layer} ({model_dir})"
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.chunk = int(max_seconds * 16000)

    @torch.no_grad()
    def __call__(self, audio: np.ndarray) -> torch.Tensor:
        """(frames, hidden) float32 for one 16 kHz waveform; frames = `hubert_num_frames(len(audio))`."""
        x = torch.as_tensor(audio, dtype=torch.float32, device=self.device)
        if x.numel() < 400:
            return torch.zeros(0, self.dim)
        parts = []
        for start in range(0, x.numel(), self.chunk):
            piece = x[start : start + self.chunk]
            if piece.numel() < 400:
                break
            states = self.model(piece[None], output_hidden_states=True).hidden_states
            parts.append(states[self.layer][0].float().cpu())
        return torch.cat(parts)

    def batch(self, audios: list[np.ndarray]) -> list[torch.Tensor]:
        return [self(a) for a in audios]
