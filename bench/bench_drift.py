"""Client drift and per-client state at scale.

(a) FedAvg vs FedProx vs SCAFFOLD vs FedNova on a Dirichlet(α = 0.1) label split of a synthetic 10-class problem
    (Gaussian clusters, an MLP; tests/core/toy_classifier.py's generator at a larger size): 10 clients, one local
    epoch of plain SGD (lr 0.05, micro-batches of 16) per round, so clients take different numbers of steps
    (FedNova's setting), 3 seeds; global val loss and accuracy after the same rounds.
(b) SCAFFOLD with 1,000 clients (fraction 0.01: 10 per round) vs 10 clients (all 10 per round), a tiny MLP:
    peak RSS and mean round time; the client-state store spills beyond its budget (here 64 KiB).

    python bench/run.py --only drift [--quick]
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedctl.core.config import FederationConfig  # noqa: E402
from fedctl.core.engine import run_federated  # noqa: E402
from fedctl.core.strategies import build_strategy  # noqa: E402
from fedctl.core.task import LocalTraining, Task  # noqa: E402


class DirichletClassifier(Task):
    """Gaussian clusters in `dim` dimensions, `classes` classes, split over clients by Dirichlet(alpha) per class."""

    name = "dirichlet_toy"

    def __init__(self, num_clients=10, alpha=0.1, dim=16, classes=10, n=3000, lr=0.05, seed=0, hidden=32):
        g = torch.Generator().manual_seed(seed)
        self.centers = torch.randn(classes, dim, generator=g) * 1.5
        y = torch.randint(0, classes, (n,), generator=g)
        x = self.centers[y] + torch.randn(n, dim, generator=g)
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        dist = torch.distributions.Dirichlet(torch.full((num_clients,), alpha))
        torch.manual_seed(seed)
        for c in range(classes):
            idx = (y == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            share = dist.sample()
            cuts = (torch.cumsum(share, 0) * len(idx)).long().tolist()
            start = 0
            for k, end in enumerate(cuts):
                parts[k] += idx[start:end].tolist()
                start = end
        for k in range(num_clients):  # every client needs data: give an empty one a few random examples
            if len(parts[k]) < 4:
                parts[k] += torch.randint(0, n, (4,), generator=g).tolist()
        self.x = [x[p] for p in parts]
        self.y = [y[p] for p in parts]
        yv = torch.randint(0, classes, (1000,), generator=g)
        self.xv, self.yv = self.centers[yv] + torch.randn(1000, dim, generator=g), yv
        self.dim, self.classes, self.seed, self.hidden = dim, classes, seed, hidden
        self.training = LocalTraining(lr=lr, batch_size=16, local_updates=0, local_epochs=1.0, optimizer="sgd")

    def build_model(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(self.dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.classes))

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

    @torch.no_grad()
    def evaluate(self, model, client_id=None):
        logits = model(self.xv)
        return {"val_loss": nn.functional.cross_entropy(logits, self.yv).item(),
                "val_accuracy": (logits.argmax(-1) == self.yv).float().mean().item()}


class ManyClients(Task):
    """`num_clients` clients of 32 examples each, generated on demand from the client index (no O(clients) data in
    memory): the store, not the data, is what grows with the client count."""

    name = "many_clients"

    def __init__(self, num_clients, dim=32, hidden=64, classes=10):
        self.n, self.dim, self.hidden, self.classes = num_clients, dim, hidden, classes
        self.centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 1.5
        self.training = LocalTraining(lr=0.05, batch_size=16, local_updates=4, optimizer="sgd")

    def build_model(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(self.dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.classes))

    def shared_keys(self, model):
        return list(model.state_dict())

    def client_ids(self):
        return [f"client_{k}" for k in range(self.n)]

    def train_items(self, client_id):
        return 32

    def num_examples(self, client_id):
        return 32

    def _data(self, client_id):
        g = torch.Generator().manual_seed(int(client_id.split("_")[1]))
        y = torch.randint(0, self.classes, (32,), generator=g)
        return self.centers[y] + torch.randn(32, self.dim, generator=g), y

    def make_batch(self, client_id, items, gen):
        x, y = self._data(client_id)
        return x[items], y[items]

    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1]), {}

    @torch.no_grad()
    def evaluate(self, model, client_id=None):
        x, y = self._data("client_0")
        return {"val_loss": nn.functional.cross_entropy(model(x), y).item()}


STRATEGIES = [("fedavg", {}), ("fedprox", {"proximal_mu": 0.1}), ("scaffold", {}), ("fednova", {})]


def drift(rounds: int, seeds: list[int]) -> dict:
    out = {}
    for name, args in STRATEGIES:
        losses, accs = [], []
        for seed in seeds:
            task = DirichletClassifier(seed=seed)
            fed = FederationConfig(rounds=rounds, clients=10, fraction=1.0, eval_every=rounds, best_metric=None,
                                   checkpoint_every=10**6)
            res = run_federated(task, build_strategy(name, args), fed, seed=seed)
            losses.append(res.last("val_loss"))
            accs.append(res.last("val_accuracy"))
        out[name] = {"val_loss": losses, "val_accuracy": accs}
        print(f"  {name:9s} val_loss {statistics.mean(losses):.4f} ± {statistics.pstdev(losses):.4f}   "
              f"accuracy {statistics.mean(accs):.4f} ± {statistics.pstdev(accs):.4f}   (seeds {seeds})", flush=True)
    return out


def scale(num_clients: int, rounds: int) -> dict:
    """Run in a fresh process (peak RSS is per process): python bench/bench_drift.py scale N ROUNDS."""
    task = ManyClients(num_clients)
    fraction = 10 / num_clients
    fed = FederationConfig(rounds=rounds, clients=num_clients, fraction=fraction, min_fit_clients=1,
                           eval_every=rounds, best_metric=None, checkpoint_every=10**6, client_state_memory=64 * 1024)
    times: list[float] = []
    t = [time.perf_counter()]

    def on_event(e):
        if type(e).__name__ == "RoundFinished":
            now = time.perf_counter()
            times.append(now - t[0])
            t[0] = now

    strategy = build_strategy("scaffold")
    run_federated(task, strategy, fed, seed=0, on_event=on_event)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {"clients": num_clients, "peak_rss_mib": rss, "round_s_median": statistics.median(times[1:])}


def main(quick: bool = False) -> dict:
    import json
    import subprocess

    rounds, seeds = (5, [0]) if quick else (30, [0, 1, 2])
    print(f"(a) Dirichlet α=0.1, 10 clients, {rounds} rounds, one local SGD epoch per round", flush=True)
    results = {"drift": drift(rounds, seeds)}
    print("(b) SCAFFOLD, 10 sampled clients per round, tiny MLP, store budget 64 KiB", flush=True)
    results["scale"] = []
    for n in (10, 1000):
        out = subprocess.run([sys.executable, __file__, "scale", str(n), "6" if quick else "20"], check=True,
                             capture_output=True, text=True).stdout
        rec = json.loads(out.strip().splitlines()[-1])
        results["scale"].append(rec)
        print(f"  {rec['clients']:5d} clients: peak RSS {rec['peak_rss_mib']:.0f} MiB, "
              f"median round {rec['round_s_median'] * 1000:.1f} ms", flush=True)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["scale"]:
        import json

        torch.set_num_threads(1)
        print(json.dumps(scale(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main(quick="--quick" in sys.argv)
