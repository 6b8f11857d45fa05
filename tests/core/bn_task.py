"""LinearTask with a BatchNorm layer in front and a feature shift per client (FedBN's setting): client k's inputs
are scaled by k + 1 and shifted by k, so every client's BatchNorm statistics differ."""

from __future__ import annotations

import torch
from torch import nn

from tests.core.linear_task import LinearTask


class BatchNormTask(LinearTask):
    name = "linear_bn"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.x = [x * (k + 1) + k for k, x in enumerate(self.x)]

    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.BatchNorm1d(self.dim), nn.Linear(self.dim, 1))

    def evaluate(self, model, client_id=None):
        model.eval()
        try:
            return super().evaluate(model, client_id)
        finally:
            model.train()
