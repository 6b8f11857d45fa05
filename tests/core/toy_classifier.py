"""A small MLP classifier task with the statistics hooks (for FedEntropy / FedFisher tests)."""

from __future__ import annotations

import torch
from torch import nn

from fedctl.core.local import LocalTraining
from fedctl.core.task import Task


class ToyClassifier(Task):
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
        self.training = LocalTraining(lr=lr, batch_size=32, local_updates=steps)

    def build_model(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(self.dim, 16), nn.Tanh(), nn.Linear(16, self.classes))

    def shared_keys(self, model):
        return list(model.state_dict())

    def client_ids(self):
        return [f"client_{k}" for k in range(len(self.x))]

    def train_items(self, client_id):
        return len(self.y[int(client_id.split("_")[1])])

    def num_examples(self, client_id):
        return self.train_items(client_id)

    def make_batch(self, client_id, items, gen):
        k = int(client_id.split("_")[1])
        return self.x[k][items], self.y[k][items]

    def loss(self, model, batch):
        xb, yb = batch
        return nn.functional.cross_entropy(model(xb), yb), {}

    def supports_client_stats(self):
        return True

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
