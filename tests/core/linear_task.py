"""A tiny, fast task for engine tests: linear regression with per-client data."""

from __future__ import annotations

import torch
from torch import nn

from fedctl.core.task import ClientConfig, FitResult, proximal_term


class LinearTask:
    """y = x·w* + noise, split over clients; local SGD/AdamW steps on seeded minibatches."""

    name = "linear"

    def __init__(self, num_clients=4, dim=6, n_per_client=64, steps=5, lr=0.05, seed=0, optimizer="adamw",
                 fail=None, nan=None):
        g = torch.Generator().manual_seed(seed)
        self.w_true = torch.randn(dim, 1, generator=g)
        self.x = [torch.randn(n_per_client + 8 * k, dim, generator=g) for k in range(num_clients)]
        self.y = [x @ self.w_true + 0.01 * torch.randn(x.shape[0], 1, generator=g) for x in self.x]
        self.xv = torch.randn(128, dim, generator=g)
        self.yv = self.xv @ self.w_true
        self.dim, self.steps, self.lr, self.seed, self.optimizer = dim, steps, lr, seed, optimizer
        self.fail = set(fail or [])  # client ids that raise
        self.nan = set(nan or [])  # client ids that return NaN weights
        self.calls = []

    def build_model(self):
        torch.manual_seed(self.seed)
        return nn.Linear(self.dim, 1)

    def shared_keys(self, model):
        return list(model.state_dict())

    def client_ids(self):
        return [f"client_{k}" for k in range(len(self.x))]

    def make_optimizer(self, model, lr):
        if self.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def draw(self, gen, x, y, batch=16):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        return x[idx], y[idx]

    def fit(self, model, client_id, cfg: ClientConfig):
        self.calls.append((cfg.server_round, client_id))
        if client_id in self.fail:
            raise RuntimeError("simulated client crash")
        k = int(client_id.split("_")[1])
        opt = self.make_optimizer(model, float(cfg.strategy.get("lr", self.lr)))
        if cfg.keep_optimizer_state and cfg.optimizer_state is not None:
            opt.load_state_dict(cfg.optimizer_state)
        gen = torch.Generator().manual_seed(cfg.seed)
        losses = []
        for _ in range(self.steps):
            xb, yb = self.draw(gen, self.x[k], self.y[k])
            loss = nn.functional.mse_loss(model(xb), yb)
            (loss + proximal_term(model, cfg.anchor, cfg.proximal_mu)).backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        if client_id in self.nan:
            with torch.no_grad():
                model.weight.fill_(float("nan"))
        return FitResult(
            num_examples=self.x[k].shape[0],
            metrics={"train_loss": sum(losses) / len(losses)},
            optimizer_state=opt.state_dict() if cfg.keep_optimizer_state else None,
        )

    def evaluate(self, model, client_id=None):
        with torch.no_grad():
            if client_id is None:
                loss = nn.functional.mse_loss(model(self.xv), self.yv).item()
            else:
                k = int(client_id.split("_")[1])
                loss = nn.functional.mse_loss(model(self.x[k]), self.y[k]).item()
        return {"val_loss": loss}


def build_linear_task(device=None):
    """A default LinearTask (a picklable task factory for spawned parallel workers)."""
    return LinearTask()
