"""A tiny, fast task for engine tests: linear regression with per-client data."""

from __future__ import annotations

import torch
from torch import nn

from fedctl.core.local import LocalTraining
from fedctl.core.task import Task


class LinearTask(Task):
    """y = x·w* + noise, split over clients; `steps` AdamW steps of 16 examples per round."""

    name = "linear"

    def __init__(self, num_clients=4, dim=6, n_per_client=64, steps=5, lr=0.05, seed=0, fail=None, nan=None):
        g = torch.Generator().manual_seed(seed)
        self.w_true = torch.randn(dim, 1, generator=g)
        self.x = [torch.randn(n_per_client + 8 * k, dim, generator=g) for k in range(num_clients)]
        self.y = [x @ self.w_true + 0.01 * torch.randn(x.shape[0], 1, generator=g) for x in self.x]
        self.xv = torch.randn(128, dim, generator=g)
        self.yv = self.xv @ self.w_true
        self.dim, self.lr, self.seed = dim, lr, seed
        self.training = LocalTraining(lr=lr, batch_size=16, local_updates=steps)
        self.fail = set(fail or [])  # client ids that raise
        self.nan = set(nan or [])  # client ids whose loss (hence weights) turn NaN

    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Linear(self.dim, 1)

    def shared_keys(self, model):
        return list(model.state_dict())

    def client_ids(self):
        return [f"client_{k}" for k in range(len(self.x))]

    def _k(self, client_id):
        return int(client_id.split("_")[1])

    def train_items(self, client_id):
        return self.x[self._k(client_id)].shape[0]

    def num_examples(self, client_id):
        return self.train_items(client_id)

    def make_batch(self, client_id, items, gen):
        if client_id in self.fail:
            raise RuntimeError("simulated client crash")
        k = self._k(client_id)
        return client_id, self.x[k][items], self.y[k][items]

    def loss(self, model, batch):
        client_id, xb, yb = batch
        loss = nn.functional.mse_loss(model(xb), yb)
        return (loss * float("nan") if client_id in self.nan else loss), {}

    def evaluate(self, model, client_id=None):
        with torch.no_grad():
            if client_id is None:
                loss = nn.functional.mse_loss(model(self.xv), self.yv).item()
            else:
                k = self._k(client_id)
                loss = nn.functional.mse_loss(model(self.x[k]), self.y[k]).item()
        return {"val_loss": loss}

    def eval_examples(self, client_id):
        return self.x[self._k(client_id)].shape[0]


class PersonalLinearTask(LinearTask):
    """A client's own trained model evaluated on its own data (what glue does with each client's adapter)."""

    def personal_evaluate(self, model, client_id):
        return {**self.evaluate(model, client_id), "num_examples": self.eval_examples(client_id)}


def build_linear_task(device=None):
    """A default LinearTask (a picklable task factory for spawned parallel workers)."""
    return LinearTask()
