"""A small MLP classifier task with the statistics hooks (for FedEntropy / FedFisher tests)."""

from __future__ import annotations

import torch
from torch import nn

from fedctl.core.task import ClientConfig, FitResult, proximal_term


class ToyClassifier:
    name = "toy"

    def __init__(self, num_clients=3, dim=8, classes=4, n=96, steps=6, lr=0.05, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.centers = torch.randn(classes, dim, generator=g) * 2
        self.x, self.y = [], []
        for k in range(num_clients):
            y = torch.randint(0, classes, (n + 16 * k,), generator=g)
            self.x.append(self.centers[y] + torch.randn(len(y), dim, generator=g))
            self.y.append(y)
        yv = torch.randint(0, classes, (200,), generator=g)
        self.xv, self.yv = self.centers[yv] + torch.randn(200, dim, generator=g), yv
        self.dim, self.classes, self.steps, self.lr, self.seed = dim, classes, steps, lr, seed

    def build_model(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(self.dim, 16), nn.Tanh(), nn.Linear(16, self.classes))

    def shared_keys(self, model):
        return list(model.state_dict())

    def client_ids(self):
        return [f"client_{k}" for k in range(len(self.x))]

    def fit(self, model, client_id, cfg: ClientConfig):
        k = int(client_id.split("_")[1])
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        losses = []
        for _ in range(self.steps):
            idx = torch.randint(0, len(self.y[k]), (32,), generator=gen)
            loss = nn.functional.cross_entropy(model(self.x[k][idx]), self.y[k][idx])
            (loss + proximal_term(model, cfg.anchor, cfg.proximal_mu)).backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return FitResult(len(self.y[k]), {"train_loss": sum(losses) / len(losses), "steps": self.steps})

    @torch.no_grad()
    def evaluate(self, model, client_id=None):
        logits = model(self.xv)
        return {"val_loss": nn.functional.cross_entropy(logits, self.yv).item(),
                "val_accuracy": (logits.argmax(-1) == self.yv).float().mean().item()}

    def stat_examples(self, client_id, max_examples):
        k = int(client_id.split("_")[1])
        return {"x": self.x[k][-max_examples:], "y": self.y[k][-max_examples:]}

    def forward_logits(self, model, inputs):
        return model(inputs["x"]), inputs["y"]
